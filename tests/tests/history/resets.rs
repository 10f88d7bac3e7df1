//! Gaps history cannot cover: a `reset` frame naming why (trimmed, expired, unknown,
//! history off), never silence; and a malformed or foreign `last_id` refused with a status.

use super::*;

async fn expect_reset(url: &str, group: &str, reason: &str) {
    let mut ws = v1(url).await;
    let v = recv_json(&mut ws).await;
    assert_eq!(
        v,
        serde_json::json!({"type": "reset", "group": group, "reason": reason}),
        "{url}"
    );
}

#[tokio::test]
async fn gaps_history_cannot_cover_get_a_reset_never_silence() {
    let mut redis = RedisServer::start().await;
    let sc = sidecar(&redis, "3", "1s").await;
    let mut conn = redis.conn().await.unwrap();
    let first = publish(&mut conn, "t", "0", 3, 600_000).await;
    let mut last = String::new();
    for n in 1..6 {
        last = publish(&mut conn, "t", &n.to_string(), 3, 600_000).await;
    }
    // Trimmed by size: events after `first` are gone.
    expect_reset(
        &sc.ws_url(&format!("groups=t&last_id=t:{first}")),
        "t",
        "trimmed",
    )
    .await;
    // Up to date: nothing, then live.
    let mut ok = v1(&sc.ws_url(&format!("groups=t&last_id=t:{last}"))).await;
    let next = publish(&mut conn, "t", "6", 3, 600_000).await;
    let v = recv_json(&mut ok).await;
    assert_eq!(
        (v["id"].as_str(), v["data"].as_u64()),
        (Some(next.as_str()), Some(6))
    );

    // Expired by TTL (1 s after its last event here).
    let e = publish(&mut conn, "short", "x", 3, 1000).await;
    eventually("the history of `short` expired", || async {
        let mut c = redis.conn().await.ok()?;
        let n: i64 = redis::cmd("EXISTS")
            .arg("taskstream:short")
            .query_async(&mut c)
            .await
            .ok()?;
        (n == 0).then_some(())
    })
    .await;
    expect_reset(
        &sc.ws_url(&format!("groups=short&last_id=short:{e}")),
        "short",
        "expired",
    )
    .await;

    // Redis restarted without persistence: the history is lost, and so are ids that a new
    // history would otherwise take for "nothing missed".
    let before = publish(&mut conn, "r", "a", 3, 600_000).await;
    redis.restart().await;
    sc.wait_broker(200).await;
    let mut conn = redis.conn().await.unwrap();
    expect_reset(
        &sc.ws_url(&format!("groups=r&last_id=r:{before}")),
        "r",
        "expired",
    )
    .await;
    publish(&mut conn, "r", "b", 3, 600_000).await;
    expect_reset(
        &sc.ws_url(&format!("groups=r&last_id=r:{before}")),
        "r",
        "trimmed",
    )
    .await;
    // An id this history never issued.
    expect_reset(
        &sc.ws_url("groups=r&last_id=r:99999999999999-0"),
        "r",
        "unknown",
    )
    .await;
    assert!(
        sc.metric("taskstream_history_resets_total{reason=\"Trimmed\"}")
            .await
            >= 2.0
    );
    sc.stop().await;
}

#[tokio::test]
async fn bad_last_id_is_refused_with_a_status() {
    let redis = RedisServer::start().await;
    let sc = sidecar(&redis, "10", "10m").await;
    let refused = |q: &'static str| {
        let url = sc.ws_url(q);
        async move { connect_with(&url, &[V1]).await.err() }
    };
    assert_eq!(
        refused("groups=a&last_id=b:0").await,
        Some(403),
        "not one of its groups"
    );
    assert_eq!(
        refused("groups=a&last_id=a:xyz").await,
        Some(400),
        "malformed id"
    );
    assert_eq!(refused("groups=a&last_id=nocolon").await, Some(400));
    assert_eq!(
        refused("groups=a&last_id=a:0&last_id=a:1-0").await,
        Some(400),
        "twice"
    );
    // Without the subprotocol a client has no ids to resume from.
    assert_eq!(
        connect_with(&sc.ws_url("groups=a&last_id=a:0"), &[])
            .await
            .err(),
        Some(400)
    );
    // Group names may contain ':' (split at the last one).
    let mut ok = v1(&sc.ws_url("groups=user:1&last_id=user:1:0")).await;
    redis.publish("taskstream:user:1", "{}").await;
    assert_eq!(recv_json(&mut ok).await["group"], "user:1");
    sc.stop().await;
}

#[tokio::test]
async fn history_off_answers_resume_with_a_reset() {
    let redis = RedisServer::start().await;
    let sc = Sidecar::start(&["--auth", "none", "--redis-url", &redis.url()]).await;
    expect_reset(&sc.ws_url("groups=g&last_id=g:5-0"), "g", "history_off").await;
    sc.stop().await;
}
