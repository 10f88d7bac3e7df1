//! A real `redis-server` on a free port, killed on drop. Extra flags make it a TLS server, a
//! replica or a cluster node; [`Sentinel`] runs `redis-server --sentinel`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{WAIT, free_port};

pub struct RedisServer {
    /// The plain-TCP port (the harness always keeps one, to PING and publish).
    pub port: u16,
    /// Flags added to every start (TLS files, `--replicaof`, `--cluster-enabled`, ...).
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` (installed by scripts/install-test-deps.sh) and waits for PING.
    pub async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    /// Starts `redis-server` with `extra` flags on a fresh free port and waits for PING.
    pub async fn start_with(extra: Vec<String>) -> Self {
        Self::start_on(free_port(), extra).await
    }

    /// Starts `redis-server` on `port` with `extra` flags and waits for PING.
    pub async fn start_on(port: u16, extra: Vec<String>) -> Self {
        let mut s = Self {
            port,
            extra,
            child: None,
        };
        s.spawn().await;
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server: run scripts/install-test-deps.sh first");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut c) = self.conn().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not answer PING on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A fresh multiplexed connection.
    pub async fn conn(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// `PUBLISH channel payload`, returning the number of receivers.
    pub async fn publish(&self, channel: &str, payload: impl AsRef<[u8]>) -> usize {
        let mut c = self.conn().await.expect("connect to redis");
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload.as_ref())
            .query_async(&mut c)
            .await
            .expect("PUBLISH")
    }

    /// `PUBSUB CHANNELS`, sorted.
    pub async fn channels(&self) -> Vec<String> {
        let mut c = self.conn().await.expect("connect to redis");
        let mut v: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut c)
            .await
            .expect("PUBSUB CHANNELS");
        v.sort();
        v
    }

    /// `SPUBLISH channel payload` on this node (a cluster node owning the channel's slot).
    pub async fn spublish(&self, channel: &str, payload: impl AsRef<[u8]>) -> usize {
        let mut c = self.conn().await.expect("connect to redis");
        redis::cmd("SPUBLISH")
            .arg(channel)
            .arg(payload.as_ref())
            .query_async(&mut c)
            .await
            .expect("SPUBLISH")
    }

    /// Whether the process is still running (not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A scratch directory under the system temp dir, removed on drop (config files, nodes.conf).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "taskstream-{label}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` in the directory and returns its path as a string (for flags).
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real `redis-server --sentinel` monitoring one master set, killed on drop.
pub struct Sentinel {
    pub port: u16,
    child: Option<Child>,
    _dir: TempDir,
}

impl Sentinel {
    /// Starts a sentinel watching `master` at 127.0.0.1:`master_port` with `quorum`, quick to
    /// act (down after 1 s, failover timeout 5 s), and waits for PING.
    pub async fn start(master: &str, master_port: u16, quorum: u32) -> Self {
        let port = free_port();
        let dir = TempDir::new("sentinel");
        let conf = dir.write(
            "sentinel.conf",
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {master} 127.0.0.1 {master_port} {quorum}\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 5000\n\
                 sentinel parallel-syncs {master} 1\n",
                dir = dir.path().display()
            ),
        );
        let child = Command::new("redis-server")
            .args([conf.as_str(), "--sentinel"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server --sentinel");
        let s = Self {
            port,
            child: Some(child),
            _dir: dir,
        };
        crate::eventually("sentinel answers PING", || async {
            let mut c = s.conn().await.ok()?;
            redis::cmd("PING").query_async::<String>(&mut c).await.ok()
        })
        .await;
        s
    }

    pub async fn conn(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?
            .get_multiplexed_async_connection()
            .await
    }

    /// `SENTINEL <sub> <master>` as a list of field maps (replicas, sentinels).
    pub async fn list(
        &self,
        sub: &str,
        master: &str,
    ) -> Vec<std::collections::HashMap<String, String>> {
        let Ok(mut c) = self.conn().await else {
            return Vec::new();
        };
        redis::cmd("SENTINEL")
            .arg(sub)
            .arg(master)
            .query_async(&mut c)
            .await
            .unwrap_or_default()
    }

    /// The port of the master this sentinel names now.
    pub async fn master_port(&self, master: &str) -> Option<u16> {
        let mut c = self.conn().await.ok()?;
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query_async(&mut c)
            .await
            .ok()?;
        addr?.1.parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
