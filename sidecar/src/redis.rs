//! The Redis source: one pub/sub connection per process, subscribed to exactly the groups that
//! have a local client, reconnecting with capped exponential backoff and jitter.
//!
//! ```text
//!            +-------------------- reconnect (backoff + jitter) <------------------+
//!            v                                                                     |
//! connect -> subscribe wanted groups -> loop { hub changed  -> (un)subscribe diff  |
//!                                             message       -> hub.publish         |
//!                                             ping timer    -> PING (dead peer?) } -+
//! ```
//!
//! Publishing (`POST /publish/<group>`) uses a separate multiplexed connection, because a
//! connection in subscribe mode cannot `PUBLISH`.
//!
//! How groups map to channel names and payloads to text frames is a [`Wire`]: plain pub/sub by
//! default; the Django Channels pub/sub layer brings its own (`crate::channels::pubsub`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink};
use tokio::sync::{Notify, OnceCell};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::broker::history::{self, HistoryConfig, Snapshot};
use crate::broker::id::StreamId;
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::{DropReason, Metrics};

/// A PING this often finds a peer that vanished without closing the socket.
const PING_EVERY: Duration = Duration::from_secs(5);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Maps groups to Redis channels and payloads to text frames.
pub trait Wire: Send + Sync + 'static {
    /// The Redis channel of `group`.
    fn channel(&self, group: &str) -> String;
    /// The group of a Redis channel this wire subscribed to.
    fn group<'a>(&self, channel: &'a str) -> Option<&'a str>;
    /// Whether this connection serves `group` (sharding); the others are left to other shards.
    fn serves(&self, _group: &str) -> bool {
        true
    }
    /// The frame for a payload of `group`, or `None` when it was dropped (counted and logged).
    fn frame(&self, group: &str, payload: &[u8], metrics: &Metrics) -> Option<Utf8Bytes>;
    /// The event (its history id, if it has one, and its frame) for a payload of `group`.
    fn event(
        &self,
        group: &str,
        payload: &[u8],
        metrics: &Metrics,
    ) -> Option<(Option<StreamId>, Utf8Bytes)> {
        self.frame(group, payload, metrics).map(|f| (None, f))
    }
}

/// Plain pub/sub: `PUBLISH <prefix><group> <UTF-8 payload>`, relayed verbatim; an event
/// published with history arrives as `\x1e<id>\x1e<payload>` (docs/protocol.md).
pub struct Plain {
    pub prefix: String,
}

/// Splits the history envelope `\x1e<id>\x1e<payload>`; `None` for a plain payload.
fn split_envelope(payload: &[u8]) -> Option<(StreamId, &[u8])> {
    let rest = payload.strip_prefix(&[0x1e])?;
    let end = rest.iter().position(|b| *b == 0x1e)?;
    let id = StreamId::parse(std::str::from_utf8(&rest[..end]).ok()?)?;
    Some((id, &rest[end + 1..]))
}

impl Wire for Plain {
    fn channel(&self, group: &str) -> String {
        format!("{}{}", self.prefix, group)
    }

    fn group<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.prefix.as_str())
    }

    fn frame(&self, group: &str, payload: &[u8], metrics: &Metrics) -> Option<Utf8Bytes> {
        match Utf8Bytes::try_from(bytes::Bytes::copy_from_slice(payload)) {
            Ok(text) => Some(text),
            Err(_) => {
                metrics.events_received.inc();
                metrics.dropped(DropReason::NonUtf8);
                warn!(
                    group,
                    bytes = payload.len(),
                    "dropped an event whose payload is not UTF-8; publish JSON or other text"
                );
                None
            }
        }
    }

    fn event(
        &self,
        group: &str,
        payload: &[u8],
        metrics: &Metrics,
    ) -> Option<(Option<StreamId>, Utf8Bytes)> {
        match split_envelope(payload) {
            Some((id, inner)) => self.frame(group, inner, metrics).map(|f| (Some(id), f)),
            None => self.frame(group, payload, metrics).map(|f| (None, f)),
        }
    }
}

/// Handle of the Redis broker.
pub struct RedisBroker {
    client: redis::Client,
    wire: Arc<dyn Wire>,
    /// Wakes the subscription loop instead of [`Hub::changed`] when several loops share a hub.
    wake: Option<Arc<Notify>>,
    /// Where logs may name the server: host and port, never the password.
    display: String,
    publisher: OnceCell<ConnectionManager>,
    scripts: Scripts,
}

/// The history scripts, sent once per connection and then run by their SHA.
struct Scripts {
    publish: redis::Script,
    read: redis::Script,
}

impl RedisBroker {
    pub fn new(url: &str, prefix: String) -> redis::RedisResult<Self> {
        Self::with_wire(url, Arc::new(Plain { prefix }), None)
    }

