//! Django Channels drop-in: real channels_redis (in the project's .venv) calls `group_send`
//! from plain Python, a real redis-server carries it, the sidecar delivers it to real WebSocket
//! clients. Each layer class, with and without `symmetric_encryption_keys`.
//!
//! "Nothing else arrived" is proven with markers, never with sleeps: after the messages under
//! test, a marker goes to a group the client is in, and the client's next frame must be it.

use serde_json::json;
use taskstream_tests::eventually;
use taskstream_tests::python::{GroupSender, Layer};
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::Sidecar;
use taskstream_tests::ws::{Client, connect, recv_text};

const KEY: &str = "a-long-shared-secret-for-fernet";

async fn sidecar(redis: &RedisServer, layer: Layer, extra: &[&str]) -> Sidecar {
    let protocol = match layer {
        Layer::Core => "channels",
        Layer::Pubsub => "channels-pubsub",
    };
    let url = redis.url();
    let mut args = vec![
        "--auth",
        "none",
        "--redis-url",
        &url,
        "--redis-protocol",
        protocol,
    ];
    args.extend_from_slice(extra);
    Sidecar::start(&args).await
}

fn progress(task: &str, n: u32) -> serde_json::Value {
    json!({"type": "task.progress", "data": {"task": task, "progress": n}})
}

async fn recv_json(ws: &mut Client) -> serde_json::Value {
    let text = recv_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {text:?}: {e}"))
}

