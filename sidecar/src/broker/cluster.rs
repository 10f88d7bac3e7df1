//! Redis Cluster: each group is subscribed twice on one redis-rs cluster connection (RESP3), so
//! both ways of publishing reach its clients:
//!
//! ```text
//! PUBLISH  <prefix>G on any node --cluster bus, every node--> SUBSCRIBE  (any one node)  --+
//! SPUBLISH <prefix>G on G's slot owner ----------------------> SSUBSCRIBE (the slot owner) -+-> push -> inbox -> loop -> hub
//!
//! slot of G migrates: old owner sends SUNSUBSCRIBE -> dropped set -> SSUBSCRIBE again
//!                     -> MOVED -> redis-rs refreshes the slot map -> the new owner
//! ```
//!
//! `SPUBLISH` is the one that scales: a sharded message travels only inside the shard that owns
//! its slot, while a classic `PUBLISH` is copied to every node of the cluster.
//!
//! It runs on the link driver ([`super::link`]) as the single-server source does: connect, join
//! the wanted groups, then wait for messages, dropped subscriptions and the PING timer.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionAddr, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisResult};
use redis::{TlsMode, Value};
use tokio::sync::Notify;
use tracing::info;

use super::error::{LinkError, within};
use super::inbox::{self, Item};
use super::link::{Context, Link};
use super::timeouts::{COMMAND_TIMEOUT, PING_EVERY};
use super::tls::Tls;
use super::wire::{self, Wire};

/// How many (un)subscribe commands are in flight at once while reconciling.
const IN_FLIGHT: usize = 64;

/// A Redis Cluster reached through seed URLs.
pub struct Cluster {
    seeds: Vec<redis::ConnectionInfo>,
    tls: Tls,
}

impl Cluster {
    pub fn new(seeds: &[String], tls: &Tls) -> RedisResult<Self> {
        let seeds = seeds
            .iter()
            .map(|s| s.as_str().into_connection_info())
            .collect::<RedisResult<Vec<_>>>()?;
        Ok(Self {
            seeds,
            tls: tls.clone(),
        })
    }

    fn builder(&self) -> ClusterClientBuilder {
        let secure = self
            .seeds
            .iter()
            .any(|s| matches!(s.addr(), ConnectionAddr::TcpTls { .. }));
        let mut b = ClusterClientBuilder::new(self.seeds.clone())
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(COMMAND_TIMEOUT)
            .response_timeout(COMMAND_TIMEOUT);
        if secure {
            super::tls::install_crypto_provider();
            b = b.tls(if self.tls.insecure() {
                TlsMode::Insecure
            } else {
                TlsMode::Secure
            });
            if let Some(certs) = self.tls.certificates() {
                b = b.certs(certs);
            }
        }
        b
    }

    /// A client for ordinary commands (routed by slot, following `MOVED`).
    pub fn commands(&self) -> RedisResult<ClusterClient> {
        self.builder().build()
    }

    /// A subscription connection whose pushes go to `push`.
    async fn subscriber(
        &self,
        push: impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static,
    ) -> RedisResult<ClusterConnection> {
        self.builder()
            .push_sender(push)
            .build()?
            .get_async_connection()
            .await
    }
}

/// Sharded subscriptions the server dropped (slot migrated away), to subscribe again.
#[derive(Default)]
struct Dropped {
    channels: Mutex<BTreeSet<String>>,
    wake: Notify,
}

/// The push handler: messages into the inbox (never blocking); a subscription the server
/// dropped is remembered for the loop to renew.
fn pusher(
    tx: inbox::Sender,
    dropped: Arc<Dropped>,
) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
    let message = super::subscriber::pusher(tx);
    move |info: PushInfo| {
        if info.kind == PushKind::SUnsubscribe {
            // Also our own SUNSUBSCRIBE's confirmation: the loop checks the group is still
            // wanted before subscribing again.
            if let Some(Value::BulkString(channel)) = info.data.first() {
                let mut set = dropped.channels.lock().unwrap_or_else(|p| p.into_inner());
                set.insert(String::from_utf8_lossy(channel).into_owned());
                drop(set);
                dropped.wake.notify_one();
            }
            return Ok(());
        }
        // Messages; the cluster connection reconnects nodes itself, so a disconnection push
        // means nothing to the loop (its PING finds a connection that cannot come back).
        if info.kind != PushKind::Disconnection {
            message(info)?;
        }
        Ok(())
    }
}

/// The Cluster subscription link.
pub(crate) struct ClusterLink {
    cluster: Arc<Cluster>,
    wire: Arc<dyn Wire>,
    display: String,
    cx: Context,
}

/// One cluster connection, its inbox, and the subscriptions the server dropped.
pub(crate) struct ClusterConn {
    conn: ClusterConnection,
    inbox: inbox::Receiver,
    dropped: Arc<Dropped>,
}

pub(crate) enum ClusterEvent {
    Message(Item),
    /// The server dropped sharded subscriptions (a slot moved away).
    Dropped,
}

