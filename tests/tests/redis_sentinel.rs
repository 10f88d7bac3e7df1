//! Redis Sentinel: one master, one replica, three sentinels (real `redis-server` processes); the
//! master is SIGKILLed while WebSocket clients are connected, and the same clients get the events
//! published to the promoted replica.

use std::time::{Duration, Instant};

use taskstream_tests::redis_server::{RedisServer, Sentinel};
use taskstream_tests::sidecar::Sidecar;
use taskstream_tests::upstream::{App, request, send};
use taskstream_tests::ws::{connect, recv_text};
use taskstream_tests::{eventually, free_port};

const MASTER: &str = "mymaster";

/// A master, its replica (in sync) and three sentinels that know both and each other.
async fn sentinel_set() -> (RedisServer, RedisServer, Vec<Sentinel>) {
    let master = RedisServer::start().await;
    let replica = RedisServer::start_with(
        ["--replicaof", "127.0.0.1", &master.port.to_string()]
            .map(String::from)
            .to_vec(),
    )
    .await;
    eventually("replica in sync with the master", || async {
        let mut c = replica.conn().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .ok()?;
        info.contains("master_link_status:up").then_some(())
    })
    .await;
    let (a, b, c) = tokio::join!(
        Sentinel::start(MASTER, master.port, 2),
        Sentinel::start(MASTER, master.port, 2),
        Sentinel::start(MASTER, master.port, 2),
    );
    let sentinels = vec![a, b, c];
    // Sentinels find the replica (INFO) and each other (hello messages) within a few seconds;
    // a failover needs both.
    for s in &sentinels {
        eventually(
            "sentinel knows the replica and the two other sentinels",
            || async {
                (s.list("replicas", MASTER).await.len() == 1
                    && s.list("sentinels", MASTER).await.len() == 2)
                    .then_some(())
            },
        )
        .await;
    }
    (master, replica, sentinels)
}

#[tokio::test]
async fn clients_stay_connected_through_a_sentinel_failover() {
    let (mut master, replica, sentinels) = sentinel_set().await;
    let app = App::start().await;
    let list = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect::<Vec<_>>()
        .join(",");
    // The URL's host is not used with sentinels: nothing listens there.
    let unused = format!("redis://127.0.0.1:{}/0", free_port());
    let sc = Sidecar::start(&[
        "--auth",
        "none",
        "--upstream",
        &app.url(),
        "--redis-url",
        &unused,
        "--redis-sentinels",
        &list,
        "--redis-sentinel-master",
        MASTER,
    ])
    .await;
    let mut a = connect(&sc.ws_url("groups=g")).await;
    let mut b = connect(&sc.ws_url("groups=g,h")).await;
    assert_eq!(master.publish("taskstream:g", "before").await, 1);
    assert_eq!(recv_text(&mut a).await, "before");
    assert_eq!(recv_text(&mut b).await, "before");
    // The admin publisher's connection goes to the master too (and must follow it).
    let publish = |body: &'static str| {
        send(request(
            "POST",
            &format!("http://{}/publish/g", sc.admin),
            body,
        ))
    };
    assert_eq!(publish("admin before").await.0, 200);
    assert_eq!(recv_text(&mut a).await, "admin before");
    assert_eq!(recv_text(&mut b).await, "admin before");

    let killed = Instant::now();
    master.kill();
    // Publish to the replica until the sidecar is subscribed there (after the sentinels promote
    // it): a PUBLISH that reaches a subscriber is the signal, bounded by a deadline.
    let deadline = killed + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        // The promotion kills the replica's client connections (Sentinel's CLIENT KILL): an
        // error here just means "try again".
        let heard: redis::RedisResult<usize> = async {
            let mut c = replica.conn().await?;
            redis::cmd("PUBLISH")
                .arg("taskstream:g")
                .arg(format!("after {n}"))
                .query_async(&mut c)
                .await
        }
        .await;
        if heard.is_ok_and(|h| h >= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no sidecar subscribed on the promoted replica within 30 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = recv_text(&mut a).await;
    let pause = killed.elapsed();
    assert_eq!(got, format!("after {n}"));
    assert_eq!(recv_text(&mut b).await, format!("after {n}"));
    println!("sentinel failover: first event delivered {pause:?} after SIGKILL of the master");
    assert_eq!(
        sentinels[0].master_port(MASTER).await,
        Some(replica.port),
        "the sentinels promoted the replica"
    );

    // The publisher follows the master as well.
    let (status, body) = publish("admin after").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(recv_text(&mut a).await, "admin after");
    assert_eq!(recv_text(&mut b).await, "admin after");
    sc.stop().await;
}