    /// A broker speaking `wire`; `wake`, when given, replaces [`Hub::changed`] as its wake-up.
    pub fn with_wire(
        url: &str,
        wire: Arc<dyn Wire>,
        wake: Option<Arc<Notify>>,
    ) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let display = redacted(url);
        Ok(Self {
            client,
            wire,
            wake,
            display,
            publisher: OnceCell::new(),
            scripts: Scripts {
                publish: redis::Script::new(history::PUBLISH_SCRIPT),
                read: redis::Script::new(history::READ_SCRIPT),
            },
        })
    }

    /// `PUBLISH <prefix><group> <payload>`; returns how many subscribers Redis reached.
    pub async fn publish(&self, group: &str, payload: &[u8]) -> redis::RedisResult<usize> {
        let mut conn = self.commands().await?;
        redis::cmd("PUBLISH")
            .arg(self.wire.channel(group))
            .arg(payload)
            .query_async(&mut conn)
            .await
    }

    /// Stores the event in the group's history and publishes it, atomically (publish.lua).
    pub async fn publish_with_history(
        &self,
        group: &str,
        payload: &[u8],
        history: HistoryConfig,
    ) -> redis::RedisResult<StreamId> {
        let mut conn = self.commands().await?;
        let id: String = self
            .scripts
            .publish
            .key(self.wire.channel(group))
            .arg(payload)
            .arg(history.size)
            .arg(history.ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        StreamId::parse(&id).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Parse,
                "publish script returned no stream id",
                id,
            ))
        })
    }

    /// One atomic look at the group's history after `last` (read.lua).
    pub async fn read_history(
        &self,
        group: &str,
        last: StreamId,
        count: usize,
    ) -> Result<Snapshot, String> {
        let mut conn = self
            .commands()
            .await
            .map_err(|e| format!("redis {}: {e}", self.display))?;
        let reply: redis::Value = self
            .scripts
            .read
            .key(self.wire.channel(group))
            .arg(if last == StreamId::ZERO {
                "0".to_string()
            } else {
                last.to_string()
            })
            .arg(count)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| format!("redis {}: read history of {group:?}: {e}", self.display))?;
        history::parse_read_reply(reply)
    }

    /// The multiplexed connection for commands (a connection in subscribe mode cannot run
    /// them), made on first use and re-made by the manager when it breaks.
    async fn commands(&self) -> redis::RedisResult<ConnectionManager> {
        let conn = self
            .publisher
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT));
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await?;
        Ok(conn.clone())
    }

    /// Runs the subscription loop until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        hub: Arc<Hub>,
        health: Arc<Health>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::default();
        let mut connected_once = false;
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub()) => r,
            };
            let pubsub = match attempt {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    warn!(redis = %self.display, error = %e, retry_in = ?backoff.current(), "redis connect failed; clients stay connected, retrying");
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(_) => {
                    warn!(redis = %self.display, retry_in = ?backoff.current(), "redis connect timed out; retrying");
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            if connected_once {
                metrics.redis_reconnects.inc();
            }
            let (sink, stream) = pubsub.split();
            let mut session = Session {
                broker: &self,
                hub: &hub,
                sink,
                subscribed: BTreeSet::new(),
                reconnected: connected_once,
            };
            let ended = session.serve(stream, &health, &metrics, &shutdown).await;
            connected_once = true;
            health.set_broker_up(false);
            metrics.broker_up.set(0);
            // Only this connection's groups: with sharding, other connections keep theirs.
            hub.set_confirmed(session.subscribed.iter().map(String::as_str), false);
            match ended {
                Ended::Shutdown => return,
                Ended::Lost(why) => {
                    warn!(redis = %self.display, error = %why, "redis connection lost; clients stay connected, reconnecting and resubscribing");
                    backoff.reset();
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}

enum Ended {
    Shutdown,
    Lost(String),
}

struct Session<'a> {
    broker: &'a RedisBroker,
    hub: &'a Hub,
    sink: PubSubSink,
    subscribed: BTreeSet<String>,
    /// A lost connection was re-made: pub/sub dropped whatever was published meanwhile.
    reconnected: bool,
}

impl Session<'_> {
    async fn serve(
        &mut self,
        mut stream: redis::aio::PubSubStream,
        health: &Health,
        metrics: &Metrics,
        shutdown: &CancellationToken,
    ) -> Ended {
        if let Err(e) = self.reconcile().await {
            return Ended::Lost(e);
        }
        info!(redis = %self.broker.display, groups = self.subscribed.len(), "redis subscribed");
        health.set_broker_up(true);
        metrics.broker_up.set(1);
        if self.reconnected {
            // Subscribed again first, so whatever a session reads from history now is followed
            // by live events without a gap.
            self.hub.resubscribed();
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                _ = self.changed() => {
                    if let Err(e) = self.reconcile().await {
                        return Ended::Lost(e);
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Ended::Lost("connection closed".into());
                    };
                    self.deliver(&msg, metrics);
                }
                _ = ping.tick() => {
                    // In subscribe mode a RESP2 server answers PING with the array
                    // `["pong", ""]` and a RESP3 server with `PONG`: any reply proves the peer
                    // alive, so it is read as a plain Value, never as a string.
                    match tokio::time::timeout(COMMAND_TIMEOUT, self.sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Ended::Lost(format!("ping: {e}")),
                        Err(_) => return Ended::Lost("ping: no answer within 5s".into()),
                    }
                }
            }
        }
    }

    async fn changed(&self) {
        match &self.broker.wake {
            Some(wake) => wake.notified().await,
            None => self.hub.changed().notified().await,
        }
    }

    fn wanted(&self) -> BTreeSet<String> {
        let wire = &self.broker.wire;
        self.hub
            .wanted()
            .into_iter()
            .filter(|g| wire.serves(g))
            .collect()
    }

    fn deliver(&self, msg: &redis::Msg, metrics: &Metrics) {
        let channel = msg.get_channel_name();
        let Some(group) = self.broker.wire.group(channel) else {
            return;
        };
        if let Some((id, frame)) = self
            .broker
            .wire
            .event(group, msg.get_payload_bytes(), metrics)
        {
            self.hub.publish_event(group, id, frame);
        }
    }

    /// Brings Redis subscriptions in line with the groups that have local clients.
    async fn reconcile(&mut self) -> Result<(), String> {
        // Loop: the wanted set may change again while we talk to Redis.
        for _ in 0..16 {
            let wanted = self.wanted();
            let add: Vec<String> = wanted.difference(&self.subscribed).cloned().collect();
            let remove: Vec<String> = self.subscribed.difference(&wanted).cloned().collect();
            if !add.is_empty() {
                let channels: Vec<String> = add.iter().map(|g| self.channel(g)).collect();
                timed(tokio::time::timeout(COMMAND_TIMEOUT, self.sink.subscribe(channels)).await)
                    .map_err(|e| format!("subscribe {} groups: {e}", add.len()))?;
                debug!(groups = ?add, "subscribed");
                self.subscribed.extend(add);
            }
            if !remove.is_empty() {
                let channels: Vec<String> = remove.iter().map(|g| self.channel(g)).collect();
                timed(tokio::time::timeout(COMMAND_TIMEOUT, self.sink.unsubscribe(channels)).await)
                    .map_err(|e| format!("unsubscribe {} groups: {e}", remove.len()))?;
                debug!(groups = ?remove, "unsubscribed");
                for g in &remove {
                    self.subscribed.remove(g);
                }
            }
            // Groups re-created while still subscribed need their confirmation back too.
            self.hub
                .set_confirmed(self.subscribed.iter().map(String::as_str), true);
            if self.wanted() == self.subscribed {
                break;
            }
        }
        Ok(())
    }

    fn channel(&self, group: &str) -> String {
        self.broker.wire.channel(group)
    }
}

