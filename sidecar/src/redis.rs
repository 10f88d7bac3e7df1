//! The Redis source: one pub/sub connection per process, subscribed to exactly the groups that
//! have a local client, reconnecting with capped exponential backoff and jitter.
//!
//! ```text
//!            +-------------------- reconnect (backoff + jitter) <------------------+
//!            v                                                                     |
//! connect -> subscribe wanted groups -> loop { hub changed  -> (un)subscribe diff  |
//!   |                                         message       -> hub.publish_event   |
//!   |                                         ping timer    -> PING (dead peer?) } -+
//!   +-- after a reconnect: hub.resubscribed() (taskstream.v1 sessions catch up from history)
//! ```
//!
//! The connection speaks RESP3, received messages waiting for the hub in a bounded inbox; RESP2
//! only for a server without `HELLO` ([`crate::broker::subscriber`], [`crate::broker::inbox`]).
//!
//! Publishing (`POST /publish/<group>`) and history (the publish and read scripts) use a
//! separate command connection ([`crate::broker::commands`]), because a connection in subscribe
//! mode cannot run them.
//!
//! How groups map to channel names and payloads to text frames is a [`Wire`]: plain pub/sub by
//! default; the Django Channels pub/sub layer brings its own (`crate::channels::pubsub`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::broker::commands::{CommandConn, Commands};
use crate::broker::endpoint::{Endpoint, Moves, addr_of};
use crate::broker::history::{self, HistoryConfig, Snapshot};
use crate::broker::id::StreamId;
use crate::broker::sentinel::Addr;
use crate::broker::subscriber::{self, Incoming, Next, Subscriber};
use crate::broker::tls;
pub use crate::broker::wire::{Plain, Wire};
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// A PING this often finds a peer that vanished without closing the socket.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(5);
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Handle of the Redis broker.
pub struct RedisBroker {
    endpoint: Endpoint,
    pub(crate) wire: Arc<dyn Wire>,
    /// Wakes the subscription loop instead of [`Hub::changed`] when several loops share a hub.
    pub(crate) wake: Option<Arc<Notify>>,
    /// Where logs may name the server: host and port, never the password.
    pub(crate) display: String,
    publisher: CommandConn,
    scripts: Scripts,
    /// The server refused RESP3 once (no `HELLO`): subscribe over RESP2 from then on.
    resp2_only: AtomicBool,
}

/// The history scripts, sent once per connection and then run by their SHA.
struct Scripts {
    publish: redis::Script,
    read: redis::Script,
}

impl RedisBroker {
    pub fn new(endpoint: Endpoint, prefix: String) -> Self {
        Self::with_wire(endpoint, Arc::new(Plain { prefix }), None)
    }

    /// A broker speaking `wire`; `wake`, when given, replaces [`Hub::changed`] as its wake-up.
    pub fn with_wire(endpoint: Endpoint, wire: Arc<dyn Wire>, wake: Option<Arc<Notify>>) -> Self {
        Self {
            display: endpoint.display().to_owned(),
            endpoint,
            wire,
            wake,
            publisher: CommandConn::default(),
            scripts: Scripts {
                publish: redis::Script::new(history::PUBLISH_SCRIPT),
                read: redis::Script::new(history::READ_SCRIPT),
            },
            resp2_only: AtomicBool::new(false),
        }
    }

    /// A connection for ordinary commands (EVALSHA, XRANGE, ...) on the server that owns the
    /// data now: the one server, the current Sentinel master, or the slot's Cluster node.
    pub async fn commands(&self) -> redis::RedisResult<Commands> {
        self.publisher.get(&self.endpoint).await
    }

