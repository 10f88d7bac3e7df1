//! Reconnect storm: N clients are dropped at once by killing the server, which is started again
//! on the same ports at once (on the Redis path, redis-server stays up); clients come back after
//! a random delay up to the jitter. Reported: time from the kill until every client is connected
//! again, and until every client has received an event on its new connection (probes to every
//! group every 100 ms once all are in). Then, on the Redis path (or with `--soak-secs`), the
//! restarted server gets continuous publishing for at least `--min-secs` with exact loss
//! counting: the storm must leave every subscription whole.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use super::{Ctx, Target, r3, wait_until};
use crate::clients::{Fleet, Plan, STEPS, members, now_ns};
use crate::procs::Kind;
use crate::publish::{self, Schedule};

/// The step the soak after the storm is counted in (probes use the ones below).
const SOAK_STEP: usize = STEPS - 1;

#[derive(Clone, Copy, Debug)]
pub struct Args {
    pub conns: usize,
    pub groups: usize,
    pub jitter: Duration,
    /// Continuous publishing after the storm (the Redis path takes at least `--min-secs`).
    pub soak: Duration,
    /// Deliveries per second during the soak.
    pub soak_rate: f64,
}

pub async fn run(ctx: &Ctx, kind: Kind, args: Args) -> Result<Value> {
    let Args {
        conns,
        groups,
        jitter,
        ..
    } = args;
    let mut target = Target::start(ctx, kind).await?;
    let (fleet, opened) = Fleet::open(Plan {
        kind,
        server: target.server.public,
        conns,
        groups,
        concurrency: ctx.concurrency,
        reconnect_jitter: Some(jitter),
        deadline: ctx.deadline,
        v1: false,
        groups_per_conn: 1,
    })
    .await;
    let stats = fleet.stats.clone();
    let t0 = now_ns();
    stats.epoch.fetch_add(1, Ordering::Relaxed);
    target.server.restart().await?;
    let restarted_ms = (now_ns() - t0) as f64 / 1e6;
    let bound = tokio::time::Instant::now() + Duration::from_secs(60).min(ctx.deadline);
    let mut connected_ms = None;
    let mut receiving = false;
    let mut probes = 0usize;
    // The admin port is the same after the restart; a Redis sink is redis-server's.
    let sink = target.sink.clone();
    while tokio::time::Instant::now() < bound {
        let open = stats.open.load(Ordering::Relaxed);
        if connected_ms.is_none() && open >= opened.open {
            connected_ms = Some((now_ns() - t0) as f64 / 1e6);
        }
        if connected_ms.is_some() {
            if stats.receiving_again.load(Ordering::Relaxed) >= opened.open {
                receiving = true;
                break;
            }
            probes += 1;
            let schedule = Schedule {
                step: (probes % (SOAK_STEP - 1)) + 1,
                rate: groups as f64 * 20.0,
                duration: Duration::from_millis(50),
                groups,
                pad: 0,
                workers: 4,
            };
            publish::run(&sink, &schedule).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let back_ms = receiving.then(|| (stats.last_back_ns.load(Ordering::Relaxed) - t0) as f64 / 1e6);
    let failures = stats.failures.load(Ordering::Relaxed);
    let soak_len = ctx.measured(args.soak);
    let soak = if receiving && !soak_len.is_zero() {
        Some(soak_after_storm(&target, &fleet, &args, opened.open, soak_len).await?)
    } else {
        None
    };
    let counters = target.counters().await;
    fleet.stop().await;
    Ok(json!({
        "conns": conns,
        "open_before": opened.open,
        "jitter_ms": jitter.as_millis() as u64,
        "restart_ms": r3(restarted_ms),
        "all_connected_ms": connected_ms.map(r3),
        "all_receiving_ms": back_ms.map(r3),
        "failed_attempts": failures,
        "probe_rounds": probes,
        "soak": soak,
        "lost": soak.as_ref().map(|s| s["lost"].clone()),
        "redis_reconnects": counters.map(|c| c.redis_reconnects),
        "sidecar_after_restart": counters,
    }))
}

/// Continuous publishing to every group at `soak_rate` deliveries/s for `len`, loss counted.
async fn soak_after_storm(
    target: &Target,
    fleet: &Fleet,
    args: &Args,
    open: usize,
    len: Duration,
) -> Result<Value> {
    let stats = &fleet.stats;
    let groups = args.groups.min(open.max(1));
    let per_event = open as f64 / groups as f64;
    let schedule = Schedule {
        step: SOAK_STEP,
        rate: args.soak_rate / per_event,
        duration: len,
        groups,
        pad: 30,
        workers: 8,
    };
    let published = publish::run(&target.sink, &schedule).await?;
    let expected = published.expected(|k| members(open, groups, k));
    let s = &stats.steps[SOAK_STEP];
    wait_until(Duration::from_secs(5), || s.counts.distinct() >= expected).await;
    let delivered = s.counts.distinct();
    Ok(json!({
        "publish_secs": r3(published.secs),
        "target_rate": args.soak_rate,
        "delivered_per_sec": r3(delivered as f64 / published.secs),
        "expected": expected,
        "delivered": delivered,
        "lost": expected as i64 - delivered as i64,
        "duplicates": s.counts.duplicates() + s.counts.out_of_range(),
        "publish_errors": published.errors,
        "unheard": published.unheard,
        "clients_open": stats.open.load(Ordering::Relaxed),
        "p50_ms": s.hist.quantile(0.5) as f64 / 1000.0,
        "p99_ms": s.hist.quantile(0.99) as f64 / 1000.0,
    }))
}
