use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::crd::{RedisTlsSpec, SecretNameRef, SidecarSpec};
use crate::fixtures::{NS, key, params};

/// A pod as a team's ReplicaSet creates it: one app container, labelled for `shop`.
fn team_pod() -> Pod {
    let mut pod = Pod::default();
    pod.metadata.generate_name = Some("web-abc12-".into());
    pod.metadata.labels = Some([(INJECT_LABEL.to_string(), "shop".to_string())].into());
    pod.spec = Some(PodSpec {
        containers: vec![Container {
            name: "web".into(),
            image: Some("registry.example/web:1".into()),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8000,
                ..Default::default()
            }]),
            ..Default::default()
        }],
        ..Default::default()
    });
    pod
}

fn attached() -> TaskStream {
    TaskStream::test().attached(8000, None)
}

/// Applies the verdict's patch the way the API server does and returns the resulting pod.
fn patched(pod: &Pod, ts: &TaskStream) -> Pod {
    let Verdict::Patch(patch) = mutate(pod, NS, Some(ts), &params()) else {
        panic!("expected a patch");
    };
    let mut doc = serde_json::to_value(pod).expect("json");
    json_patch::patch(&mut doc, &patch).expect("patch applies");
    serde_json::from_value(doc).expect("pod")
}

fn sidecar(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().expect("spec");
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == SIDECAR_CONTAINER)
        .expect("sidecar")
}

fn env(pod: &Pod, name: &str) -> Option<k8s_openapi::api::core::v1::EnvVar> {
    sidecar(pod)
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .cloned()
}

#[test]
fn native_sidecar_in_front_of_the_app_port_with_the_config_hash() {
    let ts = attached();
    let pod = patched(&team_pod(), &ts);
    let spec = pod.spec.as_ref().expect("spec");
    let init = spec.init_containers.as_ref().expect("native sidecar");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.containers.len(), 1, "the app container is untouched");
    assert_eq!(
        spec.containers[0],
        team_pod().spec.expect("s").containers[0]
    );
    assert_eq!(
        env(&pod, "TASKSTREAM_UPSTREAM")
            .and_then(|e| e.value)
            .as_deref(),
        Some("http://127.0.0.1:8000")
    );
    let expected = injection(&ts, &params()).expect("injection");
    assert_eq!(
        pod.annotations().get(CONFIG_HASH_ANNOTATION),
        Some(&expected.config_hash)
    );
    assert_eq!(spec.termination_grace_period_seconds, Some(35));
    assert_eq!(pod.labels(), team_pod().labels(), "labels untouched");
}

#[test]
fn classic_sidecar_goes_beside_the_app() {
    let ts = attached().with_sidecar(SidecarSpec {
        native: Some(false),
        image: Some("mirror.example/sidecar:1".into()),
        ..Default::default()
    });
    let pod = patched(&team_pod(), &ts);
    let spec = pod.spec.as_ref().expect("spec");
    assert!(spec.init_containers.is_none());
    assert_eq!(spec.containers.len(), 2);
    assert_eq!(spec.containers[1].name, SIDECAR_CONTAINER);
    assert!(spec.containers[1].restart_policy.is_none());
    assert_eq!(
        spec.containers[1].image.as_deref(),
        Some("mirror.example/sidecar:1")
    );
}

#[test]
fn auth_modes_and_secret_refs_are_passed_by_reference() {
    let pod = patched(
        &team_pod(),
        &attached()
            .with_jwt_secret("jwt", "hs256")
            .with_redis_secret("redis", "url"),
    );
    let secret = env(&pod, "TASKSTREAM_JWT_SECRET").expect("jwt secret env");
    assert!(secret.value.is_none());
    let sel = secret
        .value_from
        .and_then(|v| v.secret_key_ref)
        .expect("secretKeyRef");
    assert_eq!((sel.name.as_str(), sel.key.as_str()), ("jwt", "hs256"));
    let url = env(&pod, "TASKSTREAM_REDIS_URL").expect("redis url");
    assert!(url.value.is_none() && url.value_from.is_some());

    let pod = patched(&team_pod(), &attached().with_forward_auth("/auth/", 900));
    assert_eq!(
        env(&pod, "TASKSTREAM_AUTH")
            .and_then(|e| e.value)
            .as_deref(),
        Some("forward")
    );
    assert_eq!(
        env(&pod, "TASKSTREAM_AUTH_PATH")
            .and_then(|e| e.value)
            .as_deref(),
        Some("/auth/")
    );
}

