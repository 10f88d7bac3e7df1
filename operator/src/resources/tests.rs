//! Builder tests: one per meaningful spec variation, no API server.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::EnvVar;

use super::test_support::{built, env_of, env_value, pod, sidecar_of};
use super::*;
use crate::crd::{SidecarSpec, WebSocketSpec};
use crate::fixtures::{NAME, NS, UID, params};

fn hash_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
        .cloned()
        .expect("config hash annotation")
}

#[test]
fn native_sidecar_is_an_init_container_with_restart_always() {
    let d = built(&TaskStream::test()).deployment;
    let pod = pod(&d);
    let init = pod.init_containers.as_ref().expect("init containers");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].name, SIDECAR_CONTAINER);
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(pod.containers[0].name, "app");
    assert_eq!(
        init[0].image.as_deref(),
        Some("ghcr.io/taskstream/taskstream-sidecar:test")
    );
}

#[test]
fn classic_sidecar_sits_beside_the_app() {
    let ts = TaskStream::test().with_sidecar(SidecarSpec {
        native: Some(false),
        image: Some("my.registry/sidecar:1".into()),
        ..Default::default()
    });
    let d = built(&ts).deployment;
    let pod = pod(&d);
    assert!(pod.init_containers.is_none());
    let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", SIDECAR_CONTAINER]);
    assert_eq!(pod.containers[1].restart_policy, None);
    assert_eq!(
        pod.containers[1].image.as_deref(),
        Some("my.registry/sidecar:1")
    );
}

#[test]
fn sidecar_env_carries_the_contract() {
    let d = built(&TaskStream::test()).deployment;
    assert_eq!(
        env_value(&d, "TASKSTREAM_LISTEN").as_deref(),
        Some("0.0.0.0:8080")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_ADMIN_LISTEN").as_deref(),
        Some("0.0.0.0:9090")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_UPSTREAM").as_deref(),
        Some("http://127.0.0.1:8000")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_WS_PATH").as_deref(),
        Some("/ws/tasks/")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_REDIS_URL").as_deref(),
        Some("redis://redis.apps.svc:6379/0")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_CHANNEL_PREFIX").as_deref(),
        Some("taskstream:")
    );
    assert_eq!(env_value(&d, "TASKSTREAM_AUTH").as_deref(), Some("none"));
    assert_eq!(
        env_value(&d, "TASKSTREAM_PING_INTERVAL").as_deref(),
        Some("20s")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_SHUTDOWN_GRACE").as_deref(),
        Some("25s")
    );
    assert_eq!(env_value(&d, "RUST_LOG").as_deref(), Some("info"));
    assert!(
        env_of(&d, "TASKSTREAM_ALLOWED_ORIGINS").is_none(),
        "unset = same host only"
    );
    assert!(env_of(&d, "TASKSTREAM_JWT_SECRET").is_none());
    assert!(env_of(&d, "TASKSTREAM_AUTH_PATH").is_none());
}

#[test]
fn websocket_settings_reach_the_sidecar() {
    let mut ts = TaskStream::test();
    ts.spec.websocket = Some(WebSocketSpec {
        path: Some("/live/".into()),
        max_connections: Some(5000),
        max_message_bytes: Some(65536),
        ping_interval_seconds: Some(15),
        allowed_origins: Some(vec!["https://a.example".into(), "https://b.example".into()]),
    });
    ts.spec.redis.channel_prefix = Some("shop:".into());
    let d = built(&ts).deployment;
    assert_eq!(
        env_value(&d, "TASKSTREAM_WS_PATH").as_deref(),
        Some("/live/")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_MAX_CONNECTIONS").as_deref(),
        Some("5000")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_MAX_MESSAGE_BYTES").as_deref(),
        Some("65536")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_PING_INTERVAL").as_deref(),
        Some("15s")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_ALLOWED_ORIGINS").as_deref(),
        Some("https://a.example,https://b.example")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_CHANNEL_PREFIX").as_deref(),
        Some("shop:")
    );
    assert_eq!(status_url(&ts), format!("ws://{NAME}.{NS}.svc/live/"));
}

