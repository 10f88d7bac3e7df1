//! forward mode: the app decides who connects and to which groups (`GET /ws-auth/`).

use std::time::{Duration, Instant};

use taskstream_tests::upstream::{App, AuthAnswer};
use taskstream_tests::{free_port, loopback};

use super::*;

#[tokio::test]
async fn forward_allow_admits_with_the_apps_groups_and_passes_the_clients_credentials() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    app.set_auth(AuthAnswer::Allow {
        user: "carol".into(),
        groups: vec!["team".into(), "proj".into()],
    });
    let sc = forward_sidecar(&redis, &app.url(), &[]).await;
    let origin = format!("http://{}", sc.public);
    let mut ws = connect_with(
        &sc.ws_url("trace=abc"),
        &[
            ("cookie", "sessionid=s3cr3t; csrftoken=t0k"),
            ("authorization", "Bearer app-token"),
            ("origin", &origin),
        ],
    )
    .await
    .expect("allowed by the app");
    assert_receives(&redis, &mut ws, &["team", "proj", "user:carol"]).await;

    let (headers, query) = app.last_auth().expect("the app was asked");
    assert_eq!(headers["cookie"], "sessionid=s3cr3t; csrftoken=t0k");
    assert_eq!(headers["authorization"], "Bearer app-token");
    assert_eq!(headers["origin"], origin.as_str());
    assert_eq!(query.as_deref(), Some("trace=abc"));

    // Narrowing applies to the app's groups as well.
    let mut narrow = connect(&sc.ws_url("groups=proj")).await;
    assert_receives(&redis, &mut narrow, &["proj"]).await;
    assert_eq!(refused(&sc.ws_url("groups=other"), &[]).await, 403);
    sc.stop().await;
}

#[tokio::test]
async fn forward_auth_gets_the_same_forwarded_headers_as_a_proxied_request() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    app.set_auth(AuthAnswer::Allow {
        user: "dave".into(),
        groups: vec!["team".into()],
    });
    let sc = forward_sidecar(&redis, &app.url(), &[]).await;

    // No X-Forwarded-* from the client: the peer and the request's own host and scheme.
    let _ws = connect(&sc.ws_url("")).await;
    let (headers, _) = app.last_auth().expect("the app was asked");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], sc.public.to_string());

    // A client's (possibly spoofed) value is kept, and the real peer appended after it, exactly
    // as on a proxied request to the app.
    let spoof = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example.com"),
    ];
    let _ws = connect_with(&sc.ws_url(""), &spoof)
        .await
        .expect("allowed by the app");
    let (auth_headers, _) = app.last_auth().expect("the app was asked");
    let mut req = upstream::request("GET", &format!("http://{}/echo", sc.public), "");
    for (k, v) in spoof {
        req.headers_mut().insert(k, v.parse().unwrap());
    }
    let (status, body) = upstream::send(req).await;
    assert_eq!(status, 200);
    let echoed: Value = serde_json::from_str(&body).unwrap();
    for (name, want) in [
        ("x-forwarded-for", "6.6.6.6, 127.0.0.1"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example.com"),
    ] {
        assert_eq!(auth_headers[name], want, "forward auth {name}");
        assert_eq!(echoed["headers"][name], want, "proxied {name}");
    }
    sc.stop().await;
}

#[tokio::test]
async fn forward_app_refusals_and_failures_map_to_401_403_and_503() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = forward_sidecar(&redis, &app.url(), &["--auth-timeout", "300ms"]).await;
    let url = sc.ws_url("");

    app.set_auth(AuthAnswer::Status(401));
    assert_eq!(refused(&url, &[("cookie", "sessionid=old")]).await, 401);
    app.set_auth(AuthAnswer::Status(403));
    assert_eq!(refused(&url, &[]).await, 403);
    app.set_auth(AuthAnswer::Status(500));
    assert_eq!(
        refused(&url, &[]).await,
        503,
        "app error is not the client's fault"
    );

    app.set_auth(AuthAnswer::Hang);
    let started = Instant::now();
    assert_eq!(refused(&url, &[]).await, 503, "app hangs");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "bounded by --auth-timeout 300ms, took {took:?}"
    );

    assert_eq!(sc.metric(&rejected("Unauthorized")).await, 1.0);
    assert_eq!(sc.metric(&rejected("Forbidden")).await, 1.0);
    assert_eq!(sc.metric(&rejected("AuthUnavailable")).await, 2.0);
    sc.stop().await;
}

#[tokio::test]
async fn forward_with_the_app_down_answers_503() {
    let redis = RedisServer::start().await;
    // Nothing listens there: connection refused.
    let down = format!("http://{}", loopback(free_port()));
    let sc = forward_sidecar(&redis, &down, &["--auth-timeout", "2s"]).await;
    assert_eq!(refused(&sc.ws_url("groups=g"), &[]).await, 503);
    assert_eq!(sc.metric(&rejected("AuthUnavailable")).await, 1.0);
    sc.stop().await;
}