    /// `PUBLISH <prefix><group> <payload>` (`SPUBLISH` on a Cluster: it stays in the shard
    /// owning the channel); returns how many subscribers Redis reached.
    pub async fn publish(&self, group: &str, payload: &[u8]) -> redis::RedisResult<usize> {
        let mut cmd = redis::cmd(if self.endpoint.cluster().is_some() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        });
        cmd.arg(self.wire.channel(group)).arg(payload);
        let mut conn = self.commands().await?;
        match cmd.query_async(&mut conn).await {
            // Once more on a fresh connection: the master may have moved (Sentinel failover).
            Err(e) if self.publisher.failed(&e).await => {
                let mut conn = self.commands().await?;
                cmd.query_async(&mut conn).await
            }
            r => r,
        }
    }

    /// Stores the event in the group's history and publishes it, atomically (publish.lua). Not
    /// retried: a failure after the script ran would store it twice.
    pub async fn publish_with_history(
        &self,
        group: &str,
        payload: &[u8],
        history: HistoryConfig,
    ) -> redis::RedisResult<StreamId> {
        let mut conn = self.commands().await?;
        let result = self
            .scripts
            .publish
            .key(self.wire.channel(group))
            .arg(payload)
            .arg(history.size)
            .arg(history.ttl.as_millis() as u64)
            .invoke_async::<String>(&mut conn)
            .await;
        let id = match result {
            Err(e) => {
                // The next call gets a fresh connection (the master may have moved).
                self.publisher.failed(&e).await;
                return Err(e);
            }
            Ok(id) => id,
        };
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
        let reply = self
            .scripts
            .read
            .key(self.wire.channel(group))
            .arg(if last == StreamId::ZERO {
                "0".to_string()
            } else {
                last.to_string()
            })
            .arg(count)
            .invoke_async::<redis::Value>(&mut conn)
            .await;
        match reply {
            Ok(reply) => history::parse_read_reply(reply),
            Err(e) => {
                self.publisher.failed(&e).await;
                Err(format!(
                    "redis {}: read history of {group:?}: {e}",
                    self.display
                ))
            }
        }
    }

    /// Resolves when the subscriptions may need to change (a group gained its first or lost its
    /// last local client).
    pub(crate) async fn changed(&self, hub: &Hub) {
        match &self.wake {
            Some(wake) => wake.notified().await,
            None => hub.changed().notified().await,
        }
    }

    /// The groups this connection should be subscribed to: those with local clients that its
    /// wire serves.
    pub(crate) fn wanted(&self, hub: &Hub) -> BTreeSet<String> {
        hub.wanted()
            .into_iter()
            .filter(|g| self.wire.serves(g))
            .collect()
    }

    /// The subscriptions are in place: the broker is up, and after a loss sessions may catch up.
    /// Only now, so whatever a session reads from history is followed by live events without a
    /// gap.
    pub(crate) fn went_live(
        &self,
        hub: &Hub,
        health: &Health,
        metrics: &Metrics,
        groups: usize,
        reconnected: bool,
    ) {
        info!(redis = %self.display, groups, "redis subscribed");
        health.set_broker_up(true);
        metrics.broker_up.set(1);
        if reconnected {
            hub.resubscribed();
        }
    }

    /// Runs the subscription loop until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        hub: Arc<Hub>,
        health: Arc<Health>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) {
        if let Some(cluster) = self.endpoint.cluster() {
            let cluster = cluster.clone();
            return crate::broker::cluster::run(self, &cluster, hub, health, metrics, shutdown)
                .await;
        }
        let mut backoff = Backoff::default();
        let mut connected_once = false;
        self.endpoint.spawn_watch(shutdown.clone());
        let mut moves = self.endpoint.moves();
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(COMMAND_TIMEOUT, self.connect()) => r,
            };
            let (subscriber, incoming) = match attempt {
                Ok(Ok((p, at))) => {
                    if !moves.seen(at.as_ref()) {
                        info!(redis = %self.display, "the master moved while connecting; reconnecting");
                        continue;
                    }
                    p
                }
                Ok(Err(e)) => {
                    match tls::hint(&e) {
                        Some(hint) => {
                            warn!(redis = %self.display, error = %e, retry_in = ?backoff.current(), "redis connect failed: {hint}; clients stay connected, retrying")
                        }
                        None => {
                            warn!(redis = %self.display, error = %e, retry_in = ?backoff.current(), "redis connect failed; clients stay connected, retrying")
                        }
                    }
                    if !pause(&mut backoff, &mut moves, &shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(_) => {
                    warn!(redis = %self.display, retry_in = ?backoff.current(), "redis connect timed out; retrying");
                    if !pause(&mut backoff, &mut moves, &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            if connected_once {
                metrics.redis_reconnects.inc();
            }
            let mut session = Session {
                broker: &self,
                hub: &hub,
                subscriber,
                subscribed: BTreeSet::new(),
                reconnected: connected_once,
            };
            let ended = session
                .serve(incoming, &health, &metrics, &shutdown, &mut moves)
                .await;
            connected_once = true;
            health.set_broker_up(false);
            metrics.broker_up.set(0);
            hub.link_lost();
            // Only this connection's groups: with sharding, other connections keep theirs.
            hub.set_confirmed(session.subscribed.iter().map(String::as_str), false);
            match ended {
                Ended::Shutdown => return,
                Ended::Lost(why) => {
                    warn!(redis = %self.display, error = %why, "redis connection lost; clients stay connected, reconnecting and resubscribing");
                    backoff.reset();
                    if !pause(&mut backoff, &mut moves, &shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}

impl RedisBroker {
    /// A subscription connection to the server to subscribe on now, and where it goes.
    async fn connect(&self) -> redis::RedisResult<((Subscriber, Incoming), Option<Addr>)> {
        let client = self.endpoint.client().await?;
        let at = addr_of(&client);
        let conn = subscriber::connect(&client, &self.resp2_only, &self.display).await?;
        Ok((conn, at))
    }
}

/// One message of `channel` to the hub, when it is a group's and decodes.
pub(crate) fn deliver(
    wire: &dyn Wire,
    hub: &Hub,
    metrics: &Metrics,
    channel: &str,
    payload: &[u8],
) {
    let Some(group) = wire.group(channel) else {
        return;
    };
    if let Some((id, frame)) = wire.event(group, payload, metrics) {
        hub.publish_event(group, id, frame);
    }
}

/// The backoff delay, cut short when the master moves (a failover finished: connect now).
async fn pause(backoff: &mut Backoff, moves: &mut Moves, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        go_on = backoff.wait(shutdown) => go_on,
        _ = moves.changed() => true,
    }
}

enum Ended {
    Shutdown,
    Lost(String),
}

struct Session<'a> {
    broker: &'a RedisBroker,
    hub: &'a Hub,
    subscriber: Subscriber,
    subscribed: BTreeSet<String>,
    /// A lost connection was re-made: pub/sub dropped whatever was published meanwhile.
    reconnected: bool,
}

impl Session<'_> {
    async fn serve(
        &mut self,
        mut incoming: Incoming,
        health: &Health,
        metrics: &Metrics,
        shutdown: &CancellationToken,
        moves: &mut Moves,
    ) -> Ended {
        if let Err(e) = self.reconcile().await {
            return Ended::Lost(e);
        }
        self.broker.went_live(
            self.hub,
            health,
            metrics,
            self.subscribed.len(),
            self.reconnected,
        );
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                _ = moves.changed() => return Ended::Lost("the sentinels named a new master".into()),
                _ = self.changed() => {
                    if let Err(e) = self.reconcile().await {
                        return Ended::Lost(e);
                    }
                }
                next = incoming.next() => {
                    let wire = &*self.broker.wire;
                    match next {
                        Next::Pushed { channel, payload } => deliver(wire, self.hub, metrics, &channel, &payload),
                        Next::Queued(msg) => deliver(wire, self.hub, metrics, msg.get_channel_name(), msg.get_payload_bytes()),
                        Next::Lost(why) => return Ended::Lost(why),
                    }
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(COMMAND_TIMEOUT, self.subscriber.ping()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Ended::Lost(format!("ping: {e}")),
                        Err(_) => return Ended::Lost("ping: no answer within 5s".into()),
                    }
                }
            }
        }
    }

    async fn changed(&self) {
        self.broker.changed(self.hub).await
    }

    fn wanted(&self) -> BTreeSet<String> {
        self.broker.wanted(self.hub)
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
                timed(
                    tokio::time::timeout(COMMAND_TIMEOUT, self.subscriber.subscribe(channels))
                        .await,
                )
                .map_err(|e| format!("subscribe {} groups: {e}", add.len()))?;
                debug!(groups = ?add, "subscribed");
                self.subscribed.extend(add);
            }
            if !remove.is_empty() {
                let channels: Vec<String> = remove.iter().map(|g| self.channel(g)).collect();
                timed(
                    tokio::time::timeout(COMMAND_TIMEOUT, self.subscriber.unsubscribe(channels))
                        .await,
                )
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
    fn redaction_hides_credentials() {
        assert_eq!(
            redacted("redis://:s3cret@redis:6379/0"),
            "redis://redis:6379/0"
        );
        assert_eq!(redacted("rediss://u:p@w@h:1"), "rediss://h:1");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
    }
}
