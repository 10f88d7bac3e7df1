//! The operator <-> sidecar contract, end to end: a TaskStream that sets every field the sidecar
//! reads is rendered into its Deployment, the sidecar container's env and args go through the
//! sidecar's own clap parser and `validate()`, and the configuration that comes out is checked
//! field by field against the spec.
//!
//! ```text
//! TaskStream (yaml) --build()--> Deployment --sidecar container--> env + args
//!   env NAME --(sidecar's clap Command: the arg whose env is NAME)--> --flag=value
//!   valueFrom Secret --> stand-in value;  Secret volume --> stand-in files in a temp dir
//!   Args::try_parse_from(flags) --> Args::validate() --> Config == what the spec asked for?
//! ```
//!
//! No process environment is touched (edition 2024 makes `set_var` unsafe): each variable is
//! turned into the flag the sidecar declares for it, which is what clap would read it as.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, Parser};
use k8s_openapi::api::core::v1::{Container, EnvVar, Volume};
use taskstream_sidecar::Topology;
use taskstream_sidecar::config::{
    AllowedOrigins, Args, AuthConfig, BrokerConfig, Config, JwtKey, LogFormat, Protocol,
};

use super::test_support::{built, pod, sidecar_of};
use crate::crd::TaskStream;

/// Stand-in values of the Secret keys the specs below name, by (Secret, key).
fn secret_value(name: &str, key: &str) -> String {
    match (name, key) {
        ("redis", "url") => "rediss://:s3cret@redis.shop:6380/2".into(),
        ("sentinel", "password") => "sentinel-password".into(),
        ("jwt", "secret") => "a-stand-in-hs256-secret-of-32-bytes".into(),
        _ => panic!("the spec names Secret key {name}/{key}, which has no stand-in value"),
    }
}

/// PEM files standing in for the Secret files the sidecar reads.
struct Pems {
    ca: String,
    client_cert: String,
    client_key: String,
    jwt_public_key: String,
}

impl Pems {
    fn new() -> Self {
        let ca = rcgen::generate_simple_self_signed(vec!["redis-ca".into()]).expect("ca");
        let client = rcgen::generate_simple_self_signed(vec!["shop".into()]).expect("client");
        Self {
            ca: ca.cert.pem(),
            client_cert: client.cert.pem(),
            client_key: client.signing_key.serialize_pem(),
            jwt_public_key: client.signing_key.public_key_pem(),
        }
    }

    fn file(&self, secret: &str, key: &str) -> &str {
        match (secret, key) {
            ("redis-ca", "ca.crt") => &self.ca,
            ("redis-client", "tls.crt") => &self.client_cert,
            ("redis-client", "tls.key") => &self.client_key,
            ("jwt-public", "key.pem") => &self.jwt_public_key,
            ("idp-ca", "ca.crt") => &self.ca,
            _ => panic!("the pod mounts Secret file {secret}/{key}, which has no stand-in"),
        }
    }
}

/// A directory of its own per test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("taskstream-contract-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the sidecar would make of the rendered container: its parsed flags, the validated
/// configuration and its `RUST_LOG`.
struct Parsed {
    args: Args,
    config: Config,
    rust_log: Option<String>,
    _files: TempDir,
}

/// Writes the pod's Secret volumes that the sidecar mounts into `dir` (one directory per
/// volume) and returns mount path -> local directory.
fn materialize(
    container: &Container,
    volumes: &[Volume],
    pems: &Pems,
    dir: &TempDir,
) -> BTreeMap<String, PathBuf> {
    let mut mounts = BTreeMap::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("the sidecar mounts volume {}, not in the pod", mount.name));
        let secret = volume.secret.as_ref().expect("sidecar volumes are Secrets");
        let name = secret.secret_name.as_deref().expect("secret name");
        let local = dir.0.join(&mount.name);
        std::fs::create_dir_all(&local).expect("volume dir");
        for item in secret.items.iter().flatten() {
            std::fs::write(local.join(&item.path), pems.file(name, &item.key)).expect("write");
        }
        mounts.insert(mount.mount_path.clone(), local);
    }
    mounts
}

