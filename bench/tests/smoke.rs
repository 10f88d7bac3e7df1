//! Smoke test: every scenario with a handful of connections for a fraction of a second, to prove
//! the tool works end to end (real sidecar binary, baseline, app, redis-server). Asserts that
//! each run completes and reports, never a speed; the Redis fan-out publishes for 16 s to each
//! server (sidecar and lean baseline) and must lose nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every scenario run here must finish within this.
const LIMIT: Duration = Duration::from_secs(120);

fn sidecar_bin() -> PathBuf {
    taskstream_tests::sidecar::binary()
}

/// Runs `taskstream-bench <args>` and returns its JSON lines.
fn bench(sidecar: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskstream-bench"))
        .args(["--sidecar-bin", sidecar.to_str().expect("utf-8 path")])
        .args([
            "--baseline-bin",
            env!("CARGO_BIN_EXE_taskstream-bench-baseline"),
        ])
        .args(["--runs", "1", "--deadline-secs", "60"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn taskstream-bench");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("taskstream-bench {args:?} did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    assert!(status.success(), "taskstream-bench {args:?} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// The summary line of `figure` (Redis path) has both servers' figures (and, given, their
/// common value).
fn assert_compared(lines: &[serde_json::Value], scenario: &str, figure: &str, both: Option<f64>) {
    let s = lines
        .iter()
        .find(|l| l["summary"] == scenario && l["figure"] == figure)
        .unwrap_or_else(|| panic!("no summary of {figure}: {lines:?}"));
    assert!(
        s["variant"]
            .as_str()
            .is_some_and(|v| v.ends_with(", redis")),
        "{s}"
    );
    for target in ["sidecar", "baseline"] {
        assert!(s[target].as_f64().is_some(), "{target}: {s}");
        if let Some(v) = both {
            assert_eq!(s[target].as_f64(), Some(v), "{target}: {s}");
        }
    }
}

fn runs<'a>(lines: &'a [serde_json::Value], scenario: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["scenario"] == scenario).collect()
}

#[test]
fn every_scenario_runs_with_a_few_clients() {
    let sidecar = sidecar_bin();

    let idle = bench(&sidecar, &["idle", "--conns", "20"]);
    let r = runs(&idle, "idle");
    assert_eq!(r.len(), 2, "sidecar and baseline: {idle:?}");
    assert!(r.iter().all(|l| l["open"] == 20), "{r:?}");

    let fan = bench(
        &sidecar,
        &[
            "fanout",
            "--fanout-conns",
            "20",
            "--groups",
            "4",
            "--rates",
            "100,200",
            "--step-secs",
            "0.3",
        ],
    );
    let r = runs(&fan, "fanout");
    assert_eq!(r.len(), 2, "{fan:?}");
    for l in r {
        let steps = l["steps"].as_array().expect("steps");
        assert!(!steps.is_empty());
        assert!(steps[0]["delivered"].as_u64() > Some(0), "{l}");
    }

    // The Redis path through a real redis-server, sidecar and lean baseline alike, publishing
    // without pause for the default --min-secs (16 s, more than three of the sidecar's 5 s
    // keep-alive PINGs): nothing lost, nothing twice, the subscription never re-made, and the
    // summary has the sidecar's ratio to the baseline.
    let fan = bench(
        &sidecar,
        &[
            "--broker",
            "redis",
            "fanout",
            "--fanout-conns",
            "20",
            "--groups",
            "4",
            "--rates",
            "200",
        ],
    );
    let r = runs(&fan, "fanout");
    assert_eq!(r.len(), 2, "sidecar and baseline: {fan:?}");
    for l in &r {
        assert_eq!(l["broker"], "redis", "{l}");
        let step = &l["steps"][0];
        assert!(step["publish_secs"].as_f64() >= Some(15.9), "{step}");
        assert!(step["expected"].as_u64() >= Some(3000), "{step}");
        assert_eq!(step["lost"], 0, "{step}");
        assert_eq!(step["duplicates"], 0, "{step}");
        assert_eq!(step["unheard"], 0, "{step}");
    }
    let sidecar_run = r
        .iter()
        .find(|l| l["target"] == "sidecar")
        .expect("sidecar");
    assert_eq!(sidecar_run["redis_reconnects"], 0, "{sidecar_run}");
    assert_compared(&fan, "fanout", "lost in any step (worst run)", Some(0.0));

    // Idle through Redis, the sidecar with history on: both hold every client (the baseline's
    // JWT auth and per-group SUBSCRIBE included) and the summary compares them.
    let idle = bench(
        &sidecar,
        &[
            "--broker",
            "redis",
            "idle",
            "--conns",
            "20",
            "--history-size",
            "100",
        ],
    );
    let r = runs(&idle, "idle");
    assert_eq!(r.len(), 2, "{idle:?}");
    assert!(
        r.iter().all(|l| l["open"] == 20 && l["broker"] == "redis"),
        "{r:?}"
    );
    assert_compared(&idle, "idle", "RSS per idle connection (bytes)", None);

    let b = bench(&sidecar, &["broadcast", "--conns", "20", "--repeats", "2"]);
    let r = runs(&b, "broadcast");
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|l| l["incomplete"] == 0), "{r:?}");

    let p = bench(&sidecar, &["proxy", "--secs", "0.2", "--concurrency", "2"]);
    let r = runs(&p, "proxy");
    assert_eq!(r.len(), 1);
    assert!(r[0]["sidecar"]["serial_rps"].as_f64() > Some(0.0), "{p:?}");

    let s = bench(
        &sidecar,
        &[
            "reconnect",
            "--conns",
            "20",
            "--groups",
            "4",
            "--jitter-ms",
            "100",
        ],
    );
    let r = runs(&s, "reconnect");
    assert_eq!(r.len(), 2);
    assert!(
        r.iter().all(|l| l["all_receiving_ms"].as_f64().is_some()),
        "{r:?}"
    );

    // The storm on the Redis path (redis-server stays up, the sidecar is killed and started
    // again), then a short soak: it claims nothing beyond its 2 s.
    let s = bench(
        &sidecar,
        &[
            "--broker",
            "redis",
            "--target",
            "sidecar",
            "--min-secs",
            "2",
            "reconnect",
            "--conns",
            "20",
            "--groups",
            "4",
            "--jitter-ms",
            "100",
            "--soak-rate",
            "400",
        ],
    );
    let r = runs(&s, "reconnect");
    assert_eq!(r.len(), 1, "{s:?}");
    assert!(r[0]["all_receiving_ms"].as_f64().is_some(), "{}", r[0]);
    assert_eq!(r[0]["soak"]["lost"], 0, "{}", r[0]);
    assert_eq!(r[0]["redis_reconnects"], 0, "{}", r[0]);

    // The resume storm: taskstream.v1 clients back with last_id after 0.5 s down get what they
    // missed from history, once each.
    let s = bench(
        &sidecar,
        &[
            "--broker",
            "redis",
            "--min-secs",
            "2",
            "reconnect",
            "--resume",
            "--conns",
            "20",
            "--groups",
            "4",
            "--outage-ms",
            "500",
            "--soak-rate",
            "400",
        ],
    );
    let r = runs(&s, "resume");
    assert_eq!(r.len(), 1, "{s:?}");
    assert!(r[0]["all_caught_up_ms"].as_f64().is_some(), "{}", r[0]);
    assert!(
        r[0]["history_recovered_events"].as_u64() > Some(0),
        "{}",
        r[0]
    );
    for key in ["lost", "duplicates", "resets", "redis_reconnects"] {
        assert_eq!(r[0][key], 0, "{key}: {}", r[0]);
    }
}
