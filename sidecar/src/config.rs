//! Command-line and environment configuration of the sidecar.
//!
//! Every flag has a `TASKSTREAM_*` environment variable; these names are a user-facing contract
//! (the operator sets them on the sidecar container), so they and the defaults the operator
//! relies on come from the shared `taskstream_contract` crate the operator writes them with. [`Args`] is what clap parses; [`Config`] is
//! the validated form the rest of the crate uses, so nothing downstream re-checks a flag.
//!
//! ```text
//! flags / TASKSTREAM_* --clap--> Args (+ RedisArgs, ChannelsArgs flattened) --validate()--> Config
//!   bad value: ConfigError naming the flag --> exit 2
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use http::Uri;
use taskstream_contract::{default, env};

use crate::broker::history::HistoryConfig;
use crate::broker::options::{Connect, RedisArgs, RedisProtocol};
use crate::channels::settings::{ChannelsArgs, ChannelsConfig};
use crate::duration::parse_duration;
use crate::error::ConfigError;

/// How WebSocket clients are authenticated and given their groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// A JWT from `?token=` or `Authorization: Bearer`.
    Jwt,
    /// Ask the app (`GET <upstream><auth-path>`) with the client's cookies.
    Forward,
    /// No authentication: groups come from `?groups=` (local development only).
    None,
}

/// Where events come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BrokerKind {
    /// Redis pub/sub: `PUBLISH <prefix><group> <payload>`.
    Redis,
    /// In-process only (local mode): events come from `POST /publish/<group>` on the admin port.
    Memory,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of `taskstream-sidecar`. Durations accept `500ms`, `20s`, `5m` or plain seconds.
#[derive(Clone, Debug, Parser)]
#[command(name = "taskstream-sidecar", version, about)]
pub struct Args {
    /// Public address: WebSocket clients and proxied app traffic.
    #[arg(long, env = env::LISTEN, default_value = default::LISTEN)]
    pub listen: SocketAddr,

    /// Admin address: /healthz, /readyz, /metrics, POST /publish/<group>. Keep it inside the pod.
    #[arg(long, env = env::ADMIN_LISTEN, default_value = default::ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,

    /// Accept `POST /publish/<group>` on the admin port from any peer, not only loopback (the
    /// app in the same pod). Probes and /metrics are reachable from anywhere either way.
    #[arg(
        long,
        env = env::PUBLISH_ALLOW_REMOTE,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub publish_allow_remote: bool,