/// The sidecar's own reading of the rendered container.
fn parse(ts: &TaskStream, pems: &Pems, name: &str) -> Parsed {
    let deployment = built(ts).deployment;
    let container = sidecar_of(&deployment).clone();
    let volumes = pod(&deployment).volumes.clone().unwrap_or_default();
    let files = TempDir::new(name);
    let mounts = materialize(&container, &volumes, pems, &files);

    let command = Args::command();
    let mut flags = vec!["taskstream-sidecar".to_string()];
    let mut rust_log = None;
    let env: &[EnvVar] = container.env.as_deref().unwrap_or_default();
    for (i, var) in env.iter().enumerate() {
        assert!(
            env[..i].iter().all(|e| e.name != var.name),
            "{} is set twice",
            var.name
        );
        let value = match (&var.value, &var.value_from) {
            (Some(v), None) => v.clone(),
            (None, Some(from)) => {
                let r = from.secret_key_ref.as_ref().expect("only Secrets");
                secret_value(&r.name, &r.key)
            }
            _ => panic!("{} has neither a value nor a Secret", var.name),
        };
        // Secret files: the path in the pod, pointed at the stand-in written for it.
        let value = match mounts.iter().find(|(m, _)| value.starts_with(m.as_str())) {
            Some((mount, local)) => {
                let file = value[mount.len()..].trim_start_matches('/');
                local.join(file).to_string_lossy().into_owned()
            }
            None => value,
        };
        if var.name == taskstream_contract::env::RUST_LOG {
            rust_log = Some(value);
            continue;
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_env() == Some(OsStr::new(&var.name)))
            .unwrap_or_else(|| {
                panic!(
                    "the operator sets {}, which the sidecar does not read",
                    var.name
                )
            });
        let long = arg.get_long().expect("every sidecar setting is a --flag");
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            assert_eq!(
                value, "true",
                "{}: a switch is only ever set to true",
                var.name
            );
            flags.push(format!("--{long}"));
        } else {
            flags.push(format!("--{long}={value}"));
        }
    }
    flags.extend(container.args.iter().flatten().cloned());
    let args = Args::try_parse_from(&flags)
        .unwrap_or_else(|e| panic!("the sidecar refuses its flags {flags:?}: {e}"));
    let config = args
        .clone()
        .validate()
        .unwrap_or_else(|e| panic!("the sidecar refuses its configuration: {e}"));
    Parsed {
        args,
        config,
        rust_log,
        _files: files,
    }
}

fn taskstream(yaml: &str) -> TaskStream {
    serde_norway::from_str(yaml).expect("TaskStream yaml")
}

const HEAD: &str = "
apiVersion: taskstream.dev/v1alpha1
kind: TaskStream
metadata:
  name: shop
  namespace: apps
  uid: 9b2d6d2e-0000-4000-8000-000000000001
";

