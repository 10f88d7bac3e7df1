//! The broker options: the Redis deployment flags (TLS files, Sentinel, Cluster) and the wire
//! protocol spoken on Redis. Flattened into [`crate::config::Args`]; [`RedisArgs::validate`]
//! turns them into a [`Connect`] so that nothing downstream re-checks a flag.
//!
//! ```text
//! --redis-url + --redis-sentinels | --redis-cluster + TLS files --validate--> Connect { tls, topology }
//! --redis-protocol --> RedisProtocol: pubsub (broker::redis) | channels, channels-pubsub (crate::channels)
//! ```

use std::path::PathBuf;
use taskstream_contract::env;

use clap::{Args, ValueEnum};

use super::redact::redacted;
use super::tls::Tls;
use crate::error::ConfigError;

/// Wire protocol spoken on Redis (see [`crate::channels`] for the two Django Channels layers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RedisProtocol {
    /// Plain pub/sub: `PUBLISH <channel-prefix><group> <payload>`.
    Pubsub,
    /// `channels_redis.core.RedisChannelLayer` (sorted-set groups and inboxes).
    Channels,
    /// `channels_redis.pubsub.RedisPubSubChannelLayer`.
    ChannelsPubsub,
}

/// Flags of the Redis deployment (TLS, Sentinel, Cluster).
#[derive(Clone, Debug, Args)]
pub struct RedisArgs {
    /// PEM bundle of the CAs that sign the Redis server certificates (`rediss://` URLs).
    /// Default: the system roots.
    #[arg(long, env = env::REDIS_CA_FILE)]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate (chain) for Redis servers that require mutual TLS
    /// (`tls-auth-clients yes`); needs `--redis-client-key-file`.
    #[arg(long, env = env::REDIS_CLIENT_CERT_FILE)]
    pub redis_client_cert_file: Option<PathBuf>,

    /// PEM private key of `--redis-client-cert-file`.
    #[arg(long, env = env::REDIS_CLIENT_KEY_FILE)]
    pub redis_client_key_file: Option<PathBuf>,

    /// Do not verify the Redis server certificate or host name (`rediss://`). Testing only: anyone
    /// on the path can read and forge events.
    #[arg(long, env = env::REDIS_TLS_INSECURE)]
    pub redis_tls_insecure: bool,

    /// Redis Sentinel addresses, `host:port[,host:port...]` (port default 26379). The sidecar asks
    /// them for the master of `--redis-sentinel-master` and follows failovers; `--redis-url` then
    /// only gives the password, db and TLS (`rediss://`) of the master: its host is not used.
    #[arg(long, env = env::REDIS_SENTINELS, value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,

    /// Name of the master set the sentinels monitor (e.g. `mymaster`); required with
    /// `--redis-sentinels`.
    #[arg(long, env = env::REDIS_SENTINEL_MASTER)]
    pub redis_sentinel_master: Option<String>,

    /// Password of the sentinels themselves (`requirepass` in sentinel.conf), when they have one.
    #[arg(
        long,
        env = env::REDIS_SENTINEL_PASSWORD,
        hide_env_values = true
    )]
    pub redis_sentinel_password: Option<String>,

    /// `--redis-url` is a Redis Cluster: comma-separated seed URLs allowed
    /// (`redis://:pw@node-a:6379,redis://:pw@node-b:6379`). Events published with `SPUBLISH`
    /// (sharded, scales with the cluster) or `PUBLISH` both reach clients.
    #[arg(long, env = env::REDIS_CLUSTER)]
    pub redis_cluster: bool,
}

/// How the sidecar reaches Redis: the TLS settings and which deployment the URL names.
#[derive(Clone, Debug)]
pub struct Connect {
    pub tls: Tls,
    pub topology: Topology,
}

/// The Redis deployment behind `--redis-url`.
#[derive(Clone)]
pub enum Topology {
    /// One server: the URL's host.
    Single,
    /// The master of `master`, as the sentinels say.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        password: Option<String>,
    },
    /// A Redis Cluster reached through these seed URLs.
    Cluster { seeds: Vec<String> },
}

impl std::fmt::Debug for Topology {
    // Never print the sentinel password or seed URLs (they may hold the password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topology::Single => f.write_str("Single"),
            Topology::Sentinel {
                sentinels, master, ..
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", sentinels)
                .field("master", master)
                .finish_non_exhaustive(),
            Topology::Cluster { seeds } => f
                .debug_struct("Cluster")
                .field("seeds", &seeds.len())
                .finish(),
        }
    }
}