#[test]
fn redis_url_from_secret_is_a_reference_not_a_copy() {
    let ts = TaskStream::test().with_redis_secret("redis-auth", "url");
    let d = built(&ts).deployment;
    let env = env_of(&d, "TASKSTREAM_REDIS_URL").expect("redis env");
    assert_eq!(env.value, None);
    let sel = env
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("secretKeyRef");
    assert_eq!((sel.name.as_str(), sel.key.as_str()), ("redis-auth", "url"));
    let yaml = serde_json::to_string(&d).expect("json");
    assert!(
        !yaml.contains("redis://"),
        "no URL copied into the Deployment"
    );
}

#[test]
fn jwt_with_shared_secret() {
    let ts = TaskStream::test().with_jwt_secret("jwt", "hs256");
    let d = built(&ts).deployment;
    assert_eq!(env_value(&d, "TASKSTREAM_AUTH").as_deref(), Some("jwt"));
    let sel = env_of(&d, "TASKSTREAM_JWT_SECRET")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("jwt secretKeyRef");
    assert_eq!((sel.name.as_str(), sel.key.as_str()), ("jwt", "hs256"));
    assert_eq!(
        env_value(&d, "TASKSTREAM_JWT_GROUPS_CLAIM").as_deref(),
        Some("groups")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_USER_GROUP").as_deref(),
        Some("user:{sub}")
    );
    assert!(env_of(&d, "TASKSTREAM_JWT_PUBLIC_KEY_FILE").is_none());
    assert!(pod(&d).volumes.is_none());
}

#[test]
fn jwt_with_public_key_mounts_the_secret_as_a_file() {
    let ts = TaskStream::test().with_jwt_public_key("jwt-pub", "key.pem");
    let d = built(&ts).deployment;
    assert_eq!(
        env_value(&d, "TASKSTREAM_JWT_PUBLIC_KEY_FILE").as_deref(),
        Some("/etc/taskstream/jwt/key.pem")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_JWT_GROUPS_CLAIM").as_deref(),
        Some("roles")
    );
    assert!(env_of(&d, "TASKSTREAM_JWT_SECRET").is_none());
    let volumes = pod(&d).volumes.as_ref().expect("volumes");
    let secret = volumes[0].secret.as_ref().expect("secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("jwt-pub"));
    let mount = &sidecar_of(&d).volume_mounts.as_ref().expect("mounts")[0];
    assert_eq!(mount.mount_path, "/etc/taskstream/jwt");
    assert_eq!(mount.read_only, Some(true));
}

#[test]
fn forward_auth() {
    let ts = TaskStream::test().with_forward_auth("/auth/ws/", 750);
    let d = built(&ts).deployment;
    assert_eq!(env_value(&d, "TASKSTREAM_AUTH").as_deref(), Some("forward"));
    assert_eq!(
        env_value(&d, "TASKSTREAM_AUTH_PATH").as_deref(),
        Some("/auth/ws/")
    );
    assert_eq!(
        env_value(&d, "TASKSTREAM_AUTH_TIMEOUT").as_deref(),
        Some("750ms")
    );
    assert!(env_of(&d, "TASKSTREAM_JWT_GROUPS_CLAIM").is_none());
}

#[test]
fn sidecar_is_hardened_and_probed_on_admin() {
    let d = built(&TaskStream::test()).deployment;
    let c = sidecar_of(&d);
    let sc = c.security_context.as_ref().expect("security context");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let ready = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("readiness");
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
    let live = c
        .liveness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("liveness");
    assert_eq!(live.path.as_deref(), Some("/healthz"));
    let ports: Vec<_> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [(Some("http".into()), 8080), (Some("admin".into()), 9090)]
    );
}

#[test]
fn termination_grace_exceeds_the_sidecar_drain() {
    let d = built(&TaskStream::test()).deployment;
    assert_eq!(pod(&d).termination_grace_period_seconds, Some(35));
    let ts = TaskStream::test().with_sidecar(SidecarSpec {
        shutdown_grace_seconds: Some(60),
        ..Default::default()
    });
    let d = built(&ts).deployment;
    assert_eq!(pod(&d).termination_grace_period_seconds, Some(70));
    assert_eq!(
        env_value(&d, "TASKSTREAM_SHUTDOWN_GRACE").as_deref(),
        Some("60s")
    );
}

