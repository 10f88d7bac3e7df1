//! `channels_redis.pubsub.RedisPubSubChannelLayer`: `group_send(g, msg)` is
//! `PUBLISH <prefix>__group__<g> <msgpack msg>` on the shard `consistent_hash("<prefix>__group__<g>")`.
//!
//! The plain Redis source does the work (subscribe exactly the wanted groups, reconnect,
//! resubscribe); this module only brings a [`Wire`] per shard. Each shard's link listens to the
//! hub's changed groups itself and keeps those its wire serves:
//!
//! ```text
//! hub changes --> link driver (shard 0) -> RedisBroker(host 0, wire: groups of shard 0)
//!             \-> link driver (shard 1) -> RedisBroker(host 1, wire: groups of shard 1)
//! ```

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::codec::Codec;
use super::hash::consistent_hash;
use super::settings::ChannelsConfig;
use crate::broker::endpoint::Endpoint;
use crate::broker::redact::redacted;
use crate::broker::redis::RedisBroker;
use crate::broker::wire::Wire;
use crate::error::ConfigError;
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// The pub/sub layer's naming and payloads, for one shard of `shards`.
pub struct PubsubWire {
    /// `<prefix>__group__`.
    channel_prefix: String,
    shard: usize,
    shards: usize,
    codec: Arc<Codec>,
}

impl Wire for PubsubWire {
    fn channel(&self, group: &str) -> String {
        format!("{}{}", self.channel_prefix, group)
    }

    fn group<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.channel_prefix.as_str())
    }

    fn serves(&self, group: &str) -> bool {
        consistent_hash(&self.channel(group), self.shards) == self.shard
    }

    fn frame(&self, group: &str, payload: &[u8], metrics: &Metrics) -> Option<Utf8Bytes> {
        // The pub/sub layer adds no random prefix and gives Fernet no TTL.
        match self.codec.decode(payload, 0, None) {
            Ok(decoded) => Some(decoded.payload),
            Err(e) => {
                metrics.events_received.inc();
                metrics.dropped(e.reason());
                warn!(group, bytes = payload.len(), error = %e, "dropped a channels message");
                None
            }
        }
    }
}

/// Starts one subscription loop per host, each serving the groups that hash to it.
pub fn spawn(
    config: &ChannelsConfig,
    codec: Arc<Codec>,
    hub: Arc<Hub>,
    health: Arc<Health>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, ConfigError> {
    let shards = config.hosts.len();
    let mut loops = Vec::with_capacity(shards);
    for (shard, host) in config.hosts.iter().enumerate() {
        let wire = Arc::new(PubsubWire {
            channel_prefix: format!("{}__group__", config.prefix),
            shard,
            shards,
            codec: codec.clone(),
        });
        let endpoint = Endpoint::single(&host.0, &config.tls).map_err(|e| {
            ConfigError::new("--channels-hosts", format!("{}: {e}", redacted(&host.0)))
        })?;
        let broker = RedisBroker::with_wire(endpoint, wire);
        loops.push(Arc::new(broker).run(
            hub.clone(),
            health.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    Ok(tokio::spawn(async move {
        futures_util::future::join_all(loops).await;
    }))
}
