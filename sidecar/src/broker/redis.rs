//! The Redis source and publisher: one subscription link per process to one server or to the
//! master the sentinels name (a Cluster runs [`super::cluster`]), subscribed to exactly the
//! groups that have a local client, kept alive by the link driver ([`super::link`]).
//!
//! ```text
//! link driver --connect--> subscriber (RESP3, RESP2 fallback) --SUBSCRIBE wanted groups-->
//!   loop { Incoming::next -> wire -> hub.publish_event
//!          master moved (Sentinel) -> lost: reconnect to the new master at once
//!          PING every 5s -> a dead peer is a lost link }
//! POST /publish --RedisBroker::publish / publish_with_history--> command connection --> Redis
//! resume        --RedisBroker::read_history (read.lua)----------> command connection --> Redis
//! ```
//!
//! The connection speaks RESP3, received messages waiting for the hub in a bounded inbox; RESP2
//! only for a server without `HELLO` ([`super::subscriber`], [`super::inbox`]).
//!
//! Publishing (`POST /publish/<group>`) and history (the publish and read scripts) use a
//! separate command connection ([`super::commands`]), because a connection in subscribe mode
//! cannot run them.
//!
//! How groups map to channel names and payloads to text frames is a [`Wire`]: plain pub/sub by
//! default; the Django Channels pub/sub layer brings its own (`crate::channels::pubsub`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::cluster::ClusterLink;
use super::commands::{CommandConn, Commands};
use super::endpoint::{Endpoint, Moves};
use super::error::{LinkError, within};
use super::history::{self, HistoryConfig, Snapshot};
use super::id::StreamId;
use super::link::{self, Context, Link};
use super::sentinel::addr_of;
use super::subscriber::{self, Incoming, Next, Subscriber};
use super::timeouts::{COMMAND_TIMEOUT, PING_EVERY};
use super::wire::{self, Plain, Wire};
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Handle of the Redis broker.
pub struct RedisBroker {
    endpoint: Endpoint,
    pub(crate) wire: Arc<dyn Wire>,
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
        Self::with_wire(endpoint, Arc::new(Plain { prefix }))
    }

    /// A broker speaking `wire` (several may share one hub, each serving its own groups).
    pub fn with_wire(endpoint: Endpoint, wire: Arc<dyn Wire>) -> Self {
        Self {
            display: endpoint.display().to_owned(),
            endpoint,
            wire,
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

    /// Whether this is a Redis Cluster (a script's keys must then share a slot).
    pub fn is_cluster(&self) -> bool {
        self.endpoint.cluster().is_some()
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
    ) -> Result<Snapshot, LinkError> {
        let mut conn = self.commands().await.map_err(|source| LinkError::Command {
            what: format!("redis {}: connect", self.display),
            source,
        })?;
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
            Err(source) => {
                self.publisher.failed(&source).await;
                Err(LinkError::Command {
                    what: format!("redis {}: read history of {group:?}", self.display),
                    source,
                })
            }
        }
    }

    /// Runs the subscription link until `shutdown` (a Cluster's when the endpoint is one).
    pub async fn run(
        self: Arc<Self>,
        hub: Arc<Hub>,
        health: Arc<Health>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) {
        let cx = Context {
            hub,
            health,
            metrics,
        };
        if let Some(cluster) = self.endpoint.cluster() {
            let link = ClusterLink::new(
                cluster.clone(),
                self.wire.clone(),
                self.display.clone(),
                cx.clone(),
            );
            return link::drive(link, cx, shutdown).await;
        }
        self.endpoint.spawn_watch(shutdown.clone());
        let link = ServerLink {
            moves: self.endpoint.moves(),
            broker: self,
            cx: cx.clone(),
        };
        link::drive(link, cx, shutdown).await
    }

    /// A subscription connection to the server to subscribe on now, and where it goes.
    async fn subscribe_conn(
        &self,
    ) -> redis::RedisResult<((Subscriber, Incoming), Option<super::sentinel::Addr>)> {
        let client = self.endpoint.client().await?;
        let at = addr_of(&client);
        let conn = subscriber::connect(&client, &self.resp2_only, &self.display).await?;
        Ok((conn, at))
    }
}

