//! Where the Redis source and the publisher connect: one server, the master the sentinels name,
//! or a Redis Cluster. Every client built here carries the TLS settings.
//!
//! ```text
//! --redis-url + --redis-sentinels/--redis-cluster + TLS flags -> Connect -> Endpoint
//!   Single:   redis::Client of the URL
//!   Sentinel: ask the sentinels for the master on every (re)connect; +switch-master wakes
//!   Cluster:  seeds -> redis-rs cluster connection (slots, MOVED, resubscribe)
//! ```

use std::sync::Arc;

use redis::RedisResult;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cluster::Cluster;
use super::options::{Connect, Topology};
use super::redact::redacted;
use super::sentinel::{Addr, Sentinel};
use super::tls::Tls;

/// The Redis deployment one source talks to.
pub struct Endpoint {
    kind: Kind,
    /// Where logs may name it: host and port, never the password.
    display: String,
}

enum Kind {
    Single(Box<redis::Client>),
    Sentinel(Arc<Sentinel>),
    Cluster(Arc<Cluster>),
}

impl Endpoint {
    /// The endpoint of `--redis-url` as `connect` describes it.
    pub fn new(url: &str, connect: &Connect) -> RedisResult<Self> {
        match &connect.topology {
            Topology::Single => Self::single(url, &connect.tls),
            Topology::Sentinel {
                sentinels,
                master,
                password,
            } => Ok(Self {
                kind: Kind::Sentinel(Arc::new(Sentinel::new(
                    url,
                    sentinels,
                    master,
                    password.as_deref(),
                    &connect.tls,
                )?)),
                display: format!(
                    "sentinel master {master} via {}",
                    sentinels
                        .iter()
                        .map(|(h, p)| format!("{h}:{p}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            }),
            Topology::Cluster { seeds } => Ok(Self {
                kind: Kind::Cluster(Arc::new(Cluster::new(seeds, &connect.tls)?)),
                display: format!(
                    "cluster via {}",
                    seeds
                        .iter()
                        .map(|s| redacted(s))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            }),
        }
    }

    /// One server at `url` (also each of the Django Channels hosts).
    pub fn single(url: &str, tls: &Tls) -> RedisResult<Self> {
        Ok(Self {
            kind: Kind::Single(Box::new(tls.client(url)?)),
            display: redacted(url),
        })
    }

    pub fn display(&self) -> &str {
        &self.display
    }

    /// A client for the server to talk to now (Sentinel: asks the sentinels).
    pub async fn client(&self) -> RedisResult<redis::Client> {
        match &self.kind {
            Kind::Single(c) => Ok(redis::Client::clone(c)),
            Kind::Sentinel(s) => s.master().await,
            Kind::Cluster(_) => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a Redis Cluster has no single server to connect to",
            ))),
        }
    }

    /// The cluster, when this is one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        match &self.kind {
            Kind::Cluster(c) => Some(c),
            _ => None,
        }
    }

    /// The Sentinel master last known (`None` for other deployments): a cached connection made
    /// for another master is stale.
    pub fn current_master(&self) -> Option<Addr> {
        match &self.kind {
            Kind::Sentinel(s) => s.current(),
            _ => None,
        }
    }

    /// Whether connections must follow a master that can move (Sentinel).
    pub fn follows_master(&self) -> bool {
        matches!(self.kind, Kind::Sentinel(_))
    }

    /// Wakes when the master moves (Sentinel); never for other deployments.
    pub fn moves(&self) -> Moves {
        match &self.kind {
            Kind::Sentinel(s) => Moves(Some(s.subscribe())),
            _ => Moves(None),
        }
    }

    /// Starts what keeps the endpoint current (the `+switch-master` watcher) until `shutdown`.
    pub fn spawn_watch(&self, shutdown: CancellationToken) {
        if let Kind::Sentinel(s) = &self.kind {
            let s = s.clone();
            tokio::spawn(async move { s.watch(shutdown).await });
        }
    }
}

/// Master moves as one subscription loop sees them.
pub struct Moves(Option<watch::Receiver<Option<Addr>>>);

impl Moves {
    /// Resolves when the master changed since the last [`Moves::seen`].
    pub async fn changed(&mut self) {
        match &mut self.0 {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Marks the current master as seen; `false` when it is not `connected` (it moved while
    /// we connected), so the caller reconnects at once.
    pub fn seen(&mut self, connected: Option<&Addr>) -> bool {
        match &mut self.0 {
            Some(rx) => rx.borrow_and_update().as_ref() == connected,
            None => true,
        }
    }
}
