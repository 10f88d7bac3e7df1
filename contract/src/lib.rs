//! The operator <-> sidecar contract: the names, defaults and units of the sidecar's settings,
//! defined once. The sidecar's clap flags (`env = ...`, `default_value = ...`) and the
//! operator's container builder both read them from here, so the two cannot drift apart.
//!
//! ```text
//! TaskStream spec --operator (resources/sidecar.rs)--> env [env::*] = value [unit, default::*]
//!                                                          |
//!                     Pod --> sidecar clap (config.rs: env = env::*, default = default::*)
//!                                                          |
//!                                                 Args::validate() --> Config
//! ```
//!
//! No dependencies: only `&'static str` and integer constants, so both crates (and their
//! tests) can use it at no build cost. Durations are written in the sidecar's duration syntax
//! (`500ms`, `20s`, `5m`); [`seconds`] and [`millis`] are the only units the operator writes.

/// Environment variables of the sidecar (each one also a `--flag`: `TASKSTREAM_WS_PATH` is
/// `--ws-path`). User-facing names: never rename one.
pub mod env {
    /// Public address: WebSocket clients and proxied app traffic.
    pub const LISTEN: &str = "TASKSTREAM_LISTEN";
    /// Admin address: probes, metrics, `POST /publish/<group>`.
    pub const ADMIN_LISTEN: &str = "TASKSTREAM_ADMIN_LISTEN";
    /// Accept `POST /publish` from any peer, not only loopback.
    pub const PUBLISH_ALLOW_REMOTE: &str = "TASKSTREAM_PUBLISH_ALLOW_REMOTE";
    /// The app every non-WebSocket request is proxied to.
    pub const UPSTREAM: &str = "TASKSTREAM_UPSTREAM";
    /// Path the sidecar terminates WebSockets on.
    pub const WS_PATH: &str = "TASKSTREAM_WS_PATH";
    /// Event source (`redis`, `memory`).
    pub const BROKER: &str = "TASKSTREAM_BROKER";
    /// Redis URL (may hold a password: the operator passes it from a Secret when asked to).
    pub const REDIS_URL: &str = "TASKSTREAM_REDIS_URL";
    /// PEM CA bundle of the Redis server certificate.
    pub const REDIS_CA_FILE: &str = "TASKSTREAM_REDIS_CA_FILE";
    /// PEM client certificate for mutual TLS with Redis.
    pub const REDIS_CLIENT_CERT_FILE: &str = "TASKSTREAM_REDIS_CLIENT_CERT_FILE";
    /// PEM private key of the Redis client certificate.
    pub const REDIS_CLIENT_KEY_FILE: &str = "TASKSTREAM_REDIS_CLIENT_KEY_FILE";
    /// Do not verify the Redis server certificate.
    pub const REDIS_TLS_INSECURE: &str = "TASKSTREAM_REDIS_TLS_INSECURE";
    /// Sentinel addresses, comma-separated.
    pub const REDIS_SENTINELS: &str = "TASKSTREAM_REDIS_SENTINELS";
    /// Name of the master the sentinels monitor.
    pub const REDIS_SENTINEL_MASTER: &str = "TASKSTREAM_REDIS_SENTINEL_MASTER";
    /// The sentinels' own password.
    pub const REDIS_SENTINEL_PASSWORD: &str = "TASKSTREAM_REDIS_SENTINEL_PASSWORD";
    /// The Redis URL(s) name a Redis Cluster.
    pub const REDIS_CLUSTER: &str = "TASKSTREAM_REDIS_CLUSTER";
    /// Prefix of each group's Redis channel.
    pub const CHANNEL_PREFIX: &str = "TASKSTREAM_CHANNEL_PREFIX";
    /// Wire protocol on Redis (`pubsub`, `channels`, `channels-pubsub`).
    pub const REDIS_PROTOCOL: &str = "TASKSTREAM_REDIS_PROTOCOL";
    /// Django Channels: the layer's key prefix.
    pub const CHANNELS_PREFIX: &str = "TASKSTREAM_CHANNELS_PREFIX";
    /// Django Channels: the layer's channel capacity.
    pub const CHANNELS_CAPACITY: &str = "TASKSTREAM_CHANNELS_CAPACITY";
    /// Django Channels: message expiry.
    pub const CHANNELS_EXPIRY: &str = "TASKSTREAM_CHANNELS_EXPIRY";
    /// Django Channels: group membership expiry.
    pub const CHANNELS_GROUP_EXPIRY: &str = "TASKSTREAM_CHANNELS_GROUP_EXPIRY";
    /// Django Channels: the layer's hosts.
    pub const CHANNELS_HOSTS: &str = "TASKSTREAM_CHANNELS_HOSTS";
    /// Django Channels: Fernet keys of an encrypted layer.
    pub const CHANNELS_SYMMETRIC_ENCRYPTION_KEYS: &str =
        "TASKSTREAM_CHANNELS_SYMMETRIC_ENCRYPTION_KEYS";
    /// Django Channels: the message field that holds the event.
    pub const CHANNELS_MESSAGE: &str = "TASKSTREAM_CHANNELS_MESSAGE";
    /// Authentication mode (`jwt`, `forward`, `none`).
    pub const AUTH: &str = "TASKSTREAM_AUTH";
    /// HS256 secret (the operator passes it from a Secret).
    pub const JWT_SECRET: &str = "TASKSTREAM_JWT_SECRET";
    /// File holding the HS256 secret.
    pub const JWT_SECRET_FILE: &str = "TASKSTREAM_JWT_SECRET_FILE";
    /// PEM public key file (RS256, ES256).
    pub const JWT_PUBLIC_KEY_FILE: &str = "TASKSTREAM_JWT_PUBLIC_KEY_FILE";
    /// HTTPS URL of the identity provider's JWK Set (keys chosen by `kid`, refreshed).
    pub const JWT_JWKS_URL: &str = "TASKSTREAM_JWT_JWKS_URL";
    /// PEM CA bundle that signs the JWKS endpoint's certificate (a private CA).
    pub const JWT_JWKS_CA_FILE: &str = "TASKSTREAM_JWT_JWKS_CA_FILE";
    /// JWT claim holding the client's groups.
    pub const JWT_GROUPS_CLAIM: &str = "TASKSTREAM_JWT_GROUPS_CLAIM";
    /// Group every authenticated user joins (`{sub}` is the user id).
    pub const USER_GROUP: &str = "TASKSTREAM_USER_GROUP";
    /// Path on the app asked by forward auth.
    pub const AUTH_PATH: &str = "TASKSTREAM_AUTH_PATH";
    /// How long forward auth waits for the app.
    pub const AUTH_TIMEOUT: &str = "TASKSTREAM_AUTH_TIMEOUT";
    /// Origins allowed to open WebSockets, comma-separated.
    pub const ALLOWED_ORIGINS: &str = "TASKSTREAM_ALLOWED_ORIGINS";
    /// Most WebSocket clients at once.
    pub const MAX_CONNECTIONS: &str = "TASKSTREAM_MAX_CONNECTIONS";
    /// Largest frame or message a client may send, in bytes.
    pub const MAX_MESSAGE_BYTES: &str = "TASKSTREAM_MAX_MESSAGE_BYTES";
    /// Largest event relayed to clients, in bytes.
    pub const MAX_EVENT_BYTES: &str = "TASKSTREAM_MAX_EVENT_BYTES";
    /// Events queued per client before it counts as too slow.
    pub const SEND_QUEUE: &str = "TASKSTREAM_SEND_QUEUE";
    /// Interval of server pings.
    pub const PING_INTERVAL: &str = "TASKSTREAM_PING_INTERVAL";
    /// Time open connections get on shutdown.
    pub const SHUTDOWN_GRACE: &str = "TASKSTREAM_SHUTDOWN_GRACE";
    /// `/readyz` also requires the broker.
    pub const READY_REQUIRES_BROKER: &str = "TASKSTREAM_READY_REQUIRES_BROKER";
    /// Events kept per group for resume.
    pub const HISTORY_SIZE: &str = "TASKSTREAM_HISTORY_SIZE";
    /// A group's history expires this long after its last event.
    pub const HISTORY_TTL: &str = "TASKSTREAM_HISTORY_TTL";
    /// Log format (`text`, `json`).
    pub const LOG_FORMAT: &str = "TASKSTREAM_LOG_FORMAT";
    /// The sidecar's log filter (tracing's `EnvFilter` syntax, e.g. `info`).
    pub const RUST_LOG: &str = "RUST_LOG";
}