    /// The app every non-WebSocket request is proxied to.
    #[arg(
        long,
        env = env::UPSTREAM,
        default_value = default::UPSTREAM
    )]
    pub upstream: String,

    /// Path the sidecar terminates WebSockets on (exact match; a trailing slash is optional).
    #[arg(long, env = env::WS_PATH, default_value = default::WS_PATH)]
    pub ws_path: String,

    /// Event source.
    #[arg(long, env = env::BROKER, value_enum, default_value = "redis")]
    pub broker: BrokerKind,

    /// Redis URL (`redis://[:password@]host:port[/db]`, `rediss://` for TLS); required with
    /// `--broker redis`. With `--redis-sentinels` only its password, db and TLS are used (the
    /// host is not); with `--redis-cluster` it may list several seed URLs, comma-separated.
    #[arg(long, env = env::REDIS_URL, hide_env_values = true)]
    pub redis_url: Option<String>,

    /// TLS, Sentinel and Cluster settings of the Redis deployment.
    #[command(flatten)]
    pub redis: RedisArgs,

    /// Prefix of the Redis channel of each group: events for group G are published on `<prefix>G`.
    #[arg(long, env = env::CHANNEL_PREFIX, default_value = default::CHANNEL_PREFIX)]
    pub channel_prefix: String,

    /// Wire protocol on Redis: `pubsub` (plain), or a Django Channels layer (`channels` for
    /// RedisChannelLayer, `channels-pubsub` for RedisPubSubChannelLayer).
    #[arg(
        long,
        env = env::REDIS_PROTOCOL,
        value_enum,
        default_value = "pubsub"
    )]
    pub redis_protocol: RedisProtocol,

    /// Django Channels layer settings (used with `--redis-protocol channels*`).
    #[command(flatten)]
    pub channels: ChannelsArgs,

    /// Authentication mode; there is no default, so the sidecar is never silently open.
    #[arg(long, env = env::AUTH, value_enum)]
    pub auth: AuthMode,

    /// HS256 secret for `--auth jwt`.
    #[arg(long, env = env::JWT_SECRET, hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// File holding the HS256 secret for `--auth jwt` (trailing newline ignored).
    #[arg(long, env = env::JWT_SECRET_FILE)]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public key (RSA -> RS256, EC P-256 -> ES256) for `--auth jwt`.
    #[arg(long, env = env::JWT_PUBLIC_KEY_FILE)]
    pub jwt_public_key_file: Option<PathBuf>,

    /// HTTPS URL of the identity provider's JWK Set (its `jwks_uri`) for `--auth jwt`: keys
    /// chosen by `kid` (RS256/384/512, ES256/384, EdDSA), refreshed in the background.
    /// Excludes `--jwt-secret*` and `--jwt-public-key-file`.
    #[arg(long, env = env::JWT_JWKS_URL)]
    pub jwt_jwks_url: Option<String>,

    /// PEM CA bundle trusted for `--jwt-jwks-url` instead of the system roots (a private CA).
    #[arg(long, env = env::JWT_JWKS_CA_FILE)]
    pub jwt_jwks_ca_file: Option<PathBuf>,

    /// JWT claim holding the client's groups (an array of strings).
    #[arg(long, env = env::JWT_GROUPS_CLAIM, default_value = default::JWT_GROUPS_CLAIM)]
    pub jwt_groups_claim: String,

    /// Group every authenticated user joins, `{sub}` replaced by the user id; empty disables.
    #[arg(long, env = env::USER_GROUP, default_value = default::USER_GROUP)]
    pub user_group: String,

    /// Path on the upstream asked by `--auth forward`.
    #[arg(long, env = env::AUTH_PATH, default_value = default::AUTH_PATH)]
    pub auth_path: String,

    /// How long `--auth forward` waits for the app before answering 503.
    #[arg(long, env = env::AUTH_TIMEOUT, default_value = default::AUTH_TIMEOUT, value_parser = parse_duration)]
    pub auth_timeout: Duration,

    /// Origins allowed to open WebSockets (comma-separated, e.g. `https://app.example.com`;
    /// `*` allows any). Default: only the request's own host. Clients without `Origin` are allowed.
    #[arg(long, env = env::ALLOWED_ORIGINS, value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Most WebSocket clients at once; the next gets 503.
    #[arg(long, env = env::MAX_CONNECTIONS, default_value_t = 10_000)]
    pub max_connections: usize,

    /// Largest frame or message a client may send; bigger closes with 1009.
    #[arg(long, env = env::MAX_MESSAGE_BYTES, default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Largest event relayed to clients; bigger ones are dropped and counted
    /// (`taskstream_events_dropped_total{reason="TooLarge"}`). Also the limit of `POST /publish`.
    #[arg(long, env = env::MAX_EVENT_BYTES, default_value_t = 1024 * 1024)]
    pub max_event_bytes: usize,

    /// Events queued per client before it counts as too slow and is closed with 1013.
    #[arg(long, env = env::SEND_QUEUE, default_value_t = 256)]
    pub send_queue: usize,

    /// Interval of server pings; a client silent for two intervals is dropped.
    #[arg(long, env = env::PING_INTERVAL, default_value = default::PING_INTERVAL, value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// On SIGTERM, how long in-flight proxied requests and closing clients get before exit.
    #[arg(long, env = env::SHUTDOWN_GRACE, default_value = default::SHUTDOWN_GRACE, value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Make `/readyz` also require the broker (Redis) connection. Off by default: a Redis
    /// outage then keeps the pod in the Service, so the app's plain HTTP keeps working
    /// (`/readyz/broker` and `taskstream_broker_up` report the broker).
    #[arg(long, env = env::READY_REQUIRES_BROKER, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub ready_requires_broker: bool,

    /// Events kept per group for clients that resume with `last_id` (0 = no history). Needs
    /// `--redis-protocol pubsub` (or `--broker memory`).
    #[arg(long, env = env::HISTORY_SIZE, default_value_t = 0)]
    pub history_size: usize,

    /// A group's history expires this long after its last event.
    #[arg(long, env = env::HISTORY_TTL, default_value = default::HISTORY_TTL, value_parser = parse_duration)]
    pub history_ttl: Duration,

    /// Log format.
    #[arg(
        long,
        env = env::LOG_FORMAT,
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// JWT verification key, decided from the flags.
#[derive(Clone)]
pub enum JwtKey {
    Hmac(Vec<u8>),
    PublicPem(Vec<u8>),
    /// Keys fetched from a JWKS URL (`--jwt-jwks-url`).
    Jwks(crate::jwks::JwksConfig),
}

