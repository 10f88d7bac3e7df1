//! `channels_redis.core.RedisChannelLayer`: the sidecar is one Channels process that joins the
//! groups its clients need and drains its own inbox.
//!
//! ```text
//!             [membership: this file's link]                 [inbox: super::drain's link]
//! hub.changed -> ZADD/ZREM <p>:group:<g> specific.<id>!<g>    BZPOPMIN <p>specific.<id>! (1 conn)
//! every 2s    -> EXPIRE <p>:taskstream:alive:<id> per shard   then ZPOPMIN up to capacity
//!                (gone = FLUSHALL/restart: re-join that shard)   -> decode -> __asgi_channel__
//! every group_expiry/4 -> re-ZADD every group (fresh score)      -> specific.<id>!<g> -> hub.publish(g)
//!       both run on the broker's link driver (connect, backoff, up/down, reconnect)
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
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::Codec;
use super::drain::Drain;
use super::hash::consistent_hash;
use super::settings::ChannelsConfig;
use crate::broker::error::LinkError;
use crate::broker::link::{self, Context, Link};
use crate::broker::redact::redacted;
use crate::broker::timeouts::COMMAND_TIMEOUT;
use crate::error::ConfigError;
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// How often each shard is checked for a lost membership (FLUSHALL, restart without data).
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The core layer source: the membership link (this process's groups, on every shard).
pub struct Core {
    shards: Vec<Shard>,
    /// Every shard, for logs.
    display: String,
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
            display: shards
                .iter()
                .map(|s| s.display.as_str())
                .collect::<Vec<_>>()
                .join(","),
            shards,
            prefix: config.prefix.clone(),
            client,
            capacity: config.capacity,
            group_expiry: config.group_expiry,
            ttl_secs: config.expiry.as_secs() + 10,
            codec,
        })
    }

    /// Runs membership and the inbox drain until `shutdown`, then leaves every group.
    pub async fn run(
        self,
        hub: Arc<Hub>,
        health: Arc<Health>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) {
        info!(inbox = %self.inbox, shards = self.shards.len(), "django channels core layer: joining groups as one process");
        let cx = Context {
            hub,
            health,
            metrics,
        };
        let inbox = &self.shards[self.inbox_shard];
        let drain = Drain::new(
            inbox.client.clone(),
            inbox.display.clone(),
            self.inbox.clone(),
            self.client.clone(),
            self.capacity,
            self.ttl_secs,
            self.codec.clone(),
            cx.clone(),
        );
        tokio::join!(
            link::drive(self, cx.clone(), shutdown.clone()),
            link::drive(drain, cx, shutdown),
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

    fn groups_on(&self, joined: &BTreeSet<String>, shard: usize) -> Vec<String> {
        joined
            .iter()
            .filter(|g| self.shard_of(g) == shard)
            .cloned()
            .collect()
    }

    /// `group_add` for each group: ZADD (score now) and EXPIRE group_expiry, as channels_redis does.
    async fn add(
        &self,
        conns: &mut [MultiplexedConnection],
        groups: &[String],
    ) -> Result<(), LinkError> {
        let now = now_secs();
        let expiry = self.group_expiry.as_secs().max(1);
        for (shard, groups) in self.by_shard(groups) {
            let mut pipe = redis::pipe();
            for g in groups {
                let key = self.group_key(g);
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg(now)
                    .arg(self.member(g))
                    .ignore();
                pipe.cmd("EXPIRE").arg(&key).arg(expiry).ignore();
            }
            self.pipeline(conns, shard, &pipe, "ZADD").await?;
        }
        Ok(())
    }

    /// `group_discard` for each group.
    async fn remove(
        &self,
        conns: &mut [MultiplexedConnection],
        groups: &[String],
    ) -> Result<(), LinkError> {
        for (shard, groups) in self.by_shard(groups) {
            let mut pipe = redis::pipe();
            for g in groups {
                pipe.cmd("ZREM")
                    .arg(self.group_key(g))
                    .arg(self.member(g))
                    .ignore();
            }
            self.pipeline(conns, shard, &pipe, "ZREM").await?;
        }
        Ok(())
    }

    fn by_shard<'g>(&self, groups: &'g [String]) -> BTreeMap<usize, Vec<&'g String>> {
        let mut m: BTreeMap<usize, Vec<&String>> = BTreeMap::new();
        for g in groups {
            m.entry(self.shard_of(g)).or_default().push(g);
        }
        m
    }

    async fn pipeline(
        &self,
        conns: &mut [MultiplexedConnection],
        shard: usize,
        pipe: &redis::Pipeline,
        what: &'static str,
    ) -> Result<(), LinkError> {
        pipe.query_async::<()>(&mut conns[shard])
            .await
            .map_err(|source| {
                LinkError::Command {
                    what: what.into(),
                    source,
                }
                .on(&self.shards[shard].display)
            })
    }

    /// Marks the shard as holding our memberships (the marker expires if we die).
    async fn mark_alive(
        &self,
        conns: &mut [MultiplexedConnection],
        shard: usize,
    ) -> Result<(), LinkError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&self.alive)
            .arg(1)
            .arg("EX")
            .arg(alive_ttl())
            .ignore();
        self.pipeline(conns, shard, &pipe, "SET alive marker").await
    }

    /// Extends the marker; false when it is gone (the shard lost our memberships).
    async fn still_alive(
        &self,
        conns: &mut [MultiplexedConnection],
        shard: usize,
    ) -> Result<bool, LinkError> {
        redis::cmd("EXPIRE")
            .arg(&self.alive)
            .arg(alive_ttl())
            .query_async::<bool>(&mut conns[shard])
            .await
            .map_err(|source| {
                LinkError::Command {
                    what: "EXPIRE".into(),
                    source,
                }
                .on(&self.shards[shard].display)
            })
    }
}