#[test]
fn app_container_gets_the_user_settings() {
    let mut ts = TaskStream::test();
    ts.spec.app.as_mut().expect("app").command = Some(vec!["gunicorn".into()]);
    ts.spec.app.as_mut().expect("app").args = Some(vec!["app:wsgi".into()]);
    ts.spec.app.as_mut().expect("app").env = Some(vec![EnvVar {
        name: "DJANGO_SETTINGS_MODULE".into(),
        value: Some("shop.settings".into()),
        value_from: None,
    }]);
    let d = built(&ts).deployment;
    let app = &pod(&d).containers[0];
    assert_eq!(app.image.as_deref(), Some("registry.example/shop:1.0"));
    assert_eq!(app.command, Some(vec!["gunicorn".to_string()]));
    assert_eq!(app.args, Some(vec!["app:wsgi".to_string()]));
    assert_eq!(app.env.as_ref().map(Vec::len), Some(1));
    assert_eq!(app.ports.as_ref().map(|p| p[0].container_port), Some(8000));
}

#[test]
fn every_child_is_owned_labelled_and_named_after_the_taskstream() {
    let c = built(
        &TaskStream::test()
            .with_replicas(3)
            .with_ingress("shop.example", None),
    );
    let metas = [
        &c.deployment.metadata,
        &c.service.metadata,
        &c.pdb.as_ref().expect("pdb").metadata,
        &c.ingress.as_ref().expect("ingress").metadata,
    ];
    for meta in metas {
        assert_eq!(meta.name.as_deref(), Some(NAME));
        assert_eq!(meta.namespace.as_deref(), Some(NS));
        let owner = &meta.owner_references.as_ref().expect("owner refs")[0];
        assert_eq!(owner.uid, UID);
        assert_eq!(owner.kind, "TaskStream");
        assert_eq!(owner.api_version, "taskstream.dev/v1alpha1");
        assert_eq!(owner.controller, Some(true));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some(MANAGED_BY)
        );
    }
}

#[test]
fn without_uid_there_is_no_owner_reference() {
    let mut ts = TaskStream::test();
    ts.metadata.uid = None;
    assert!(built(&ts).deployment.metadata.owner_references.is_none());
}

#[test]
fn service_targets_the_sidecar_not_the_app() {
    let c = built(&TaskStream::test());
    let spec = c.service.spec.as_ref().expect("service spec");
    let ports = spec.ports.as_ref().expect("ports");
    // The sidecar's admin port (POST /publish) must stay inside the pod.
    assert_eq!(ports.len(), 1, "only the http port: {ports:?}");
    assert!(
        ports
            .iter()
            .all(|p| p.port != 9090 && p.name.as_deref() != Some("admin"))
    );
    let http = &ports[0];
    assert_eq!(http.name.as_deref(), Some("http"));
    assert_eq!(http.port, 80);
    assert_eq!(
        http.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into()))
    );
    assert_eq!(spec.selector, Some(selector_labels(&TaskStream::test())));
}