/// The right clients get exactly their groups' messages, in order; the others nothing.
async fn group_send_reaches_exactly_the_right_clients(layer: Layer, keys: &[&str]) {
    let redis = RedisServer::start().await;
    let keys_flag = keys.join(",");
    let extra: Vec<&str> = if keys.is_empty() {
        vec![]
    } else {
        vec!["--channels-symmetric-encryption-keys", &keys_flag]
    };
    let sc = sidecar(&redis, layer, &extra).await;
    let mut a = connect(&sc.ws_url("groups=user_1_tasks")).await;
    let mut b = connect(&sc.ws_url("groups=user_1_tasks,team_7")).await;
    let mut c = connect(&sc.ws_url("groups=user_2_tasks")).await;
    let mut send = GroupSender::start(layer, &[redis.url()], keys).await;

    send.send("user_1_tasks", progress("t1", 10)).await;
    send.send("user_1_tasks", progress("t1", 20)).await;
    send.send("team_7", progress("t9", 50)).await;
    send.send("user_2_tasks", json!({"type": "marker", "data": "c"}))
        .await;
    send.send("user_1_tasks", progress("t1", 100)).await;

    for n in [10, 20, 100] {
        assert_eq!(
            recv_json(&mut a).await,
            json!({"task": "t1", "progress": n})
        );
    }
    assert_eq!(
        recv_json(&mut b).await,
        json!({"task": "t1", "progress": 10})
    );
    assert_eq!(
        recv_json(&mut b).await,
        json!({"task": "t1", "progress": 20})
    );
    assert_eq!(
        recv_json(&mut b).await,
        json!({"task": "t9", "progress": 50})
    );
    assert_eq!(
        recv_json(&mut b).await,
        json!({"task": "t1", "progress": 100})
    );
    // c's first frame is its marker: nothing of user_1_tasks or team_7 reached it.
    assert_eq!(recv_text(&mut c).await, r#""c""#);
    // a got nothing of team_7 or user_2_tasks: its next frame is this marker.
    send.send("user_1_tasks", json!({"type": "marker", "data": "a"}))
        .await;
    assert_eq!(recv_text(&mut a).await, r#""a""#);
    assert_eq!(
        sc.metric("taskstream_events_dropped_total{reason=\"Malformed\"}")
            .await,
        0.0
    );
    sc.stop().await;
}

#[tokio::test]
async fn core_layer_group_send_reaches_exactly_the_right_clients() {
    group_send_reaches_exactly_the_right_clients(Layer::Core, &[]).await;
}

#[tokio::test]
async fn core_layer_with_encryption_keys() {
    group_send_reaches_exactly_the_right_clients(Layer::Core, &[KEY]).await;
}

#[tokio::test]
async fn pubsub_layer_group_send_reaches_exactly_the_right_clients() {
    group_send_reaches_exactly_the_right_clients(Layer::Pubsub, &[]).await;
}

#[tokio::test]
async fn pubsub_layer_with_encryption_keys() {
    group_send_reaches_exactly_the_right_clients(Layer::Pubsub, &[KEY]).await;
}

#[tokio::test]
async fn full_mode_and_the_msgpack_to_json_rule() {
    let redis = RedisServer::start().await;
    let sc = sidecar(&redis, Layer::Core, &["--channels-message", "full"]).await;
    let mut a = connect(&sc.ws_url("groups=g")).await;
    let mut send = GroupSender::start(Layer::Core, &[redis.url()], &[]).await;
    send.send_python(
        "g",
        r#"{"type": "task.done", "data": {"b": b"\x00\xff", "nan": float("nan"), 1: "int key", "t": (1, 2)}, "extra": None}"#,
    )
    .await;
    assert_eq!(
        recv_text(&mut a).await,
        r#"{"type":"task.done","data":{"b":"AP8=","nan":null,"1":"int key","t":[1,2]},"extra":null}"#,
        "whole message, key order kept, __asgi_channel__ removed, the documented rule applied"
    );
    sc.stop().await;
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The members of `group` in the core layer's sorted set; `None` when Redis did not answer
/// (its test client times out on a loaded machine; callers retry).
async fn members(redis: &RedisServer, group: &str) -> Option<Vec<String>> {
    let mut c = redis.conn().await.ok()?;
    redis::cmd("ZRANGE")
        .arg(format!("asgi:group:{group}"))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .ok()
}

/// Waits until the sidecar is the one member of `group` and returns that member.
async fn joined(redis: &RedisServer, group: &str) -> String {
    eventually(&format!("one member in asgi:group:{group}"), || async {
        let mut m = members(redis, group).await?;
        (m.len() == 1).then(|| m.remove(0))
    })
    .await
}

#[tokio::test]
async fn core_layer_joins_and_leaves_groups_with_its_clients() {
    let redis = RedisServer::start().await;
    let sc = sidecar(&redis, Layer::Core, &[]).await;
    let a = connect(&sc.ws_url("groups=g1,shared")).await;
    let b = connect(&sc.ws_url("groups=shared")).await;
    let g1 = joined(&redis, "g1").await;
    assert!(g1.starts_with("specific.") && g1.ends_with("!g1"), "{g1:?}");
    joined(&redis, "shared").await;
    drop(a);
    eventually("g1 left after its last client", || async {
        members(&redis, "g1").await.filter(Vec::is_empty).map(drop)
    })
    .await;
    joined(&redis, "shared").await;
    drop(b);
    eventually("shared left", || async {
        members(&redis, "shared")
            .await
            .filter(Vec::is_empty)
            .map(drop)
    })
    .await;
    sc.stop().await;
}

#[tokio::test]
async fn core_layer_survives_flushall_and_redis_restart() {
    let mut redis = RedisServer::start().await;
    let sc = sidecar(&redis, Layer::Core, &[]).await;
    sc.wait_broker(200).await;
    let mut a = connect(&sc.ws_url("groups=user_1_tasks")).await;
    let mut send = GroupSender::start(Layer::Core, &[redis.url()], &[]).await;
    send.send("user_1_tasks", progress("t", 1)).await;
    assert_eq!(recv_json(&mut a).await["progress"], 1);

    // FLUSHALL wipes the group; the sidecar notices and joins again.
    let mut c = redis.conn().await.expect("connect");
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut c)
        .await
        .expect("FLUSHALL");
    joined(&redis, "user_1_tasks").await; // re-joined after FLUSHALL
    send.send("user_1_tasks", progress("t", 2)).await;
    assert_eq!(recv_json(&mut a).await["progress"], 2);

    // A restart (no persistence: everything gone, connections dropped).
    redis.kill();
    sc.wait_broker(503).await;
    redis.restart().await;
    sc.wait_broker(200).await;
    joined(&redis, "user_1_tasks").await; // re-joined after restart
    // A new sender process, as a Celery worker would reconnect.
    let mut send = GroupSender::start(Layer::Core, &[redis.url()], &[]).await;
    send.send("user_1_tasks", progress("t", 3)).await;
    assert_eq!(recv_json(&mut a).await["progress"], 3);
    assert!(sc.metric("taskstream_redis_reconnects_total").await >= 1.0);
    sc.stop().await;
}

#[tokio::test]
async fn core_layer_shards_like_channels_redis() {
    let r1 = RedisServer::start().await;
    let r2 = RedisServer::start().await;
    let r3 = RedisServer::start().await;
    let hosts = [r1.url(), r2.url(), r3.url()];
    let hosts_flag = hosts.join(",");
    let sc = Sidecar::start(&[
        "--auth",
        "none",
        "--redis-url",
        &hosts[0],
        "--redis-protocol",
        "channels",
        "--channels-hosts",
        &hosts_flag,
    ])
    .await;
    let groups: Vec<String> = (0..8).map(|i| format!("g{i}")).collect();
    let mut clients = Vec::new();
    for g in &groups {
        clients.push(connect(&sc.ws_url(&format!("groups={g}"))).await);
    }
    let mut send = GroupSender::start(Layer::Core, &hosts, &[]).await;
    for g in &groups {
        send.send(g, json!({"type": "t", "data": g})).await;
    }
    for (g, ws) in groups.iter().zip(clients.iter_mut()) {
        assert_eq!(recv_text(ws).await, format!("\"{g}\""));
    }
    // The groups really are spread over the shards, not all on the first.
    let mut used = 0;
    for r in [&r1, &r2, &r3] {
        let mut c = r.conn().await.expect("connect");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("asgi:group:*")
            .query_async(&mut c)
            .await
            .expect("KEYS");
        used += usize::from(!keys.is_empty());
    }
    assert!(used >= 2, "8 groups over 3 shards used {used} shard(s)");
    sc.stop().await;
}

#[tokio::test]
async fn malformed_and_undecryptable_messages_are_counted_and_skipped() {
    for layer in [Layer::Core, Layer::Pubsub] {
        let redis = RedisServer::start().await;
        let sc = sidecar(
            &redis,
            layer,
            &["--channels-symmetric-encryption-keys", KEY],
        )
        .await;
        let mut a = connect(&sc.ws_url("groups=g")).await;
        // Garbage straight into Redis where the layer would put a message.
        match layer {
            Layer::Pubsub => {
                redis.publish("asgi__group__g", b"\xc1 not msgpack").await;
            }
            Layer::Core => {
                let member = joined(&redis, "g").await;
                let inbox = format!("asgi{}", &member[..=member.find('!').expect("!")]);
                let mut c = redis.conn().await.expect("connect");
                redis::cmd("ZADD")
                    .arg(&inbox)
                    .arg(now_secs())
                    .arg(b"123456789012 garbage".as_slice())
                    .query_async::<()>(&mut c)
                    .await
                    .expect("ZADD");
            }
        }
        // A real message with the wrong key, one without `data`, one without `type`.
        GroupSender::start(layer, &[redis.url()], &["another-key"])
            .await
            .send("g", progress("t", 1))
            .await;
        let mut send = GroupSender::start(layer, &[redis.url()], &[KEY]).await;
        send.send("g", json!({"type": "task.progress"})).await;
        send.send("g", json!({"data": 1})).await;
        // The loop survived all of it: the next good message arrives, and is the first frame.
        send.send("g", progress("t", 2)).await;
        assert_eq!(
            recv_json(&mut a).await,
            json!({"task": "t", "progress": 2}),
            "{layer:?}"
        );
        assert_eq!(
            sc.metric("taskstream_events_dropped_total{reason=\"Malformed\"}")
                .await,
            2.0,
            "{layer:?}: no `data`, no `type`"
        );
        // With keys configured, garbage is not a Fernet token: undecryptable like the wrong key.
        assert_eq!(
            sc.metric("taskstream_events_dropped_total{reason=\"Undecryptable\"}")
                .await,
            2.0,
            "{layer:?}"
        );
        sc.stop().await;
    }
}
