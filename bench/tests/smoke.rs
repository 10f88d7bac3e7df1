//! Smoke test: every scenario with a handful of connections for a fraction of a second, to prove
//! the tool works end to end (real sidecar binary, baseline, app, redis-server). Asserts only that
//! each run completes and reports; never a speed.

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

    for broker in ["memory", "redis"] {
        let fan = bench(
            &sidecar,
            &[
                "--broker",
                broker,
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
    }

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
}
