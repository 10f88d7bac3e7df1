//! The event source behind the hub: Redis pub/sub in production, in-memory in local mode.
//! Everything above it (groups, auth, fan-out, limits) is the same code for both.
//!
//! How the sidecar reaches a production Redis lives in one file per concern:
//! - [`options`]: the TLS / Sentinel / Cluster flags and their validation.
//! - [`tls`]: CA bundle, client certificate, insecure mode (rustls through redis-rs).
//! - [`endpoint`]: one server, the Sentinel master, or a Cluster, as the source connects to it.
//! - [`sentinel`]: asking the sentinels for the master, and the `+switch-master` watcher.
//! - [`cluster`]: Redis Cluster subscriptions (classic and sharded) that follow resharding.
//! - [`commands`]: a connection for ordinary commands that follows the deployment.

pub mod cluster;
pub mod commands;
pub mod endpoint;
pub mod options;
pub mod sentinel;
pub mod tls;

use std::sync::Arc;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::hub::Hub;
use crate::redis::RedisBroker;

/// Where `POST /publish/<group>` sends an event.
pub enum Broker {
    /// Delivers straight to this process's clients.
    Memory(Arc<Hub>),
    /// Publishes to Redis, so every pod's clients of the group get it.
    Redis(Arc<RedisBroker>),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("payload is not UTF-8; events are sent to browsers as text frames")]
    NotUtf8,
    #[error("redis publish: {0}")]
    Redis(#[source] redis::RedisError),
}

impl Broker {
    /// Publishes `payload` to `group`; returns how many receivers got it (local clients for the
    /// memory broker, subscribed sidecars for Redis).
    pub async fn publish(&self, group: &str, payload: Bytes) -> Result<usize, PublishError> {
        match self {
            Broker::Memory(hub) => {
                let text = Utf8Bytes::try_from(payload).map_err(|_| PublishError::NotUtf8)?;
                Ok(hub.publish(group, &text))
            }
            Broker::Redis(redis) => {
                if std::str::from_utf8(&payload).is_err() {
                    return Err(PublishError::NotUtf8);
                }
                redis
                    .publish(group, &payload)
                    .await
                    .map_err(PublishError::Redis)
            }
        }
    }
}
