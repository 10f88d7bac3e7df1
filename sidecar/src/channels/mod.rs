//! Drop-in for Django Channels: the sidecar speaks the two `channels_redis` 4.x wire protocols,
//! so an app's unmodified `group_send(group, {"type": ..., "data": ...})` reaches browsers.
//!
//! ```text
//!  group_send (Celery task, view)            sidecar (one process)
//!  ------------------------------            -----------------------------------------------
//!  RedisChannelLayer:                        [core]   ZADD <p>:group:<g> specific.<id>!<g>
//!    ZADD <p>specific.<id>! <12 rnd><msg>    [drain]  BZPOPMIN <p>specific.<id>! --+
//!  RedisPubSubChannelLayer:                                                       +--> [codec] -> hub.publish(g)
//!    PUBLISH <p>__group__<g> <msg>           [redis]  SUBSCRIBE (per shard) -------+
//! ```
//!
//! - [`codec`]: optional Fernet decryption, msgpack decoding, and the msgpack -> JSON rule.
//! - [`core`]: membership in the groups local clients need, and draining the process's inbox.
//! - [`pubsub`]: a [`crate::redis::Wire`] for the pub/sub layer, run by the plain Redis source.
//!
//! Sharding over `--channels-hosts` is the same as channels_redis (`_consistent_hash`).

pub mod codec;
pub mod core;
pub mod pubsub;

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{RedisProtocol, parse_duration};
use crate::error::ConfigError;
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// What a browser receives for one channels message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MessageMode {
    /// The message's `data` field as JSON (what `send_json(event["data"])` sent).
    Data,
    /// The whole message minus channels' internal `__asgi_*` keys, as JSON.
    Full,
}

/// A secret flag value; never printed.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.to_owned()))
}

/// Flags of the Django Channels protocols (flattened into [`crate::config::Args`]).
#[derive(Clone, Debug, Args)]
pub struct ChannelsArgs {
    /// The layer's `prefix` (channels_redis default `asgi`).
    #[arg(long, env = "TASKSTREAM_CHANNELS_PREFIX", default_value = "asgi")]
    pub channels_prefix: String,

    /// The layer's `capacity`: messages a channel holds before senders drop new ones.
    #[arg(long, env = "TASKSTREAM_CHANNELS_CAPACITY", default_value_t = 100)]
    pub channels_capacity: usize,

    /// The layer's `expiry`: how long a queued message lives (core layer; decryption TTL is this + 10s).
    #[arg(long, env = "TASKSTREAM_CHANNELS_EXPIRY", default_value = "60s", value_parser = parse_duration)]
    pub channels_expiry: Duration,

    /// The layer's `group_expiry`: group members older than this are dropped by senders.
    #[arg(long, env = "TASKSTREAM_CHANNELS_GROUP_EXPIRY", default_value = "86400s", value_parser = parse_duration)]
    pub channels_group_expiry: Duration,

    /// The layer's `hosts` as Redis URLs, comma-separated, in the same order (sharding depends on
    /// it). Default: `--redis-url`.
    #[arg(
        long,
        env = "TASKSTREAM_CHANNELS_HOSTS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub channels_hosts: Vec<String>,

    /// The layer's `symmetric_encryption_keys`, comma-separated (any may decrypt, like MultiFernet).
    #[arg(
        long,
        env = "TASKSTREAM_CHANNELS_SYMMETRIC_ENCRYPTION_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub channels_symmetric_encryption_keys: Vec<Secret>,

    /// What a browser receives: the message's `data` field, or the `full` message.
    #[arg(
        long,
        env = "TASKSTREAM_CHANNELS_MESSAGE",
        value_enum,
        default_value = "data"
    )]
    pub channels_message: MessageMode,
}

/// Which channels_redis layer class the app uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// `channels_redis.core.RedisChannelLayer`.
    Core,
    /// `channels_redis.pubsub.RedisPubSubChannelLayer`.
    Pubsub,
}

