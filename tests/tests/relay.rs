//! Relay from a real redis-server to real WebSocket clients through the sidecar.

use taskstream_tests::eventually;
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::{Sidecar, SidecarProcess};
use taskstream_tests::upstream::{App, http_get};
use taskstream_tests::ws::{connect, recv_text};

async fn sidecar(redis: &RedisServer, app: &App) -> Sidecar {
    Sidecar::start(&[
        "--auth",
        "none",
        "--redis-url",
        &redis.url(),
        "--upstream",
        &app.url(),
    ])
    .await
}

#[tokio::test]
async fn events_reach_exactly_the_clients_of_their_group_in_order() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app).await;
    let mut a = connect(&sc.ws_url("groups=g1")).await;
    let mut b = connect(&sc.ws_url("groups=g1,g2")).await;
    let mut c = connect(&sc.ws_url("groups=g3")).await;

    // The handshake completes only once the groups are subscribed, so nothing is lost here.
    assert_eq!(
        redis.publish("taskstream:g1", r#"{"n":1}"#).await,
        1,
        "one subscription per process, not per client"
    );
    redis.publish("taskstream:g2", r#"{"n":2}"#).await;
    redis.publish("taskstream:g1", r#"{"n":3}"#).await;
    redis.publish("other:g1", "wrong prefix").await;
    redis.publish("taskstream:g3", "for c").await;

    assert_eq!(recv_text(&mut a).await, r#"{"n":1}"#);
    assert_eq!(recv_text(&mut a).await, r#"{"n":3}"#);
    assert_eq!(recv_text(&mut b).await, r#"{"n":1}"#);
    assert_eq!(recv_text(&mut b).await, r#"{"n":2}"#);
    assert_eq!(recv_text(&mut b).await, r#"{"n":3}"#);
    // c's first message is its own: it got none of g1/g2's.
    assert_eq!(recv_text(&mut c).await, "for c");
    // And a got nothing of g2/g3 or the wrong prefix: the next thing it sees is this marker.
    redis.publish("taskstream:g1", "marker").await;
    assert_eq!(recv_text(&mut a).await, "marker");
    sc.stop().await;
}

#[tokio::test]
async fn payload_is_relayed_verbatim_and_non_utf8_is_dropped_and_counted() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app).await;
    let mut a = connect(&sc.ws_url("groups=g")).await;
    let unicode = "{\"msg\":\"progress 50% \u{2713} \u{1F680}\",\"raw\":\"a\\nb\"}";
    redis.publish("taskstream:g", [0xff_u8, 0xfe, 0x00]).await;
    redis.publish("taskstream:g", unicode).await;
    assert_eq!(recv_text(&mut a).await, unicode);
    assert_eq!(
        sc.metric("taskstream_events_dropped_total{reason=\"NonUtf8\"}")
            .await,
        1.0
    );
    sc.stop().await;
}

#[tokio::test]
async fn groups_are_subscribed_only_while_they_have_local_clients() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app).await;
    assert!(redis.channels().await.is_empty());
    let a = connect(&sc.ws_url("groups=g1,shared")).await;
    let b = connect(&sc.ws_url("groups=shared")).await;
    assert_eq!(
        redis.channels().await,
        vec!["taskstream:g1", "taskstream:shared"]
    );
    drop(a);
    eventually("g1 unsubscribed after its last client left", || async {
        (redis.channels().await == vec!["taskstream:shared"]).then_some(())
    })
    .await;
    drop(b);
    eventually("every group unsubscribed", || async {
        redis.channels().await.is_empty().then_some(())
    })
    .await;
    sc.stop().await;
}

#[tokio::test]
async fn redis_restart_mid_stream_keeps_clients_and_resubscribes() {
    let mut redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app).await;
    sc.wait_broker(200).await;
    let mut a = connect(&sc.ws_url("groups=g1")).await;
    let mut b = connect(&sc.ws_url("groups=g2")).await;
    redis.publish("taskstream:g1", "before").await;
    assert_eq!(recv_text(&mut a).await, "before");

    redis.kill();
    sc.wait_broker(503).await;
    redis.restart().await;
    sc.wait_broker(200).await;
    eventually("both groups resubscribed", || async {
        (redis.channels().await == vec!["taskstream:g1", "taskstream:g2"]).then_some(())
    })
    .await;
    redis.publish("taskstream:g1", "after-1").await;
    redis.publish("taskstream:g2", "after-2").await;
    // The same connections, still open, receive again.
    assert_eq!(recv_text(&mut a).await, "after-1");
    assert_eq!(recv_text(&mut b).await, "after-2");
    assert!(sc.metric("taskstream_redis_reconnects_total").await >= 1.0);
    // A client that joins after the restart works too.
    let mut c = connect(&sc.ws_url("groups=g3")).await;
    redis.publish("taskstream:g3", "new").await;
    assert_eq!(recv_text(&mut c).await, "new");
    sc.stop().await;
}

#[tokio::test]
async fn clients_connect_while_redis_is_down_and_receive_once_it_is_back() {
    let mut redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app).await;
    sc.wait_broker(200).await;
    redis.kill();
    sc.wait_broker(503).await;
    let mut a = connect(&sc.ws_url("groups=late")).await;
    redis.restart().await;
    sc.wait_broker(200).await;
    eventually("late group subscribed", || async {
        (redis.channels().await == vec!["taskstream:late"]).then_some(())
    })
    .await;
    redis.publish("taskstream:late", "hello").await;
    assert_eq!(recv_text(&mut a).await, "hello");
    sc.stop().await;
}

#[tokio::test]
async fn redis_outage_keeps_the_pod_ready_and_the_app_reachable() {
    let mut redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app).await;
    let strict = Sidecar::start(&[
        "--auth",
        "none",
        "--redis-url",
        &redis.url(),
        "--upstream",
        &app.url(),
        "--ready-requires-broker",
    ])
    .await;
    sc.wait_broker(200).await;
    strict.wait_ready(200).await;
    let mut a = connect(&sc.ws_url("groups=g")).await;

    redis.kill();
    sc.wait_broker(503).await;
    // Readiness follows the sidecar, not Redis: the pod stays in the Service...
    assert_eq!(sc.readyz().await, 200);
    // ...and plain HTTP still reaches the app through it.
    let (status, body) = http_get(&format!("http://{}/echo/x", sc.public)).await;
    assert_eq!(status, 200, "proxied request during the outage: {body}");
    // `--ready-requires-broker` restores the old coupling.
    strict.wait_ready(503).await;
    assert_eq!(
        sc.metric("taskstream_broker_up").await,
        0.0,
        "the broker's state is still reported"
    );

    redis.restart().await;
    sc.wait_broker(200).await;
    strict.wait_ready(200).await;
    eventually("resubscribed", || async {
        (redis.channels().await == vec!["taskstream:g"]).then_some(())
    })
    .await;
    redis.publish("taskstream:g", "back").await;
    assert_eq!(
        recv_text(&mut a).await,
        "back",
        "the same client gets events again"
    );
    strict.stop().await;
    sc.stop().await;
}

