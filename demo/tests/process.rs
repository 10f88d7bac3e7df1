//! The `taskstream-demo` binary as a container runs it: output to a pipe (no colour escapes),
//! stopped with SIGTERM, also as PID 1 of its own PID namespace (where the kernel ignores
//! signals that have no handler).

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

const BIN: &str = env!("CARGO_BIN_EXE_taskstream-demo");

/// The demo's arguments: any free port, publishing nowhere (no task is started).
const ARGS: [&str; 4] = [
    "--listen",
    "127.0.0.1:0",
    "--publish-url",
    "http://127.0.0.1:9",
];

/// Forwards every line of `out` to `lines`.
fn forward(out: impl AsyncRead + Unpin + Send + 'static, lines: mpsc::UnboundedSender<String>) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(out).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
}

/// Spawns `cmd` with stdout and stderr piped; returns it and a receiver of both streams' lines.
fn spawn(mut cmd: Command) -> (Child, mpsc::UnboundedReceiver<String>) {
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn taskstream-demo");
    let (tx, rx) = mpsc::unbounded_channel();
    forward(child.stdout.take().expect("stdout"), tx.clone());
    forward(child.stderr.take().expect("stderr"), tx);
    (child, rx)
}

/// Reads lines until one contains `needle`; returns every line read.
async fn wait_line(lines: &mut mpsc::UnboundedReceiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.recv().await {
            let hit = line.contains(needle);
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no line with {needle:?} within {WAIT:?}; got {seen:?}"
    );
    seen
}

fn kill(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {signal} {pid}");
}

async fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    match tokio::time::timeout(WAIT, child.wait()).await {
        Ok(status) => status.expect("wait for the process"),
        Err(_) => {
            let _ = child.start_kill();
            panic!("{what} did not exit within {WAIT:?} of SIGTERM");
        }
    }
}

#[tokio::test]
async fn no_colour_escapes_off_a_terminal_and_a_clean_exit_on_sigterm() {
    let mut cmd = Command::new(BIN);
    cmd.args(ARGS);
    let (mut child, mut lines) = spawn(cmd);
    let mut seen = wait_line(&mut lines, "demo app listening").await;
    kill(child.id().expect("running"), "-TERM");
    let status = wait_exit(&mut child, "taskstream-demo").await;
    // Exited by itself (code 0), not killed by the signal's default action.
    assert!(status.success(), "exit status {status}");
    // The rest of its output, up to the end of both pipes.
    while let Some(line) = tokio::time::timeout(WAIT, lines.recv())
        .await
        .expect("the pipes close within the wait")
    {
        seen.push(line);
    }
    assert!(
        seen.iter().any(|l| l.contains("SIGTERM received")),
        "{seen:?}"
    );
    for line in &seen {
        assert!(
            !line.contains("\x1b["),
            "ANSI escape in piped output: {line:?}"
        );
    }
}

#[tokio::test]
async fn exits_on_sigterm_as_pid_1() {
    // A PID namespace of its own (unprivileged, through a user namespace), as a container has.
    let probe = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--pid", "--fork", "true"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: `unshare --user --pid` is not available here (no user namespaces)");
        return;
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--pid", "--fork", BIN])
        .args(ARGS);
    let (mut unshare, mut lines) = spawn(cmd);
    wait_line(&mut lines, "demo app listening").await;
    // The demo is unshare's only child: PID 1 inside, this pid out here.
    let outer = unshare.id().expect("running");
    let children =
        std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children")).expect("children");
    let demo: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the demo's pid");
    let ns_pid = std::fs::read_to_string(format!("/proc/{demo}/status")).expect("status");
    assert!(
        ns_pid
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "the demo is PID 1 of its namespace: {ns_pid}"
    );
    kill(demo, "-TERM");
    // unshare exits with its child's status.
    let status = wait_exit(&mut unshare, "taskstream-demo as PID 1").await;
    assert!(status.success(), "exit status {status}");
}
