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

/// A Redis Cluster of `redis-server --cluster-enabled yes` masters (no replicas), created with
/// `redis-cli --cluster create`; every node is killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts `n` masters on free ports, joins them into a cluster covering every slot, and
    /// waits until each node reports `cluster_state:ok`.
    pub async fn start(n: usize) -> Self {
        let dir = TempDir::new("cluster");
        let starts = (0..n).map(|_| {
            let port = free_port();
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            RedisServer::start_on(
                port,
                vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    conf.to_string_lossy().into_owned(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                ],
            )
        });
        let nodes = futures_util::future::join_all(starts).await;
        let mut create = tokio::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let status = tokio::time::timeout(
            WAIT,
            create
                .arg("--cluster-yes")
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .status(),
        )
        .await
        .expect("redis-cli --cluster create within the wait")
        .expect("run redis-cli (package redis-tools)");
        assert!(status.success(), "redis-cli --cluster create failed");
        let c = Self { nodes, _dir: dir };
        for node in &c.nodes {
            crate::eventually("cluster_state:ok on every node", || async {
                let mut conn = node.conn().await.ok()?;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                (info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{}", c.nodes.len())))
                .then_some(())
            })
            .await;
        }
        c
    }

    /// Seed URLs for `--redis-url` (two of the nodes, comma-separated).
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .take(2)
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn query<T: redis::FromRedisValue>(&self, node: usize, args: &[&str]) -> T {
        let mut conn = self.nodes[node].conn().await.expect("connect to node");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{args:?} on node {node}: {e}"))
    }

    /// `CLUSTER KEYSLOT key`.
    pub async fn slot_of(&self, key: &str) -> u16 {
        self.query(0, &["CLUSTER", "KEYSLOT", key]).await
    }

    pub async fn node_id(&self, node: usize) -> String {
        self.query(node, &["CLUSTER", "MYID"]).await
    }

    /// Index of the node owning `slot`, as node `ask` sees the slot map.
    pub async fn owner_as_seen_by(&self, ask: usize, slot: u16) -> usize {
        let nodes: String = self.query(ask, &["CLUSTER", "NODES"]).await;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(addr) = fields.get(1) else { continue };
            let owns = fields.iter().skip(8).any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u16>().is_ok_and(|a| a <= slot)
                        && b.parse::<u16>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<u16>() == Ok(slot),
            });
            if owns {
                let port: u16 = addr
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("port in CLUSTER NODES");
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .expect("owner is one of ours");
            }
        }
        panic!("no node owns slot {slot}");
    }

    /// Index of the node owning `slot`.
    pub async fn owner(&self, slot: u16) -> usize {
        self.owner_as_seen_by(0, slot).await
    }

    /// Migrates the (key-less) `slot` from node `from` to node `to`, by hand as
    /// `redis-cli --cluster reshard` does: IMPORTING, MIGRATING, then NODE everywhere.
    pub async fn move_slot(&self, slot: u16, from: usize, to: usize) {
        let s = slot.to_string();
        let from_id = self.node_id(from).await;
        let to_id = self.node_id(to).await;
        let _: () = self
            .query(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id])
            .await;
        let _: () = self
            .query(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id])
            .await;
        let _: () = self
            .query(to, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id])
            .await;
        let _: () = self
            .query(from, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id])
            .await;
        for other in (0..self.nodes.len()).filter(|&i| i != from && i != to) {
            let _: () = self
                .query(other, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id])
                .await;
        }
    }
}
