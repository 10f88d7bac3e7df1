//! `channels_redis.core.RedisChannelLayer`: the sidecar is one Channels process that joins the
//! groups its clients need and drains its own inbox.
//!
//! ```text
//!             [membership]                                   [drain]
//! hub.changed -> ZADD/ZREM <p>:group:<g> specific.<id>!<g>    BZPOPMIN <p>specific.<id>! (1 conn)
//! every 2s    -> EXPIRE <p>:taskstream:alive:<id> per shard   then ZPOPMIN up to capacity
//!                (gone = FLUSHALL/restart: re-join that shard)   -> decode -> __asgi_channel__
//! every group_expiry/4 -> re-ZADD every group (fresh score)      -> specific.<id>!<g> -> hub.publish(g)
//! ```
//!
//! Naming: `group_send` reads a group's members and pushes one message per member's inbox key
//! (`<p>` + the member up to and including `!`), listing the members in `__asgi_channel__`.
//! The sidecar has one inbox for the whole process (`specific.<id>!`, hashed to one shard like
//! channels_redis does), and one member per group, `specific.<id>!<group>`, because the message
//! itself does not name its group: the member it was addressed to does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::Codec;
use super::{ChannelsConfig, consistent_hash};
use crate::backoff::Backoff;
use crate::error::ConfigError;
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::redis::redacted;

/// How often each shard is checked for a lost membership (FLUSHALL, restart without data).
const CHECK_EVERY: Duration = Duration::from_secs(2);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// BZPOPMIN blocks this long, then loops (so a dead peer is noticed).
const BLOCK: Duration = Duration::from_secs(2);
/// channels_redis puts this many random bytes before each core-layer message.
const RANDOM_PREFIX: usize = 12;

/// The core layer source.
pub struct Core {
    shards: Vec<Shard>,
    prefix: String,
    /// `specific.<id>!`: the process's channel prefix; members are this + group.
    client: String,
    /// `<prefix>specific.<id>!`.
    inbox: String,
    inbox_shard: usize,
    /// `<prefix>:taskstream:alive:<id>`: present on a shard while our groups there are joined.
    alive: String,
    capacity: usize,
    group_expiry: Duration,
    ttl_secs: u64,
    codec: Arc<Codec>,
}

struct Shard {
    client: redis::Client,
    display: String,
}

