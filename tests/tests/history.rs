//! Reliable delivery: event history in a real Redis, the `taskstream.v1` subprotocol and
//! `last_id` resume, with real WebSocket clients and sidecars (docs/protocol.md).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use taskstream_sidecar::PUBLISH_SCRIPT;
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::{Sidecar, SidecarProcess, ws_url};
use taskstream_tests::upstream::http_post;
use taskstream_tests::ws::{Client, connect, connect_with, recv_text};
use taskstream_tests::{WAIT, eventually};
use tokio_tungstenite::tungstenite::Message;

const V1: (&str, &str) = ("Sec-WebSocket-Protocol", "taskstream.v1");

#[path = "history/resets.rs"]
mod resets;
#[path = "history/shared.rs"]
mod shared;

/// Publishes with history as an app would: one EVAL of the documented script.
async fn publish(
    conn: &mut redis::aio::MultiplexedConnection,
    group: &str,
    payload: &str,
    size: usize,
    ttl_ms: u64,
) -> String {
    redis::Script::new(PUBLISH_SCRIPT)
        .key(format!("taskstream:{group}"))
        .arg(payload)
        .arg(size)
        .arg(ttl_ms)
        .invoke_async(conn)
        .await
        .expect("EVAL publish script")
}

async fn v1(url: &str) -> Client {
    connect_with(url, &[V1])
        .await
        .unwrap_or_else(|s| panic!("v1 handshake to {url} refused with {s}"))
}

/// A v1 client of one group it names no `last_id` for: its first frame is the group's position.
async fn v1_placed(url: &str, group: &str) -> Client {
    let mut ws = v1(url).await;
    let v = recv_json(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["group"].as_str()),
        (Some("position"), Some(group)),
        "{v}"
    );
    ws
}

async fn recv_json(ws: &mut Client) -> Value {
    let t = recv_text(ws).await;
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON: {t}: {e}"))
}