#[test]
fn pem_files_are_mounted_from_secret_volumes() {
    let mut ts = attached().with_jwt_public_key("jwt", "key.pem");
    ts.spec.redis.url = Some("rediss://redis:6380".into());
    ts.spec.redis.tls = Some(RedisTlsSpec {
        ca_secret_ref: Some(key("redis-ca", "ca.crt")),
        client_cert_secret_ref: Some(SecretNameRef {
            name: "redis-client".into(),
        }),
        insecure_skip_verify: None,
    });
    let pod = patched(&team_pod(), &ts);
    let volumes: Vec<String> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .expect("volumes")
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(
        volumes,
        [
            "taskstream-jwt-key",
            "taskstream-redis-ca",
            "taskstream-redis-client"
        ]
    );
    let mounts = sidecar(&pod).volume_mounts.clone().expect("mounts");
    assert_eq!(mounts.len(), 3);
    assert!(mounts.iter().all(|m| m.read_only == Some(true)));
    assert_eq!(
        env(&pod, "TASKSTREAM_REDIS_CA_FILE")
            .and_then(|e| e.value)
            .as_deref(),
        Some("/etc/taskstream/redis-ca/ca.crt")
    );
}

#[test]
fn the_teams_init_containers_and_volumes_stay_first() {
    let mut pod = team_pod();
    let spec = pod.spec.as_mut().expect("spec");
    spec.init_containers = Some(vec![Container {
        name: "migrate".into(),
        ..Default::default()
    }]);
    spec.volumes = Some(vec![Volume {
        name: "cache".into(),
        ..Default::default()
    }]);
    spec.termination_grace_period_seconds = Some(120);
    let out = patched(&pod, &attached().with_jwt_public_key("jwt", "k"));
    let spec = out.spec.as_ref().expect("spec");
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["migrate", SIDECAR_CONTAINER]);
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, ["cache", "taskstream-jwt-key"]);
    assert_eq!(
        spec.termination_grace_period_seconds,
        Some(120),
        "a longer grace period is kept"
    );
}

#[test]
fn reinvocation_adds_nothing_twice() {
    let ts = attached();
    let once = patched(&team_pod(), &ts);
    assert_eq!(
        mutate(&once, NS, Some(&ts), &params()),
        Verdict::Admit {
            warnings: Vec::new()
        }
    );
}

#[test]
fn conflicts_are_denied_with_what_to_change() {
    let ts = attached();
    let mut named = team_pod();
    named.spec.as_mut().expect("s").containers[0].name = SIDECAR_CONTAINER.into();
    let Verdict::Deny(msg) = mutate(&named, NS, Some(&ts), &params()) else {
        panic!("a container named like the sidecar is denied");
    };
    assert!(
        msg.contains("already has a container named taskstream-sidecar"),
        "{msg}"
    );

    for port in [8080, 9090] {
        let mut busy = team_pod();
        busy.spec.as_mut().expect("s").containers[0]
            .ports
            .as_mut()
            .expect("p")[0]
            .container_port = port;
        let Verdict::Deny(msg) = mutate(&busy, NS, Some(&ts), &params()) else {
            panic!("port {port} is denied");
        };
        assert!(
            msg.contains(&format!("container web uses port {port}")),
            "{msg}"
        );
    }

    let mut vol = team_pod();
    vol.spec.as_mut().expect("s").volumes = Some(vec![Volume {
        name: "taskstream-data".into(),
        ..Default::default()
    }]);
    let Verdict::Deny(msg) = mutate(&vol, NS, Some(&ts), &params()) else {
        panic!("a taskstream- volume is denied");
    };
    assert!(msg.contains("volume taskstream-data"), "{msg}");
}

#[test]
fn missing_owned_or_deleted_taskstreams_admit_unchanged_with_a_warning() {
    let warning = |v: Verdict| match v {
        Verdict::Admit { warnings } if warnings.len() == 1 => warnings[0].clone(),
        other => panic!("expected one warning, got {other:?}"),
    };
    let w = warning(mutate(&team_pod(), NS, None, &params()));
    assert!(w.contains("no TaskStream shop in namespace apps"), "{w}");

    let w = warning(mutate(
        &team_pod(),
        NS,
        Some(&TaskStream::test()),
        &params(),
    ));
    assert!(w.contains("has no spec.attach"), "{w}");

    let mut deleting = attached();
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1).expect("t")));
    let w = warning(mutate(&team_pod(), NS, Some(&deleting), &params()));
    assert!(w.contains("is being deleted"), "{w}");
}