impl std::fmt::Debug for JwtKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Hmac(_) => f.write_str("Hmac(<redacted>)"),
            JwtKey::PublicPem(_) => f.write_str("PublicPem(..)"),
            JwtKey::Jwks(c) => write!(f, "Jwks({})", c.url),
        }
    }
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub publish_allow_remote: bool,
    pub upstream: Uri,
    pub ws_path: String,
    pub broker: BrokerConfig,
    pub auth: AuthConfig,
    pub allowed_origins: AllowedOrigins,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub max_event_bytes: usize,
    pub send_queue: usize,
    pub ping_interval: Duration,
    pub shutdown_grace: Duration,
    pub ready_requires_broker: bool,
    /// `--history-size` > 0: events are kept for resume.
    pub history: Option<HistoryConfig>,
}

// Built once at start-up and never moved on a hot path: boxing variants would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum BrokerConfig {
    Redis {
        url: String,
        /// TLS and the deployment (one server, Sentinel, Cluster) behind `url`.
        connect: Connect,
        channel_prefix: String,
        protocol: Protocol,
    },
    Memory,
}

/// What the Redis source speaks.
#[allow(clippy::large_enum_variant)] // as BrokerConfig: built once at start-up
#[derive(Clone, Debug)]
pub enum Protocol {
    Pubsub,
    Channels(ChannelsConfig),
}

#[derive(Clone, Debug)]
pub enum AuthConfig {
    Jwt {
        key: JwtKey,
        groups_claim: String,
        user_group: String,
    },
    Forward {
        path: String,
        timeout: Duration,
        user_group: String,
    },
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Only origins whose host[:port] equals the request's `Host`.
    SameHost,
    Any,
    List(Vec<String>),
}