fn sidecar_args(redis: &RedisServer, size: &str, ttl: &str) -> Vec<String> {
    [
        "--auth",
        "none",
        "--redis-url",
        &redis.url(),
        "--history-size",
        size,
        "--history-ttl",
        ttl,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn sidecar(redis: &RedisServer, size: &str, ttl: &str) -> Sidecar {
    let args = sidecar_args(redis, size, ttl);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Sidecar::start(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_from_a_killed_sidecar_to_another_gets_every_event_exactly_once() {
    let redis = RedisServer::start().await;
    let args = sidecar_args(&redis, "1000", "10m");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut a = SidecarProcess::spawn(&args).await;
    let b = SidecarProcess::spawn(&args).await;
    let mut ws = v1_placed(&ws_url(a.public, "groups=job"), "job").await;

    // Publishing never pauses: before, during and after the switch.
    let mut conn = redis.conn().await.expect("publisher");
    let total = 600u64;
    let publisher = tokio::spawn(async move {
        for n in 0..total {
            publish(&mut conn, "job", &format!("{{\"n\":{n}}}"), 1000, 600_000).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });

    let mut seen: Vec<u64> = Vec::new();
    let mut last_id = String::new();
    while seen.len() < 100 {
        let v = recv_json(&mut ws).await;
        assert_eq!(v["type"], "event");
        seen.push(v["data"]["n"].as_u64().expect("n"));
        last_id = v["id"].as_str().expect("id").to_owned();
    }
    a.kill().await; // SIGKILL mid-stream: no close frame, nothing drained
    drop(ws);
    let mut ws = v1(&ws_url(
        b.public,
        &format!("groups=job&last_id=job:{last_id}"),
    ))
    .await;
    while seen.len() < total as usize {
        let v = tokio::time::timeout(WAIT, async { recv_json(&mut ws).await })
            .await
            .expect("events keep coming");
        assert_eq!(v["type"], "event", "no reset: history covers the gap ({v})");
        seen.push(v["data"]["n"].as_u64().expect("n"));
    }
    publisher.await.expect("publisher");
    let want: Vec<u64> = (0..total).collect();
    assert_eq!(seen, want, "every event exactly once, in order");
}

#[tokio::test]
async fn late_joiner_gets_the_history_and_plain_clients_get_payloads_verbatim() {
    let redis = RedisServer::start().await;
    let sc = sidecar(&redis, "5", "10m").await;
    let mut plain = connect(&sc.ws_url("groups=g")).await;
    let mut conn = redis.conn().await.unwrap();
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(publish(&mut conn, "g", &format!("{{\"n\":{n}}}"), 5, 600_000).await);
    }
    // A client without the subprotocol: the payload verbatim, as before history existed.
    for n in 0..7 {
        assert_eq!(recv_text(&mut plain).await, format!("{{\"n\":{n}}}"));
    }
    // Late joiner: everything still in history (the newest 5), then live.
    let mut late = v1(&sc.ws_url("groups=g&last_id=g:0")).await;
    for n in 2..7 {
        let v = recv_json(&mut late).await;
        assert_eq!(
            (v["type"].as_str(), v["data"]["n"].as_u64()),
            (Some("event"), Some(n))
        );
        assert_eq!(v["id"], ids[n as usize]);
        assert_eq!(v["group"], "g");
    }
    redis.publish("taskstream:g", "live only").await;
    let v = recv_json(&mut late).await;
    assert_eq!(
        v["data"], "live only",
        "a non-JSON payload arrives as a string"
    );
    assert!(v.get("id").is_none(), "a plain PUBLISH has no id");
    assert_eq!(
        sc.metric("taskstream_history_recovered_events_total").await,
        5.0
    );
    sc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_while_many_publish_has_no_gap_and_no_duplicate() {
    let redis = RedisServer::start().await;
    let sc = sidecar(&redis, "10000", "10m").await;
    const PUBLISHERS: usize = 4;
    const EACH: usize = 150;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let mut conn = redis.conn().await.unwrap();
        tasks.push(tokio::spawn(async move {
            for n in 0..EACH {
                publish(
                    &mut conn,
                    "hot",
                    &format!("{{\"p\":{p},\"n\":{n}}}"),
                    10000,
                    600_000,
                )
                .await;
            }
        }));
    }
    // Clients join and resume at staggered points while the publishers run; each must end with
    // exactly the full sequence, in id order, with each publisher's events in order.
    let mut clients = Vec::new();
    let mut admin = redis.conn().await.unwrap();
    for _ in 0..6 {
        // Resume from whatever is newest right now (or 0 before anything was published).
        let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg("taskstream:hot")
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut admin)
            .await
            .unwrap_or_default();
        let from = newest.first().map_or("0".to_string(), |(id, _)| id.clone());
        let url = sc.ws_url(&format!("groups=hot&last_id=hot:{from}"));
        clients.push(tokio::spawn(async move {
            let mut ws = v1(&url).await;
            let mut got: Vec<(String, u64, u64)> = Vec::new();
            let deadline = tokio::time::Instant::now() + WAIT * 3;
            loop {
                let msg = tokio::time::timeout_at(deadline, ws.next())
                    .await
                    .expect("events within the wait")
                    .expect("open")
                    .expect("frame");
                let Message::Text(t) = msg else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "event", "{v}");
                if v["data"] == "end" {
                    return (from, got);
                }
                got.push((
                    v["id"].as_str().unwrap().to_owned(),
                    v["data"]["p"].as_u64().unwrap(),
                    v["data"]["n"].as_u64().unwrap(),
                ));
            }
        }));
        tokio::time::sleep(Duration::from_millis(30)).await; // stagger the joins (not a sync)
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut conn = redis.conn().await.unwrap();
    publish(&mut conn, "hot", "\"end\"", 10000, 600_000).await;
    let all: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("taskstream:hot")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let all_ids: Vec<String> = all.iter().map(|(id, _)| id.clone()).collect();
    for c in clients {
        let (from, got) = c.await.unwrap();
        let start = if from == "0" {
            0
        } else {
            all_ids.iter().position(|i| *i == from).unwrap() + 1
        };
        let want: Vec<&String> = all_ids[start..all_ids.len() - 1].iter().collect();
        let ids: Vec<&String> = got.iter().map(|(i, _, _)| i).collect();
        assert_eq!(
            ids, want,
            "resumed from {from}: exactly the events after it, once each, in order"
        );
        let mut per: HashMap<u64, u64> = HashMap::new();
        for (_, p, n) in &got {
            let next = per.entry(*p).or_insert(*n);
            assert_eq!(*n, *next, "publisher {p} in order");
            *next += 1;
        }
    }
    sc.stop().await;
}

#[tokio::test]
async fn memory_broker_keeps_history_and_admin_publish_answers_the_id() {
    let sc = Sidecar::start(&[
        "--auth",
        "none",
        "--broker",
        "memory",
        "--history-size",
        "50",
    ])
    .await;
    let admin = sc.admin;
    let post = |body: &'static str| async move {
        let (status, answer) = http_post(&format!("http://{admin}/publish/m"), body).await;
        assert_eq!(status, 200, "{answer}");
        serde_json::from_str::<Value>(&answer).expect("JSON answer")
    };
    let first = post("{\"n\":1}").await;
    let id1 = first["id"].as_str().expect("id in the answer").to_owned();
    post("{\"n\":2}").await;
    let mut ws = v1(&sc.ws_url(&format!("groups=m&last_id=m:{id1}"))).await;
    let v = recv_json(&mut ws).await;
    assert_eq!(v["data"]["n"], 2);
    post("{\"n\":3}").await;
    assert_eq!(recv_json(&mut ws).await["data"]["n"], 3);
    let (status, answer) = http_post(&format!("http://{admin}/publish/m"), "\u{1e}x").await;
    assert_eq!(status, 400, "the envelope byte is refused: {answer}");
    sc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_subscription_is_caught_up_from_history_not_lost() {
    let redis = RedisServer::start().await;
    let sc = sidecar(&redis, "10000", "10m").await;
    let a = v1(&sc.ws_url("groups=g&last_id=g:0")).await;
    let mut b = v1_placed(&sc.ws_url("groups=g"), "g").await;
    let mut quiet = v1_placed(&sc.ws_url("groups=quiet"), "quiet").await;

    let mut conn = redis.conn().await.unwrap();
    let total = 400u64;
    let publisher = tokio::spawn(async move {
        for n in 0..total {
            publish(&mut conn, "g", &n.to_string(), 10000, 600_000).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let read_all = |mut ws: Client| async move {
        let mut got = Vec::new();
        while got.len() < total as usize {
            let v = recv_json(&mut ws).await;
            assert_eq!(v["type"], "event", "caught up, not reset: {v}");
            got.push(v["data"].as_u64().expect("n"));
        }
        got
    };
    // Wait for the stream to flow to b, then cut the sidecar's subscription twice while
    // publishing goes on: pub/sub drops what is published until it is back.
    let first = recv_json(&mut b).await;
    assert_eq!(first["data"], 0);
    let reader_a = tokio::spawn(read_all(a));
    let reader_b = tokio::spawn(async move {
        let mut rest = read_all_after(b, total - 1).await;
        rest.insert(0, 0);
        rest
    });
    let mut admin = redis.conn().await.unwrap();
    for cut in 1..=2u32 {
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .expect("CLIENT KILL TYPE pubsub");
        eventually("the sidecar resubscribed", || async {
            (sc.metric("taskstream_redis_reconnects_total").await >= f64::from(cut)).then_some(())
        })
        .await;
    }
    publisher.await.unwrap();
    let want: Vec<u64> = (0..total).collect();
    assert_eq!(
        reader_a.await.unwrap(),
        want,
        "a: every event once, in order"
    );
    assert_eq!(
        reader_b.await.unwrap(),
        want,
        "b: every event once, in order"
    );
    // A v1 client whose group had no event yet has a position there ("0"): it is caught up from
    // it (nothing was missed), not reset, and its next frame is the group's next event.
    let mut conn = redis.conn().await.unwrap();
    let id = publish(&mut conn, "quiet", "1", 10000, 600_000).await;
    let v = recv_json(&mut quiet).await;
    assert_eq!(
        (v["type"].as_str(), v["id"].as_str()),
        (Some("event"), Some(id.as_str())),
        "{v}"
    );
    sc.stop().await;
}

/// Reads `n` events (`data` numbers) after the ones already read.
async fn read_all_after(mut ws: Client, n: u64) -> Vec<u64> {
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        let v = recv_json(&mut ws).await;
        assert_eq!(v["type"], "event", "caught up, not reset: {v}");
        got.push(v["data"].as_u64().expect("n"));
    }
    got
}

#[tokio::test]
async fn admin_publish_through_redis_stores_history_and_answers_the_id() {
    let redis = RedisServer::start().await;
    let sc = sidecar(&redis, "10", "10m").await;
    let mut ws = v1_placed(&sc.ws_url("groups=a"), "a").await;
    let (status, answer) =
        http_post(&format!("http://{}/publish/a", sc.admin), "{\"step\":1}").await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let id = answer["id"].as_str().expect("id in the answer").to_owned();
    let v = recv_json(&mut ws).await;
    assert_eq!(
        (v["id"].as_str(), v["data"]["step"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
    // And it is in the group's stream, for any replica to serve.
    let mut conn = redis.conn().await.unwrap();
    let len: usize = redis::cmd("XLEN")
        .arg("taskstream:a")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 1);
    sc.stop().await;
}
