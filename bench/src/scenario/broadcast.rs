//! Broadcast: one event to one group of N members; the time until the last client has it
//! (publish to last delivery). Events go out on a fixed period without waiting for the previous
//! one (on the Redis path for at least `--min-secs`, so publishing never pauses for longer than
//! the period); each event is its own step, so its latency, loss and duplicates are its own.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use super::{Ctx, Target, median, r3, wait_until};
use crate::clients::STEPS;
use crate::procs::Kind;
use crate::publish::{self, Schedule};

/// How a broadcast run is paced.
#[derive(Clone, Copy, Debug)]
pub struct Args {
    pub conns: usize,
    /// Events (at least; the Redis path adds more to cover `--min-secs`).
    pub repeats: usize,
    /// Time between two events.
    pub period: Duration,
}

pub async fn run(ctx: &Ctx, kind: Kind, args: Args) -> Result<Value> {
    let target = Target::start(ctx, kind).await?;
    let (fleet, opened) = target.fleet(ctx, args.conns, 1).await;
    let stats = fleet.stats.clone();
    let counters_before = target.counters().await;
    let asked = args.period * args.repeats.saturating_sub(1) as u32;
    let span = ctx.measured(asked);
    let events =
        ((span.as_secs_f64() / args.period.as_secs_f64()).ceil() as usize + 1).clamp(1, STEPS - 1);
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(args.period);
    let mut published = 0u64;
    let mut errors = 0u64;
    let mut unheard = 0u64;
    for r in 0..events {
        tick.tick().await;
        let schedule = Schedule {
            step: r + 1,
            rate: 1.0,
            duration: Duration::from_secs(1),
            groups: 1,
            pad: 40,
            workers: 1,
        };
        let p = publish::run(&target.sink, &schedule).await?;
        published += p.events;
        errors += p.errors;
        unheard += p.unheard;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let open = opened.open as u64;
    let steps = &stats.steps[1..=events];
    wait_until(Duration::from_secs(5), || {
        steps.iter().all(|s| s.counts.distinct() >= open)
    })
    .await;
    let last_ms: Vec<f64> = steps.iter().map(|s| s.hist.max() as f64 / 1000.0).collect();
    let incomplete = steps.iter().filter(|s| s.counts.distinct() < open).count();
    let delivered: u64 = steps.iter().map(|s| s.counts.distinct()).sum();
    let duplicates: u64 = steps
        .iter()
        .map(|s| s.counts.duplicates() + s.counts.out_of_range())
        .sum();
    let sidecar = match (target.counters().await, counters_before) {
        (Some(after), Some(before)) => Some(after.since(&before)),
        _ => None,
    };
    fleet.stop().await;
    Ok(json!({
        "conns": args.conns,
        "open": opened.open,
        "events": events,
        "period_ms": args.period.as_millis() as u64,
        "publish_secs": r3(publish_secs),
        "publish_errors": errors,
        "unheard": unheard,
        "incomplete": incomplete,
        "expected": published * open,
        "delivered": delivered,
        "lost": (published * open) as i64 - delivered as i64,
        "duplicates": duplicates,
        "sidecar": sidecar,
        "redis_reconnects": sidecar.map(|c| c.redis_reconnects),
        "last_client_ms_median": r3(median(last_ms.clone())),
        "last_client_ms": last_ms,
    }))
}
