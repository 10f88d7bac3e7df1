//! Redis Cluster: three real masters (`redis-cli --cluster create`); events by classic `PUBLISH`
//! on any node and by sharded `SPUBLISH` on the slot owner reach exactly the clients of their
//! group; migrating the slot of a live group pauses its delivery only briefly.

use std::time::{Duration, Instant};

use taskstream_tests::redis_server::{RedisCluster, RedisServer};
use taskstream_tests::sidecar::{Sidecar, run_binary};
use taskstream_tests::upstream::{App, request, send};
use taskstream_tests::ws::{Client, connect, recv_text};

/// `SPUBLISH` on `node` until a subscriber gets it (the sidecar is subscribed there), bounded.
async fn spublish_until_heard(node: &RedisServer, channel: &str, ws: &mut Client) -> Duration {
    let start = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let mut conn = node.conn().await.expect("connect to node");
        // A node that does not own the slot (yet) answers MOVED: keep trying.
        let heard: redis::RedisResult<usize> = redis::cmd("SPUBLISH")
            .arg(channel)
            .arg(format!("after move {n}"))
            .query_async(&mut conn)
            .await;
        if heard.is_ok_and(|h| h >= 1) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no sidecar subscribed to {channel} on the new owner within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recv_text(ws).await, format!("after move {n}"));
    start.elapsed()
}

/// `PUBSUB SHARDNUMSUB channel` on `node`.
async fn shard_subscribers(node: &RedisServer, channel: &str) -> usize {
    let mut conn = node.conn().await.expect("connect to node");
    let (_, n): (String, usize) = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(channel)
        .query_async(&mut conn)
        .await
        .expect("PUBSUB SHARDNUMSUB");
    n
}

