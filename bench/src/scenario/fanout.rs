//! Fan-out: N clients over G groups; the delivery rate is ramped step by step until p99 passes
//! the limit or an event is lost. Per step: deliveries/s, p50/p99, the server's CPU time per
//! delivered event, and this tool's own CPU (it must not be the bottleneck). Loss is exact (every
//! client checks its group's sequence numbers, see [`crate::seen`]) and, on the Redis path, each
//! step publishes for at least `--min-secs` and reports the sidecar's Redis reconnects.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Ctx, Meter, Target, r3, wait_until};
use crate::clients::{STEPS, members};
use crate::procs::Kind;
use crate::publish::{self, Schedule};
use crate::sidecar_metrics::Counters;

#[derive(Clone, Debug)]
pub struct Args {
    pub conns: usize,
    pub groups: usize,
    /// Target deliveries per second, one step each, ascending.
    pub rates: Vec<f64>,
    pub step: Duration,
    pub p99_limit_ms: f64,
    pub pad: usize,
    pub workers: usize,
}

/// One rate step.
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub target_rate: f64,
    /// How long the publisher published without pause.
    pub publish_secs: f64,
    pub delivered_per_sec: f64,
    /// Deliveries the group layout asks for: each group's published events times its members.
    pub expected: u64,
    /// Events new to their client (duplicates not counted).
    pub delivered: u64,
    /// `expected - delivered`: events a client never got (negative: more than expected, which
    /// only a publish error that still went through can cause).
    pub lost: i64,
    /// Events a client got more than once.
    pub duplicates: u64,
    pub publish_errors: u64,
    /// `PUBLISH` answered 0 receivers (the sidecar was not subscribed to that group then).
    pub unheard: u64,
    /// Clients still connected at the end of the step (of those opened).
    pub clients_open: usize,
    /// The sidecar's counters during this step (absent for the baseline, which has none).
    pub sidecar: Option<Counters>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub server_cpu_us_per_delivery: f64,
    /// The server's CPU time over the step (publishing and draining).
    pub server_cpu_secs: f64,
    pub server_cpu_pct: f64,
    /// redis-server's CPU, when the sidecar uses `--broker redis`.
    pub broker_cpu_pct: f64,
    pub broker_cpu_us_per_delivery: f64,
    pub tool_cpu_pct: f64,
    pub ok: bool,
    /// Delivered less than 80% of the target rate: the ramp ends here.
    pub saturated: bool,
}

