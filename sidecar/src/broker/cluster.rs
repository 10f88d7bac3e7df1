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
//! The subscription loop keeps the shape of the single-server one (`crate::redis`): connect,
//! reconcile the wanted groups, then wait for hub changes, dropped subscriptions and the PING timer.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, TryStreamExt};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionAddr, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisResult};
use redis::{TlsMode, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::inbox::{self, Item};
use super::tls::Tls;
use crate::backoff::Backoff;
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::redis::{COMMAND_TIMEOUT, PING_EVERY, RedisBroker, deliver};

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

/// The cluster subscription loop of `broker` until `shutdown`; reconnects with backoff.
pub async fn run(
    broker: Arc<RedisBroker>,
    cluster: &Cluster,
    hub: Arc<Hub>,
    health: Arc<Health>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut connected_once = false;
    loop {
        let dropped = Arc::new(Dropped::default());
        let (tx, inbox) = inbox::inbox(inbox::LIMIT);
        let push = pusher(tx, dropped.clone());
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(COMMAND_TIMEOUT, cluster.subscriber(push)) => r,
        };
        let conn = match attempt {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let hint = super::tls::hint(&e).unwrap_or("");
                warn!(redis = %broker.display, error = %e, retry_in = ?backoff.current(), "redis cluster connect failed; clients stay connected, retrying. {hint}");
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                warn!(redis = %broker.display, retry_in = ?backoff.current(), "redis cluster connect timed out; retrying");
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        if connected_once {
            metrics.redis_reconnects.inc();
        }
        let mut session = ClusterSession {
            broker: &broker,
            hub: &hub,
            conn,
            dropped,
            subscribed: BTreeSet::new(),
            reconnected: connected_once,
        };
        let ended = session.serve(inbox, &health, &metrics, &shutdown).await;
        connected_once = true;
        health.set_broker_up(false);
        metrics.broker_up.set(0);
        hub.link_lost();
        hub.set_confirmed(session.subscribed.iter().map(String::as_str), false);
        match ended {
            None => return,
            Some(why) => {
                warn!(redis = %broker.display, error = %why, "redis cluster connection lost; clients stay connected, reconnecting and resubscribing");
                backoff.reset();
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        }
    }
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

struct ClusterSession<'a> {
    broker: &'a RedisBroker,
    hub: &'a Hub,
    conn: ClusterConnection,
    dropped: Arc<Dropped>,
    /// Groups subscribed both ways (SUBSCRIBE and SSUBSCRIBE).
    subscribed: BTreeSet<String>,
    /// A lost connection was re-made: pub/sub dropped whatever was published meanwhile.
    reconnected: bool,
}

impl ClusterSession<'_> {
    /// Serves until shutdown (`None`) or a lost connection (`Some(why)`).
    async fn serve(
        &mut self,
        mut inbox: inbox::Receiver,
        health: &Health,
        metrics: &Metrics,
        shutdown: &CancellationToken,
    ) -> Option<String> {
        if let Err(e) = self.reconcile().await {
            return Some(e);
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
                _ = shutdown.cancelled() => return None,
                _ = self.changed() => {
                    if let Err(e) = self.reconcile().await {
                        return Some(e);
                    }
                }
                item = inbox.next() => match item {
                    Item::Message { channel, payload } => {
                        deliver(&*self.broker.wire, self.hub, metrics, &channel, &payload);
                    }
                    Item::Lost(why) => return Some(why),
                },
                _ = self.dropped.wake.notified() => {
                    match self.renew().await {
                        Err(e) => return Some(e),
                        // Events published during the move were dropped by pub/sub: catch up.
                        Ok(true) => self.hub.resubscribed(),
                        Ok(false) => {}
                    }
                }
                _ = ping.tick() => {
                    // PING goes to every primary: a node that vanished is found here and
                    // redis-rs reconnects it (resubscribing what it owns).
                    let mut conn = self.conn.clone();
                    let cmd = redis::cmd("PING");
                    let pong = cmd.query_async::<Value>(&mut conn);
                    match tokio::time::timeout(COMMAND_TIMEOUT, pong).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Some(format!("ping: {e}")),
                        Err(_) => return Some("ping: no answer within 5s".into()),
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

    /// Brings the subscriptions in line with the groups that have local clients.
    async fn reconcile(&mut self) -> Result<(), String> {
        for _ in 0..16 {
            let wanted = self.wanted();
            let add: Vec<String> = wanted.difference(&self.subscribed).cloned().collect();
            let remove: Vec<String> = self.subscribed.difference(&wanted).cloned().collect();
            if !add.is_empty() {
                self.each(&add, Op::Subscribe).await?;
                debug!(groups = ?add, "subscribed (cluster)");
                self.subscribed.extend(add);
            }
            if !remove.is_empty() {
                // Forget them first: the SUNSUBSCRIBE confirmations must not renew them.
                for g in &remove {
                    self.subscribed.remove(g);
                }
                self.each(&remove, Op::Unsubscribe).await?;
                debug!(groups = ?remove, "unsubscribed (cluster)");
            }
            self.hub
                .set_confirmed(self.subscribed.iter().map(String::as_str), true);
            if self.wanted() == self.subscribed {
                break;
            }
        }
        Ok(())
    }

    /// Subscribes again (sharded) the groups whose subscription the server dropped.
    /// Returns whether anything was subscribed again (events may have been missed meanwhile).
    async fn renew(&mut self) -> Result<bool, String> {
        let channels = std::mem::take(
            &mut *self
                .dropped
                .channels
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let wire = &self.broker.wire;
        let groups: Vec<String> = channels
            .iter()
            .filter_map(|c| wire.group(c))
            .filter(|g| self.subscribed.contains(*g))
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
        self.hub.link_lost();
        self.each(&groups, Op::Renew).await?;
        Ok(true)
    }

    /// Runs `op` for every group, [`IN_FLIGHT`] at a time (one channel per command: sharded
    /// commands may not span slots).
    async fn each(&self, groups: &[String], op: Op) -> Result<(), String> {
        // Owned jobs: the futures borrow nothing, so the loop stays `Send` for tokio::spawn.
        let jobs: Vec<(ClusterConnection, String)> = groups
            .iter()
            .map(|g| (self.conn.clone(), self.broker.wire.channel(g)))
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
                match tokio::time::timeout(COMMAND_TIMEOUT * 2, r).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("{op:?} {channel}: {e}")),
                    Err(_) => Err(format!("{op:?} {channel}: no answer within 10s")),
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Subscribe,
    Renew,
    Unsubscribe,
}
