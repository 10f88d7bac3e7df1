//! The taskstream sidecar container: its whole configuration comes from the spec, as the
//! `TASKSTREAM_*` environment variables the sidecar binary reads. Their names, defaults and
//! units come from the shared contract crate the sidecar's flags are declared with.
//!
//! Secrets are passed by reference (`secretKeyRef`, or a read-only Secret volume for PEM files:
//! the JWT public key, the Redis CA and client certificate), so no secret value ever lands in
//! the Deployment.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, Probe,
    SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use taskstream_contract::default as contract;
use taskstream_contract::{env, listen_all, millis, seconds, upstream};

use super::Params;
use crate::crd::{
    AuthMode, DEFAULT_AUTH_PATH, DEFAULT_AUTH_TIMEOUT_MS, DEFAULT_CHANNEL_PREFIX,
    DEFAULT_GROUPS_CLAIM, DEFAULT_LOG_LEVEL, DEFAULT_PING_INTERVAL_SECONDS, DEFAULT_USER_GROUP,
    SecretKeyRef, TLS_CERT_KEY, TLS_KEY_KEY, TaskStreamSpec,
};

/// Name of the sidecar container.
pub const SIDECAR_CONTAINER: &str = "taskstream-sidecar";
/// Port of the sidecar's public listener (named `http`).
pub const HTTP_PORT: i32 = contract::HTTP_PORT as i32;
/// Port of the sidecar's admin listener (named `admin`).
pub const ADMIN_PORT: i32 = contract::ADMIN_PORT as i32;
/// Where a JWT public key Secret is mounted.
pub const JWT_KEY_DIR: &str = "/etc/taskstream/jwt";
/// Name of the JWT public key volume.
pub const JWT_KEY_VOLUME: &str = "taskstream-jwt-key";
/// Where the CA bundle of the JWKS server (`auth.jwt.jwksCaSecretRef`) is mounted.
pub const JWKS_CA_DIR: &str = "/etc/taskstream/jwks-ca";
/// Name of the JWKS CA volume.
pub const JWKS_CA_VOLUME: &str = "taskstream-jwks-ca";
/// Where the Redis CA bundle Secret is mounted.
pub const REDIS_CA_DIR: &str = "/etc/taskstream/redis-ca";
/// Name of the Redis CA volume.
pub const REDIS_CA_VOLUME: &str = "taskstream-redis-ca";
/// Where the Redis client certificate Secret is mounted.
pub const REDIS_CLIENT_DIR: &str = "/etc/taskstream/redis-client";
/// Name of the Redis client certificate volume.
pub const REDIS_CLIENT_VOLUME: &str = "taskstream-redis-client";
/// Prefix of every volume name the operator adds to the pod.
pub const VOLUME_PREFIX: &str = "taskstream-";
/// Mode of mounted Secret files. World-readable inside the pod: the files are owned by root
/// (no `fsGroup` is set, so the app's volumes keep their ownership) and the sidecar runs as
/// 65532; 0440 would make them unreadable to it.
const SECRET_FILE_MODE: i32 = 0o444;
/// The non-root user the sidecar image runs as (distroless `nonroot`).
const SIDECAR_UID: i64 = 65532;

fn plain(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn from_secret(name: &str, r: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: r.name.clone(),
                key: r.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    }
}

