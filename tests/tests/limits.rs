//! Holding up under bad clients: slow readers, oversized frames, too many clients, silence.

use std::time::Duration;

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
    let connected = std::time::Instant::now();
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
    // Not before: silent for more than two intervals (the session counts the beat's ticks).
    assert!(
        connected.elapsed() > Duration::from_millis(400),
        "dropped after {:?}, before two ping intervals of silence",
        connected.elapsed()
    );
    assert_eq!(sc.metric("taskstream_connections").await, 1.0);
    redis.publish("taskstream:g", "alive").await;
    let got = tokio::time::timeout(taskstream_tests::WAIT, rx.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("alive"));
    reader.abort();
    sc.stop().await;
}

#[tokio::test]
async fn a_client_that_pings_but_never_reads_is_closed_and_memory_stays_flat() {
    use futures_util::SinkExt;
    use taskstream_tests::sidecar::{SidecarProcess, ws_url};
    use tokio_tungstenite::tungstenite::Message;

    let redis = RedisServer::start().await;
    let sc = SidecarProcess::spawn(&["--auth", "none", "--redis-url", &redis.url()]).await;
    let mut flooder = connect(&ws_url(sc.public, "groups=g")).await;
    let rss_before = sc.rss_kib();
    // 125-byte pings, never reading the pongs; at most 64 MiB of them.
    let ping = Message::Ping(vec![b'p'; 125].into());
    let mut sent = 0usize;
    let cut_off = loop {
        if sent >= 64 << 20 {
            break false;
        }
        let r = tokio::time::timeout(taskstream_tests::WAIT, async {
            for _ in 0..256 {
                flooder.feed(ping.clone()).await?;
            }
            flooder.flush().await
        })
        .await;
        match r {
            Ok(Ok(())) => sent += 256 * 127,
            // The sidecar closed the connection (or stopped reading it): the flood is over.
            Ok(Err(_)) | Err(_) => break true,
        }
    };
    let rss_after = sc.rss_kib();
    eprintln!(
        "ping flood: {} KiB sent before the cut-off; sidecar RSS {rss_before} -> {rss_after} KiB",
        sent / 1024
    );
    assert!(
        cut_off,
        "the sidecar never closed a client flooding pings ({sent} bytes)"
    );
    assert!(
        rss_after < rss_before + 8 * 1024,
        "sidecar RSS grew from {rss_before} to {rss_after} KiB under a ping flood"
    );
    let admin = sc.admin;
    eventually("the flooder is counted as not reading", || async move {
        let text = taskstream_tests::upstream::http_get(&format!("http://{admin}/metrics"))
            .await
            .1;
        (taskstream_tests::sidecar::metric_value(
            &text,
            "taskstream_connections_closed_total{reason=\"Unread\"}",
        ) == 1.0)
            .then_some(())
    })
    .await;
    // Everyone else is still served.
    let mut other = connect(&ws_url(sc.public, "groups=g")).await;
    redis.publish("taskstream:g", "still here").await;
    assert_eq!(recv_text(&mut other).await, "still here");
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_protocol_errors_with_1002() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app, &[]).await;

    let mut bad_text = connect(&sc.ws_url("groups=g")).await;
    let frame = Frame::message(vec![0xff_u8, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    bad_text.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(recv_close(&mut bad_text).await, Some(CloseCode::Invalid));

    let mut bad_opcode = connect(&sc.ws_url("groups=g")).await;
    let frame = Frame::message(b"x".to_vec(), OpCode::Data(Data::Reserved(3)), true);
    bad_opcode.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(recv_close(&mut bad_opcode).await, Some(CloseCode::Protocol));

    eventually("both counted", || async {
        (sc.metric("taskstream_connections_closed_total{reason=\"InvalidUtf8\"}")
            .await
            == 1.0
            && sc
                .metric("taskstream_connections_closed_total{reason=\"Protocol\"}")
                .await
                == 1.0)
            .then_some(())
    })
    .await;
    sc.stop().await;
}
