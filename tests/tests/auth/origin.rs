//! The origin check: same host by default, `--allowed-origins`, and before authentication.

use taskstream_tests::free_port;
use taskstream_tests::upstream::{App, AuthAnswer};

use super::*;

#[tokio::test]
async fn default_origin_policy_admits_the_same_host_only() {
    let redis = RedisServer::start().await;
    let sc = sidecar(&redis, &["--auth", "none"]).await;
    let url = sc.ws_url("groups=g");
    let same = format!("http://{}", sc.public);

    let mut ws = connect_with(&url, &[("origin", &same)])
        .await
        .expect("same-host origin admitted");
    assert_receives(&redis, &mut ws, &["g"]).await;
    assert_eq!(
        refused(&url, &[("origin", "https://evil.example")]).await,
        403
    );
    let other_port = format!("http://127.0.0.1:{}", free_port());
    assert_eq!(
        refused(&url, &[("origin", &other_port)]).await,
        403,
        "another port"
    );
    connect_with(&url, &[])
        .await
        .expect("no Origin (not a browser) admitted");

    assert_eq!(sc.metric(&rejected("Origin")).await, 2.0);
    sc.stop().await;
}

#[tokio::test]
async fn allowed_origins_admit_the_listed_origin_and_refuse_others() {
    let redis = RedisServer::start().await;
    let sc = sidecar(
        &redis,
        &[
            "--auth",
            "none",
            "--allowed-origins",
            "https://app.example.com",
        ],
    )
    .await;
    let url = sc.ws_url("groups=g");
    let mut ws = connect_with(&url, &[("origin", "https://app.example.com")])
        .await
        .expect("listed origin admitted");
    assert_receives(&redis, &mut ws, &["g"]).await;
    let same = format!("http://{}", sc.public);
    for bad in [
        "https://evil.example",
        "http://app.example.com",
        "https://app.example.com.evil.example",
        same.as_str(),
    ] {
        assert_eq!(refused(&url, &[("origin", bad)]).await, 403, "{bad}");
    }
    assert_eq!(sc.metric(&rejected("Origin")).await, 4.0);
    sc.stop().await;
}

#[tokio::test]
async fn origin_is_checked_before_auth() {
    // A foreign page must not learn whether a token is valid, nor make the app do work.
    let redis = RedisServer::start().await;
    let app = App::start().await;
    app.set_auth(AuthAnswer::Allow {
        user: "carol".into(),
        groups: vec!["g".into()],
    });
    let sc = forward_sidecar(&redis, &app.url(), &[]).await;
    assert_eq!(
        refused(
            &sc.ws_url(""),
            &[
                ("origin", "https://evil.example"),
                ("cookie", "sessionid=x")
            ]
        )
        .await,
        403
    );
    assert!(app.last_auth().is_none(), "the app was not asked");
    sc.stop().await;
}
