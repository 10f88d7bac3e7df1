//! Connect storm with positions (`connect`): N `taskstream.v1` clients with several groups each
//! (`--groups-per-conn` from the token plus `user:{sub}`) connect at once to a sidecar on our
//! redis-server, every token group's stream holding an event. With positions the sidecar reads
//! the newest id of each of a client's groups (one script call) before the 101 and sends a
//! `position` frame per group; without them it runs with history off, so nothing is read: the
//! difference is what positions at connect cost.
//!
//! ```text
//! EVAL publish.lua x groups (one event each) -> sidecar (--history-size | none)
//! N clients --handshake (+ positions read)--> all open: wall time, sidecar and redis CPU, RSS
//! ```

use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Broker, Ctx, r3};
use crate::clients::{Fleet, Plan, group_name};
use crate::procs::{Feed, Kind, Redis, Server};

const PUBLISH_SCRIPT: &str = include_str!("../../../sidecar/src/broker/publish.lua");

#[derive(Clone, Copy, Debug)]
pub struct Args {
    pub conns: usize,
    pub groups: usize,
    /// Token groups per client (its `user:{sub}` group comes on top).
    pub groups_per_conn: usize,
    /// History on (positions read and sent) or off (no read).
    pub positions: bool,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Value> {
    if ctx.broker != Broker::Redis {
        bail!("connect needs --broker redis (positions are read from Redis streams)");
    }
    let redis = Redis::start(ctx.redis_resp2).await?;
    // One stored event per group, so that each position is a real read of a stream.
    let mut conn = redis::Client::open(redis.url.as_str())?
        .get_multiplexed_async_connection()
        .await
        .context("connect to redis")?;
    let script = redis::Script::new(PUBLISH_SCRIPT);
    for k in 0..args.groups {
        let _: String = script
            .key(format!("taskstream:{}", group_name(k)))
            .arg(r#"{"seed":true}"#)
            .arg(100)
            .arg(600_000)
            .invoke_async(&mut conn)
            .await
            .context("seed a group's history")?;
    }
    let extra = if args.positions {
        vec!["--history-size".to_owned(), "100".to_owned()]
    } else {
        Vec::new()
    };
    let server = Server::start_with(
        Kind::Sidecar,
        &ctx.bins,
        Feed::Redis(redis.url.clone()),
        None,
        extra,
    )
    .await?;
    let (sidecar_0, redis_0) = (server.usage(), redis.usage());
    let started = Instant::now();
    let (fleet, opened) = Fleet::open(Plan {
        kind: Kind::Sidecar,
        server: server.public,
        conns: args.conns,
        groups: args.groups,
        concurrency: ctx.concurrency,
        reconnect_jitter: None,
        deadline: ctx.deadline,
        v1: true,
        groups_per_conn: args.groups_per_conn,
    })
    .await;
    let wall = started.elapsed().as_secs_f64();
    let (sidecar_1, redis_1) = (server.usage(), redis.usage());
    fleet.stop().await;
    let ms = |d: std::time::Duration| r3(d.as_secs_f64() * 1e3);
    Ok(json!({
        "conns": args.conns,
        "groups": args.groups,
        "groups_per_conn": args.groups_per_conn + 1,
        "positions": args.positions,
        "open": opened.open,
        "failures": opened.failures,
        "all_open_secs": r3(wall),
        "handshakes_per_sec": r3(opened.open as f64 / wall.max(1e-9)),
        "sidecar_cpu_ms": ms(sidecar_1.cpu.saturating_sub(sidecar_0.cpu)),
        "sidecar_cpu_us_per_conn": r3(sidecar_1.cpu.saturating_sub(sidecar_0.cpu).as_secs_f64() * 1e6 / opened.open.max(1) as f64),
        "redis_cpu_ms": ms(redis_1.cpu.saturating_sub(redis_0.cpu)),
        "sidecar_rss_bytes": sidecar_1.rss,
    }))
}
