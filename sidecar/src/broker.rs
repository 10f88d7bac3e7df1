//! The event source behind the hub: Redis pub/sub in production, in-memory in local mode, and
//! the optional history that lets reconnecting clients recover what they missed.
//! Everything above it (groups, auth, fan-out, limits) is the same code for both.
//!
//! ```text
//! POST /publish/<group> --> [Broker] --memory--> (ring) --> hub
//!                                   \--redis---> PUBLISH, or EVAL publish.lua --> Redis --> hub
//! session resume        --> [Broker]::recover --> ring / EVAL read.lua --> events or a reset
//! ```
//!
//! One file per concern, each importing only rooms below it (never this file):
//! - [`redis`]: the Redis source (one server or the Sentinel master) and the publisher handle.
//! - [`cluster`]: Redis Cluster subscriptions (classic and sharded) that follow resharding.
//! - [`link`]: the link driver (connect, backoff, keep-alive, up/down, catch-up) every source
//!   runs on, over the [`link::Link`] trait; [`error`]: what failed on a link.
//! - [`history`], [`id`]: event history per group and its ids (resume, reset).
//! - [`positions`]: where each group stands at connect (the newest stored id, one round trip).
//! - [`reads`], [`coalesce`]: history and positions reads shared by concurrent clients (the
//!   resume storm: one read per group, one positions batch for many connections).
//! - [`options`]: the TLS / Sentinel / Cluster flags, the wire protocol, their validation.
//! - [`tls`]: CA bundle, client certificate, insecure mode (rustls through redis-rs).
//! - [`endpoint`]: one server, the Sentinel master, or a Cluster, as the source connects to it.
//! - [`sentinel`]: asking the sentinels for the master, and the `+switch-master` watcher.
//! - [`commands`]: a connection for ordinary commands that follows the deployment.
//! - [`subscriber`]: the subscription connection to one server (RESP3 pushes, RESP2 fallback).
//! - [`inbox`]: received messages waiting for the hub, bounded (RESP3 and Cluster).
//! - [`wire`]: groups to channels and payloads to frames (the history envelope included).
//! - [`timeouts`], [`redact`]: the shared timeouts and the URL redaction for logs.

pub mod cluster;
pub mod coalesce;
pub mod commands;
pub mod endpoint;
pub mod error;
pub mod history;
pub mod id;
pub mod inbox;
pub mod link;
pub mod options;
pub mod positions;
pub mod reads;
pub mod redact;
pub mod redis;
pub mod sentinel;
pub mod subscriber;
pub mod timeouts;
pub mod tls;
pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::warn;

use self::history::{HistoryConfig, MemoryHistory, Recovery, ResetReason, Snapshot};
use self::id::StreamId;
use self::reads::{READS_CLOSED, SharedReads};
use self::redis::RedisBroker;
use self::timeouts::retried;
use crate::hub::Hub;
use crate::metrics::{Metrics, ReadKind};

/// History reads in flight at once per sidecar: a reconnect storm queues here instead of
/// flooding Redis, and other clients' live events never wait for it.
const MAX_CONCURRENT_READS: usize = 16;

/// Where events are published and history is read.
pub struct Broker {
    source: Source,
    history: Option<HistoryConfig>,
    reads: Arc<Semaphore>,
    /// Redis with history on: reads shared between concurrent clients.
    shared: Option<SharedReads>,
    metrics: Metrics,
}

enum Source {
    /// Delivers straight to this process's clients (with an in-process history ring).
    Memory {
        hub: Arc<Hub>,
        history: Option<MemoryHistory>,
    },
    /// Publishes to Redis, so every pod's clients of the group get it.
    Redis(Arc<RedisBroker>),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("payload is not UTF-8; events are sent to browsers as text frames")]
    NotUtf8,
    #[error("payload begins with the byte 0x1E, which is reserved for the history envelope")]
    Reserved,
    #[error("redis publish: {0}")]
    Redis(#[source] ::redis::RedisError),
}

/// The answer to a publish.
#[derive(Debug)]
pub struct Published {
    /// Local clients (memory broker) or subscribed sidecars (Redis); unknown when the history
    /// script published it (it returns only the id).
    pub receivers: Option<usize>,
    /// The event's id when it was stored in history.
    pub id: Option<StreamId>,
}

impl Broker {
    pub fn memory(hub: Arc<Hub>, history: Option<HistoryConfig>, metrics: Metrics) -> Self {
        Self::with(
            Source::Memory {
                hub,
                history: history.map(MemoryHistory::new),
            },
            history,
            metrics,
        )
    }

    pub fn redis(
        redis: Arc<RedisBroker>,
        history: Option<HistoryConfig>,
        metrics: Metrics,
    ) -> Self {
        let mut broker = Self::with(Source::Redis(redis.clone()), history, metrics);
        broker.shared = history
            .map(|h| SharedReads::new(redis, h, broker.reads.clone(), broker.metrics.clone()));
        broker
    }

    fn with(source: Source, history: Option<HistoryConfig>, metrics: Metrics) -> Self {
        Self {
            source,
            history,
            reads: Arc::new(Semaphore::new(MAX_CONCURRENT_READS)),
            shared: None,
            metrics,
        }
    }

    /// Whether events are kept for resume.
    pub fn history(&self) -> Option<HistoryConfig> {
        self.history
    }