/// The sidecar's environment, in a fixed order (so the config hash is stable). A setting added
/// in a later release is emitted only when the spec sets it, its default left to the sidecar:
/// spelling the default out would change every pod template, and an operator upgrade would
/// roll every pod (`upgrade_tests` fails on it).
pub fn env(spec: &TaskStreamSpec) -> Vec<EnvVar> {
    let ws = spec.websocket.clone().unwrap_or_default();
    let sidecar = spec.sidecar.clone().unwrap_or_default();
    let mut env = vec![
        plain(env::LISTEN, listen_all(HTTP_PORT)),
        plain(env::ADMIN_LISTEN, listen_all(ADMIN_PORT)),
        plain(env::UPSTREAM, upstream(spec.app_port())),
        plain(env::WS_PATH, spec.ws_path()),
    ];
    match (&spec.redis.url, &spec.redis.url_secret_ref) {
        (_, Some(r)) => env.push(from_secret(env::REDIS_URL, r)),
        (Some(url), None) => env.push(plain(env::REDIS_URL, url)),
        (None, None) => {}
    }
    env.push(plain(
        env::CHANNEL_PREFIX,
        spec.redis
            .channel_prefix
            .as_deref()
            .unwrap_or(DEFAULT_CHANNEL_PREFIX),
    ));
    if let Some(tls) = &spec.redis.tls {
        if let Some(r) = &tls.ca_secret_ref {
            env.push(plain(
                env::REDIS_CA_FILE,
                format!("{REDIS_CA_DIR}/{}", r.key),
            ));
        }
        if tls.client_cert_secret_ref.is_some() {
            env.push(plain(
                env::REDIS_CLIENT_CERT_FILE,
                format!("{REDIS_CLIENT_DIR}/{TLS_CERT_KEY}"),
            ));
            env.push(plain(
                env::REDIS_CLIENT_KEY_FILE,
                format!("{REDIS_CLIENT_DIR}/{TLS_KEY_KEY}"),
            ));
        }
        if tls.insecure_skip_verify == Some(true) {
            env.push(plain(env::REDIS_TLS_INSECURE, "true"));
        }
    }
    if let Some(sentinel) = &spec.redis.sentinel {
        env.push(plain(env::REDIS_SENTINELS, sentinel.hosts.join(",")));
        env.push(plain(
            env::REDIS_SENTINEL_MASTER,
            sentinel.master_name.clone(),
        ));
        if let Some(r) = &sentinel.password_secret_ref {
            env.push(from_secret(env::REDIS_SENTINEL_PASSWORD, r));
        }
    }
    if spec.redis.cluster == Some(true) {
        env.push(plain(env::REDIS_CLUSTER, "true"));
    }
    if let Some(history) = &spec.history {
        env.push(plain(env::HISTORY_SIZE, history.size.to_string()));
        if let Some(ttl) = history.ttl_seconds {
            env.push(plain(env::HISTORY_TTL, seconds(ttl)));
        }
    }
    env.push(plain(env::AUTH, spec.auth.mode.as_str()));
    match spec.auth.mode {
        AuthMode::Jwt => {
            let jwt = spec.auth.jwt.clone().unwrap_or_default();
            if let Some(r) = &jwt.secret_ref {
                env.push(from_secret(env::JWT_SECRET, r));
            } else if let Some(r) = &jwt.public_key_ref {
                env.push(plain(
                    env::JWT_PUBLIC_KEY_FILE,
                    format!("{JWT_KEY_DIR}/{}", r.key),
                ));
            } else if let Some(url) = &jwt.jwks_url {
                env.push(plain(env::JWT_JWKS_URL, url));
                if let Some(r) = &jwt.jwks_ca_secret_ref {
                    env.push(plain(
                        env::JWT_JWKS_CA_FILE,
                        format!("{JWKS_CA_DIR}/{}", r.key),
                    ));
                }
            }
            env.push(plain(
                env::JWT_GROUPS_CLAIM,
                jwt.groups_claim.as_deref().unwrap_or(DEFAULT_GROUPS_CLAIM),
            ));
            env.push(plain(
                env::USER_GROUP,
                jwt.user_group.as_deref().unwrap_or(DEFAULT_USER_GROUP),
            ));
        }
        AuthMode::Forward => {
            let fwd = spec.auth.forward.clone().unwrap_or_default();
            env.push(plain(
                env::AUTH_PATH,
                fwd.path.as_deref().unwrap_or(DEFAULT_AUTH_PATH),
            ));
            env.push(plain(
                env::AUTH_TIMEOUT,
                millis(fwd.timeout_ms.unwrap_or(DEFAULT_AUTH_TIMEOUT_MS)),
            ));
        }
        AuthMode::None => {}
    }
    if let Some(origins) = ws.allowed_origins.as_ref().filter(|o| !o.is_empty()) {
        env.push(plain(env::ALLOWED_ORIGINS, origins.join(",")));
    }
    if let Some(n) = ws.max_connections {
        env.push(plain(env::MAX_CONNECTIONS, n.to_string()));
    }
    if let Some(n) = ws.max_message_bytes {
        env.push(plain(env::MAX_MESSAGE_BYTES, n.to_string()));
    }
    env.push(plain(
        env::PING_INTERVAL,
        seconds(
            ws.ping_interval_seconds
                .unwrap_or(DEFAULT_PING_INTERVAL_SECONDS),
        ),
    ));
    env.push(plain(
        env::SHUTDOWN_GRACE,
        seconds(spec.shutdown_grace_seconds()),
    ));
    env.push(plain(
        env::RUST_LOG,
        sidecar.log_level.as_deref().unwrap_or(DEFAULT_LOG_LEVEL),
    ));
    env.push(plain(
        env::LOG_FORMAT,
        sidecar.log_format.unwrap_or_default().as_str(),
    ));
    env
}