/// jwt with an HS256 Secret, Sentinel, every TLS setting, history, every WebSocket and sidecar
/// setting.
#[test]
fn every_field_of_a_sentinel_jwt_spec_reaches_the_sidecar() {
    let ts = taskstream(&format!(
        "{HEAD}
spec:
  app: {{image: 'shop:1', port: 8000}}
  redis:
    urlSecretRef: {{name: redis, key: url}}
    channelPrefix: 'shop:'
    tls:
      caSecretRef: {{name: redis-ca, key: ca.crt}}
      clientCertSecretRef: {{name: redis-client}}
      insecureSkipVerify: true
    sentinel:
      hosts: ['sentinel-0.sentinel:26379', 'sentinel-1.sentinel:26380']
      masterName: mymaster
      passwordSecretRef: {{name: sentinel, key: password}}
  websocket:
    path: /live/
    maxConnections: 5000
    maxMessageBytes: 4096
    pingIntervalSeconds: 7
    allowedOrigins: ['https://shop.example.com', 'https://admin.example.com']
  auth:
    mode: jwt
    jwt: {{secretRef: {{name: jwt, key: secret}}, groupsClaim: teams, userGroup: 'u:{{sub}}'}}
  sidecar:
    image: 'sidecar:2'
    native: false
    shutdownGraceSeconds: 40
    logLevel: 'debug,hyper=info'
    logFormat: text
  history: {{size: 500, ttlSeconds: 3600}}
"
    ));
    let pems = Pems::new();
    let Parsed {
        args,
        config,
        rust_log,
        ..
    } = parse(&ts, &pems, "sentinel");

    assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(config.admin_listen, "0.0.0.0:9090".parse().unwrap());
    assert!(!config.publish_allow_remote);
    assert_eq!(config.upstream, "http://127.0.0.1:8000");
    assert_eq!(config.ws_path, "/live/");
    let BrokerConfig::Redis {
        url,
        connect,
        channel_prefix,
        protocol,
    } = &config.broker
    else {
        panic!("redis broker, got {:?}", config.broker);
    };
    assert_eq!(url, &secret_value("redis", "url"));
    assert_eq!(channel_prefix, "shop:");
    assert!(matches!(protocol, Protocol::Pubsub));
    assert!(connect.tls.insecure());
    let certs = connect
        .tls
        .certificates()
        .expect("CA and client certificate");
    assert_eq!(certs.root_cert.as_deref(), Some(pems.ca.as_bytes()));
    let client = certs.client_tls.expect("client certificate");
    assert_eq!(client.client_cert, pems.client_cert.as_bytes());
    assert_eq!(client.client_key, pems.client_key.as_bytes());
    let Topology::Sentinel {
        sentinels,
        master,
        password,
    } = &connect.topology
    else {
        panic!("sentinel topology, got {:?}", connect.topology);
    };
    assert_eq!(
        sentinels,
        &[
            ("sentinel-0.sentinel".to_string(), 26379),
            ("sentinel-1.sentinel".to_string(), 26380)
        ]
    );
    assert_eq!(master, "mymaster");
    assert_eq!(password.as_deref(), Some("sentinel-password"));
    let AuthConfig::Jwt {
        key: JwtKey::Hmac(secret),
        groups_claim,
        user_group,
    } = &config.auth
    else {
        panic!("jwt with an HS256 secret, got {:?}", config.auth);
    };
    assert_eq!(secret, secret_value("jwt", "secret").as_bytes());
    assert_eq!(groups_claim, "teams");
    assert_eq!(user_group, "u:{sub}");
    assert_eq!(
        config.allowed_origins,
        AllowedOrigins::List(vec![
            "https://shop.example.com".into(),
            "https://admin.example.com".into()
        ])
    );
    assert_eq!(config.max_connections, 5000);
    assert_eq!(config.max_message_bytes, 4096);
    // Not in the spec: the sidecar's own defaults.
    assert_eq!(config.max_event_bytes, 1024 * 1024);
    assert_eq!(config.send_queue, 256);
    assert!(!config.ready_requires_broker);
    assert_eq!(config.ping_interval, Duration::from_secs(7));
    assert_eq!(config.shutdown_grace, Duration::from_secs(40));
    let history = config.history.expect("history on");
    assert_eq!(history.size, 500);
    assert_eq!(history.ttl, Duration::from_secs(3600));
    assert_eq!(args.log_format, LogFormat::Text);
    assert_eq!(rust_log.as_deref(), Some("debug,hyper=info"));
}