impl ClusterLink {
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        wire: Arc<dyn Wire>,
        display: String,
        cx: Context,
    ) -> Self {
        Self {
            cluster,
            wire,
            display,
            cx,
        }
    }

    /// Subscribes again (sharded) the groups whose subscription the server dropped.
    /// Returns whether anything was subscribed again (events may have been missed meanwhile).
    async fn renew(
        &self,
        conn: &ClusterConn,
        joined: &BTreeSet<String>,
    ) -> Result<bool, LinkError> {
        let channels = std::mem::take(
            &mut *conn
                .dropped
                .channels
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let groups: Vec<String> = channels
            .iter()
            .filter_map(|c| self.wire.group(c))
            .filter(|g| joined.contains(*g))
            .map(str::to_owned)
            .collect();
        if groups.is_empty() {
            return Ok(false);
        }
        info!(
            groups = groups.len(),
            "redis cluster: sharded subscriptions dropped by the server (slot moved); subscribing at the new owner"
        );
        // Sessions that catch up from history hold their live events until the new owner's
        // subscription is in place, so nothing published after it can overtake the gap.
        self.cx.hub.link_lost();
        self.each(conn, &groups, Op::Renew).await?;
        Ok(true)
    }

    /// Runs `op` for every group, [`IN_FLIGHT`] at a time (one channel per command: sharded
    /// commands may not span slots).
    async fn each(&self, conn: &ClusterConn, groups: &[String], op: Op) -> Result<(), LinkError> {
        // Owned jobs: the futures borrow nothing, so the loop stays `Send` for tokio::spawn.
        let jobs: Vec<(ClusterConnection, String)> = groups
            .iter()
            .map(|g| (conn.conn.clone(), self.wire.channel(g)))
            .collect();
        futures_util::stream::iter(jobs)
            .map(move |(mut conn, channel)| async move {
                let r = async {
                    match op {
                        Op::Subscribe => {
                            conn.subscribe(&channel).await?;
                            conn.ssubscribe(&channel).await
                        }
                        Op::Renew => conn.ssubscribe(&channel).await,
                        Op::Unsubscribe => {
                            conn.unsubscribe(&channel).await?;
                            conn.sunsubscribe(&channel).await
                        }
                    }
                };
                within(COMMAND_TIMEOUT * 2, || format!("{op:?} {channel}"), r).await
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }
}

impl Link for ClusterLink {
    type Conn = ClusterConn;
    type Event = ClusterEvent;

    const KIND: &'static str = "redis cluster";
    const JOINED: &'static str = "subscribed";
    const DROPS_WHILE_DOWN: bool = true;
    const KEEP_ALIVE: Option<Duration> = Some(PING_EVERY);

    fn display(&self) -> &str {
        &self.display
    }

    fn serves(&self, group: &str) -> bool {
        self.wire.serves(group)
    }

    async fn connect(&mut self) -> Result<ClusterConn, LinkError> {
        let dropped = Arc::new(Dropped::default());
        let (tx, inbox) = inbox::inbox(inbox::LIMIT);
        let conn = self
            .cluster
            .subscriber(pusher(tx, dropped.clone()))
            .await
            .map_err(|source| LinkError::Connect { source })?;
        Ok(ClusterConn {
            conn,
            inbox,
            dropped,
        })
    }

    async fn join(&mut self, conn: &mut ClusterConn, groups: &[String]) -> Result<(), LinkError> {
        self.each(conn, groups, Op::Subscribe).await
    }

    async fn leave(&mut self, conn: &mut ClusterConn, groups: &[String]) -> Result<(), LinkError> {
        self.each(conn, groups, Op::Unsubscribe).await
    }

    async fn next(&mut self, conn: &mut ClusterConn) -> ClusterEvent {
        tokio::select! {
            item = conn.inbox.next() => ClusterEvent::Message(item),
            _ = conn.dropped.wake.notified() => ClusterEvent::Dropped,
        }
    }

    async fn handle(
        &mut self,
        conn: &mut ClusterConn,
        joined: &BTreeSet<String>,
        event: ClusterEvent,
    ) -> Result<(), LinkError> {
        match event {
            ClusterEvent::Message(Item::Message { channel, payload }) => {
                wire::deliver(
                    &*self.wire,
                    &self.cx.hub,
                    &self.cx.metrics,
                    &channel,
                    &payload,
                );
            }
            ClusterEvent::Message(Item::Lost(e)) => return Err(e),
            ClusterEvent::Dropped => {
                if self.renew(conn, joined).await? {
                    // Events published during the move were dropped by pub/sub: catch up.
                    self.cx.hub.resubscribed();
                }
            }
        }
        Ok(())
    }

    async fn keep_alive(
        &mut self,
        conn: &mut ClusterConn,
        _joined: &BTreeSet<String>,
    ) -> Result<(), LinkError> {
        // PING goes to every primary: a node that vanished is found here and redis-rs
        // reconnects it (resubscribing what it owns).
        let mut c = conn.conn.clone();
        let pong = async move { redis::cmd("PING").query_async::<Value>(&mut c).await };
        within(COMMAND_TIMEOUT, || "ping".into(), pong)
            .await
            .map(drop)
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Subscribe,
    Renew,
    Unsubscribe,
}
