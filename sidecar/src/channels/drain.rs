//! The Channels core layer's inbox: the one sorted set every `group_send` to this process's
//! members lands in, drained by a link of its own on the broker's link driver (it joins no
//! groups and reports at debug level: the membership link is the broker's state).
//!
//! ```text
//! BZPOPMIN <p>specific.<id>! (blocks 2s, then again: a dead peer is noticed)
//!   then ZPOPMIN up to capacity --> decode (codec) --> __asgi_channel__ names the members
//!   --> specific.<id>!<g> --> hub.publish(g)
//! ```
//!
//! Only shutdown interrupts a pop: a BZPOPMIN whose answer was dropped would lose its message.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tracing::warn;

use super::codec::Codec;
use crate::broker::error::LinkError;
use crate::broker::link::{Context, Link};
use crate::broker::timeouts::COMMAND_TIMEOUT;
use crate::metrics::DropReason;

/// BZPOPMIN blocks this long, then loops (so a dead peer is noticed).
const BLOCK: Duration = Duration::from_secs(2);
/// channels_redis puts this many random bytes before each core-layer message.
const RANDOM_PREFIX: usize = 12;

/// The inbox link of one Channels process.
pub struct Drain {
    /// The shard holding the inbox.
    client: redis::Client,
    display: String,
    /// `<prefix>specific.<id>!`.
    inbox: String,
    /// `specific.<id>!`: members are this + group.
    member_prefix: String,
    capacity: usize,
    ttl_secs: u64,
    codec: Arc<Codec>,
    cx: Context,
    near_capacity_warned: bool,
}

impl Drain {
    #[allow(clippy::too_many_arguments)] // built once, by `Core::run`, from its own fields
    pub(crate) fn new(
        client: redis::Client,
        display: String,
        inbox: String,
        member_prefix: String,
        capacity: usize,
        ttl_secs: u64,
        codec: Arc<Codec>,
        cx: Context,
    ) -> Self {
        Self {
            client,
            display,
            inbox,
            member_prefix,
            capacity,
            ttl_secs,
            codec,
            cx,
            near_capacity_warned: false,
        }
    }

    /// Waits for the next message, then takes what else is queued (up to capacity), oldest first.
    async fn pop(
        inbox: &str,
        capacity: usize,
        conn: &mut MultiplexedConnection,
    ) -> redis::RedisResult<Vec<Vec<u8>>> {
        let first: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = redis::cmd("BZPOPMIN")
            .arg(inbox)
            .arg(BLOCK.as_secs_f64())
            .query_async(conn)
            .await?;
        let Some((_, member, _)) = first else {
            return Ok(Vec::new());
        };
        // ZPOPMIN answers member, score, member, score, ...
        let rest: Vec<Vec<u8>> = redis::cmd("ZPOPMIN")
            .arg(inbox)
            .arg(capacity)
            .query_async(conn)
            .await?;
        let mut batch = Vec::with_capacity(1 + rest.len() / 2);
        batch.push(member);
        batch.extend(rest.into_iter().step_by(2));
        Ok(batch)
    }

    fn deliver(&self, raw: &[u8]) {
        let (hub, metrics) = (&self.cx.hub, &self.cx.metrics);
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
            .filter_map(|c| c.strip_prefix(self.member_prefix.as_str()))
            .collect();
        if groups.is_empty() {
            metrics.events_received.inc();
            metrics.dropped(DropReason::Malformed);
            warn!(channels = ?decoded.channels, "dropped a channels message not addressed to a group member of this process");
        }
        for g in groups {
            hub.publish(g, &decoded.payload);
        }
    }
}

impl Link for Drain {
    type Conn = MultiplexedConnection;
    type Event = redis::RedisResult<Vec<Vec<u8>>>;

    const KIND: &'static str = "channels inbox";
    const JOINED: &'static str = "draining";
    // Senders queue into the sorted set while the link is down: nothing to catch up.
    const DROPS_WHILE_DOWN: bool = false;
    // The blocking pop answers every 2s: that is the keep-alive.
    const KEEP_ALIVE: Option<Duration> = None;
    const REPORTS: bool = false;
    // The inbox is this process's own channel, not a group.
    const JOINS: bool = false;

    fn display(&self) -> &str {
        &self.display
    }

    async fn connect(&mut self) -> Result<MultiplexedConnection, LinkError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(BLOCK + COMMAND_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|source| LinkError::Connect { source })
    }

    async fn join(&mut self, _: &mut Self::Conn, _: &[String]) -> Result<(), LinkError> {
        Ok(())
    }

    async fn leave(&mut self, _: &mut Self::Conn, _: &[String]) -> Result<(), LinkError> {
        Ok(())
    }

    async fn next(&mut self, conn: &mut MultiplexedConnection) -> Self::Event {
        Self::pop(&self.inbox, self.capacity, conn).await
    }

    async fn handle(
        &mut self,
        _conn: &mut MultiplexedConnection,
        _joined: &BTreeSet<String>,
        popped: Self::Event,
    ) -> Result<(), LinkError> {
        let batch = popped.map_err(|source| LinkError::Command {
            what: "BZPOPMIN inbox".into(),
            source,
        })?;
        // A batch close to capacity means senders may be dropping messages.
        let near = batch.len() * 4 >= self.capacity * 3;
        if near && !self.near_capacity_warned {
            warn!(
                queued = batch.len(),
                capacity = self.capacity,
                "inbox near --channels-capacity: senders drop messages past it"
            );
        }
        self.near_capacity_warned = near;
        for raw in batch {
            self.deliver(&raw);
        }
        Ok(())
    }
}
