//! The sidecar under test: in-process from the library (port 0, no races), or the real binary
//! (for signals and exit codes).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use clap::Parser;
use taskstream_sidecar::config::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;

use crate::upstream::http_get;
use crate::{WAIT, free_port, loopback};

/// A sidecar running inside the test process.
pub struct Sidecar {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sidecar {
    /// Starts a sidecar with `args` (flags as on the command line) on loopback port 0.
    pub async fn start(args: &[&str]) -> Self {
        let mut argv = vec![
            "taskstream-sidecar",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ];
        argv.extend_from_slice(args);
        let config = Args::try_parse_from(argv)
            .expect("sidecar flags parse")
            .validate()
            .expect("sidecar flags are valid");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = stop_rx.await;
            };
            taskstream_sidecar::run(config, stop, move |b| {
                let _ = bound_tx.send(b);
            })
            .await
            .expect("sidecar run");
        });
        let bound = tokio::time::timeout(WAIT, bound_rx)
            .await
            .expect("sidecar binds within the wait")
            .expect("sidecar started");
        Self {
            public: bound.public,
            admin: bound.admin,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// `ws://<public>/ws/tasks/?<query>`.
    pub fn ws_url(&self, query: &str) -> String {
        ws_url(self.public, query)
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.admin)).await.1
    }

    /// The value of one metric line (exact name with labels), or 0.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics().await, name)
    }

    pub async fn readyz(&self) -> u16 {
        http_get(&format!("http://{}/readyz", self.admin)).await.0
    }

    /// Waits for `/readyz` to answer `status`.
    pub async fn wait_ready(&self, status: u16) {
        let admin = self.admin;
        crate::eventually(&format!("/readyz == {status}"), || async move {
            (http_get(&format!("http://{admin}/readyz")).await.0 == status).then_some(())
        })
        .await;
    }

    /// Waits for `/readyz/broker` to answer `status` (200: the broker is connected).
    pub async fn wait_broker(&self, status: u16) {
        let admin = self.admin;
        crate::eventually(&format!("/readyz/broker == {status}"), || async move {
            (http_get(&format!("http://{admin}/readyz/broker")).await.0 == status).then_some(())
        })
        .await;
    }

    /// Graceful stop, as on SIGTERM; waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("sidecar stops within the wait")
                .expect("sidecar task");
        }
    }

    /// Begins a graceful stop without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn ws_url(addr: SocketAddr, query: &str) -> String {
    if query.is_empty() {
        format!("ws://{addr}/ws/tasks/")
    } else {
        format!("ws://{addr}/ws/tasks/?{query}")
    }
}

/// Reads `name value` from Prometheus/OpenMetrics text; 0 when absent.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Path of the `taskstream-sidecar` binary, built once per test process.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // What cargo sets for this test process (CARGO_PKG_*, CARGO_MANIFEST_DIR, ...) is not the
        // outer build's environment: ring's build script watches some of it, so inheriting it
        // rebuilt ring and everything above it here, and again in the next `cargo test`.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|p| name.starts_with(p))
                || name == "CARGO_TARGET_TMPDIR"
                || name == "CARGO_RUSTC_CURRENT_DIR"
            {
                build.env_remove(name.as_ref());
            }
        }
        let status = build
            .args([
                "build",
                "-q",
                "-p",
                "taskstream-sidecar",
                "--bin",
                "taskstream-sidecar",
            ])
            .current_dir(&root)
            .status()
            .expect("run cargo build for the sidecar binary");
        assert!(status.success(), "cargo build -p taskstream-sidecar failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        target.join("debug").join("taskstream-sidecar")
    })
    .clone()
}

/// The real `taskstream-sidecar` binary as a child process.
pub struct SidecarProcess {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    child: Option<tokio::process::Child>,
    /// Its most recent stderr lines (also echoed to the test's stderr), for [`Self::wait_log`].
    logs: Arc<Mutex<VecDeque<String>>>,
}

impl SidecarProcess {
    /// Spawns the binary on free ports and waits for `/healthz`.
    pub async fn spawn(args: &[&str]) -> Self {
        Self::spawn_on(loopback(free_port()), loopback(free_port()), args).await
    }

    /// Spawns the binary on the given addresses (e.g. to restart it where it was).
    pub async fn spawn_on(public: SocketAddr, admin: SocketAddr, args: &[&str]) -> Self {
        Self::spawn_inner(public, admin, args, &[]).await
    }

    /// Like [`SidecarProcess::spawn`], with `env` set. `args` may name its own `--admin-listen`.
    /// (Every sidecar process's stderr is a pipe, so not a terminal, read by [`Self::stderr`].)
    pub async fn spawn_captured(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_inner(loopback(free_port()), loopback(free_port()), args, env).await
    }

    async fn spawn_inner(
        public: SocketAddr,
        admin: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let given_admin = admin_override(args);
        let mut own = vec!["--listen".to_owned(), public.to_string()];
        if given_admin.is_none() {
            own.extend(["--admin-listen".to_owned(), admin.to_string()]);
        }
        let admin = given_admin.unwrap_or(admin);
        let mut child = tokio::process::Command::new(binary())
            .kill_on_drop(true)
            .args(own)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn taskstream-sidecar");
        // Drained line by line as it comes (the child never blocks on a full pipe), echoed to
        // the test's stderr and kept (the newest lines) for `stderr` and `wait_log`.
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let logs = logs.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("{line}");
                    let mut logs = logs.lock().expect("logs lock");
                    if logs.len() == 5000 {
                        logs.pop_front();
                    }
                    logs.push_back(line);
                }
            });
        }
        let p = Self {
            public,
            admin,
            child: Some(child),
            logs,
        };
        crate::eventually("sidecar /healthz", || async move {
            (http_get(&format!("http://{admin}/healthz")).await.0 == 200).then_some(())
        })
        .await;
        p
    }

    /// The process's resident memory in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().and_then(|c| c.id()).expect("running");
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// SIGKILL, as a crashed or evicted pod: no close frames, nothing drained.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(WAIT, c.wait()).await;
        }
    }

    /// Waits (bounded) for a stderr line containing `needle` and returns it.
    pub async fn wait_log(&self, needle: &str) -> String {
        let logs = self.logs.clone();
        crate::eventually(&format!("sidecar log line with {needle:?}"), || {
            let found = logs
                .lock()
                .expect("logs lock")
                .iter()
                .find(|l| l.contains(needle))
                .cloned();
            async move { found }
        })
        .await
    }

    /// What the process wrote to stderr so far (its newest 5000 lines).
    pub fn stderr(&self) -> String {
        let logs = self.logs.lock().expect("logs lock");
        logs.iter().map(|l| format!("{l}\n")).collect()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("running")
            .to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM {pid}");
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        match tokio::time::timeout(WAIT, child.wait()).await {
            Ok(status) => status.expect("wait for sidecar"),
            Err(_) => {
                let _ = child.start_kill();
                panic!("sidecar did not exit within {WAIT:?}");
            }
        }
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
        }
    }
}

/// The `--admin-listen` in `args`, if any.
fn admin_override(args: &[&str]) -> Option<SocketAddr> {
    let at = args.iter().position(|a| *a == "--admin-listen")?;
    args.get(at + 1)?.parse().ok()
}

/// Runs the binary with `args` and returns (exit code, stderr) — for config errors.
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(binary())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("TASKSTREAM_AUTH")
        .output()
        .expect("run taskstream-sidecar");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