/// A Secret mounted read-only into the sidecar.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretMount {
    pub volume: Volume,
    pub mount_path: &'static str,
}

fn secret_mount(
    volume: &str,
    secret: &str,
    keys: &[&str],
    mount_path: &'static str,
) -> SecretMount {
    SecretMount {
        volume: Volume {
            name: volume.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                items: Some(
                    keys.iter()
                        .map(|k| KeyToPath {
                            key: k.to_string(),
                            path: k.to_string(),
                            mode: None,
                        })
                        .collect(),
                ),
                default_mode: Some(SECRET_FILE_MODE),
                optional: Some(false),
            }),
            ..Default::default()
        },
        mount_path,
    }
}

/// The Secret files the sidecar reads: the JWT public key (jwt mode with `publicKeyRef`), the
/// JWKS server's CA bundle (`jwksUrl` with `jwksCaSecretRef`), the Redis CA bundle and the
/// Redis client certificate, each in its own directory.
pub fn secret_mounts(spec: &TaskStreamSpec) -> Vec<SecretMount> {
    let mut mounts = Vec::new();
    if spec.auth.mode == AuthMode::Jwt
        && let Some(jwt) = &spec.auth.jwt
        && jwt.secret_ref.is_none()
        && let Some(r) = &jwt.public_key_ref
    {
        mounts.push(secret_mount(
            JWT_KEY_VOLUME,
            &r.name,
            &[&r.key],
            JWT_KEY_DIR,
        ));
    }
    if spec.auth.mode == AuthMode::Jwt
        && let Some(jwt) = &spec.auth.jwt
        && jwt.secret_ref.is_none()
        && jwt.public_key_ref.is_none()
        && jwt.jwks_url.is_some()
        && let Some(r) = &jwt.jwks_ca_secret_ref
    {
        mounts.push(secret_mount(
            JWKS_CA_VOLUME,
            &r.name,
            &[&r.key],
            JWKS_CA_DIR,
        ));
    }
    if let Some(tls) = &spec.redis.tls {
        if let Some(r) = &tls.ca_secret_ref {
            mounts.push(secret_mount(
                REDIS_CA_VOLUME,
                &r.name,
                &[&r.key],
                REDIS_CA_DIR,
            ));
        }
        if let Some(r) = &tls.client_cert_secret_ref {
            mounts.push(secret_mount(
                REDIS_CLIENT_VOLUME,
                &r.name,
                &[TLS_CERT_KEY, TLS_KEY_KEY],
                REDIS_CLIENT_DIR,
            ));
        }
    }
    mounts
}

fn admin_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// The sidecar container. As a native sidecar it carries `restartPolicy: Always`, which is
/// what makes Kubernetes start it before the app and stop it after.
pub fn container(spec: &TaskStreamSpec, params: &Params) -> Container {
    let sidecar = spec.sidecar.clone().unwrap_or_default();
    let mounts: Vec<VolumeMount> = secret_mounts(spec)
        .into_iter()
        .map(|m| VolumeMount {
            name: m.volume.name,
            mount_path: m.mount_path.into(),
            read_only: Some(true),
            ..Default::default()
        })
        .collect();
    Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(
            sidecar
                .image
                .unwrap_or_else(|| params.sidecar_image.clone()),
        ),
        args: None,
        env: Some(env(spec)),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: ADMIN_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(admin_probe("/readyz", 5)),
        liveness_probe: Some(admin_probe("/healthz", 10)),
        resources: sidecar.resources,
        restart_policy: spec.native_sidecar().then(|| "Always".to_string()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_UID),
            run_as_group: Some(SIDECAR_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Default::default()
    }
}