/// A connection per shard, and the timer of the periodic re-join.
pub struct Members {
    conns: Vec<MultiplexedConnection>,
    refresh: Interval,
}

impl Link for Core {
    type Conn = Members;
    /// The refresh timer fired.
    type Event = ();

    const KIND: &'static str = "redis (channels core layer)";
    const JOINED: &'static str = "groups joined";
    // Senders queue into our inbox while we are away: nothing to catch up.
    const DROPS_WHILE_DOWN: bool = false;
    const KEEP_ALIVE: Option<Duration> = Some(CHECK_EVERY);

    fn display(&self) -> &str {
        &self.display
    }

    fn connect_timeout(&self) -> Duration {
        // A connection and a marker per shard, one after the other.
        COMMAND_TIMEOUT * 2 * self.shards.len().max(1) as u32
    }

    async fn connect(&mut self) -> Result<Members, LinkError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let mut conns = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let conn = shard
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|source| LinkError::Connect { source }.on(&shard.display))?;
            conns.push(conn);
        }
        for shard in 0..conns.len() {
            self.mark_alive(&mut conns, shard).await?;
        }
        let mut refresh = tokio::time::interval(self.refresh_every());
        refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
        refresh.reset();
        Ok(Members { conns, refresh })
    }

    async fn join(&mut self, m: &mut Members, groups: &[String]) -> Result<(), LinkError> {
        self.add(&mut m.conns, groups).await
    }

    async fn leave(&mut self, m: &mut Members, groups: &[String]) -> Result<(), LinkError> {
        self.remove(&mut m.conns, groups).await
    }

    async fn next(&mut self, m: &mut Members) {
        m.refresh.tick().await;
    }

    async fn handle(
        &mut self,
        m: &mut Members,
        joined: &BTreeSet<String>,
        (): (),
    ) -> Result<(), LinkError> {
        let all: Vec<String> = joined.iter().cloned().collect();
        self.add(&mut m.conns, &all).await?;
        debug!(groups = all.len(), "channels group memberships refreshed");
        Ok(())
    }

    async fn keep_alive(
        &mut self,
        m: &mut Members,
        joined: &BTreeSet<String>,
    ) -> Result<(), LinkError> {
        for shard in 0..m.conns.len() {
            if !self.still_alive(&mut m.conns, shard).await? {
                let groups = self.groups_on(joined, shard);
                warn!(shard = %self.shards[shard].display, groups = groups.len(), "our channels group memberships vanished (FLUSHALL or a restart without data); re-joining");
                self.add(&mut m.conns, &groups).await?;
                self.mark_alive(&mut m.conns, shard).await?;
            }
        }
        Ok(())
    }

    /// On shutdown: leave every group and drop the inbox, so senders stop queuing for us.
    async fn close(&mut self, mut m: Members, joined: &BTreeSet<String>) {
        let all: Vec<String> = joined.iter().cloned().collect();
        let leave = async {
            self.remove(&mut m.conns, &all).await?;
            for shard in 0..m.conns.len() {
                let mut pipe = redis::pipe();
                pipe.cmd("DEL").arg(&self.alive).ignore();
                if shard == self.inbox_shard {
                    pipe.cmd("DEL").arg(&self.inbox).ignore();
                }
                self.pipeline(&mut m.conns, shard, &pipe, "DEL").await?;
            }
            Ok::<_, LinkError>(())
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