/// The subscription link to one server, or to the master the sentinels name.
struct ServerLink {
    broker: Arc<RedisBroker>,
    /// Sentinel failovers (never, for one server).
    moves: Moves,
    cx: Context,
}

/// The subscription connection, and where its messages arrive.
struct ServerConn {
    subscriber: Subscriber,
    incoming: Incoming,
}

enum ServerEvent {
    Message(Next),
    MasterMoved,
}

impl Link for ServerLink {
    type Conn = ServerConn;
    type Event = ServerEvent;

    const KIND: &'static str = "redis";
    const JOINED: &'static str = "subscribed";
    const DROPS_WHILE_DOWN: bool = true;
    const KEEP_ALIVE: Option<std::time::Duration> = Some(PING_EVERY);

    fn display(&self) -> &str {
        &self.broker.display
    }

    fn serves(&self, group: &str) -> bool {
        self.broker.wire.serves(group)
    }

    async fn connect(&mut self) -> Result<ServerConn, LinkError> {
        loop {
            let ((subscriber, incoming), at) = self
                .broker
                .subscribe_conn()
                .await
                .map_err(|source| LinkError::Connect { source })?;
            if self.moves.seen(at.as_ref()) {
                return Ok(ServerConn {
                    subscriber,
                    incoming,
                });
            }
            info!(redis = %self.broker.display, "the master moved while connecting; reconnecting");
        }
    }

    async fn join(&mut self, conn: &mut ServerConn, groups: &[String]) -> Result<(), LinkError> {
        let channels: Vec<String> = groups.iter().map(|g| self.broker.wire.channel(g)).collect();
        let what = || format!("subscribe {} groups", groups.len());
        within(COMMAND_TIMEOUT, what, conn.subscriber.subscribe(channels)).await
    }

    async fn leave(&mut self, conn: &mut ServerConn, groups: &[String]) -> Result<(), LinkError> {
        let channels: Vec<String> = groups.iter().map(|g| self.broker.wire.channel(g)).collect();
        let what = || format!("unsubscribe {} groups", groups.len());
        within(COMMAND_TIMEOUT, what, conn.subscriber.unsubscribe(channels)).await
    }

    async fn next(&mut self, conn: &mut ServerConn) -> ServerEvent {
        tokio::select! {
            _ = self.moves.changed() => ServerEvent::MasterMoved,
            next = conn.incoming.next() => ServerEvent::Message(next),
        }
    }

    fn try_next(&mut self, conn: &mut ServerConn) -> Option<ServerEvent> {
        conn.incoming.try_next().map(ServerEvent::Message)
    }

    async fn handle(
        &mut self,
        _conn: &mut ServerConn,
        _joined: &BTreeSet<String>,
        event: ServerEvent,
    ) -> Result<(), LinkError> {
        let (wire, hub, metrics) = (&*self.broker.wire, &*self.cx.hub, &self.cx.metrics);
        match event {
            ServerEvent::MasterMoved => return Err(LinkError::MasterMoved),
            ServerEvent::Message(Next::Pushed { channel, payload }) => {
                wire::deliver(wire, hub, metrics, &channel, &payload)
            }
            ServerEvent::Message(Next::Queued(msg)) => wire::deliver(
                wire,
                hub,
                metrics,
                msg.get_channel_name(),
                msg.get_payload_bytes(),
            ),
            ServerEvent::Message(Next::Lost(e)) => return Err(e),
        }
        Ok(())
    }

    async fn keep_alive(
        &mut self,
        conn: &mut ServerConn,
        _joined: &BTreeSet<String>,
    ) -> Result<(), LinkError> {
        within(COMMAND_TIMEOUT, || "ping".into(), conn.subscriber.ping())
            .await
            .map(drop)
    }

    /// A failover finished: connect to the new master now.
    async fn retry_now(&mut self) {
        self.moves.changed().await
    }
}
