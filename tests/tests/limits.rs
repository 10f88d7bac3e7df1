//! Holding up under bad clients: slow readers, oversized frames, too many clients, silence.

use futures_util::StreamExt;
use taskstream_tests::eventually;
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::Sidecar;
use taskstream_tests::upstream::App;
use taskstream_tests::ws::{connect, connect_with, recv_close, recv_text, send_text};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn sidecar(redis: &RedisServer, app: &App, extra: &[&str]) -> Sidecar {
    let url = redis.url();
    let upstream = app.url();
    let mut args = vec![
        "--auth",
        "none",
        "--redis-url",
        &url,
        "--upstream",
        &upstream,
    ];
    args.extend_from_slice(extra);
    Sidecar::start(&args).await
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_and_the_others_keep_receiving() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app, &["--send-queue", "8"]).await;
    let mut stuck = connect(&sc.ws_url("groups=g")).await; // never reads until the end
    let mut fine = connect(&sc.ws_url("groups=g")).await;
    let payload = "x".repeat(64 * 1024);
    let mut sent = 0;
    // Publish one event at a time and wait for the reading client to get it, so only the stuck
    // client's socket and queue fill up. Bounded: loopback buffers hold far less than 2000 x 64 KiB.
    while sent < 2000 {
        let event = format!("{sent}:{payload}");
        redis.publish("taskstream:g", &event).await;
        assert_eq!(
            recv_text(&mut fine).await,
            event,
            "the reading client misses nothing"
        );
        sent += 1;
        if sent % 16 == 0
            && sc
                .metric("taskstream_events_dropped_total{reason=\"SlowClient\"}")
                .await
                >= 1.0
        {
            break;
        }
    }
    assert!(sent < 2000, "the stuck client was never marked slow");
    // Its session then gives the close frame a bounded moment and drops the connection.
    eventually("the stuck client is closed", || async {
        (sc.metric("taskstream_connections_closed_total{reason=\"SlowClient\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    // The stuck client, once it reads, finds its connection ended: a 1013 close if the frame fit
    // in its socket, otherwise a dropped connection. Either way it is gone and counted.
    let code = recv_close(&mut stuck).await;
    assert!(matches!(code, None | Some(CloseCode::Again)), "{code:?}");
    // The others are unaffected.
    redis.publish("taskstream:g", "after").await;
    assert_eq!(recv_text(&mut fine).await, "after");
    assert_eq!(sc.metric("taskstream_connections").await, 1.0);
    sc.stop().await;
}

#[tokio::test]
async fn oversized_client_frame_is_closed_with_1009() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app, &["--max-message-bytes", "1024"]).await;
    let mut ok = connect(&sc.ws_url("groups=g")).await;
    let mut big = connect(&sc.ws_url("groups=g")).await;
    send_text(&mut ok, &"a".repeat(1000)).await; // under the limit: ignored, connection stays
    send_text(&mut big, &"b".repeat(2000)).await;
    assert_eq!(recv_close(&mut big).await, Some(CloseCode::Size));
    redis.publish("taskstream:g", "still here").await;
    assert_eq!(recv_text(&mut ok).await, "still here");
    assert_eq!(
        sc.metric("taskstream_connections_closed_total{reason=\"TooBig\"}")
            .await,
        1.0
    );
    sc.stop().await;
}

#[tokio::test]
async fn connection_limit_answers_503_and_frees_slots() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app, &["--max-connections", "2"]).await;
    let a = connect(&sc.ws_url("groups=g")).await;
    let _b = connect(&sc.ws_url("groups=g")).await;
    assert_eq!(
        connect_with(&sc.ws_url("groups=g"), &[]).await.err(),
        Some(503)
    );
    assert_eq!(
        sc.metric("taskstream_connections_rejected_total{reason=\"Limit\"}")
            .await,
        1.0
    );
    drop(a);
    let url = sc.ws_url("groups=g");
    let mut c = eventually("a slot frees once a client leaves", || async {
        connect_with(&url, &[]).await.ok()
    })
    .await;
    redis.publish("taskstream:g", "in").await;
    assert_eq!(recv_text(&mut c).await, "in");
    sc.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_two_ping_intervals() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app, &["--ping-interval", "200ms"]).await;
    let _silent = connect(&sc.ws_url("groups=g")).await; // never reads, so never answers pings
    let mut alive = connect(&sc.ws_url("groups=g")).await;
    // The live client keeps reading, so its library answers every ping.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = alive.next().await {
            if msg.is_text() {
                let _ = tx.send(msg.into_text().unwrap().to_string()).await;
            }
        }
    });
    eventually("the silent client is dropped", || async {
        (sc.metric("taskstream_connections_closed_total{reason=\"Timeout\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(sc.metric("taskstream_connections").await, 1.0);
    redis.publish("taskstream:g", "alive").await;
    let got = tokio::time::timeout(taskstream_tests::WAIT, rx.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("alive"));
    reader.abort();
    sc.stop().await;
}
