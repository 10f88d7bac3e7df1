//! The Django Channels flags (`--channels-*`, flattened into [`crate::config::Args`]) and their
//! validated form, [`ChannelsConfig`], which every Channels room reads.
//!
//! ```text
//! --redis-protocol channels | channels-pubsub + --channels-* --ChannelsArgs::validate--> ChannelsConfig
//!   --> channels::spawn (core layer: membership + inbox links; pub/sub layer: one link per host)
//! ```

use std::time::Duration;
use taskstream_contract::env;

use clap::{Args, ValueEnum};

use crate::broker::options::{Connect, RedisProtocol};
use crate::broker::redact::redacted;
use crate::broker::tls::Tls;
use crate::duration::parse_duration;
use crate::error::ConfigError;

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
    #[arg(long, env = env::CHANNELS_PREFIX, default_value = "asgi")]
    pub channels_prefix: String,

    /// The layer's `capacity`: messages a channel holds before senders drop new ones.
    #[arg(long, env = env::CHANNELS_CAPACITY, default_value_t = 100)]
    pub channels_capacity: usize,

    /// The layer's `expiry`: how long a queued message lives (core layer; decryption TTL is this + 10s).
    #[arg(long, env = env::CHANNELS_EXPIRY, default_value = "60s", value_parser = parse_duration)]
    pub channels_expiry: Duration,

    /// The layer's `group_expiry`: group members older than this are dropped by senders.
    #[arg(long, env = env::CHANNELS_GROUP_EXPIRY, default_value = "86400s", value_parser = parse_duration)]
    pub channels_group_expiry: Duration,

    /// The layer's `hosts` as Redis URLs, comma-separated, in the same order (sharding depends on
    /// it). Default: `--redis-url`.
    #[arg(
        long,
        env = env::CHANNELS_HOSTS,
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub channels_hosts: Vec<String>,

    /// The layer's `symmetric_encryption_keys`, comma-separated (any may decrypt, like MultiFernet).
    #[arg(
        long,
        env = env::CHANNELS_SYMMETRIC_ENCRYPTION_KEYS,
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub channels_symmetric_encryption_keys: Vec<Secret>,

    /// What a browser receives: the message's `data` field, or the `full` message.
    #[arg(
        long,
        env = env::CHANNELS_MESSAGE,
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
    pub tls: Tls,
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
        connect: &Connect,
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
                ConfigError::new("--channels-hosts", format!("{}: {e}", redacted(h)))
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