impl Core {
    pub fn new(config: &ChannelsConfig, codec: Arc<Codec>) -> Result<Self, ConfigError> {
        let shards = config
            .hosts
            .iter()
            .map(|h| {
                let display = redacted(&h.0);
                config
                    .tls
                    .client(h.0.as_str())
                    .map(|client| Shard {
                        client,
                        display: display.clone(),
                    })
                    .map_err(|e| ConfigError::new("--channels-hosts", format!("{display}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let id = format!("{:032x}", fastrand::u128(..));
        let client = format!("specific.{id}!");
        Ok(Self {
            inbox: format!("{}{client}", config.prefix),
            inbox_shard: consistent_hash(&client, shards.len()),
            alive: format!("{}:taskstream:alive:{id}", config.prefix),
            shards,
            prefix: config.prefix.clone(),
            client,
            capacity: config.capacity,
            group_expiry: config.group_expiry,
            ttl_secs: config.expiry.as_secs() + 10,
            codec,
        })
    }

    /// Runs membership and drain until `shutdown`, then leaves every group.
    pub async fn run(
        self,
        hub: Arc<Hub>,
        health: Arc<Health>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) {
        info!(inbox = %self.inbox, shards = self.shards.len(), "django channels core layer: joining groups as one process");
        tokio::join!(
            self.membership(&hub, &health, &metrics, &shutdown),
            self.drain(&hub, &metrics, &shutdown),
        );
    }

    fn member(&self, group: &str) -> String {
        format!("{}{group}", self.client)
    }

    fn group_key(&self, group: &str) -> String {
        format!("{}:group:{group}", self.prefix)
    }

    fn shard_of(&self, group: &str) -> usize {
        consistent_hash(group, self.shards.len())
    }

    /// Re-adds ourselves this often, well before senders drop members older than group_expiry.
    fn refresh_every(&self) -> Duration {
        (self.group_expiry / 4).min(Duration::from_secs(600))
    }

    async fn connect(
        &self,
        shard: usize,
        response: Duration,
    ) -> Result<MultiplexedConnection, String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(response));
        self.shards[shard]
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("{}: connect: {e}", self.shards[shard].display))
    }

    // ---- membership -------------------------------------------------------------------------

    async fn membership(
        &self,
        hub: &Hub,
        health: &Health,
        metrics: &Metrics,
        shutdown: &CancellationToken,
    ) {
        let mut backoff = Backoff::default();
        let mut connected_once = false;
        loop {
            let mut conns = Vec::with_capacity(self.shards.len());
            let mut failed = None;
            for i in 0..self.shards.len() {
                let attempt = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    c = self.connect(i, COMMAND_TIMEOUT) => c,
                };
                match attempt {
                    Ok(c) => conns.push(c),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                warn!(error = %e, retry_in = ?backoff.current(), "redis connect failed; clients stay connected, retrying");
                if !backoff.wait(shutdown).await {
                    return;
                }
                continue;
            }
            if connected_once {
                metrics.redis_reconnects.inc();
            }
            connected_once = true;
            backoff.reset();
            let mut session = Membership {
                core: self,
                hub,
                conns,
                joined: BTreeSet::new(),
            };
            let ended = session.serve(health, metrics, shutdown).await;
            health.set_broker_up(false);
            metrics.broker_up.set(0);
            hub.unconfirm_all();
            match ended {
                Err(why) => {
                    warn!(error = %why, "redis connection lost; clients stay connected, re-joining groups on reconnect");
                    if !backoff.wait(shutdown).await {
                        return;
                    }
                }
                Ok(()) => {
                    session.leave_all().await;
                    return;
                }
            }
        }
    }

    // ---- drain ------------------------------------------------------------------------------

    async fn drain(&self, hub: &Hub, metrics: &Metrics, shutdown: &CancellationToken) {
        let mut backoff = Backoff::default();
        let mut near_capacity_warned = false;
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = self.connect(self.inbox_shard, BLOCK + COMMAND_TIMEOUT) => c,
            };
            let mut conn = match attempt {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "inbox connection failed; retrying");
                    if !backoff.wait(shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            loop {
                let popped = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = self.pop(&mut conn) => r,
                };
                match popped {
                    Ok(batch) => {
                        // A batch close to capacity means senders may be dropping messages.
                        let near = batch.len() * 4 >= self.capacity * 3;
                        if near && !near_capacity_warned {
                            warn!(
                                queued = batch.len(),
                                capacity = self.capacity,
                                "inbox near --channels-capacity: senders drop messages past it"
                            );
                        }
                        near_capacity_warned = near;
                        for raw in batch {
                            self.deliver(&raw, hub, metrics);
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "inbox connection lost; reconnecting");
                        if !backoff.wait(shutdown).await {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Waits for the next message, then takes what else is queued (up to capacity), oldest first.
    async fn pop(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<Vec<Vec<u8>>> {
        let first: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = redis::cmd("BZPOPMIN")
            .arg(&self.inbox)
            .arg(BLOCK.as_secs_f64())
            .query_async(conn)
            .await?;
        let Some((_, member, _)) = first else {
            return Ok(Vec::new());
        };
        // ZPOPMIN answers member, score, member, score, ...
        let rest: Vec<Vec<u8>> = redis::cmd("ZPOPMIN")
            .arg(&self.inbox)
            .arg(self.capacity)
            .query_async(conn)
            .await?;
        let mut batch = Vec::with_capacity(1 + rest.len() / 2);
        batch.push(member);
        batch.extend(rest.into_iter().step_by(2));
        Ok(batch)
    }

    fn deliver(&self, raw: &[u8], hub: &Hub, metrics: &Metrics) {
        let decoded = match self.codec.decode(raw, RANDOM_PREFIX, Some(self.ttl_secs)) {
            Ok(d) => d,
            Err(e) => {
                metrics.events_received.inc();
                metrics.dropped(e.reason());
                warn!(bytes = raw.len(), error = %e, "dropped a channels message");
                return;
            }
        };
        let groups: BTreeSet<&str> = decoded
            .channels
            .iter()
            .filter_map(|c| c.strip_prefix(self.client.as_str()))
            .collect();
        if groups.is_empty() {
            metrics.events_received.inc();
            metrics.dropped(crate::metrics::DropReason::Malformed);
            warn!(channels = ?decoded.channels, "dropped a channels message not addressed to a group member of this process");
        }
        for g in groups {
            hub.publish(g, &decoded.payload);
        }
    }
}

/// One connected membership session (a connection per shard).
struct Membership<'a> {
    core: &'a Core,
    hub: &'a Hub,
    conns: Vec<MultiplexedConnection>,
    /// Groups whose member is in Redis (as far as we know).
    joined: BTreeSet<String>,
}

impl Membership<'_> {
    /// Ok on shutdown, Err when a connection failed.
    async fn serve(
        &mut self,
        health: &Health,
        metrics: &Metrics,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        for shard in 0..self.conns.len() {
            self.mark_alive(shard).await?;
        }
        self.reconcile().await?;
        info!(groups = self.joined.len(), "redis: channels groups joined");
        health.set_broker_up(true);
        metrics.broker_up.set(1);
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.reset();
        let mut refresh = tokio::time::interval(self.core.refresh_every());
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.hub.changed().notified() => self.reconcile().await?,
                _ = check.tick() => {
                    for shard in 0..self.conns.len() {
                        if !self.still_alive(shard).await? {
                            let groups = self.groups_on(shard);
                            warn!(shard = %self.core.shards[shard].display, groups = groups.len(), "our channels group memberships vanished (FLUSHALL or a restart without data); re-joining");
                            self.add(&groups).await?;
                            self.mark_alive(shard).await?;
                        }
                    }
                }
                _ = refresh.tick() => {
                    let all: Vec<String> = self.joined.iter().cloned().collect();
                    self.add(&all).await?;
                    debug!(groups = all.len(), "channels group memberships refreshed");
                }
            }
        }
    }

    fn groups_on(&self, shard: usize) -> Vec<String> {
        self.joined
            .iter()
            .filter(|g| self.core.shard_of(g) == shard)
            .cloned()
            .collect()
    }

    /// Brings our group memberships in line with the groups that have local clients.
    async fn reconcile(&mut self) -> Result<(), String> {
        for _ in 0..16 {
            let wanted: BTreeSet<String> = self.hub.wanted().into_iter().collect();
            let add: Vec<String> = wanted.difference(&self.joined).cloned().collect();
            let remove: Vec<String> = self.joined.difference(&wanted).cloned().collect();
            if !add.is_empty() {
                self.add(&add).await?;
                debug!(groups = ?add, "joined channels groups");
                self.joined.extend(add);
            }
            if !remove.is_empty() {
                self.remove(&remove).await?;
                debug!(groups = ?remove, "left channels groups");
                for g in &remove {
                    self.joined.remove(g);
                }
            }
            self.hub
                .set_confirmed(self.joined.iter().map(String::as_str), true);
            if self
                .hub
                .wanted()
                .into_iter()
                .eq(self.joined.iter().cloned())
            {
                break;
            }
        }
        Ok(())
    }

    /// `group_add` for each group: ZADD (score now) and EXPIRE group_expiry, as channels_redis does.
    async fn add(&mut self, groups: &[String]) -> Result<(), String> {
        let now = now_secs();
        let expiry = self.core.group_expiry.as_secs().max(1);
        for (shard, groups) in self.by_shard(groups) {
            let mut pipe = redis::pipe();
            for g in groups {
                let key = self.core.group_key(g);
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg(now)
                    .arg(self.core.member(g))
                    .ignore();
                pipe.cmd("EXPIRE").arg(&key).arg(expiry).ignore();
            }
            self.run(shard, &pipe, "ZADD").await?;
        }
        Ok(())
    }

    /// `group_discard` for each group.
    async fn remove(&mut self, groups: &[String]) -> Result<(), String> {
        for (shard, groups) in self.by_shard(groups) {
            let mut pipe = redis::pipe();
            for g in groups {
                pipe.cmd("ZREM")
                    .arg(self.core.group_key(g))
                    .arg(self.core.member(g))
                    .ignore();
            }
            self.run(shard, &pipe, "ZREM").await?;
        }
        Ok(())
    }

    fn by_shard<'g>(&self, groups: &'g [String]) -> BTreeMap<usize, Vec<&'g String>> {
        let mut m: BTreeMap<usize, Vec<&String>> = BTreeMap::new();
        for g in groups {
            m.entry(self.core.shard_of(g)).or_default().push(g);
        }
        m
    }

    async fn run(
        &mut self,
        shard: usize,
        pipe: &redis::Pipeline,
        what: &str,
    ) -> Result<(), String> {
        pipe.query_async::<()>(&mut self.conns[shard])
            .await
            .map_err(|e| format!("{}: {what}: {e}", self.core.shards[shard].display))
    }

    /// Marks the shard as holding our memberships (the marker expires if we die).
    async fn mark_alive(&mut self, shard: usize) -> Result<(), String> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&self.core.alive)
            .arg(1)
            .arg("EX")
            .arg(alive_ttl())
            .ignore();
        self.run(shard, &pipe, "SET alive marker").await
    }

    /// Extends the marker; false when it is gone (the shard lost our memberships).
    async fn still_alive(&mut self, shard: usize) -> Result<bool, String> {
        redis::cmd("EXPIRE")
            .arg(&self.core.alive)
            .arg(alive_ttl())
            .query_async::<bool>(&mut self.conns[shard])
            .await
            .map_err(|e| format!("{}: EXPIRE: {e}", self.core.shards[shard].display))
    }

    /// On shutdown: leave every group and drop the inbox, so senders stop queuing for us.
    async fn leave_all(&mut self) {
        let all: Vec<String> = self.joined.iter().cloned().collect();
        let inbox_shard = self.core.inbox_shard;
        let leave = async {
            self.remove(&all).await?;
            for shard in 0..self.conns.len() {
                let mut pipe = redis::pipe();
                pipe.cmd("DEL").arg(&self.core.alive).ignore();
                if shard == inbox_shard {
                    pipe.cmd("DEL").arg(&self.core.inbox).ignore();
                }
                self.run(shard, &pipe, "DEL").await?;
            }
            Ok::<_, String>(())
        };
        match tokio::time::timeout(Duration::from_secs(2), leave).await {
            Ok(Ok(())) => info!(groups = all.len(), "left channels groups"),
            Ok(Err(e)) => {
                warn!(error = %e, "could not leave channels groups; senders drop them after group_expiry")
            }
            Err(_) => {
                warn!("leaving channels groups timed out; senders drop them after group_expiry")
            }
        }
    }
}

fn alive_ttl() -> u64 {
    CHECK_EVERY.as_secs() * 10
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
