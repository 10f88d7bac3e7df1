//! The resume storm: clients resuming one group at once share history reads, and each still
//! gets every event exactly once, while publishing never pauses.
//!
//! ```text
//! holder (plain, keeps `job` subscribed)
//! CLIENT PAUSE: Redis holds every read --> N v1 clients resume `job` from different ids
//!    sidecar: the first read waits in Redis; the others queue for the next one (one read)
//! pause over --> each client: its own tail of the shared read, then live events, no gap
//! ```

use super::*;

/// How many clients resume at once.
const CLIENTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resuming_one_group_at_once_share_reads_and_each_get_every_event_once() {
    let redis = RedisServer::start().await;
    let sc = sidecar(&redis, "1000", "10m").await;
    // Keeps `job` subscribed, so the resuming clients' handshakes need nothing from Redis.
    let _holder = connect(&sc.ws_url("groups=job")).await;
    let mut conn = redis.conn().await.expect("publisher");
    let mut ids = Vec::new();
    for n in 0..40u64 {
        ids.push(publish(&mut conn, "job", &format!("{{\"n\":{n}}}"), 1000, 600_000).await);
    }

    // Redis answers nothing for a while: the first read waits there, the rest queue behind it.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(700)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .expect("CLIENT PAUSE");
    // Publishing goes on from the end of the pause (a call held longer than the connection's
    // response timeout would fail), while the clients catch up.
    let total = 140u64;
    let mut publisher_conn = redis.conn().await.expect("publisher");
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        for n in 40..total {
            publish(
                &mut publisher_conn,
                "job",
                &format!("{{\"n\":{n}}}"),
                1000,
                600_000,
            )
            .await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    // Client k resumes after event `from(k)`: different ids, one group.
    let from = |k: usize| (k * 7) % 40;
    let clients: Vec<Client> = futures_util::future::join_all((0..CLIENTS).map(|k| {
        let url = sc.ws_url(&format!("groups=job&last_id=job:{}", ids[from(k)]));
        async move { v1(&url).await }
    }))
    .await;

    let got = futures_util::future::join_all(clients.into_iter().map(|mut ws| async move {
        let mut seen = Vec::new();
        while seen.last() != Some(&(total - 1)) {
            let v = tokio::time::timeout(WAIT, recv_json(&mut ws))
                .await
                .expect("events keep coming");
            assert_eq!(v["type"], "event", "no reset: history covers the gap ({v})");
            seen.push(v["data"]["n"].as_u64().expect("n"));
        }
        seen
    }))
    .await;
    publisher.await.expect("publisher");
    for (k, seen) in got.into_iter().enumerate() {
        let want: Vec<u64> = (from(k) as u64 + 1..total).collect();
        assert_eq!(
            seen, want,
            "client {k}: every event after its id, exactly once, in order"
        );
    }

    let reads = sc
        .metric("taskstream_history_reads_total{read=\"Resume\"}")
        .await;
    let requests = sc
        .metric("taskstream_history_read_requests_total{read=\"Resume\"}")
        .await;
    assert_eq!(requests, CLIENTS as f64, "one request per resuming client");
    assert!(
        reads < requests / 2.0,
        "{reads} history reads for {requests} clients: concurrent resumes of a group share reads"
    );
}
