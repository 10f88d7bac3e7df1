//! The scenarios. Each `run` starts its own server (sidecar or baseline), drives it, and returns
//! one JSON object of figures; the CLI prints it as one line.

pub mod broadcast;
pub mod fanout;
pub mod idle;
pub mod positions;
pub mod proxy;
pub mod reconnect;
pub mod resume;

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::clients::{Fleet, Opened, Plan};
use crate::procs::{Bins, Feed, Kind, Redis, Server};
use crate::procstat::{self, Usage};
use crate::publish::Sink;
use crate::sidecar_metrics::{self, Counters};

/// Where both servers take events from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Broker {
    /// Sidecar `--broker memory`, baseline without Redis: events by `POST /publish/<group>` on
    /// the admin port.
    Memory,
    /// Sidecar `--broker redis`, baseline `--redis-url`, each against its own redis-server:
    /// events by `PUBLISH taskstream:<group>`.
    Redis,
}

/// Settings shared by every scenario.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub bins: Bins,
    pub broker: Broker,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Hard bound on any one run.
    pub deadline: Duration,
    /// Shortest continuous publishing of a measured step on the Redis path (see
    /// [`Ctx::measured`]).
    pub min_secs: Duration,
    /// Start redis-server without `HELLO` (the sidecar subscribes over RESP2).
    pub redis_resp2: bool,
}

impl Ctx {
    /// How long a measured step publishes: `asked`, but on the Redis path at least `min_secs`,
    /// so a loss count covers several of the sidecar's Redis keep-alive PINGs (every 5 s).
    pub fn measured(&self, asked: Duration) -> Duration {
        match self.broker {
            Broker::Redis => asked.max(self.min_secs),
            Broker::Memory => asked,
        }
    }
}

/// A server to measure, with the broker it needs and where to publish.
pub struct Target {
    pub server: Server,
    pub sink: Sink,
    pub redis: Option<Redis>,
}

impl Target {
    pub async fn start(ctx: &Ctx, kind: Kind) -> Result<Self> {
        Self::start_with(ctx, kind, Vec::new()).await
    }

    /// [`Target::start`] with more sidecar flags (ignored for the baseline).
    pub async fn start_with(ctx: &Ctx, kind: Kind, sidecar_flags: Vec<String>) -> Result<Self> {
        let redis = match ctx.broker {
            Broker::Redis => Some(Redis::start(ctx.redis_resp2).await?),
            Broker::Memory => None,
        };
        let feed = match &redis {
            Some(r) => Feed::Redis(r.url.clone()),
            None => Feed::Admin,
        };
        let extra = match kind {
            Kind::Sidecar => sidecar_flags,
            Kind::Baseline => Vec::new(),
        };
        let server = Server::start_with(kind, &ctx.bins, feed, None, extra).await?;
        let sink = match &redis {
            Some(r) => Sink::Redis(r.url.clone()),
            None => Sink::Admin(server.admin),
        };
        Ok(Self {
            server,
            sink,
            redis,
        })
    }

    /// The server process alone (redis-server is reported apart, see [`Target::broker_cpu`]).
    pub fn usage(&self) -> Usage {
        self.server.usage()
    }

    /// CPU time of our redis-server, on the Redis path.
    pub fn broker_cpu(&self) -> std::time::Duration {
        self.redis
            .as_ref()
            .map(|r| r.usage().cpu)
            .unwrap_or_default()
    }

    /// The sidecar's counters now (`None` for the baseline).
    pub async fn counters(&self) -> Option<Counters> {
        match self.server.kind {
            Kind::Sidecar => sidecar_metrics::read(self.server.admin).await,
            Kind::Baseline => None,
        }
    }

    pub async fn fleet(&self, ctx: &Ctx, conns: usize, groups: usize) -> (Fleet, Opened) {
        Fleet::open(Plan {
            kind: self.server.kind,
            server: self.server.public,
            conns,
            groups,
            concurrency: ctx.concurrency,
            reconnect_jitter: None,
            deadline: ctx.deadline,
            v1: false,
            groups_per_conn: 1,
        })
        .await
    }
}

/// CPU and wall time between two points, for the server and for this tool.
pub struct Meter {
    wall: std::time::Instant,
    server: Usage,
    own: Usage,
}

impl Meter {
    pub fn start(target: &Target) -> Self {
        Self {
            wall: std::time::Instant::now(),
            server: target.usage(),
            own: procstat::own(),
        }
    }

    /// `(wall secs, server cpu secs, tool cpu secs)` since start.
    pub fn read(&self, target: &Target) -> (f64, f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64();
        let server = target.usage().cpu.saturating_sub(self.server.cpu);
        let own = procstat::own().cpu.saturating_sub(self.own.cpu);
        (wall, server.as_secs_f64(), own.as_secs_f64())
    }
}

/// Polls `done` every 5 ms until it is true or `limit` passes; returns whether it became true.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Median of `xs` (0 when empty).
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Rounds to 3 decimals for readable JSON.
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
