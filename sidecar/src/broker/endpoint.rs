//! Where the Redis source and the publisher connect: one server, the master the sentinels name,
//! or a Redis Cluster. Every client built here carries the TLS settings.
//!
//! ```text
//! --redis-url + --redis-sentinels/--redis-cluster + TLS flags -> Connect -> Endpoint
//!   Single:   redis::Client of the URL
//!   Sentinel: ask the sentinels for the master on every (re)connect; +switch-master wakes
//!   Cluster:  seeds -> redis-rs cluster connection (slots, MOVED, resubscribe)
//! ```

use redis::RedisResult;

use super::options::{Connect, Topology};
use super::tls::Tls;
use crate::redis::redacted;

/// The Redis deployment one source talks to.
pub struct Endpoint {
    kind: Kind,
    /// Where logs may name it: host and port, never the password.
    display: String,
}

enum Kind {
    Single(redis::Client),
}

impl Endpoint {
    /// The endpoint of `--redis-url` as `connect` describes it.
    pub fn new(url: &str, connect: &Connect) -> RedisResult<Self> {
        match &connect.topology {
            Topology::Single => Self::single(url, &connect.tls),
            Topology::Sentinel { .. } | Topology::Cluster { .. } => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "not supported yet",
            ))),
        }
    }

    /// One server at `url` (also each of the Django Channels hosts).
    pub fn single(url: &str, tls: &Tls) -> RedisResult<Self> {
        Ok(Self {
            kind: Kind::Single(tls.client(url)?),
            display: redacted(url),
        })
    }

    pub fn display(&self) -> &str {
        &self.display
    }

    /// A client for the server to talk to now.
    pub async fn client(&self) -> RedisResult<redis::Client> {
        match &self.kind {
            Kind::Single(c) => Ok(c.clone()),
        }
    }
}