impl RedisArgs {
    /// Checks the deployment flags against `url` and `protocol`; reads the TLS files.
    pub fn validate(&self, url: &str, protocol: RedisProtocol) -> Result<Connect, ConfigError> {
        let tls = Tls::from_files(
            self.redis_ca_file.as_deref(),
            self.redis_client_cert_file.as_deref(),
            self.redis_client_key_file.as_deref(),
            self.redis_tls_insecure,
        )?;
        let sentinels: Vec<&str> = self
            .redis_sentinels
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        let topology = match (sentinels.is_empty(), self.redis_cluster) {
            (false, true) => {
                return Err(ConfigError::new(
                    "--redis-cluster",
                    "give either --redis-sentinels or --redis-cluster, not both",
                ));
            }
            (true, true) => {
                if protocol != RedisProtocol::Pubsub {
                    return Err(ConfigError::new(
                        "--redis-cluster",
                        "works with --redis-protocol pubsub only (Django Channels layers do not support Redis Cluster)",
                    ));
                }
                let seeds: Vec<String> = url
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                for s in &seeds {
                    tls.client(s.as_str()).map_err(|e| {
                        ConfigError::new(
                            "--redis-url",
                            format!("cluster seed {}: {e}", redacted(s)),
                        )
                    })?;
                }
                if seeds.is_empty() {
                    return Err(ConfigError::new("--redis-url", "no cluster seed URL"));
                }
                Topology::Cluster { seeds }
            }
            (false, false) => {
                if protocol != RedisProtocol::Pubsub {
                    return Err(ConfigError::new(
                        "--redis-sentinels",
                        "works with --redis-protocol pubsub only (not with the Django Channels layers yet)",
                    ));
                }
                let master = self
                    .redis_sentinel_master
                    .as_deref()
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| {
                        ConfigError::new(
                            "--redis-sentinel-master",
                            "required with --redis-sentinels (the master set name, e.g. mymaster)",
                        )
                    })?;
                let sentinels = sentinels
                    .iter()
                    .map(|s| parse_host_port(s))
                    .collect::<Result<Vec<_>, _>>()?;
                tls.client(url)
                    .map_err(|e| ConfigError::new("--redis-url", format!("invalid: {e}")))?;
                Topology::Sentinel {
                    sentinels,
                    master: master.to_owned(),
                    password: self
                        .redis_sentinel_password
                        .clone()
                        .filter(|p| !p.is_empty()),
                }
            }
            (true, false) => {
                if self.redis_sentinel_master.is_some() {
                    return Err(ConfigError::new(
                        "--redis-sentinel-master",
                        "only used with --redis-sentinels",
                    ));
                }
                if url.contains(',') {
                    return Err(ConfigError::new(
                        "--redis-url",
                        "several URLs are only allowed with --redis-cluster",
                    ));
                }
                tls.client(url)
                    .map_err(|e| ConfigError::new("--redis-url", format!("invalid: {e}")))?;
                Topology::Single
            }
        };
        if tls.configured() && !url.contains("rediss://") {
            // The Channels hosts may still be rediss://, so this is a warning, not an error.
            tracing::warn!(
                "TLS flags (--redis-ca-file, --redis-client-*-file, --redis-tls-insecure) only apply to rediss:// URLs; --redis-url is not one"
            );
        }
        Ok(Connect { tls, topology })
    }
}

/// `host:port` (port default 26379, the Sentinel port); `[v6]:port` for IPv6.
fn parse_host_port(s: &str) -> Result<(String, u16), ConfigError> {
    let bad = || {
        ConfigError::new(
            "--redis-sentinels",
            format!("{s:?} is not host:port (e.g. sentinel-0.sentinel:26379)"),
        )
    };
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !p.contains(']') => {
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (s, 26379),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> RedisArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            redis: RedisArgs,
        }
        let mut argv = vec!["x"];
        argv.extend_from_slice(flags);
        <Cli as clap::Parser>::try_parse_from(argv)
            .expect("flags parse")
            .redis
    }

    fn flag_of(flags: &[&str], url: &str, protocol: RedisProtocol) -> &'static str {
        args(flags).validate(url, protocol).unwrap_err().flag
    }

    #[test]
    fn deployment_flags_are_checked_together() {
        let url = "redis://:pw@ignored:6379/2";
        let sentinel = ["--redis-sentinels", "s-0:26379,s-1"];
        let ok = args(&[&sentinel[..], &["--redis-sentinel-master", "mymaster"]].concat())
            .validate(url, RedisProtocol::Pubsub)
            .unwrap();
        match ok.topology {
            Topology::Sentinel {
                sentinels, master, ..
            } => {
                assert_eq!(sentinels, [("s-0".into(), 26379), ("s-1".into(), 26379)]);
                assert_eq!(master, "mymaster");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            flag_of(&sentinel, url, RedisProtocol::Pubsub),
            "--redis-sentinel-master"
        );
        assert_eq!(
            flag_of(
                &["--redis-sentinel-master", "m"],
                url,
                RedisProtocol::Pubsub
            ),
            "--redis-sentinel-master"
        );
        assert_eq!(
            flag_of(
                &[
                    &sentinel[..],
                    &["--redis-sentinel-master", "m", "--redis-cluster"]
                ]
                .concat(),
                url,
                RedisProtocol::Pubsub
            ),
            "--redis-cluster"
        );
        assert_eq!(
            flag_of(&["--redis-cluster"], url, RedisProtocol::Channels),
            "--redis-cluster"
        );
        assert_eq!(
            flag_of(&[], "redis://a:1,redis://b:2", RedisProtocol::Pubsub),
            "--redis-url"
        );
        let cluster = args(&["--redis-cluster"])
            .validate("redis://a:1, redis://b:2", RedisProtocol::Pubsub)
            .unwrap();
        assert!(matches!(cluster.topology, Topology::Cluster { ref seeds } if seeds.len() == 2));
    }

    #[test]
    fn sentinel_addresses() {
        assert_eq!(
            parse_host_port("s-0:26380").unwrap(),
            ("s-0".to_owned(), 26380)
        );
        assert_eq!(parse_host_port("s-0").unwrap(), ("s-0".to_owned(), 26379));
        assert_eq!(
            parse_host_port("[::1]:5000").unwrap(),
            ("::1".to_owned(), 5000)
        );
        assert!(parse_host_port("s-0:x").is_err());
        assert!(parse_host_port("redis://s-0:1").is_err());
    }
}
