//! Summaries over runs: medians per target and the sidecar's ratio to the baseline, a markdown
//! table for the README, and the latency-against-rate plot (hand-written SVG).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::scenario::{median, r3};

/// A figure reported per scenario: a label, where it sits in a run's JSON, and how runs combine.
pub struct Figure {
    pub label: &'static str,
    pub pointer: &'static str,
    /// Counts of things that must not happen (loss, duplicates, reconnects) report the worst
    /// run, never a median that could hide one.
    pub worst: bool,
}

/// The figures each scenario reports.
pub fn figures(scenario: &str) -> &'static [Figure] {
    macro_rules! f {
        ($label:expr, $pointer:expr) => {
            Figure {
                label: $label,
                pointer: $pointer,
                worst: false,
            }
        };
    }
    macro_rules! worst {
        ($label:expr, $pointer:expr) => {
            Figure {
                label: $label,
                pointer: $pointer,
                worst: true,
            }
        };
    }
    match scenario {
        "idle" => &[
            f!("RSS per idle connection (bytes)", "/bytes_per_conn"),
            f!("connect time for all (s)", "/connect_secs"),
        ],
        "fanout" => &[
            f!(
                "max deliveries/s (p99 <= limit, no loss)",
                "/max_ok_delivered_per_sec"
            ),
            f!(
                "server CPU per delivery at max (us)",
                "/cpu_us_per_delivery_at_max"
            ),
            f!(
                "deliveries per server CPU-second",
                "/deliveries_per_cpu_sec_at_max"
            ),
            f!("p50 at 50k/s (ms)", "step:50000:p50_ms"),
            f!("p99 at 50k/s (ms)", "step:50000:p99_ms"),
            f!("server CPU time at 50k/s (s)", "step:50000:server_cpu_secs"),
            f!(
                "server CPU per delivery at 50k/s (us)",
                "step:50000:server_cpu_us_per_delivery"
            ),
            f!("load tool CPU at 50k/s (%)", "step:50000:tool_cpu_pct"),
            f!("p99 at max (ms)", "/p99_ms_at_max"),
            f!(
                "redis-server CPU per delivery at max (us)",
                "/broker_cpu_us_per_delivery_at_max"
            ),
            f!("publishing per step (s)", "/step_secs"),
            f!("clients connected through the run (s)", "/connected_secs"),
            worst!("lost in steps that passed (worst run)", "/lost_ok_steps"),
            worst!("lost in any step (worst run)", "/lost_all_steps"),
            worst!("duplicates (worst run)", "/duplicates_all_steps"),
            worst!("redis reconnects (worst run)", "/redis_reconnects"),
        ],
        "broadcast" => &[
            f!(
                "last of N clients has the event (ms)",
                "/last_client_ms_median"
            ),
            f!("events published", "/events"),
            f!("publishing (s)", "/publish_secs"),
            worst!("lost (worst run)", "/lost"),
            worst!("duplicates (worst run)", "/duplicates"),
            worst!("redis reconnects (worst run)", "/redis_reconnects"),
        ],
        "reconnect" => &[
            f!("server back after kill (ms)", "/restart_ms"),
            f!("all reconnected (ms)", "/all_connected_ms"),
            f!("all receiving again (ms)", "/all_receiving_ms"),
            f!("soak after the storm (s)", "/soak/publish_secs"),
            f!("soak deliveries/s", "/soak/delivered_per_sec"),
            f!("soak p99 (ms)", "/soak/p99_ms"),
            worst!("lost in the soak (worst run)", "/soak/lost"),
            worst!("duplicates in the soak (worst run)", "/soak/duplicates"),
            worst!(
                "redis reconnects after the restart (worst run)",
                "/redis_reconnects"
            ),
        ],
        "resume" => &[
            f!("sidecar ready again (ms)", "/ready_ms"),
            f!("all reconnected with last_id (ms)", "/all_reconnected_ms"),
            f!("all caught up (ms)", "/all_caught_up_ms"),
            f!(
                "all caught up after ready (ms)",
                "/all_caught_up_after_ready_ms"
            ),
            f!("events recovered from history", "/history_recovered_events"),
            f!(
                "redis-server CPU while catching up (ms)",
                "/redis_cpu_ms_catching_up"
            ),
            f!("sidecar RSS before (bytes)", "/sidecar_rss_before_bytes"),
            f!(
                "sidecar RSS peak catching up (bytes)",
                "/sidecar_rss_peak_bytes"
            ),
            f!(
                "publishing after the restart (s)",
                "/steps/after/publish_secs"
            ),
            worst!("lost (worst run)", "/lost"),
            worst!("duplicates (worst run)", "/duplicates"),
            worst!("resets (worst run)", "/resets"),
            worst!("redis reconnects (worst run)", "/redis_reconnects"),
        ],
        "proxy" => &[
            f!("direct p50 (ms)", "/direct/serial_p50_ms"),
            f!("through sidecar p50 (ms)", "/sidecar/serial_p50_ms"),
            f!("added p50 (ms)", "/added_p50_ms"),
            f!("added p99 (ms)", "/added_p99_ms"),
            f!("direct req/s (loaded)", "/direct/loaded_rps"),
            f!("through sidecar req/s (loaded)", "/sidecar/loaded_rps"),
            f!("throughput ratio sidecar/direct", "/throughput_ratio"),
        ],
        _ => &[],
    }
}