pub async fn run(ctx: &Ctx, kind: Kind, args: &Args) -> Result<Value> {
    let target = Target::start(ctx, kind).await?;
    let (fleet, opened) = target.fleet(ctx, args.conns, args.groups).await;
    let stats = fleet.stats.clone();
    let connected = std::time::Instant::now();
    // Only groups that have a member receive events; expected deliveries follow the layout.
    let groups = args.groups.min(opened.open.max(1));
    let per_event = opened.open as f64 / groups as f64;
    let step_len = ctx.measured(args.step);
    let mut steps = Vec::new();
    for (i, &rate) in args.rates.iter().enumerate().take(STEPS - 1) {
        let step = i + 1;
        let counters_before = target.counters().await;
        let meter = Meter::start(&target);
        let broker_before = target.broker_cpu();
        let schedule = Schedule {
            step,
            rate: rate / per_event,
            duration: step_len,
            groups,
            pad: args.pad,
            workers: args.workers,
        };
        let published = publish::run(&target.sink, &schedule).await?;
        let publish_secs = published.secs;
        let expected = published.expected(|k| members(opened.open, groups, k));
        let s = &stats.steps[step];
        wait_until(Duration::from_secs(5), || s.counts.distinct() >= expected).await;
        let (wall, server_cpu, own_cpu) = meter.read(&target);
        let broker_cpu = target
            .broker_cpu()
            .saturating_sub(broker_before)
            .as_secs_f64();
        let sidecar = match (target.counters().await, counters_before) {
            (Some(after), Some(before)) => Some(after.since(&before)),
            _ => None,
        };
        let hist = &s.hist;
        let delivered = s.counts.distinct();
        let duplicates = s.counts.duplicates() + s.counts.out_of_range();
        let lost = expected as i64 - delivered as i64;
        let p99_ms = hist.quantile(0.99) as f64 / 1000.0;
        let reconnects = sidecar.map_or(0, |c| c.redis_reconnects);
        let ok = lost == 0
            && duplicates == 0
            && published.errors == 0
            && reconnects == 0
            && p99_ms <= args.p99_limit_ms;
        // The server (or the machine) cannot take more: a higher target only queues more.
        let saturated = (delivered as f64 / publish_secs) < 0.8 * rate;
        let r = StepResult {
            target_rate: rate,
            publish_secs: r3(publish_secs),
            delivered_per_sec: r3(delivered as f64 / publish_secs),
            expected,
            delivered,
            lost,
            duplicates,
            publish_errors: published.errors,
            unheard: published.unheard,
            clients_open: stats.open.load(Ordering::Relaxed),
            sidecar,
            p50_ms: hist.quantile(0.5) as f64 / 1000.0,
            p99_ms,
            max_ms: hist.max() as f64 / 1000.0,
            server_cpu_us_per_delivery: r3(server_cpu * 1e6 / delivered.max(1) as f64),
            server_cpu_secs: r3(server_cpu),
            server_cpu_pct: r3(server_cpu * 100.0 / wall),
            broker_cpu_pct: r3(broker_cpu * 100.0 / wall),
            broker_cpu_us_per_delivery: r3(broker_cpu * 1e6 / delivered.max(1) as f64),
            tool_cpu_pct: r3(own_cpu * 100.0 / wall),
            ok,
            saturated,
        };
        eprintln!(
            "fanout {kind:?} step {step}: target {rate:.0}/s for {publish_secs:.1} s: delivered {:.0}/s p50 {:.2} ms p99 {:.2} ms lost {lost} dup {duplicates} unheard {} reconnects {reconnects} server {:.2} us/delivery redis {:.2} us/delivery tool cpu {:.0}%",
            r.delivered_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.unheard,
            r.server_cpu_us_per_delivery,
            r.broker_cpu_us_per_delivery,
            r.tool_cpu_pct
        );
        steps.push(r);
        if !ok || saturated {
            break;
        }
    }
    let connected_secs = connected.elapsed().as_secs_f64();
    let counters = target.counters().await;
    fleet.stop().await;
    let best = steps.iter().rfind(|s| s.ok);
    Ok(json!({
        "conns": args.conns,
        "groups": args.groups,
        "open": opened.open,
        "failures": opened.failures,
        "step_secs": r3(step_len.as_secs_f64()),
        "connected_secs": r3(connected_secs),
        "max_ok_delivered_per_sec": best.map(|s| s.delivered_per_sec),
        "cpu_us_per_delivery_at_max": best.map(|s| s.server_cpu_us_per_delivery),
        "deliveries_per_cpu_sec_at_max": best.map(|s| r3(1e6 / s.server_cpu_us_per_delivery.max(1e-9))),
        "p99_ms_at_max": best.map(|s| s.p99_ms),
        "broker_cpu_us_per_delivery_at_max": best.map(|s| s.broker_cpu_us_per_delivery),
        "lost_ok_steps": steps.iter().filter(|s| s.ok).map(|s| s.lost).sum::<i64>(),
        "lost_all_steps": steps.iter().map(|s| s.lost).sum::<i64>(),
        "duplicates_all_steps": steps.iter().map(|s| s.duplicates).sum::<u64>(),
        "unheard_all_steps": steps.iter().map(|s| s.unheard).sum::<u64>(),
        "sidecar_at_end": counters,
        "redis_reconnects": counters.map(|c| c.redis_reconnects),
        "stopped_by": steps.last().filter(|s| !s.ok).map(|s| {
            if s.lost != 0 { "loss" } else if s.duplicates > 0 { "duplicates" } else if s.publish_errors > 0 { "publish errors" } else if s.sidecar.is_some_and(|c| c.redis_reconnects > 0) { "redis reconnect" } else { "p99" }
        }).or_else(|| steps.last().filter(|s| s.saturated).map(|_| "saturated (delivered < 80% of target)"))
        .unwrap_or("end of ramp"),
        "steps": steps,
    }))
}
