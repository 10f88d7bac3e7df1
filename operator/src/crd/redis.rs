//! Redis (`spec.redis`): where task progress messages come from, with TLS, Sentinel and
//! Cluster, and the Secret references the spec uses to pass credentials by reference.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Redis connection of the sidecar.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.url) != has(self.urlSecretRef)").message("exactly one of redis.url and redis.urlSecretRef must be set"),
    validation = Rule::new("!(has(self.sentinel) && has(self.cluster) && self.cluster)").message("set only one of redis.sentinel and redis.cluster")
)]
pub struct RedisSpec {
    /// Redis URL (`redis://` or `rediss://`). Use `urlSecretRef` when it holds a password.
    #[schemars(regex(pattern = r"^rediss?://"))]
    pub url: Option<String>,
    /// Secret key holding the Redis URL; passed to the sidecar by reference, never copied.
    pub url_secret_ref: Option<SecretKeyRef>,
    /// Prefix of the Redis channels (default `taskstream:`).
    pub channel_prefix: Option<String>,
    /// TLS settings (with a `rediss://` URL). Certificates are mounted from Secrets as
    /// read-only files, never copied into the Deployment.
    pub tls: Option<RedisTlsSpec>,
    /// Find the Redis master through Redis Sentinel. Password, database and TLS still come from
    /// the URL; its host is then not used. Not allowed with `cluster`.
    pub sentinel: Option<RedisSentinelSpec>,
    /// The URL (comma-separated seed URLs allowed) is a Redis Cluster. Not allowed with
    /// `sentinel`.
    pub cluster: Option<bool>,
}

/// TLS towards Redis.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisTlsSpec {
    /// Secret key holding the PEM CA bundle that signs the Redis server certificate (default:
    /// the system roots). Mounted into the sidecar as a file.
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// A `kubernetes.io/tls` Secret (keys `tls.crt` and `tls.key`) with the client certificate
    /// for mutual TLS. Mounted into the sidecar as files.
    pub client_cert_secret_ref: Option<SecretNameRef>,
    /// Do not verify the server certificate. Only for testing: anyone on the path can read and
    /// change the traffic.
    pub insecure_skip_verify: Option<bool>,
}

/// Redis Sentinel.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisSentinelSpec {
    /// Sentinel addresses, `host:port` (`[address]:port` for IPv6).
    #[schemars(
        length(min = 1, max = 16),
        inner(regex(pattern = r"^(\[[0-9A-Fa-f:.]+\]|[^:/ \[\]]+):[0-9]{1,5}$"))
    )]
    pub hosts: Vec<String>,
    /// Name of the monitored master.
    #[schemars(length(min = 1, max = 253))]
    pub master_name: String,
    /// Secret key holding the sentinels' own password, when they require one.
    pub password_secret_ref: Option<SecretKeyRef>,
}

/// A Secret of the TaskStream's namespace, by name.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretNameRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key in a Secret of the TaskStream's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}
