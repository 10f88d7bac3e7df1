//! Nothing is lost on a healthy Redis: continuous publishing through a real redis-server for
//! longer than every timer on the path (the Redis keep-alive PING fires every 5 s), with zero
//! reconnects and every event delivered exactly once, in order, to every client.
//!
//! A regression test for the keep-alive that read the RESP2 subscribe-mode answer to PING
//! (`["pong", ""]`) as an error and re-made the subscription every 5 s, losing what was
//! published meanwhile.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use taskstream_tests::python::{GroupSender, Layer};
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::Sidecar;
use taskstream_tests::ws::{Client, connect};
use tokio_tungstenite::tungstenite::Message;

/// Longer than three keep-alive intervals (5 s each).
const PUBLISH_FOR: Duration = Duration::from_secs(16);

/// Reads text frames until `last(frame)` is true; returns every frame before it. Bounded.
async fn read_until(ws: &mut Client, last: impl Fn(&str) -> bool) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + PUBLISH_FOR + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("client saw the end marker in time")
            .expect("connection open")
            .expect("frame");
        if let Message::Text(t) = msg {
            if last(t.as_str()) {
                return got;
            }
            got.push(t.to_string());
        }
    }
}

fn assert_exact_sequence(who: &str, got: &[u64], sent: u64) {
    assert_eq!(
        got.len() as u64,
        sent,
        "{who}: received {} of {sent} events",
        got.len()
    );
    for (i, n) in got.iter().enumerate() {
        assert_eq!(*n, i as u64, "{who}: event {i} out of order or duplicated");
    }
}

/// The `resp=` of the sidecar's subscription connection, from the server's `CLIENT LIST`.
async fn subscriber_resp(redis: &RedisServer) -> String {
    let mut conn = redis.conn().await.expect("admin connection");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .expect("CLIENT LIST");
    let line = list
        .lines()
        .find(|l| l.split(' ').any(|f| f.starts_with("sub=") && f != "sub=0"))
        .unwrap_or_else(|| panic!("no subscribed client in {list}"));
    line.split(' ')
        .find_map(|f| f.strip_prefix("resp="))
        .unwrap_or_else(|| panic!("no resp= in {line}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_pubsub_loses_nothing_and_never_reconnects() {
    // RESP3 (Redis 6+): messages go from redis-rs's reader straight to the hub.
    let redis = RedisServer::start().await;
    plain_pubsub_for_a_while(&redis, "3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_pubsub_over_resp2_loses_nothing_and_never_reconnects() {
    // A server without HELLO (as Redis 5): the sidecar subscribes over RESP2, where the
    // keep-alive PING is answered `["pong", ""]`.
    let redis =
        RedisServer::start_with(vec!["--rename-command".into(), "HELLO".into(), "".into()]).await;
    plain_pubsub_for_a_while(&redis, "2").await;
}

async fn plain_pubsub_for_a_while(redis: &RedisServer, resp: &str) {
    let sc = Sidecar::start(&["--auth", "none", "--redis-url", &redis.url()]).await;
    const GROUPS: usize = 5;
    const PER_GROUP: usize = 8;
    let mut readers = Vec::new();
    for g in 0..GROUPS {
        for c in 0..PER_GROUP {
            let mut ws = connect(&sc.ws_url(&format!("groups=g{g}"))).await;
            readers.push(tokio::spawn(async move {
                let got = read_until(&mut ws, |t| t == "end").await;
                let seqs: Vec<u64> = got
                    .iter()
                    .map(|t| t.parse().unwrap_or_else(|_| panic!("not a number: {t}")))
                    .collect();
                (g, c, seqs)
            }));
        }
    }

    assert_eq!(
        subscriber_resp(redis).await,
        resp,
        "the subscription's protocol"
    );
    // One publisher, never pausing: a round over every group each 4 ms (1,250 events/s, 10,000
    // deliveries/s) for the whole period.
    let mut conn = redis.conn().await.expect("publisher connection");
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(4));
    let mut sent = 0u64;
    while started.elapsed() < PUBLISH_FOR {
        tick.tick().await;
        let mut pipe = redis::pipe();
        for g in 0..GROUPS {
            pipe.cmd("PUBLISH")
                .arg(format!("taskstream:g{g}"))
                .arg(sent.to_string())
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.expect("PUBLISH");
        sent += 1;
    }
    for g in 0..GROUPS {
        redis.publish(&format!("taskstream:g{g}"), "end").await;
    }
    for r in readers {
        let (g, c, seqs) = r.await.expect("reader");
        assert_exact_sequence(&format!("client {c} of g{g}"), &seqs, sent);
    }
    eprintln!(
        "plain pubsub (RESP{resp}): {sent} events x {} clients over {PUBLISH_FOR:?}, none lost",
        GROUPS * PER_GROUP
    );
    assert_eq!(
        sc.metric("taskstream_redis_reconnects_total").await,
        0.0,
        "the subscription stayed up while Redis was healthy"
    );
    sc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_pubsub_layer_loses_nothing_and_never_reconnects() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let sc = Sidecar::start(&[
        "--auth",
        "none",
        "--redis-url",
        &url,
        "--redis-protocol",
        "channels-pubsub",
    ])
    .await;
    let mut readers = Vec::new();
    for c in 0..10 {
        let mut ws = connect(&sc.ws_url("groups=user_1_tasks")).await;
        readers.push(tokio::spawn(async move {
            let got = read_until(&mut ws, |t| t.contains("\"end\"")).await;
            let seqs: Vec<u64> = got
                .iter()
                .map(|t| {
                    let v: Value = serde_json::from_str(t).expect("JSON");
                    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {t}"))
                })
                .collect();
            (c, seqs)
        }));
    }
    let mut send = GroupSender::start(Layer::Pubsub, &[url], &[]).await;
    let sent = send
        .stream("user_1_tasks", PUBLISH_FOR.as_secs(), 500)
        .await;
    send.send(
        "user_1_tasks",
        serde_json::json!({"type": "x", "data": "end"}),
    )
    .await;
    for r in readers {
        let (c, seqs) = r.await.expect("reader");
        assert_exact_sequence(&format!("client {c}"), &seqs, sent);
    }
    eprintln!("channels-pubsub: {sent} group_send x 10 clients over {PUBLISH_FOR:?}, none lost");
    assert!(sent > 1000, "the sender kept publishing ({sent})");
    assert_eq!(
        sc.metric("taskstream_redis_reconnects_total").await,
        0.0,
        "the subscription stayed up while Redis was healthy"
    );
    sc.stop().await;
}