#[tokio::test]
async fn password_protected_redis_with_and_without_a_username_and_a_wrong_password() {
    let redis = RedisServer::start().await;
    let mut admin = redis.conn().await.expect("admin connection");
    // An ACL user, then a password on the default user (as managed Redis services have).
    redis::cmd("ACL")
        .arg(&["SETUSER", "app", "on", ">app-s3cret", "~*", "&*", "+@all"])
        .query_async::<()>(&mut admin)
        .await
        .expect("ACL SETUSER");
    redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "default-s3cret"])
        .query_async::<()>(&mut admin)
        .await
        .expect("CONFIG SET requirepass");
    let port = redis.url().rsplit(':').next().unwrap().to_owned();
    let publisher = redis::Client::open(format!("redis://:default-s3cret@127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the default user with its password");

    for url in [
        format!("redis://app:app-s3cret@127.0.0.1:{port}"),
        format!("redis://:default-s3cret@127.0.0.1:{port}"),
    ] {
        let sc = Sidecar::start(&["--auth", "none", "--redis-url", &url]).await;
        sc.wait_broker(200).await;
        let mut ws = connect(&sc.ws_url("groups=g")).await;
        let receivers: usize = redis::cmd("PUBLISH")
            .arg(&["taskstream:g", "authenticated"])
            .query_async(&mut publisher.clone())
            .await
            .expect("PUBLISH");
        assert_eq!(receivers, 1, "subscribed with {}", redacted(&url));
        assert_eq!(recv_text(&mut ws).await, "authenticated");
        sc.stop().await;
    }

    // A wrong password: the sidecar says what failed, keeps serving, and never logs the secret.
    let wrong = format!("redis://:not-the-Pa55word@127.0.0.1:{port}");
    let sc = SidecarProcess::spawn_captured(&["--auth", "none", "--redis-url", &wrong], &[]).await;
    let line = sc.wait_log("redis connect failed").await;
    assert!(
        line.contains("WRONGPASS") || line.contains("NOAUTH"),
        "{line}"
    );
    assert_eq!(
        http_get(&format!("http://{}/readyz/broker", sc.admin))
            .await
            .0,
        503
    );
    assert_eq!(
        http_get(&format!("http://{}/readyz", sc.admin)).await.0,
        200
    );
    assert!(
        !sc.stderr().contains("not-the-Pa55word"),
        "the password reached the log:\n{}",
        sc.stderr()
    );
}

fn redacted(url: &str) -> String {
    url.split_once('@').map_or(url, |(_, host)| host).to_owned()
}