/// The value of `pointer` in one run (see [`Figure`]).
pub fn value(run: &Value, pointer: &str) -> Option<f64> {
    if let Some(rest) = pointer.strip_prefix("step:") {
        let (rate, key) = rest.split_once(':')?;
        let rate: f64 = rate.parse().ok()?;
        return run["steps"]
            .as_array()?
            .iter()
            .find(|s| s["target_rate"].as_f64() == Some(rate))
            .and_then(|s| s[key].as_f64());
    }
    run.pointer(pointer).and_then(Value::as_f64)
}

/// Medians (or the worst run, see [`Figure::worst`]) per (scenario, variant, figure, target)
/// and the sidecar/baseline ratio. Runs on `--broker redis` are a variant of their own
/// (`... , redis`), both servers then taking their events from Redis.
pub fn summarize(runs: &[Value]) -> Vec<Value> {
    // (scenario, variant) -> target -> runs
    let mut by: BTreeMap<(String, String), BTreeMap<String, Vec<&Value>>> = BTreeMap::new();
    for r in runs {
        let scenario = r["scenario"].as_str().unwrap_or("").to_owned();
        let mut variant = r["variant"].as_str().unwrap_or("").to_owned();
        if r["broker"] == "redis" {
            variant.push_str(", redis");
        }
        let target = r["target"].as_str().unwrap_or("").to_owned();
        by.entry((scenario, variant))
            .or_default()
            .entry(target)
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for ((scenario, variant), targets) in by {
        for fig in figures(&scenario) {
            let med = |t: &str| {
                targets.get(t).and_then(|rs| {
                    let xs: Vec<f64> = rs.iter().filter_map(|r| value(r, fig.pointer)).collect();
                    let n = xs.len();
                    let v = if fig.worst {
                        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                    } else {
                        median(xs)
                    };
                    (n > 0).then(|| (r3(v), n))
                })
            };
            let s = med("sidecar");
            let b = med("baseline");
            if s.is_none() && b.is_none() {
                continue;
            }
            let ratio = match (s, b) {
                (Some((s, _)), Some((b, _))) if b != 0.0 => Some(r3(s / b)),
                _ => None,
            };
            out.push(json!({
                "summary": scenario, "variant": variant, "figure": fig.label,
                "sidecar": s.map(|x| x.0), "baseline": b.map(|x| x.0), "ratio": ratio,
                "runs": s.map(|x| x.1).max(b.map(|x| x.1)),
            }));
        }
    }
    out
}

/// The summary as a markdown table.
pub fn markdown(summary: &[Value]) -> String {
    let mut md = String::from(
        "| scenario | figure | taskstream | baseline | ratio | runs |\n|---|---|---:|---:|---:|---:|\n",
    );
    let cell = |v: &Value| match v.as_f64() {
        Some(x) if x.abs() >= 1000.0 => format!("{x:.0}"),
        Some(x) => format!("{x}"),
        None => "-".into(),
    };
    for s in summary {
        let name = match s["variant"].as_str() {
            Some(v) if !v.is_empty() => format!("{} ({v})", s["summary"].as_str().unwrap_or("")),
            _ => s["summary"].as_str().unwrap_or("").to_owned(),
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            s["figure"].as_str().unwrap_or(""),
            cell(&s["sidecar"]),
            cell(&s["baseline"]),
            cell(&s["ratio"]),
            s["runs"].as_u64().unwrap_or(0)
        );
    }
    md
}

/// target -> target rate -> (delivered/s, p50 ms, p99 ms) of each run.
type Points = BTreeMap<String, BTreeMap<u64, Vec<(f64, f64, f64)>>>;

/// Latency percentiles (p50, p99) against delivered rate from the fan-out runs, one line per
/// target and percentile through the per-step medians; log-scaled latency axis.
pub fn svg(runs: &[Value]) -> String {
    // target -> target_rate -> (delivered/s, p50, p99) of each run
    let mut pts: Points = BTreeMap::new();
    let mut title = String::from("fan-out");
    for r in runs.iter().filter(|r| r["scenario"] == "fanout") {
        let mut target = r["target"].as_str().unwrap_or("").to_owned();
        if r["broker"] == "redis" {
            target.push_str("-redis");
        }
        title = format!("fan-out, {} conns / {} groups", r["conns"], r["groups"]);
        for s in r["steps"].as_array().into_iter().flatten() {
            let (Some(rate), Some(d), Some(p50), Some(p99)) = (
                s["target_rate"].as_f64(),
                s["delivered_per_sec"].as_f64(),
                s["p50_ms"].as_f64(),
                s["p99_ms"].as_f64(),
            ) else {
                continue;
            };
            pts.entry(target.clone())
                .or_default()
                .entry(rate as u64)
                .or_default()
                .push((d, p50.max(0.01), p99.max(0.01)));
        }
    }
    let (w, h, ml, mr, mt, mb) = (760.0, 460.0, 70.0, 170.0, 40.0, 50.0);
    let max_rate = pts
        .values()
        .flat_map(|m| m.values().flatten().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let x_max = (max_rate / 50_000.0).ceil().max(1.0) * 50_000.0;
    let (y_lo, y_hi) = (-2.0f64, 3.0f64); // 0.01 ms .. 1000 ms
    let x = |v: f64| ml + v / x_max * (w - ml - mr);
    let y = |ms: f64| mt + (y_hi - ms.log10().clamp(y_lo, y_hi)) / (y_hi - y_lo) * (h - mt - mb);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{ml}\" y=\"24\" font-size=\"15\">{title}: latency percentiles vs delivered rate (medians)</text>\n"
    );
    for e in -2..=3 {
        let ms = 10f64.powi(e);
        let yy = y(ms);
        let _ = writeln!(
            s,
            "<line x1=\"{ml}\" x2=\"{}\" y1=\"{yy}\" y2=\"{yy}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{ms} ms</text>",
            w - mr,
            ml - 6.0,
            yy + 4.0
        );
    }
    let steps = 5;
    for i in 0..=steps {
        let v = x_max * i as f64 / steps as f64;
        let xx = x(v);
        let _ = writeln!(
            s,
            "<line x1=\"{xx}\" x2=\"{xx}\" y1=\"{mt}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{xx}\" y=\"{}\" text-anchor=\"middle\">{}k</text>",
            h - mb,
            h - mb + 16.0,
            (v / 1000.0).round()
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">delivered events per second</text>",
        (ml + w - mr) / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        "<line x1=\"{ml}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#c33\" stroke-dasharray=\"4 3\"/><text x=\"{}\" y=\"{}\" fill=\"#c33\" text-anchor=\"end\">p99 limit 100 ms</text>",
        w - mr,
        y(100.0),
        y(100.0),
        w - mr - 4.0,
        y(100.0) - 5.0
    );
    let styles = [
        ("sidecar", 1, "#1f77b4", "", "taskstream p50"),
        ("sidecar", 2, "#1f77b4", "6 3", "taskstream p99"),
        ("baseline", 1, "#ff7f0e", "", "baseline p50"),
        ("baseline", 2, "#ff7f0e", "6 3", "baseline p99"),
        ("sidecar-redis", 1, "#2ca02c", "", "via Redis p50"),
        ("sidecar-redis", 2, "#2ca02c", "6 3", "via Redis p99"),
    ];
    for (i, (target, which, color, dash, label)) in styles.iter().enumerate() {
        let Some(m) = pts.get(*target) else { continue };
        let line: Vec<(f64, f64)> = m
            .values()
            .map(|runs| {
                let d = median(runs.iter().map(|p| p.0).collect());
                let l = median(
                    runs.iter()
                        .map(|p| if *which == 1 { p.1 } else { p.2 })
                        .collect(),
                );
                (d, l)
            })
            .collect();
        let path: Vec<String> = line
            .iter()
            .map(|(d, l)| format!("{:.1},{:.1}", x(*d), y(*l)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\" points=\"{}\"/>",
            path.join(" ")
        );
        for (d, l) in &line {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                x(*d),
                y(*l)
            );
        }
        let ly = mt + 20.0 + 20.0 * i as f64;
        let lx = w - mr + 14.0;
        let _ = writeln!(
            s,
            "<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\"/><text x=\"{}\" y=\"{}\">{label}</text>",
            lx + 26.0,
            lx + 32.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}
