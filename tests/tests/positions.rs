//! Positions at connect (docs/protocol.md): a `taskstream.v1` page that learns its groups from
//! the app (forward auth, no `?groups=`) gets `{"type":"position"}` for each, and resuming from
//! them it receives the first event of a group published while it was away, exactly once. On one
//! Redis, on a Redis Cluster with the page's groups on two nodes, and with the memory broker.
//!
//! ```text
//! page --ws (no ?groups=)--> sidecar --GET /ws-auth/--> App: {"groups": [...]}
//!      <--position per group--   |  sidecar stopped (or the page away), first event of a group published
//! page --ws ?last_id=<g>:<position>...--> sidecar --> that event, once --> then live ones
//! ```

use std::collections::BTreeMap;

use serde_json::Value;
use taskstream_sidecar::PUBLISH_SCRIPT;
use taskstream_tests::redis_server::{RedisCluster, RedisServer};
use taskstream_tests::sidecar::Sidecar;
use taskstream_tests::upstream::{App, AuthAnswer, http_post};
use taskstream_tests::ws::{Client, connect_with, recv_text};

const V1: (&str, &str) = ("Sec-WebSocket-Protocol", "taskstream.v1");
const USER_GROUP: &str = "user:ann";

/// The app answering the sidecar's forward-auth call with `groups` (plus the user's own group).
async fn app(groups: &[&str]) -> App {
    let app = App::start().await;
    app.set_auth(AuthAnswer::Allow {
        user: "ann".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    });
    app
}

/// Publishes with history as an app would: one EVAL of the documented script.
async fn publish(
    conn: &mut redis::aio::MultiplexedConnection,
    group: &str,
    payload: &str,
) -> String {
    redis::Script::new(PUBLISH_SCRIPT)
        .key(format!("taskstream:{group}"))
        .arg(payload)
        .arg(100)
        .arg(600_000)
        .invoke_async(conn)
        .await
        .expect("EVAL publish script")
}

/// Publishes through the sidecar's admin endpoint (the memory broker has no other way in).
async fn publish_admin(sc: &Sidecar, group: &str, payload: &str) -> String {
    let (status, body) = http_post(&format!("http://{}/publish/{group}", sc.admin), payload).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON answer");
    v["id"].as_str().expect("an id: history is on").to_owned()
}

/// The page: no `?groups=` (the app's grant decides), resuming from `last_ids`.
async fn page(sc: &Sidecar, last_ids: &BTreeMap<String, String>) -> Client {
    let query: Vec<String> = last_ids
        .iter()
        .map(|(g, id)| format!("last_id={g}:{id}"))
        .collect();
    let url = sc.ws_url(&query.join("&"));
    connect_with(&url, &[V1, ("cookie", "sessionid=s")])
        .await
        .unwrap_or_else(|s| panic!("v1 handshake to {url} refused with {s}"))
}

async fn next(ws: &mut Client) -> Value {
    let t = recv_text(ws).await;
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON: {t}: {e}"))
}

/// Reads `n` frames, all positions: group -> id.
async fn positions(ws: &mut Client, n: usize) -> BTreeMap<String, String> {
    let mut got = BTreeMap::new();
    for _ in 0..n {
        let v = next(ws).await;
        assert_eq!(v["type"], "position", "{v}");
        let group = v["group"].as_str().expect("group").to_owned();
        let id = v["id"].as_str().expect("id").to_owned();
        assert!(
            got.insert(group, id).is_none(),
            "one position per group: {v}"
        );
    }
    got
}

/// The next frame is the event `id` of `group`.
async fn expect_event(ws: &mut Client, group: &str, id: &str) {
    let v = next(ws).await;
    assert_eq!(
        (v["type"].as_str(), v["group"].as_str(), v["id"].as_str()),
        (Some("event"), Some(group), Some(id)),
        "{v}"
    );
}

