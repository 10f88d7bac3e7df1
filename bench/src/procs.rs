//! The processes a run measures: the sidecar, the baseline broadcast server, the tiny HTTP app
//! and redis-server, each a child on free loopback ports, killed on drop.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::http::get;
use crate::procstat::{self, Usage};

/// How long a child gets to start listening.
const START: Duration = Duration::from_secs(15);

/// A currently free loopback port (bound and released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Where the binaries are: beside this executable unless told otherwise.
#[derive(Clone, Debug)]
pub struct Bins {
    pub sidecar: PathBuf,
    pub baseline: PathBuf,
}

impl Bins {
    pub fn beside_me() -> Self {
        let dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_path_buf()))
            .unwrap_or_default();
        Self {
            sidecar: dir.join("taskstream-sidecar"),
            baseline: dir.join("taskstream-bench-baseline"),
        }
    }
}

/// The JWT secret the sidecar and the baseline are started with; the load tool signs its tokens
/// with it.
pub const JWT_SECRET: &str = "taskstream-bench-secret-0123456789";

/// Which server a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// taskstream-sidecar, JWT (HS256) auth.
    Sidecar,
    /// The lean baseline fan-out server: JWT (HS256) auth, Redis pub/sub or admin publish.
    Baseline,
}

/// How events reach the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Feed {
    /// `POST /publish/<group>` on the admin port (sidecar `--broker memory`; baseline without
    /// Redis).
    Admin,
    /// Redis `PUBLISH taskstream:<group>` (sidecar `--broker redis`; baseline `--redis-url`).
    Redis(String),
}

/// A running server under test.
pub struct Server {
    pub kind: Kind,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    pub pid: u32,
    spec: Spec,
}

#[derive(Clone)]
struct Spec {
    bins: Bins,
    feed: Feed,
    upstream: Option<SocketAddr>,
    /// More sidecar flags (`--history-size N`); the baseline takes none.
    extra: Vec<String>,
}

impl Server {
    /// Starts `kind` on free ports and waits until it is ready.
    pub async fn start(
        kind: Kind,
        bins: &Bins,
        feed: Feed,
        upstream: Option<SocketAddr>,
    ) -> Result<Self> {
        Self::start_with(kind, bins, feed, upstream, Vec::new()).await
    }

    /// [`Server::start`] with more sidecar flags.
    pub async fn start_with(
        kind: Kind,
        bins: &Bins,
        feed: Feed,
        upstream: Option<SocketAddr>,
        extra: Vec<String>,
    ) -> Result<Self> {
        let public = loopback(free_port()?);
        let admin = loopback(free_port()?);
        let spec = Spec {
            bins: bins.clone(),
            feed,
            upstream,
            extra,
        };
        Self::spawn_on(kind, spec, public, admin).await
    }

    async fn spawn_on(
        kind: Kind,
        spec: Spec,
        public: SocketAddr,
        admin: SocketAddr,
    ) -> Result<Self> {
        let mut cmd = match kind {
            Kind::Sidecar => {
                let mut c = Command::new(&spec.bins.sidecar);
                c.args(["--listen", &public.to_string()])
                    .args(["--admin-listen", &admin.to_string()])
                    .args(["--auth", "jwt", "--jwt-secret", JWT_SECRET])
                    .args(["--max-connections", "25000"])
                    .env("RUST_LOG", "warn");
                match &spec.feed {
                    Feed::Admin => c.args(["--broker", "memory"]),
                    Feed::Redis(url) => c.args(["--broker", "redis", "--redis-url", url]),
                };
                if let Some(up) = spec.upstream {
                    c.args(["--upstream", &format!("http://{up}")]);
                }
                c.args(&spec.extra);
                c
            }
            Kind::Baseline => {
                let mut c = Command::new(&spec.bins.baseline);
                c.args(["broadcast", "--listen", &public.to_string()])
                    .args(["--admin-listen", &admin.to_string()])
                    .args(["--jwt-secret", JWT_SECRET]);
                if let Feed::Redis(url) = &spec.feed {
                    c.args(["--redis-url", url]);
                }
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {kind:?} (build with cargo build --release -p taskstream-bench -p taskstream-sidecar)"))?;
        let pid = child.id().context("child pid")?;
        let server = Self {
            kind,
            public,
            admin,
            child,
            pid,
            spec,
        };
        wait_ready(admin, "/readyz").await?;
        Ok(server)
    }

    /// CPU time and RSS of the server process now.
    pub fn usage(&self) -> Usage {
        procstat::usage(&self.pid.to_string()).unwrap_or_default()
    }

    /// Kills the process (all its connections drop at once) and starts it again on the same
    /// ports; returns once the new one answers.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await;
        self.start_again().await
    }

    /// Starts the (killed) process again on the same ports; returns once it answers.
    pub async fn start_again(&mut self) -> Result<()> {
        let next = Self::spawn_on(self.kind, self.spec.clone(), self.public, self.admin).await?;
        *self = next;
        Ok(())
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Polls `GET http://addr{path}` until it answers 200, for at most [`START`].
pub async fn wait_ready(addr: SocketAddr, path: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + START;
    loop {
        if let Ok((200, _)) = get(addr, path).await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{addr}{path} not ready within {START:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The tiny HTTP app the proxy scenario targets, as a child process.
pub struct App {
    pub addr: SocketAddr,
    pub pid: u32,
    _child: Child,
}

impl App {
    pub async fn start(bins: &Bins) -> Result<Self> {
        let addr = loopback(free_port()?);
        let child = Command::new(&bins.baseline)
            .args(["app", "--listen", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn the bench http app")?;
        let pid = child.id().context("child pid")?;
        wait_ready(addr, "/healthz").await?;
        Ok(Self {
            addr,
            pid,
            _child: child,
        })
    }

    pub fn usage(&self) -> Usage {
        procstat::usage(&self.pid.to_string()).unwrap_or_default()
    }
}

/// Our own redis-server on a free loopback port, killed on drop; with `resp2`, without `HELLO`.
pub struct Redis {
    pub url: String,
    pub pid: u32,
    _child: Child,
}

impl Redis {
    pub async fn start(resp2: bool) -> Result<Self> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(if resp2 {
                &["--rename-command", "HELLO", ""][..]
            } else {
                &[][..]
            })
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn redis-server (apt-get install redis-server)")?;
        let pid = child.id().context("child pid")?;
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + START;
        loop {
            let ok = async {
                let mut c = redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                redis::cmd("PING").query_async::<String>(&mut c).await
            }
            .await
            .is_ok();
            if ok {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("redis-server on {port} did not answer PING");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            url,
            pid,
            _child: child,
        })
    }

    pub fn usage(&self) -> Usage {
        procstat::usage(&self.pid.to_string()).unwrap_or_default()
    }
}
