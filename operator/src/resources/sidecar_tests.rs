//! Builder tests of the sidecar's production settings: Redis TLS (mounted certificate files),
//! Sentinel, Cluster, history, log format and JWT keys from a JWKS URL.

use super::test_support::{built, env_of, env_value, pod, sidecar_of};
use super::*;
use crate::crd::{
    AuthMode, AuthSpec, HistorySpec, JwtSpec, RedisSentinelSpec, RedisTlsSpec, SecretNameRef,
    SidecarLogFormat, SidecarSpec,
};
use crate::fixtures::{key, params};

// --- production Redis -------------------------------------------------------------------------

#[test]
fn redis_tls_certificates_are_mounted_files() {
    let mut ts = TaskStream::test();
    ts.spec.redis.url = Some("rediss://redis.example:6380/0".into());
    ts.spec.redis.tls = Some(RedisTlsSpec {
        ca_secret_ref: Some(key("redis-ca", "ca.crt")),
        client_cert_secret_ref: Some(SecretNameRef {
            name: "redis-client".into(),
        }),
        insecure_skip_verify: None,
    });
    let d = built(&ts).deployment;
    assert_eq!(
        env_value(&d, "TASKSTREAM_REDIS_CA_FILE").as_deref(),
        Some("/etc/taskstream/redis-ca/ca.crt")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_REDIS_CLIENT_CERT_FILE").as_deref(),
        Some("/etc/taskstream/redis-client/tls.crt")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_REDIS_CLIENT_KEY_FILE").as_deref(),
        Some("/etc/taskstream/redis-client/tls.key")
    );
    assert!(env_of(&d, "TASKSTREAM_REDIS_TLS_INSECURE").is_none());
    let volumes = pod(&d).volumes.clone().unwrap_or_default();
    let names: Vec<_> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["taskstream-redis-ca", "taskstream-redis-client"]);
    let client = volumes[1].secret.as_ref().expect("secret volume");
    assert_eq!(client.secret_name.as_deref(), Some("redis-client"));
    let keys: Vec<_> = client
        .items
        .iter()
        .flatten()
        .map(|i| i.key.as_str())
        .collect();
    assert_eq!(keys, ["tls.crt", "tls.key"]);
    assert_eq!(client.default_mode, Some(0o444), "readable by uid 65532");
    let mounts = sidecar_of(&d).volume_mounts.clone().unwrap_or_default();
    assert!(mounts.iter().all(|m| m.read_only == Some(true)));
    assert_eq!(mounts.len(), 2);
    // Both Secrets are checked, and feed the rotation hash.
    let refs = ts.spec.secret_refs();
    assert_eq!(refs.len(), 3);
    assert!(refs.contains(&key("redis-client", "tls.key")));
}

#[test]
fn redis_tls_insecure_is_a_flag() {
    let mut ts = TaskStream::test();
    ts.spec.redis.tls = Some(RedisTlsSpec {
        insecure_skip_verify: Some(true),
        ..Default::default()
    });
    let d = built(&ts).deployment;
    assert_eq!(
        env_value(&d, "TASKSTREAM_REDIS_TLS_INSECURE").as_deref(),
        Some("true")
    );
    assert!(pod(&d).volumes.is_none());
}

#[test]
fn redis_sentinel_settings_and_password_by_reference() {
    let mut ts = TaskStream::test();
    ts.spec.redis.sentinel = Some(RedisSentinelSpec {
        hosts: vec!["s1.redis:26379".into(), "s2.redis:26379".into()],
        master_name: "mymaster".into(),
        password_secret_ref: Some(key("sentinel", "password")),
    });
    let d = built(&ts).deployment;
    assert_eq!(
        env_value(&d, "TASKSTREAM_REDIS_SENTINELS").as_deref(),
        Some("s1.redis:26379,s2.redis:26379")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_REDIS_SENTINEL_MASTER").as_deref(),
        Some("mymaster")
    );
    let password = env_of(&d, "TASKSTREAM_REDIS_SENTINEL_PASSWORD").expect("password env");
    assert_eq!(password.value, None);
    let sel = password
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("secretKeyRef");
    assert_eq!(
        (sel.name.as_str(), sel.key.as_str()),
        ("sentinel", "password")
    );
    assert!(ts.spec.secret_refs().contains(&key("sentinel", "password")));
    assert!(env_of(&d, "TASKSTREAM_REDIS_CLUSTER").is_none());
}

#[test]
fn redis_cluster_is_a_flag_and_excludes_sentinel() {
    let mut ts = TaskStream::test();
    ts.spec.redis.cluster = Some(true);
    let d = built(&ts).deployment;
    assert_eq!(
        env_value(&d, "TASKSTREAM_REDIS_CLUSTER").as_deref(),
        Some("true")
    );
    ts.spec.redis.cluster = Some(false);
    assert!(env_of(&built(&ts).deployment, "TASKSTREAM_REDIS_CLUSTER").is_none());
    ts.spec.redis.cluster = Some(true);
    ts.spec.redis.sentinel = Some(RedisSentinelSpec {
        hosts: vec!["s1:26379".into()],
        master_name: "m".into(),
        password_secret_ref: None,
    });
    let err = build(&ts, &params(), None).expect_err("both");
    assert!(
        err.to_string().contains("redis.sentinel and redis.cluster"),
        "{err}"
    );
}

// --- history and logs -------------------------------------------------------------------------