impl Args {
    /// Checks every flag and turns them into a [`Config`]; the error names the flag.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let upstream: Uri = self
            .upstream
            .parse()
            .map_err(|e| ConfigError::new("--upstream", format!("{e}")))?;
        if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
            return Err(ConfigError::new(
                "--upstream",
                "must be an http:// URL with a host, e.g. http://127.0.0.1:8000",
            ));
        }
        if !self.ws_path.starts_with('/') {
            return Err(ConfigError::new("--ws-path", "must start with '/'"));
        }
        let broker = match self.broker {
            BrokerKind::Memory => BrokerConfig::Memory,
            BrokerKind::Redis => {
                let url = self.redis_url.ok_or_else(|| {
                    ConfigError::new("--redis-url", "required with --broker redis")
                })?;
                let connect = self.redis.validate(&url, self.redis_protocol)?;
                let protocol = match self.redis_protocol {
                    RedisProtocol::Pubsub => Protocol::Pubsub,
                    layer => Protocol::Channels(self.channels.validate(layer, &url, &connect)?),
                };
                BrokerConfig::Redis {
                    url,
                    connect,
                    channel_prefix: self.channel_prefix,
                    protocol,
                }
            }
        };
        let auth = match self.auth {
            AuthMode::None => AuthConfig::None,
            AuthMode::Forward => {
                if !self.auth_path.starts_with('/') {
                    return Err(ConfigError::new("--auth-path", "must start with '/'"));
                }
                AuthConfig::Forward {
                    path: self.auth_path,
                    timeout: self.auth_timeout,
                    user_group: self.user_group,
                }
            }
            AuthMode::Jwt => {
                let key = jwt_key(JwtKeyFlags {
                    secret: self.jwt_secret,
                    secret_file: self.jwt_secret_file,
                    public_key_file: self.jwt_public_key_file,
                    jwks_url: self.jwt_jwks_url,
                    jwks_ca_file: self.jwt_jwks_ca_file,
                })?;
                AuthConfig::Jwt {
                    key,
                    groups_claim: self.jwt_groups_claim,
                    user_group: self.user_group,
                }
            }
        };
        let allowed_origins = if self.allowed_origins.is_empty() {
            AllowedOrigins::SameHost
        } else if self.allowed_origins.iter().any(|o| o.trim() == "*") {
            AllowedOrigins::Any
        } else {
            let mut list = Vec::new();
            for o in &self.allowed_origins {
                let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
                if o.is_empty() {
                    continue;
                }
                if !(o.starts_with("http://") || o.starts_with("https://")) {
                    return Err(ConfigError::new(
                        "--allowed-origins",
                        format!("{o:?} is not an origin such as https://app.example.com"),
                    ));
                }
                list.push(o);
            }
            AllowedOrigins::List(list)
        };
        if self.max_connections == 0 {
            return Err(ConfigError::new("--max-connections", "must be at least 1"));
        }
        if self.max_message_bytes < 125 {
            return Err(ConfigError::new(
                "--max-message-bytes",
                "must be at least 125 (a control frame)",
            ));
        }
        if self.max_event_bytes == 0 || self.max_event_bytes > 64 * 1024 * 1024 {
            return Err(ConfigError::new(
                "--max-event-bytes",
                "must be between 1 and 67108864 (64 MiB)",
            ));
        }
        if self.send_queue == 0 {
            return Err(ConfigError::new("--send-queue", "must be at least 1"));
        }
        let history = match self.history_size {
            0 => None,
            size if size > 10_000 => {
                return Err(ConfigError::new(
                    "--history-size",
                    "at most 10000 events per group (a resume holds them in memory)",
                ));
            }
            size => Some(HistoryConfig {
                size,
                ttl: self.history_ttl,
            }),
        };
        if history.is_some() {
            if self.history_ttl < Duration::from_secs(1) {
                return Err(ConfigError::new("--history-ttl", "must be at least 1s"));
            }
            if matches!(
                &broker,
                BrokerConfig::Redis {
                    protocol: Protocol::Channels(_),
                    ..
                }
            ) {
                return Err(ConfigError::new(
                    "--history-size",
                    "history needs --redis-protocol pubsub: the Django Channels layers are at-most-once (publish with the taskstream script instead; see the README)",
                ));
            }
        }
        if self.ping_interval.is_zero() {
            return Err(ConfigError::new("--ping-interval", "must be above zero"));
        }
        Ok(Config {
            listen: self.listen,
            admin_listen: self.admin_listen,
            publish_allow_remote: self.publish_allow_remote,
            upstream,
            ws_path: self.ws_path,
            broker,
            auth,
            allowed_origins,
            max_connections: self.max_connections,
            max_message_bytes: self.max_message_bytes,
            max_event_bytes: self.max_event_bytes,
            send_queue: self.send_queue,
            ping_interval: self.ping_interval,
            shutdown_grace: self.shutdown_grace,
            ready_requires_broker: self.ready_requires_broker,
            history,
        })
    }
}

mod jwt;
use jwt::{JwtKeyFlags, jwt_key};

#[cfg(test)]
mod tests;