    /// Publishes `payload` to `group`, stored in history when it is on.
    pub async fn publish(&self, group: &str, payload: Bytes) -> Result<Published, PublishError> {
        if payload.first() == Some(&0x1e) {
            return Err(PublishError::Reserved);
        }
        let text = Utf8Bytes::try_from(payload).map_err(|_| PublishError::NotUtf8)?;
        match &self.source {
            Source::Memory { hub, history: None } => Ok(Published {
                receivers: Some(hub.publish(group, &text)),
                id: None,
            }),
            Source::Memory {
                hub,
                history: Some(ring),
            } => {
                let (id, receivers) = ring.publish(group, text, |id, text| {
                    hub.publish_event(group, Some(id), text)
                });
                Ok(Published {
                    receivers: Some(receivers),
                    id: Some(id),
                })
            }
            Source::Redis(redis) => match self.history {
                None => Ok(Published {
                    receivers: Some(
                        redis
                            .publish(group, text.as_bytes())
                            .await
                            .map_err(PublishError::Redis)?,
                    ),
                    id: None,
                }),
                Some(h) => {
                    let id = redis
                        .publish_with_history(group, text.as_bytes(), h)
                        .await
                        .map_err(PublishError::Redis)?;
                    Ok(Published {
                        receivers: None,
                        id: Some(id),
                    })
                }
            },
        }
    }

    /// What a client resuming `group` after `last` gets: the events it missed, or a reset.
    /// Bounded: at most `--history-size` events, and [`MAX_CONCURRENT_READS`] reads at once;
    /// on Redis, clients resuming the same group at once share one read.
    pub async fn recover(&self, group: &str, last: StreamId) -> Recovery {
        let Some(h) = self.history else {
            return self.reset(ResetReason::HistoryOff);
        };
        let snapshot = match &self.shared {
            Some(shared) => match shared.history(group, last).await {
                Ok(Ok(read)) => match history::view(&read.snapshot, read.from, read.count, last) {
                    Some(view) => Ok(view),
                    // Cut short before this client's events: a read of its own.
                    None => self.read_alone(group, last, h).await,
                },
                Ok(Err(e)) => Err(e),
                Err(_) => self.read_alone(group, last, h).await,
            },
            None => self.read_alone(group, last, h).await,
        };
        let recovery = match snapshot {
            Ok(snap) => history::decide(last, snap, h.size),
            Err(e) => {
                warn!(group, error = %e, "history read failed; the client gets a reset for the group and refetches its state");
                Recovery::Reset(ResetReason::Unavailable)
            }
        };
        match &recovery {
            Recovery::Events(e) => {
                self.metrics.history_recovered.inc_by(e.len() as u64);
            }
            Recovery::Reset(r) => self.metrics.history_reset(*r),
        };
        recovery
    }

    /// One client's own read of `group` after `last`.
    async fn read_alone(
        &self,
        group: &str,
        last: StreamId,
        h: HistoryConfig,
    ) -> Result<Snapshot, String> {
        let count = history::read_count(last, h.size);
        let Ok(_permit) = self.reads.acquire().await else {
            return Err(READS_CLOSED.into());
        };
        let started = Instant::now();
        let snapshot = match &self.source {
            Source::Memory {
                history: Some(ring),
                ..
            } => Ok(ring.snapshot(group, last, count)),
            Source::Memory { history: None, .. } => Err("this sidecar keeps no history".into()),
            Source::Redis(redis) => retried(|| redis.read_history(group, last, count))
                .await
                .map_err(|e| e.to_string()),
        };
        self.metrics
            .history_read(ReadKind::Resume, 1, 1, started.elapsed());
        snapshot
    }

    fn reset(&self, reason: ResetReason) -> Recovery {
        self.metrics.history_reset(reason);
        Recovery::Reset(reason)
    }
}

impl Broker {
    /// The id of the newest stored event of each of `groups` (in order), [`StreamId::ZERO`] for
    /// a group with none. One round trip to Redis (per Cluster node), queued behind the same
    /// bound as history reads; briefly retried while the command connection is re-made. On one
    /// server or Sentinel, the positions of concurrent handshakes go in one batch ([`reads`]).
    pub async fn positions(&self, groups: &[&str]) -> Result<Vec<StreamId>, String> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(batched) = self.shared.as_ref().and_then(|s| s.positions(groups)) {
            return batched
                .await
                .unwrap_or_else(|_| Err("the positions batch failed".into()));
        }
        let Ok(_permit) = self.reads.acquire().await else {
            return Err(READS_CLOSED.into());
        };
        let started = std::time::Instant::now();
        let read = match &self.source {
            Source::Memory {
                history: Some(ring),
                ..
            } => Ok(groups
                .iter()
                .map(|g| {
                    let snap = ring.snapshot(g, StreamId::ZERO, 1);
                    snap.entries.last().map_or(StreamId::ZERO, |(id, _)| *id)
                })
                .collect()),
            Source::Memory { history: None, .. } => Err("this sidecar keeps no history".into()),
            Source::Redis(redis) => retried(|| positions::read(redis, groups)).await,
        };
        self.metrics
            .history_read(ReadKind::Positions, 1, 1, started.elapsed());
        read
    }
}