fn ids(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(g, id)| (g.to_string(), id.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_the_first_event_of_a_new_group_published_while_the_sidecar_is_down_arrives_once() {
    let redis = RedisServer::start().await;
    let app = app(&["old", "new"]).await;
    let mut conn = redis.conn().await.expect("publisher");
    let before = publish(&mut conn, "old", r#"{"n":0}"#).await;
    let url = redis.url();
    let args = [
        "--auth",
        "forward",
        "--upstream",
        &app.url(),
        "--redis-url",
        &url,
        "--history-size",
        "100",
    ];
    let sc = Sidecar::start(&args).await;
    sc.wait_broker(200).await;
    let mut ws = page(&sc, &BTreeMap::new()).await;
    let got = positions(&mut ws, 3).await;
    assert_eq!(
        got,
        ids(&[("old", &before), ("new", "0"), (USER_GROUP, "0")])
    );
    // Live events after a position arrive.
    let live = publish(&mut conn, USER_GROUP, r#"{"n":1}"#).await;
    expect_event(&mut ws, USER_GROUP, &live).await;
    let mut last = got;
    last.insert(USER_GROUP.into(), live);
    drop(ws);
    sc.stop().await;

    // While no sidecar runs: the first event of `new`, and one more in `old`.
    let first = publish(&mut conn, "new", r#"{"n":2}"#).await;
    let second = publish(&mut conn, "old", r#"{"n":3}"#).await;

    let sc = Sidecar::start(&args).await;
    sc.wait_broker(200).await;
    let mut ws = page(&sc, &last).await;
    let mut missed = vec![
        next(&mut ws).await["id"].as_str().expect("id").to_owned(),
        next(&mut ws).await["id"].as_str().expect("id").to_owned(),
    ];
    missed.sort();
    let mut want = vec![first.clone(), second.clone()];
    want.sort();
    assert_eq!(missed, want, "each missed event once");
    // Nothing else before a live marker: no duplicate, no position (every group resumed).
    let marker = publish(&mut conn, "new", r#"{"marker":true}"#).await;
    expect_event(&mut ws, "new", &marker).await;
    sc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_the_first_event_of_a_new_group_published_while_the_page_is_away_arrives_once() {
    let app = app(&["old", "new"]).await;
    // The memory broker keeps its ring in the process: the page goes away instead.
    let sc = Sidecar::start(&[
        "--auth",
        "forward",
        "--upstream",
        &app.url(),
        "--broker",
        "memory",
        "--history-size",
        "100",
    ])
    .await;
    let before = publish_admin(&sc, "old", r#"{"n":0}"#).await;
    let mut ws = page(&sc, &BTreeMap::new()).await;
    let got = positions(&mut ws, 3).await;
    assert_eq!(
        got,
        ids(&[("old", &before), ("new", "0"), (USER_GROUP, "0")])
    );
    let live = publish_admin(&sc, "old", r#"{"n":1}"#).await;
    expect_event(&mut ws, "old", &live).await;
    let mut last = got;
    last.insert("old".into(), live);
    drop(ws);

    let first = publish_admin(&sc, "new", r#"{"n":2}"#).await;
    let mut ws = page(&sc, &last).await;
    expect_event(&mut ws, "new", &first).await;
    let marker = publish_admin(&sc, "new", r#"{"marker":true}"#).await;
    expect_event(&mut ws, "new", &marker).await;
    sc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_positions_of_groups_on_two_nodes_and_a_new_groups_first_event_arrives_once() {
    let cluster = RedisCluster::start(3).await;
    // Two groups whose streams live on different nodes.
    let owner = |name: String| {
        let cluster = &cluster;
        async move {
            cluster
                .owner(cluster.slot_of(&format!("taskstream:{name}")).await)
                .await
        }
    };
    let node_old = owner("old".into()).await;
    let mut new_group = None;
    for i in 0..100 {
        let name = format!("new{i}");
        if owner(name.clone()).await != node_old {
            new_group = Some(name);
            break;
        }
    }
    let new_group = new_group.expect("a group on another node");
    let node_new = owner(new_group.clone()).await;
    let app = app(&["old", &new_group]).await;
    let mut on_old = cluster.nodes[node_old].conn().await.expect("old's node");
    let mut on_new = cluster.nodes[node_new].conn().await.expect("new's node");
    let before = publish(&mut on_old, "old", r#"{"n":0}"#).await;
    let seeds = cluster.seeds();
    let args = [
        "--auth",
        "forward",
        "--upstream",
        &app.url(),
        "--redis-url",
        &seeds,
        "--redis-cluster",
        "--history-size",
        "100",
    ];
    let sc = Sidecar::start(&args).await;
    sc.wait_broker(200).await;
    let mut ws = page(&sc, &BTreeMap::new()).await;
    let got = positions(&mut ws, 3).await;
    assert_eq!(
        got,
        ids(&[("old", &before), (&new_group, "0"), (USER_GROUP, "0")])
    );
    drop(ws);
    sc.stop().await;

    let first = publish(&mut on_new, &new_group, r#"{"n":1}"#).await;

    let sc = Sidecar::start(&args).await;
    sc.wait_broker(200).await;
    let mut ws = page(&sc, &got).await;
    expect_event(&mut ws, &new_group, &first).await;
    let marker = publish(&mut on_new, &new_group, r#"{"marker":true}"#).await;
    expect_event(&mut ws, &new_group, &marker).await;
    sc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handshakes_share_positions_reads_and_each_gets_its_own_groups() {
    const CLIENTS: usize = 20;
    let redis = RedisServer::start().await;
    let url = redis.url();
    let sc = Sidecar::start(&[
        "--auth",
        "none",
        "--redis-url",
        &url,
        "--history-size",
        "100",
    ])
    .await;
    sc.wait_broker(200).await;
    let mut conn = redis.conn().await.expect("publisher");
    let shared = publish(&mut conn, "shared", r#"{"n":0}"#).await;
    let own3 = publish(&mut conn, "own-3", r#"{"n":1}"#).await;
    // Keeps every group subscribed, so the handshakes below wait on nothing but positions.
    let all: Vec<String> = (0..CLIENTS).map(|k| format!("own-{k}")).collect();
    let holder =
        taskstream_tests::ws::connect(&sc.ws_url(&format!("groups=shared,{}", all.join(","))))
            .await;

    // Redis answers nothing for a while: the first positions call waits there, the handshakes
    // arriving meanwhile go in the next one.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(700)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .expect("CLIENT PAUSE");
    let clients = futures_util::future::join_all((0..CLIENTS).map(|k| {
        let url = sc.ws_url(&format!("groups=shared,own-{k}"));
        async move {
            connect_with(&url, &[V1])
                .await
                .unwrap_or_else(|s| panic!("v1 handshake to {url} refused with {s}"))
        }
    }))
    .await;
    let mut clients: Vec<Client> = clients;
    for (k, ws) in clients.iter_mut().enumerate() {
        let own = if k == 3 { own3.as_str() } else { "0" };
        let got = positions(ws, 2).await;
        assert_eq!(
            got,
            ids(&[("shared", &shared), (&format!("own-{k}"), own)]),
            "client {k}: its own groups' positions, from the shared batch"
        );
    }
    // Then live events, each exactly once (nothing else queued before them).
    let live = publish(&mut conn, "shared", r#"{"n":2}"#).await;
    let marker = publish(&mut conn, "own-3", r#"{"marker":true}"#).await;
    for (k, ws) in clients.iter_mut().enumerate() {
        expect_event(ws, "shared", &live).await;
        if k == 3 {
            expect_event(ws, "own-3", &marker).await;
        }
    }

    let reads = sc
        .metric("taskstream_history_reads_total{read=\"Positions\"}")
        .await;
    let requests = sc
        .metric("taskstream_history_read_requests_total{read=\"Positions\"}")
        .await;
    assert_eq!(requests, CLIENTS as f64, "one request per handshake");
    assert!(
        reads < requests / 2.0,
        "{reads} positions calls for {requests} handshakes: concurrent handshakes are batched"
    );
    drop(holder);
    sc.stop().await;
}