/// One default written once, as the number the operator formats and the text clap parses.
macro_rules! twin {
    ($(#[$doc:meta])* $num:ident: $ty:ty, $text:ident = $n:literal, $prefix:literal, $suffix:literal) => {
        $(#[$doc])*
        pub const $num: $ty = $n;
        $(#[$doc])*
        pub const $text: &str = concat!($prefix, $n, $suffix);
    };
}

/// Defaults both sides rely on. Where the operator writes a number, the sidecar's default
/// string is made from the same literal, so the two cannot differ.
pub mod default {
    twin!(
        /// Port of the sidecar's public listener (`--listen`).
        HTTP_PORT: u16, LISTEN = 8080, "0.0.0.0:", ""
    );
    twin!(
        /// Port of the sidecar's admin listener (`--admin-listen`).
        ADMIN_PORT: u16, ADMIN_LISTEN = 9090, "0.0.0.0:", ""
    );
    /// Host of the app, as the sidecar in the same pod reaches it.
    pub const UPSTREAM_HOST: &str = "127.0.0.1";
    /// `--upstream` (the operator always sets it from `spec.app.port`).
    pub const UPSTREAM: &str = "http://127.0.0.1:8000";
    /// `--ws-path`.
    pub const WS_PATH: &str = "/ws/tasks/";
    /// `--channel-prefix`.
    pub const CHANNEL_PREFIX: &str = "taskstream:";
    /// `--jwt-groups-claim`.
    pub const JWT_GROUPS_CLAIM: &str = "groups";
    /// `--user-group`.
    pub const USER_GROUP: &str = "user:{sub}";
    /// `--auth-path`.
    pub const AUTH_PATH: &str = "/ws-auth/";
    twin!(
        /// `--auth-timeout`, in seconds.
        AUTH_TIMEOUT_SECONDS: u32, AUTH_TIMEOUT = 5, "", "s"
    );
    twin!(
        /// `--ping-interval`, in seconds.
        PING_INTERVAL_SECONDS: u32, PING_INTERVAL = 20, "", "s"
    );
    twin!(
        /// `--shutdown-grace`, in seconds.
        SHUTDOWN_GRACE_SECONDS: u32, SHUTDOWN_GRACE = 25, "", "s"
    );
    /// `--history-ttl` (the operator sets it only from `spec.history.ttlSeconds`).
    pub const HISTORY_TTL: &str = "10m";
    /// `RUST_LOG` when nothing else is asked for.
    pub const LOG_LEVEL: &str = "info";
}

/// A whole number of seconds in the sidecar's duration syntax (`20s`).
pub fn seconds(n: u32) -> String {
    format!("{n}s")
}

/// A whole number of milliseconds in the sidecar's duration syntax (`5000ms`).
pub fn millis(n: u32) -> String {
    format!("{n}ms")
}

/// The app's address as the sidecar in the same pod reaches it (`--upstream`).
pub fn upstream(port: impl std::fmt::Display) -> String {
    format!("http://{}:{port}", default::UPSTREAM_HOST)
}

/// A listen address on every interface (`--listen`, `--admin-listen`).
pub fn listen_all(port: impl std::fmt::Display) -> String {
    format!("0.0.0.0:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The twins' text is what the operator writes for the same number.
    #[test]
    fn twins_agree() {
        assert_eq!(default::LISTEN, listen_all(default::HTTP_PORT));
        assert_eq!(default::ADMIN_LISTEN, listen_all(default::ADMIN_PORT));
        assert_eq!(default::UPSTREAM, upstream(8000));
        assert_eq!(
            default::AUTH_TIMEOUT,
            seconds(default::AUTH_TIMEOUT_SECONDS)
        );
        assert_eq!(
            default::PING_INTERVAL,
            seconds(default::PING_INTERVAL_SECONDS)
        );
        assert_eq!(
            default::SHUTDOWN_GRACE,
            seconds(default::SHUTDOWN_GRACE_SECONDS)
        );
    }
}