#[tokio::test]
async fn publish_and_spublish_reach_the_right_clients_and_a_slot_move_only_pauses_delivery() {
    let cluster = RedisCluster::start(3).await;
    let app = App::start().await;
    let sc = Sidecar::start(&[
        "--auth",
        "none",
        "--upstream",
        &app.url(),
        "--redis-url",
        &cluster.seeds(),
        "--redis-cluster",
    ])
    .await;
    // Two groups whose channels live on different nodes.
    let ga = "taskstream:ga";
    let mut gb_name = String::new();
    let owner_a = cluster.owner(cluster.slot_of(ga).await).await;
    for i in 0.. {
        let name = format!("gb{i}");
        let owner = cluster
            .owner(cluster.slot_of(&format!("taskstream:{name}")).await)
            .await;
        if owner != owner_a {
            gb_name = name;
            break;
        }
    }
    let gb = format!("taskstream:{gb_name}");
    let owner_b = cluster.owner(cluster.slot_of(&gb).await).await;
    let mut a = connect(&sc.ws_url("groups=ga")).await;
    let mut b = connect(&sc.ws_url(&format!("groups={gb_name}"))).await;

    // Classic PUBLISH on every node reaches a (cluster-wide pub/sub; the count PUBLISH returns
    // is only the node's own subscribers, so it is not checked).
    for (i, node) in cluster.nodes.iter().enumerate() {
        node.publish(ga, format!("publish on {i}")).await;
        assert_eq!(recv_text(&mut a).await, format!("publish on {i}"));
    }
    // Sharded SPUBLISH on each slot owner reaches its group's client.
    assert_eq!(cluster.nodes[owner_a].spublish(ga, "sharded a").await, 1);
    assert_eq!(cluster.nodes[owner_b].spublish(&gb, "sharded b").await, 1);
    assert_eq!(recv_text(&mut a).await, "sharded a");
    // b's first event is its own: none of ga's five reached it.
    assert_eq!(recv_text(&mut b).await, "sharded b");
    // The admin publisher uses SPUBLISH, routed to the slot owner by the cluster client.
    let (status, body) = send(request(
        "POST",
        &format!("http://{}/publish/{gb_name}", sc.admin),
        "admin b",
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(recv_text(&mut b).await, "admin b");
    cluster.nodes[owner_b].publish(&gb, "marker b").await;
    assert_eq!(recv_text(&mut b).await, "marker b");

    // Move ga's slot to another node while a is connected.
    let slot = cluster.slot_of(ga).await;
    let to = (owner_a + 1) % cluster.nodes.len();
    assert_eq!(shard_subscribers(&cluster.nodes[owner_a], ga).await, 1);
    assert_eq!(
        shard_subscribers(&cluster.nodes[to], ga).await,
        0,
        "sharded subscriptions live only on the slot owner"
    );
    let moved = Instant::now();
    cluster.move_slot(slot, owner_a, to).await;
    let heard = spublish_until_heard(&cluster.nodes[to], ga, &mut a).await;
    let pause = moved.elapsed();
    println!(
        "cluster slot migration: sharded delivery resumed {pause:?} after the slot moved \
         (first SPUBLISH heard {heard:?} into the polling)"
    );
    assert_eq!(cluster.owner_as_seen_by(to, slot).await, to);
    assert_eq!(shard_subscribers(&cluster.nodes[to], ga).await, 1);
    assert_eq!(shard_subscribers(&cluster.nodes[owner_a], ga).await, 0);
    // Classic PUBLISH was never interrupted, and b never noticed.
    cluster.nodes[owner_a].publish(ga, "classic after").await;
    assert_eq!(recv_text(&mut a).await, "classic after");
    assert_eq!(cluster.nodes[owner_b].spublish(&gb, "b still").await, 1);
    assert_eq!(recv_text(&mut b).await, "b still");
    sc.stop().await;
}

#[test]
fn cluster_with_a_django_channels_layer_is_refused_at_start_up() {
    let (code, stderr) = run_binary(
        &[
            "--auth",
            "none",
            "--redis-url",
            "redis://127.0.0.1:1,redis://127.0.0.1:2",
            "--redis-cluster",
            "--redis-protocol",
            "channels",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--redis-cluster"), "{stderr}");
}

#[tokio::test]
async fn history_works_on_a_cluster_and_resumes_across_nodes() {
    use serde_json::Value;
    use taskstream_sidecar::PUBLISH_SCRIPT;
    use taskstream_tests::ws::connect_with;

    let cluster = RedisCluster::start(3).await;
    let sc = Sidecar::start(&[
        "--auth",
        "none",
        "--redis-url",
        &cluster.seeds(),
        "--redis-cluster",
        "--history-size",
        "100",
    ])
    .await;
    let v1 = [("Sec-WebSocket-Protocol", "taskstream.v1")];
    let mut live = connect_with(&sc.ws_url("groups=hc"), &v1)
        .await
        .expect("v1");
    let json = |t: String| serde_json::from_str::<Value>(&t).expect("JSON frame");
    // No last_id: the group's position comes first ("0": nothing stored yet).
    assert_eq!(
        json(recv_text(&mut live).await),
        serde_json::json!({"type": "position", "group": "hc", "id": "0"})
    );

    // Through the sidecar (the script runs on the node owning the group's stream)...
    let (status, answer) = send(request(
        "POST",
        &format!("http://{}/publish/hc", sc.admin),
        "{\"step\":1}",
    ))
    .await;
    assert_eq!(status, 200, "{answer}");
    let first = json(answer)["id"].as_str().expect("id").to_owned();
    let v = json(recv_text(&mut live).await);
    assert_eq!(
        (v["id"].as_str(), v["data"]["step"].as_u64()),
        (Some(first.as_str()), Some(1))
    );

    // ...and by an app with its own client on the owner node: one EVAL of the script.
    let owner = cluster.owner(cluster.slot_of("taskstream:hc").await).await;
    let mut conn = cluster.nodes[owner].conn().await.expect("owner");
    let second: String = redis::Script::new(PUBLISH_SCRIPT)
        .key("taskstream:hc")
        .arg("{\"step\":2}")
        .arg(100)
        .arg(600_000)
        .invoke_async(&mut conn)
        .await
        .expect("EVAL on the owner");
    assert_eq!(json(recv_text(&mut live).await)["id"], second.as_str());

    // A client resuming after the first event gets exactly the second.
    let mut resumed = connect_with(&sc.ws_url(&format!("groups=hc&last_id=hc:{first}")), &v1)
        .await
        .expect("v1 resume");
    let v = json(recv_text(&mut resumed).await);
    assert_eq!(
        (v["type"].as_str(), v["id"].as_str()),
        (Some("event"), Some(second.as_str()))
    );
    sc.stop().await;
}