fn timed(r: Result<redis::RedisResult<()>, tokio::time::error::Elapsed>) -> Result<(), String> {
    match r {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no answer within 5s".into()),
    }
}

/// `redis://user:secret@host:6379/0` -> `redis://host:6379/0`, for logs.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => "<redis url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_envelope_is_split_and_plain_payloads_pass() {
        let (id, inner) = split_envelope(b"\x1e1700000000000-2\x1e{\"p\":1}").unwrap();
        assert_eq!(id.to_string(), "1700000000000-2");
        assert_eq!(inner, b"{\"p\":1}");
        assert!(split_envelope(b"{\"p\":1}").is_none());
        assert!(split_envelope(b"\x1enot-an-id\x1ex").is_none());
        assert!(split_envelope(b"\x1e5-0").is_none());
        let plain = Plain {
            prefix: "p:".into(),
        };
        let m = Metrics::default();
        assert_eq!(
            plain.event("g", b"\x1e5-0\x1ehello", &m),
            Some((StreamId::parse("5-0"), "hello".into()))
        );
        assert_eq!(plain.event("g", b"hello", &m), Some((None, "hello".into())));
    }

    #[test]
    fn redaction_hides_credentials() {
        assert_eq!(
            redacted("redis://:s3cret@redis:6379/0"),
            "redis://redis:6379/0"
        );
        assert_eq!(redacted("rediss://u:p@w@h:1"), "rediss://h:1");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
    }
}
