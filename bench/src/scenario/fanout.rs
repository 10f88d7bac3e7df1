//! Fan-out: N clients over G groups; the delivery rate is ramped step by step until p99 passes
//! the limit or an event is lost. Per step: deliveries/s, p50/p99, the server's CPU time per
//! delivered event, and this tool's own CPU (it must not be the bottleneck).

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Ctx, Meter, Target, r3, wait_until};
use crate::clients::{STEPS, members};
use crate::procs::Kind;
use crate::publish::{self, Schedule};

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
    pub delivered_per_sec: f64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: i64,
    pub publish_errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub server_cpu_us_per_delivery: f64,
    pub server_cpu_pct: f64,
    /// redis-server's CPU, when the sidecar uses `--broker redis`.
    pub broker_cpu_pct: f64,
    pub tool_cpu_pct: f64,
    pub ok: bool,
    /// Delivered less than 80% of the target rate: the ramp ends here.
    pub saturated: bool,
}

pub async fn run(ctx: &Ctx, kind: Kind, args: &Args) -> Result<Value> {
    let target = Target::start(ctx, kind).await?;
    let (fleet, opened) = target.fleet(ctx, args.conns, args.groups).await;
    let stats = fleet.stats.clone();
    // Only groups that have a member receive events; expected deliveries follow the layout.
    let groups = args.groups.min(opened.open.max(1));
    let per_event = opened.open as f64 / groups as f64;
    let mut steps = Vec::new();
    for (i, &rate) in args.rates.iter().enumerate().take(STEPS - 1) {
        let step = i + 1;
        let meter = Meter::start(&target);
        let broker_before = target.broker_cpu();
        let schedule = Schedule {
            step,
            rate: rate / per_event,
            duration: args.step,
            groups,
            pad: args.pad,
            workers: args.workers,
        };
        let published = publish::run(&target.sink, &schedule).await?;
        let publish_secs = published.secs;
        // Every published event reaches members(group) clients; events go round-robin.
        let per_group_events = |k: usize| {
            let e = published.events + published.errors;
            e / groups as u64 + u64::from((k as u64) < e % groups as u64)
        };
        let expected: u64 = if published.errors == 0 {
            (0..groups)
                .map(|k| per_group_events(k) * members(opened.open, groups, k) as u64)
                .sum()
        } else {
            (published.events as f64 * per_event) as u64
        };
        let hist = &stats.steps[step].hist;
        wait_until(Duration::from_secs(3), || hist.count() >= expected).await;
        let (wall, server_cpu, own_cpu) = meter.read(&target);
        let broker_cpu = target
            .broker_cpu()
            .saturating_sub(broker_before)
            .as_secs_f64();
        let delivered = hist.count();
        let lost = expected as i64 - delivered as i64;
        let p99_ms = hist.quantile(0.99) as f64 / 1000.0;
        let ok = lost <= 0 && published.errors == 0 && p99_ms <= args.p99_limit_ms;
        // The server (or the machine) cannot take more: a higher target only queues more.
        let saturated = (delivered as f64 / publish_secs) < 0.8 * rate;
        let r = StepResult {
            target_rate: rate,
            delivered_per_sec: r3(delivered as f64 / publish_secs),
            expected,
            delivered,
            lost,
            publish_errors: published.errors,
            p50_ms: hist.quantile(0.5) as f64 / 1000.0,
            p99_ms,
            max_ms: hist.max() as f64 / 1000.0,
            server_cpu_us_per_delivery: r3(server_cpu * 1e6 / delivered.max(1) as f64),
            server_cpu_pct: r3(server_cpu * 100.0 / wall),
            broker_cpu_pct: r3(broker_cpu * 100.0 / wall),
            tool_cpu_pct: r3(own_cpu * 100.0 / wall),
            ok,
            saturated,
        };
        eprintln!(
            "fanout {kind:?} step {step}: target {rate:.0}/s delivered {:.0}/s p50 {:.2} ms p99 {:.2} ms lost {lost} server {:.2} us/delivery tool cpu {:.0}%",
            r.delivered_per_sec, r.p50_ms, r.p99_ms, r.server_cpu_us_per_delivery, r.tool_cpu_pct
        );
        steps.push(r);
        if !ok || saturated {
            break;
        }
    }
    fleet.stop().await;
    let best = steps.iter().rfind(|s| s.ok);
    Ok(json!({
        "conns": args.conns,
        "groups": args.groups,
        "open": opened.open,
        "failures": opened.failures,
        "max_ok_delivered_per_sec": best.map(|s| s.delivered_per_sec),
        "cpu_us_per_delivery_at_max": best.map(|s| s.server_cpu_us_per_delivery),
        "deliveries_per_cpu_sec_at_max": best.map(|s| r3(1e6 / s.server_cpu_us_per_delivery.max(1e-9))),
        "stopped_by": steps.last().filter(|s| !s.ok).map(|s| {
            if s.lost > 0 { "loss" } else if s.publish_errors > 0 { "publish errors" } else { "p99" }
        }).or_else(|| steps.last().filter(|s| s.saturated).map(|_| "saturated (delivered < 80% of target)"))
        .unwrap_or("end of ramp"),
        "steps": steps,
    }))
}