/// jwt with a public key file, a Redis Cluster from a plain URL list; nothing else set, so
/// the defaults the operator writes meet the sidecar's.
#[test]
fn a_cluster_spec_with_a_public_key_and_defaults_reaches_the_sidecar() {
    let ts = taskstream(&format!(
        "{HEAD}
spec:
  app: {{image: 'shop:1', port: 3000}}
  redis:
    url: 'redis://redis-0.redis:6379,redis://redis-1.redis:6379'
    cluster: true
  auth:
    mode: jwt
    jwt: {{publicKeyRef: {{name: jwt-public, key: key.pem}}}}
"
    ));
    let pems = Pems::new();
    let Parsed {
        args,
        config,
        rust_log,
        ..
    } = parse(&ts, &pems, "cluster");

    assert_eq!(config.upstream, "http://127.0.0.1:3000");
    assert_eq!(config.ws_path, taskstream_contract::default::WS_PATH);
    let BrokerConfig::Redis {
        connect,
        channel_prefix,
        ..
    } = &config.broker
    else {
        panic!("redis broker, got {:?}", config.broker);
    };
    assert_eq!(channel_prefix, "taskstream:");
    assert!(!connect.tls.configured());
    let Topology::Cluster { seeds } = &connect.topology else {
        panic!("cluster topology, got {:?}", connect.topology);
    };
    assert_eq!(
        seeds,
        &["redis://redis-0.redis:6379", "redis://redis-1.redis:6379"]
    );
    let AuthConfig::Jwt {
        key: JwtKey::PublicPem(pem),
        groups_claim,
        user_group,
    } = &config.auth
    else {
        panic!("jwt with a public key, got {:?}", config.auth);
    };
    assert_eq!(pem, pems.jwt_public_key.as_bytes());
    assert_eq!(groups_claim, "groups");
    assert_eq!(user_group, "user:{sub}");
    assert_eq!(config.allowed_origins, AllowedOrigins::SameHost);
    assert_eq!(config.max_connections, 10_000);
    assert_eq!(config.max_message_bytes, 64 * 1024);
    assert_eq!(config.ping_interval, Duration::from_secs(20));
    assert_eq!(config.shutdown_grace, Duration::from_secs(25));
    assert!(config.history.is_none());
    assert_eq!(args.log_format, LogFormat::Json);
    assert_eq!(rust_log.as_deref(), Some("info"));
}

/// jwt with keys from an identity provider's JWKS endpoint behind a private CA.
#[test]
fn a_jwks_spec_reaches_the_sidecar() {
    let ts = taskstream(&format!(
        "{HEAD}
spec:
  app: {{image: 'shop:1', port: 3000}}
  redis: {{url: 'redis://redis:6379'}}
  auth:
    mode: jwt
    jwt:
      jwksUrl: 'https://idp.example.com/realms/shop/protocol/openid-connect/certs'
      jwksCaSecretRef: {{name: idp-ca, key: ca.crt}}
"
    ));
    let pems = Pems::new();
    let Parsed { config, .. } = parse(&ts, &pems, "jwks");
    let AuthConfig::Jwt {
        key: JwtKey::Jwks(jwks),
        ..
    } = &config.auth
    else {
        panic!("jwt with a JWKS URL, got {:?}", config.auth);
    };
    assert_eq!(
        jwks.url.to_string(),
        "https://idp.example.com/realms/shop/protocol/openid-connect/certs"
    );
    assert_eq!(
        jwks.roots.as_ref().map(Vec::len),
        Some(1),
        "the mounted CA is the only root"
    );
}

/// Forward auth with its path and timeout; one Redis server, history with the sidecar's TTL.
#[test]
fn a_forward_auth_spec_reaches_the_sidecar() {
    let ts = taskstream(&format!(
        "{HEAD}
spec:
  app: {{image: 'shop:1', port: 8000}}
  redis: {{url: 'redis://redis:6379/0'}}
  auth:
    mode: forward
    forward: {{path: /auth/ws/, timeoutMs: 1500}}
  history: {{size: 20}}
"
    ));
    let Parsed { config, .. } = parse(&ts, &Pems::new(), "forward");

    let BrokerConfig::Redis { url, connect, .. } = &config.broker else {
        panic!("redis broker, got {:?}", config.broker);
    };
    assert_eq!(url, "redis://redis:6379/0");
    assert!(matches!(connect.topology, Topology::Single));
    let AuthConfig::Forward {
        path,
        timeout,
        user_group,
    } = &config.auth
    else {
        panic!("forward auth, got {:?}", config.auth);
    };
    assert_eq!(path, "/auth/ws/");
    assert_eq!(*timeout, Duration::from_millis(1500));
    assert_eq!(user_group, "user:{sub}");
    let history = config.history.expect("history on");
    assert_eq!(history.size, 20);
    assert_eq!(history.ttl, Duration::from_secs(600));
}

/// `auth.mode: none` (local development): no key, no auth settings.
#[test]
fn an_open_spec_reaches_the_sidecar() {
    let ts = taskstream(&format!(
        "{HEAD}
spec:
  app: {{image: 'shop:1', port: 8000}}
  redis: {{url: 'redis://redis:6379'}}
  auth: {{mode: none}}
"
    ));
    let Parsed { config, .. } = parse(&ts, &Pems::new(), "none");
    assert!(matches!(config.auth, AuthConfig::None));
}
