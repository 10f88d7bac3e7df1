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
        let status = Command::new(cargo)
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
        let child = tokio::process::Command::new(binary())
            .kill_on_drop(true)
            .args([
                "--listen",
                &public.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn taskstream-sidecar");
        let mut child = child;
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let logs = logs.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("{line}");
                    let mut logs = logs.lock().expect("logs lock");
                    if logs.len() == 1000 {
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
