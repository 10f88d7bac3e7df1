//! The project's Python virtual environments (`.venv/` and examples/django's `.venv-example/`,
//! made by scripts/install-test-deps.sh) and a `group_send` driver: plain Python calling
//! `async_to_sync(layer.group_send)` the way a Celery task does, one message per request,
//! killed on drop.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::WAIT;

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `.venv/bin/python`; fails the test with the fix when the venv is missing.
pub fn venv_python() -> PathBuf {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./scripts/install-test-deps.sh (it creates .venv with django, channels, \
         channels-redis and msgpack from tests/python/requirements.txt)",
        python.display()
    );
    python
}

/// `.venv-example/bin/python`: examples/django's own venv, made from its requirements.txt plus
/// ./clients/python as its README says; fails the test with the fix when it is missing.
pub fn example_python() -> PathBuf {
    let python = root().join(".venv-example/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./scripts/install-test-deps.sh (it creates .venv-example from \
         examples/django/requirements.txt and ./clients/python)",
        python.display()
    );
    // The package is a regular install there (as the README has it), so a copy older than
    // clients/python would test old code: refuse it with the fix.
    let source = root().join("clients/python/src/taskstream");
    let installed = std::fs::read_dir(root().join(".venv-example/lib"))
        .expect("read .venv-example/lib")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/taskstream"))
        .find(|p| p.is_dir())
        .expect("taskstream installed in .venv-example");
    for entry in std::fs::read_dir(&source).expect("read clients/python/src/taskstream") {
        let path = entry.expect("directory entry").path();
        if path.is_file() {
            let name = path.file_name().expect("a file name");
            assert!(
                std::fs::read(&path).ok() == std::fs::read(installed.join(name)).ok(),
                "{} in .venv-example differs from clients/python: run ./scripts/install-test-deps.sh",
                name.to_string_lossy()
            );
        }
    }
    python
}

/// Which channels_redis layer class the Django settings use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Core,
    Pubsub,
}

/// A Python process (tests/python/sender.py) that calls `group_send` on request.
pub struct GroupSender {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl GroupSender {
    /// Starts the sender with the layer's `hosts` and `symmetric_encryption_keys` (empty: none).
    pub async fn start(layer: Layer, hosts: &[String], keys: &[&str]) -> Self {
        let mut child = Command::new(venv_python())
            .arg(root().join("tests/python/sender.py"))
            .env(
                "CHANNELS_LAYER",
                match layer {
                    Layer::Core => "core",
                    Layer::Pubsub => "pubsub",
                },
            )
            .env("CHANNELS_HOSTS", hosts.join(","))
            .env("CHANNELS_KEYS", keys.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tests/python/sender.py");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut s = Self {
            child,
            stdin,
            lines,
        };
        s.expect_line("ready").await;
        s
    }

    async fn expect_line(&mut self, want: &str) {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("sender.py did not answer {want:?} within {WAIT:?}"))
            .expect("read sender.py stdout");
        assert_eq!(
            line.as_deref(),
            Some(want),
            "sender.py (see its stderr above)"
        );
    }

    async fn request(&mut self, cmd: serde_json::Value) {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to sender.py");
        self.expect_line("ok").await;
    }

    /// `group_send(group, message)`; returns once it returned.
    pub async fn send(&mut self, group: &str, message: serde_json::Value) {
        self.request(serde_json::json!({"group": group, "message": message}))
            .await;
    }

    /// `group_send(group, {"type": "seq", "data": {"seq": i}})` for i = 0.. at a steady `rate`
    /// per second for `seconds`; returns how many were sent.
    pub async fn stream(&mut self, group: &str, seconds: u64, rate: u32) -> u64 {
        let mut line = serde_json::json!({"group": group, "stream_seconds": seconds, "rate": rate})
            .to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to sender.py");
        let answer = tokio::time::timeout(
            WAIT + std::time::Duration::from_secs(seconds),
            self.lines.next_line(),
        )
        .await
        .expect("sender.py streamed within its time")
        .expect("read sender.py stdout")
        .unwrap_or_default();
        answer
            .strip_prefix("ok ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("sender.py answered {answer:?} (see its stderr above)"))
    }

    /// `group_send(group, eval(python))`, for values JSON cannot carry (bytes, NaN, int keys).
    pub async fn send_python(&mut self, group: &str, python: &str) {
        self.request(serde_json::json!({"group": group, "eval": python}))
            .await;
    }
}

impl Drop for GroupSender {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