/// Validated channels settings.
#[derive(Clone, Debug)]
pub struct ChannelsConfig {
    pub layer: Layer,
    pub prefix: String,
    pub capacity: usize,
    pub expiry: Duration,
    pub group_expiry: Duration,
    pub hosts: Vec<Secret>,
    /// TLS for `rediss://` hosts.
    pub tls: crate::broker::tls::Tls,
    pub keys: Vec<Secret>,
    pub message: MessageMode,
}

impl ChannelsArgs {
    /// Checks the channels flags for `protocol`; `redis_url` is the default host, `connect` its
    /// TLS and deployment.
    pub fn validate(
        self,
        protocol: RedisProtocol,
        redis_url: &str,
        connect: &crate::broker::options::Connect,
    ) -> Result<ChannelsConfig, ConfigError> {
        let layer = match protocol {
            RedisProtocol::Channels => Layer::Core,
            _ => Layer::Pubsub,
        };
        let hosts: Vec<String> = if self.channels_hosts.iter().all(|h| h.trim().is_empty()) {
            vec![redis_url.to_owned()]
        } else {
            self.channels_hosts
                .iter()
                .map(|h| h.trim().to_owned())
                .collect()
        };
        for h in &hosts {
            connect.tls.client(h.as_str()).map_err(|e| {
                ConfigError::new(
                    "--channels-hosts",
                    format!("{}: {e}", crate::redis::redacted(h)),
                )
            })?;
        }
        if self.channels_capacity == 0 {
            return Err(ConfigError::new(
                "--channels-capacity",
                "must be at least 1",
            ));
        }
        if self.channels_group_expiry < Duration::from_secs(4) {
            return Err(ConfigError::new(
                "--channels-group-expiry",
                "must be at least 4s (the sidecar re-joins its groups every quarter of it)",
            ));
        }
        let keys: Vec<Secret> = self
            .channels_symmetric_encryption_keys
            .into_iter()
            .filter(|k| !k.0.is_empty())
            .collect();
        Ok(ChannelsConfig {
            layer,
            prefix: self.channels_prefix,
            capacity: self.channels_capacity,
            expiry: self.channels_expiry,
            group_expiry: self.channels_group_expiry,
            hosts: hosts.into_iter().map(Secret).collect(),
            tls: connect.tls.clone(),
            keys,
            message: self.channels_message,
        })
    }
}

/// Starts the source for `config`; it runs until `shutdown`.
pub fn spawn(
    config: ChannelsConfig,
    hub: Arc<Hub>,
    health: Arc<Health>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, ConfigError> {
    let codec = Arc::new(codec::Codec::new(&config.keys, config.message));
    match config.layer {
        Layer::Core => {
            let core = core::Core::new(&config, codec)?;
            Ok(tokio::spawn(core.run(hub, health, metrics, shutdown)))
        }
        Layer::Pubsub => pubsub::spawn(&config, codec, hub, health, metrics, shutdown),
    }
}

/// channels_redis `_consistent_hash`: CRC-32 of the name, top 12 bits of the ring, then scaled
/// down to one of `ring_size` hosts.
pub fn consistent_hash(value: &str, ring_size: usize) -> usize {
    if ring_size <= 1 {
        return 0;
    }
    let bigval = (crc32(value.as_bytes()) & 0xFFF) as f64;
    let ring_divisor = 4096.0 / ring_size as f64;
    ((bigval / ring_divisor) as usize).min(ring_size - 1)
}

/// CRC-32 (IEEE, as Python's `binascii.crc32`); only hashed on joins, so bitwise is enough.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_binascii() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn consistent_hash_matches_channels_redis() {
        // Values from channels_redis.utils._consistent_hash computed with Python.
        assert_eq!(consistent_hash("anything", 1), 0);
        for (value, ring, want) in [
            ("user_42_tasks", 2, 1),
            ("user_42_tasks", 3, 1),
            ("g1", 2, 1),
            ("g1", 3, 2),
            ("asgi__group__g1", 2, 0),
            ("specific.0123456789abcdef0123456789abcdef!", 3, 1),
        ] {
            assert_eq!(consistent_hash(value, ring), want, "{value} over {ring}");
        }
    }
}