#[test]
fn pdb_only_with_more_than_one_replica() {
    assert!(built(&TaskStream::test()).pdb.is_none());
    assert!(built(&TaskStream::test().with_replicas(1)).pdb.is_none());
    let c = built(&TaskStream::test().with_replicas(2));
    let pdb = c.pdb.expect("pdb with 2 replicas");
    let spec = pdb.spec.expect("pdb spec");
    assert_eq!(
        spec.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(c.deployment.spec.and_then(|s| s.replicas), Some(2));
}

#[test]
fn no_ingress_unless_asked() {
    let ts = TaskStream::test();
    assert!(built(&ts).ingress.is_none());
    assert_eq!(status_url(&ts), format!("ws://{NAME}.{NS}.svc/ws/tasks/"));
}

#[test]
fn ingress_without_tls() {
    let ts = TaskStream::test().with_ingress("shop.example", None);
    let ing = built(&ts).ingress.expect("ingress");
    let spec = ing.spec.as_ref().expect("ingress spec");
    assert!(spec.tls.is_none());
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let rule = &spec.rules.as_ref().expect("rules")[0];
    assert_eq!(rule.host.as_deref(), Some("shop.example"));
    let path = &rule.http.as_ref().expect("http").paths[0];
    assert_eq!(path.path.as_deref(), Some("/"));
    assert_eq!(path.path_type, "Prefix");
    let backend = path.backend.service.as_ref().expect("service backend");
    assert_eq!(backend.name, NAME);
    assert_eq!(
        backend.port.as_ref().and_then(|p| p.name.as_deref()),
        Some("http")
    );
    let ann = ing.metadata.annotations.as_ref().expect("annotations");
    for key in ingress::NGINX_TIMEOUT_ANNOTATIONS {
        assert_eq!(ann.get(key).map(String::as_str), Some("3600"));
    }
    assert_eq!(status_url(&ts), "ws://shop.example/ws/tasks/");
}

#[test]
fn ingress_with_tls_uses_wss() {
    let ts = TaskStream::test().with_ingress("shop.example", Some("shop-tls"));
    let ing = built(&ts).ingress.expect("ingress");
    let tls = &ing.spec.as_ref().and_then(|s| s.tls.clone()).expect("tls")[0];
    assert_eq!(tls.secret_name.as_deref(), Some("shop-tls"));
    assert_eq!(tls.hosts, Some(vec!["shop.example".to_string()]));
    assert_eq!(status_url(&ts), "wss://shop.example/ws/tasks/");
}

#[test]
fn user_annotations_are_merged_over_the_defaults() {
    let ts = TaskStream::test()
        .with_ingress("shop.example", None)
        .with_ingress_annotations(&[
            ("nginx.ingress.kubernetes.io/proxy-read-timeout", "7200"),
            ("cert-manager.io/cluster-issuer", "letsencrypt"),
        ]);
    let ing = built(&ts).ingress.expect("ingress");
    let ann = ing.metadata.annotations.expect("annotations");
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/proxy-read-timeout"],
        "7200"
    );
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/proxy-send-timeout"],
        "3600"
    );
    assert_eq!(ann["cert-manager.io/cluster-issuer"], "letsencrypt");
}

#[test]
fn config_change_changes_the_hash_and_app_change_does_not() {
    let base = hash_of(&built(&TaskStream::test()).deployment);
    assert_eq!(
        base,
        hash_of(&built(&TaskStream::test()).deployment),
        "deterministic"
    );
    assert_eq!(base.len(), 16);
    let mut ts = TaskStream::test();
    ts.spec.redis.channel_prefix = Some("other:".into());
    assert_ne!(base, hash_of(&built(&ts).deployment));
    let ts = TaskStream::test().with_jwt_secret("jwt", "k");
    assert_ne!(base, hash_of(&built(&ts).deployment));
    let ts = TaskStream::test().with_replicas(4);
    assert_eq!(
        base,
        hash_of(&built(&ts).deployment),
        "scaling does not roll pods"
    );
}

#[test]
fn specs_the_schema_would_refuse_are_refused_here_too() {
    let mut both = TaskStream::test();
    both.spec.redis.url_secret_ref = Some(crate::fixtures::key("r", "url"));
    let mut neither = TaskStream::test();
    neither.spec.redis.url = None;
    let mut jwt_without_key = TaskStream::test();
    jwt_without_key.spec.auth.mode = crate::crd::AuthMode::Jwt;
    let mut port_clash = TaskStream::test();
    port_clash.spec.app.as_mut().expect("app").port = 8080;
    let mut bad_path = TaskStream::test();
    bad_path.spec.websocket = Some(WebSocketSpec {
        path: Some("ws".into()),
        ..Default::default()
    });
    for (what, ts) in [
        ("both urls", both),
        ("no url", neither),
        ("jwt without key", jwt_without_key),
        ("port clash", port_clash),
        ("relative path", bad_path),
    ] {
        let err = build(&ts, &params(), None).expect_err(what);
        assert_eq!(err.metric_label(), "invalid_spec", "{what}: {err}");
    }
}

#[test]
fn missing_namespace_is_an_error_not_a_panic() {
    let mut ts = TaskStream::test();
    ts.metadata.namespace = None;
    let err = build(&ts, &params(), None).expect_err("no namespace");
    assert!(err.to_string().contains("metadata.namespace"), "{err}");
}