#[test]
fn history_reaches_the_sidecar() {
    let mut ts = TaskStream::test();
    let d = built(&ts).deployment;
    assert!(
        env_of(&d, "TASKSTREAM_HISTORY_SIZE").is_none(),
        "off by default"
    );
    ts.spec.history = Some(HistorySpec {
        size: 500,
        ttl_seconds: Some(900),
    });
    let d = built(&ts).deployment;
    assert_eq!(
        env_value(&d, "TASKSTREAM_HISTORY_SIZE").as_deref(),
        Some("500")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_HISTORY_TTL").as_deref(),
        Some("900s")
    );
    ts.spec.history = Some(HistorySpec {
        size: 100,
        ttl_seconds: None,
    });
    let d = built(&ts).deployment;
    assert!(
        env_of(&d, "TASKSTREAM_HISTORY_TTL").is_none(),
        "the sidecar's default (10m)"
    );
    ts.spec.history = Some(HistorySpec {
        size: 100_001,
        ttl_seconds: None,
    });
    assert!(build(&ts, &params(), None).is_err());
}

#[test]
fn sidecar_logs_json_unless_told_otherwise() {
    let d = built(&TaskStream::test()).deployment;
    assert_eq!(
        env_value(&d, "TASKSTREAM_LOG_FORMAT").as_deref(),
        Some("json")
    );
    let ts = TaskStream::test().with_sidecar(SidecarSpec {
        log_format: Some(SidecarLogFormat::Text),
        ..Default::default()
    });
    assert_eq!(
        env_value(&built(&ts).deployment, "TASKSTREAM_LOG_FORMAT").as_deref(),
        Some("text")
    );
}

// --- JWT keys from a JWKS endpoint --------------------------------------------------------------

fn with_jwks(ca: Option<(&str, &str)>) -> TaskStream {
    let mut ts = TaskStream::test();
    ts.spec.auth = AuthSpec {
        mode: AuthMode::Jwt,
        jwt: Some(JwtSpec {
            jwks_url: Some(
                "https://idp.example.com/realms/app/protocol/openid-connect/certs".into(),
            ),
            jwks_ca_secret_ref: ca.map(|(name, k)| key(name, k)),
            ..Default::default()
        }),
        forward: None,
    };
    ts
}

#[test]
fn jwks_url_reaches_the_sidecar_with_its_private_ca_mounted() {
    let d = built(&with_jwks(None)).deployment;
    assert_eq!(
        env_value(&d, "TASKSTREAM_JWT_JWKS_URL").as_deref(),
        Some("https://idp.example.com/realms/app/protocol/openid-connect/certs")
    );
    assert!(env_of(&d, "TASKSTREAM_JWT_JWKS_CA_FILE").is_none());
    assert!(env_of(&d, "TASKSTREAM_JWT_SECRET").is_none());
    assert!(env_of(&d, "TASKSTREAM_JWT_PUBLIC_KEY_FILE").is_none());
    assert!(pod(&d).volumes.is_none(), "system roots: nothing to mount");

    let ts = with_jwks(Some(("idp-ca", "ca.crt")));
    let d = built(&ts).deployment;
    assert_eq!(
        env_value(&d, "TASKSTREAM_JWT_JWKS_CA_FILE").as_deref(),
        Some("/etc/taskstream/jwks-ca/ca.crt")
    );
    let volumes = pod(&d).volumes.clone().unwrap_or_default();
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].name, "taskstream-jwks-ca");
    let secret = volumes[0].secret.as_ref().expect("secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("idp-ca"));
    let mounts = sidecar_of(&d).volume_mounts.clone().unwrap_or_default();
    assert_eq!(mounts[0].mount_path, "/etc/taskstream/jwks-ca");
    assert_eq!(mounts[0].read_only, Some(true));
    // The CA Secret is checked before rolling, and a new CA rolls the pods.
    assert!(ts.spec.secret_refs().contains(&key("idp-ca", "ca.crt")));
}

#[test]
fn jwks_specs_the_api_server_should_have_refused_are_invalid() {
    let mut http = with_jwks(None);
    if let Some(jwt) = http.spec.auth.jwt.as_mut() {
        jwt.jwks_url = Some("http://idp.example.com/certs".into());
    }
    let mut with_secret = with_jwks(None);
    if let Some(jwt) = with_secret.spec.auth.jwt.as_mut() {
        jwt.secret_ref = Some(key("jwt", "secret"));
    }
    let mut ca_alone = TaskStream::test().with_jwt_secret("jwt", "secret");
    if let Some(jwt) = ca_alone.spec.auth.jwt.as_mut() {
        jwt.jwks_ca_secret_ref = Some(key("idp-ca", "ca.crt"));
    }
    for (what, ts, says) in [
        ("http", http, "https://"),
        ("jwks and a secret", with_secret, "exactly one"),
        ("a CA without jwksUrl", ca_alone, "jwksCaSecretRef"),
    ] {
        let err = build(&ts, &params(), None).expect_err(what);
        assert_eq!(err.metric_label(), "invalid_spec", "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: {err}");
    }
}

#[test]
fn crd_requires_https_for_jwks_and_excludes_static_keys() {
    let json = serde_json::to_string(&crate::crd::crd()).expect("crd serializes");
    for rule in [
        "has(self.jwt.jwksUrl)",
        "!has(self.jwksUrl) || !(has(self.secretRef) || has(self.publicKeyRef))",
        "!has(self.jwksCaSecretRef) || has(self.jwksUrl)",
    ] {
        assert!(json.contains(rule), "missing CEL rule {rule}");
    }
    assert!(
        json.contains(r#""pattern":"^https://[^\\s/?#@]+([/?#]\\S*)?$""#),
        "jwksUrl must be https"
    );
}
