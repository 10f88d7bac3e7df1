//! Resume storm (`reconnect --resume`): N `taskstream.v1` clients on a sidecar with
//! `--history-size`, events published with history (the publish script) without pause; the
//! sidecar is killed, stays down for the outage, and is started again; every client comes back
//! at once with `last_id` (its group's last id) and must get everything it missed from the
//! Redis stream, then live events, with no gap and no duplicate.
//!
//! ```text
//! publisher (EVAL publish.lua, never pausing):  step 1 (before) | step 2 (outage) | step 3 (after, >= --min-secs)
//! sidecar:                                       up             | killed          | started -> N resumes
//! reported: all caught up (steps 1+2 complete) after the restart and after ready, redis-server
//!           CPU while catching up, sidecar RSS peak, exact loss/duplicates per step, resets,
//!           recovered events, history reads against the requests they answered (sharing)
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::{Broker, Ctx, r3};
use crate::clients::{Fleet, Plan, Step, members};
use crate::procs::{Feed, Kind, Redis, Server};
use crate::publish::{self, Published, Schedule, Sink};
use crate::sidecar_metrics;

#[derive(Clone, Copy, Debug)]
pub struct Args {
    pub conns: usize,
    pub groups: usize,
    /// `--history-size` of the sidecar.
    pub history_size: usize,
    /// Deliveries per second, in every phase.
    pub rate: f64,
    /// Publishing with every client connected, before the kill.
    pub before: Duration,
    /// How long the sidecar stays down (publishing goes on into history).
    pub outage: Duration,
    /// Publishing after the restart (at least `--min-secs`).
    pub after: Duration,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Value> {
    if ctx.broker != Broker::Redis {
        bail!("reconnect --resume needs --broker redis (history lives in Redis streams)");
    }
    let redis = Redis::start(ctx.redis_resp2).await?;
    let extra = vec!["--history-size".to_owned(), args.history_size.to_string()];
    let mut server = Server::start_with(
        Kind::Sidecar,
        &ctx.bins,
        Feed::Redis(redis.url.clone()),
        None,
        extra,
    )
    .await?;
    let sink = Sink::RedisHistory {
        url: redis.url.clone(),
        size: args.history_size,
        ttl_ms: 600_000,
    };
    let (fleet, opened) = Fleet::open(Plan {
        kind: Kind::Sidecar,
        server: server.public,
        conns: args.conns,
        groups: args.groups,
        concurrency: ctx.concurrency,
        // Back at once: only the fleet's own 50 ms retry step spreads them.
        reconnect_jitter: Some(Duration::ZERO),
        deadline: ctx.deadline,
        v1: true,
        groups_per_conn: 1,
    })
    .await;
    let stats = fleet.stats.clone();
    let open = opened.open;
    let groups = args.groups.min(open.max(1));
    let schedule = |step: usize, duration: Duration| Schedule {
        step,
        rate: args.rate / (open as f64 / groups as f64),
        duration,
        groups,
        pad: 30,
        workers: 8,
    };
    let rss_before = server.usage().rss;

    // Steps 1 and 2 back to back: the kill happens while step 2 publishes.
    let before = publish::run(&sink, &schedule(1, args.before)).await?;
    let outage = {
        let sink = sink.clone();
        let s = schedule(2, args.outage);
        tokio::spawn(async move { publish::run(&sink, &s).await })
    };
    server.kill().await;
    let killed = Instant::now();
    let outage = outage.await??;
    let after_len = ctx.measured(args.after);
    let after = {
        let sink = sink.clone();
        let s = schedule(3, after_len);
        tokio::spawn(async move { publish::run(&sink, &s).await })
    };
    let redis_cpu_0 = redis.usage().cpu;
    let started = Instant::now();
    server.start_again().await?;
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    // The new process's CPU so far is its start-up; what follows is the storm.
    let sidecar_cpu_0 = server.usage().cpu;

    // Caught up: every client has every event of steps 1 and 2.
    let expect = |p: &Published| p.expected(|k| members(open, groups, k));
    let missed = expect(&before) + expect(&outage);
    let complete = |s: &Step| s.counts.distinct();
    let mut rss_peak = 0u64;
    let mut caught_up_ms = None;
    let mut all_back_ms = None;
    let bound = Instant::now() + Duration::from_secs(60);
    while Instant::now() < bound {
        rss_peak = rss_peak.max(server.usage().rss);
        if all_back_ms.is_none() && stats.open.load(Ordering::Relaxed) >= open {
            all_back_ms = Some(started.elapsed().as_secs_f64() * 1e3);
        }
        if complete(&stats.steps[1]) + complete(&stats.steps[2]) >= missed {
            caught_up_ms = Some(started.elapsed().as_secs_f64() * 1e3);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let redis_cpu_catch_up = redis.usage().cpu.saturating_sub(redis_cpu_0);
    let sidecar_cpu_catch_up = server.usage().cpu.saturating_sub(sidecar_cpu_0);
    let rss_caught_up = server.usage().rss;
    let tail_0 = (Instant::now(), redis.usage().cpu);
    let after = after.await??;
    let redis_tail_pct = redis.usage().cpu.saturating_sub(tail_0.1).as_secs_f64() * 100.0
        / tail_0.0.elapsed().as_secs_f64().max(1e-3);
    let expected_after = expect(&after);
    super::wait_until(Duration::from_secs(5), || {
        complete(&stats.steps[3]) >= expected_after
    })
    .await;
    let step = |i: usize, p: &Published| {
        let s = &stats.steps[i];
        let expected = expect(p);
        json!({
            "publish_secs": r3(p.secs),
            "expected": expected,
            "delivered": s.counts.distinct(),
            "lost": expected as i64 - s.counts.distinct() as i64,
            "duplicates": s.counts.duplicates() + s.counts.out_of_range(),
            "publish_errors": p.errors,
            "p50_ms": s.hist.quantile(0.5) as f64 / 1000.0,
            "p99_ms": s.hist.quantile(0.99) as f64 / 1000.0,
            "max_ms": s.hist.max() as f64 / 1000.0,
        })
    };
    let steps = json!({
        "before": step(1, &before),
        "outage": step(2, &outage),
        "after": step(3, &after),
    });
    let lost: i64 = ["before", "outage", "after"]
        .iter()
        .filter_map(|k| steps[k]["lost"].as_i64())
        .sum();
    let duplicates: u64 = ["before", "outage", "after"]
        .iter()
        .filter_map(|k| steps[k]["duplicates"].as_u64())
        .sum();
    let counters = sidecar_metrics::read(server.admin).await;
    let reads = shared_reads(server.admin).await;
    let resets = stats.resets.load(Ordering::Relaxed);
    fleet.stop().await;
    Ok(json!({
        "conns": args.conns,
        "groups": args.groups,
        "open_before": open,
        "history_size": args.history_size,
        "rate": args.rate,
        "down_ms": r3(killed.elapsed().as_secs_f64() * 1e3 - started.elapsed().as_secs_f64() * 1e3),
        "ready_ms": r3(ready_ms),
        "all_reconnected_ms": all_back_ms.map(r3),
        "all_caught_up_ms": caught_up_ms.map(r3),
        // The same two, from the moment the sidecar answered ready (process start excluded).
        "all_reconnected_after_ready_ms": all_back_ms.map(|ms| r3(ms - ready_ms)),
        "all_caught_up_after_ready_ms": caught_up_ms.map(|ms| r3(ms - ready_ms)),
        "deliveries_before_restart": missed,
        "redis_cpu_ms_catching_up": r3(redis_cpu_catch_up.as_secs_f64() * 1e3),
        "sidecar_cpu_ms_catching_up": r3(sidecar_cpu_catch_up.as_secs_f64() * 1e3),
        "redis_cpu_pct_after": r3(redis_tail_pct),
        "sidecar_rss_before_bytes": rss_before,
        "sidecar_rss_peak_bytes": rss_peak,
        "sidecar_rss_caught_up_bytes": rss_caught_up,
        "resets": resets,
        "lost": lost,
        "duplicates": duplicates,
        "sidecar_after_restart": counters,
        "redis_reconnects": counters.map(|c| c.redis_reconnects),
        "history_recovered_events": counters.map(|c| c.history_recovered),
        "history_reads": reads,
        "steps": steps,
    }))
}

/// `taskstream_history_reads_total` and `taskstream_history_read_requests_total` per `read`
/// (`Resume`, `Positions`): Redis calls against the clients' requests they answered. `None`
/// from a sidecar without them.
async fn shared_reads(admin: std::net::SocketAddr) -> Option<Value> {
    let (status, body) = crate::http::get(admin, "/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    };
    let mut out = serde_json::Map::new();
    for read in ["Resume", "Positions"] {
        let label = format!("{{read=\"{read}\"}} ");
        out.insert(
            read.to_lowercase(),
            json!({
                "reads": value(&format!("taskstream_history_reads_total{label}"))?,
                "requests": value(&format!("taskstream_history_read_requests_total{label}"))?,
            }),
        );
    }
    Some(Value::Object(out))
}
