//! Builder tests of what a production app needs: Gateway route, autoscaling, pod settings,
//! Secret value hash. Production Redis, history and log format: `sidecar_tests.rs`.

use std::collections::BTreeMap;

use gateway_api::gateways::Gateway;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, LocalObjectReference, Toleration, Volume, VolumeMount,
};
use serde_json::json;

use super::route::{Acceptance, acceptance, route_url};
use super::test_support::{built, pod, sidecar_of};
use super::*;
use crate::crd::{PodSettings, SidecarSpec};
use crate::fixtures::{NAME, params};

fn template_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

fn gateway(value: serde_json::Value) -> Gateway {
    serde_json::from_value(value).expect("gateway")
}

// --- Gateway API ------------------------------------------------------------------------------

#[test]
fn gateway_makes_an_httproute_to_the_service() {
    let ts = TaskStream::test().with_gateway(&["shop.example.com"]);
    let c = built(&ts);
    assert!(c.ingress.is_none());
    let route = c.route.expect("httproute");
    let v = serde_json::to_value(&route).expect("json");
    assert_eq!(v["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(v["kind"], "HTTPRoute");
    assert_eq!(v["metadata"]["name"], NAME);
    assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "TaskStream");
    assert_eq!(
        v["spec"]["parentRefs"],
        json!([{"name": "public", "namespace": "edge"}])
    );
    assert_eq!(v["spec"]["hostnames"], json!(["shop.example.com"]));
    assert_eq!(
        v["spec"]["rules"],
        json!([{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [{"name": NAME, "port": 80}],
        }])
    );
    assert!(
        v.get("status").is_none(),
        "status is the Gateway's to write"
    );
    assert!(built(&TaskStream::test()).route.is_none());
}

#[test]
fn gateway_without_hostnames_leaves_them_to_the_listeners() {
    let ts = TaskStream::test().with_gateway(&[]);
    let v = serde_json::to_value(built(&ts).route.expect("route")).expect("json");
    assert!(v["spec"].get("hostnames").is_none());
}

#[test]
fn route_acceptance_is_read_from_the_parents() {
    let ts = TaskStream::test().with_gateway(&["shop.example.com"]);
    let mut route = built(&ts).route.expect("route");
    assert_eq!(acceptance(&route), Acceptance::Pending);
    let parent = |status: &str, reason: &str| {
        json!({
            "parentRef": {"name": "public", "namespace": "edge"},
            "controllerName": "example.net/gateway",
            "conditions": [{"type": "Accepted", "status": status, "reason": reason,
                            "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        })
    };
    route.status =
        serde_json::from_value(json!({"parents": [parent("True", "Accepted")]})).expect("status");
    assert_eq!(acceptance(&route), Acceptance::Accepted);
    route.status = serde_json::from_value(json!({"parents": [
        parent("True", "Accepted"), parent("False", "NotAllowedByListeners"),
    ]}))
    .expect("status");
    assert_eq!(
        acceptance(&route),
        Acceptance::Refused {
            gateway: "edge/public".into(),
            reason: "NotAllowedByListeners".into(),
            message: "m".into(),
        }
    );
}

#[test]
fn route_url_follows_the_gateway_listener() {
    let ts = TaskStream::test().with_gateway(&["shop.example.com"]);
    let gw = gateway(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "public", "namespace": "edge"},
        "spec": {"gatewayClassName": "eg", "listeners": [
            {"name": "http", "protocol": "HTTP", "port": 80},
            {"name": "https", "protocol": "HTTPS", "port": 443, "hostname": "*.example.com"},
        ]},
    }));
    assert_eq!(
        route_url(&ts, Some(&gw)).as_deref(),
        Some("wss://shop.example.com/ws/tasks/")
    );
    // Pinned to the plain listener by sectionName.
    let mut http = ts.clone();
    if let Some(g) = http.spec.gateway.as_mut() {
        g.parent_refs[0].section_name = Some("http".into());
    }
    assert_eq!(
        route_url(&http, Some(&gw)).as_deref(),
        Some("ws://shop.example.com/ws/tasks/")
    );
    // A host the HTTPS listener does not serve falls to the HTTP one.
    let other = TaskStream::test().with_gateway(&["shop.other.org"]);
    assert_eq!(
        route_url(&other, Some(&gw)).as_deref(),
        Some("ws://shop.other.org/ws/tasks/")
    );
    // No host names anywhere: the Gateway's address, with a non-default port.
    let bare = TaskStream::test().with_gateway(&[]);
    let gw = gateway(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "public", "namespace": "edge"},
        "spec": {"gatewayClassName": "eg",
                 "listeners": [{"name": "http", "protocol": "HTTP", "port": 8080}]},
        "status": {"addresses": [{"type": "IPAddress", "value": "203.0.113.7"}]},
    }));
    assert_eq!(
        route_url(&bare, Some(&gw)).as_deref(),
        Some("ws://203.0.113.7:8080/ws/tasks/")
    );
    // The Gateway unreadable: no URL claimed through it.
    assert_eq!(route_url(&ts, None), None);
}

#[test]
fn gateway_and_ingress_together_are_refused() {
    let ts = TaskStream::test()
        .with_gateway(&["a.example"])
        .with_ingress("a.example", None);
    let err = build(&ts, &params(), None).expect_err("both");
    assert!(
        err.to_string().contains("only one of gateway and ingress"),
        "{err}"
    );
}

// --- autoscaling ------------------------------------------------------------------------------

#[test]
fn autoscaling_makes_an_hpa_and_leaves_replicas_out() {
    let ts = TaskStream::test().with_autoscaling(2, 10);
    let c = built(&ts);
    assert_eq!(
        c.deployment.spec.as_ref().and_then(|s| s.replicas),
        None,
        "the autoscaler owns spec.replicas"
    );
    let v = serde_json::to_value(c.hpa.expect("hpa")).expect("json");
    assert_eq!(v["apiVersion"], "autoscaling/v2");
    assert_eq!(v["metadata"]["name"], NAME);
    assert_eq!(
        v["spec"]["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME})
    );
    assert_eq!(v["spec"]["minReplicas"], 2);
    assert_eq!(v["spec"]["maxReplicas"], 10);
    assert_eq!(
        v["spec"]["metrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}])
    );
    // The PDB follows minReplicas.
    assert!(c.pdb.is_some());
    assert!(
        built(&TaskStream::test().with_autoscaling(1, 3))
            .pdb
            .is_none()
    );
}

#[test]
fn without_autoscaling_the_operator_owns_replicas_and_there_is_no_hpa() {
    let c = built(&TaskStream::test().with_replicas(3));
    assert!(c.hpa.is_none());
    assert_eq!(c.deployment.spec.as_ref().and_then(|s| s.replicas), Some(3));
}

#[test]
fn autoscaling_limits_are_checked() {
    let mut ts = TaskStream::test().with_autoscaling(5, 3);
    let err = build(&ts, &params(), None).expect_err("min > max");
    assert!(err.to_string().contains("minReplicas"), "{err}");
    ts = TaskStream::test().with_autoscaling(1, 3);
    ts.spec.replicas = Some(2);
    let err = build(&ts, &params(), None).expect_err("both");
    assert!(
        err.to_string().contains("replicas and autoscaling"),
        "{err}"
    );
}

// --- pod settings -----------------------------------------------------------------------------

fn pod_settings() -> PodSettings {
    PodSettings {
        service_account_name: Some("shop".into()),
        image_pull_secrets: Some(vec![LocalObjectReference {
            name: "registry-creds".into(),
        }]),
        node_selector: Some(BTreeMap::from([("pool".into(), "web".into())])),
        tolerations: Some(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("web".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]),
        affinity: serde_json::from_value(json!({"podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100,
                "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}}))
        .expect("affinity"),
        topology_spread_constraints: serde_json::from_value(json!([{"maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}]))
        .expect("spread"),
        priority_class_name: Some("web-critical".into()),
        labels: Some(BTreeMap::from([
            ("team".into(), "shop".into()),
            ("app.kubernetes.io/instance".into(), "spoofed".into()),
        ])),
        annotations: Some(BTreeMap::from([
            ("prometheus.io/scrape".into(), "true".into()),
            (CONFIG_HASH_ANNOTATION.into(), "spoofed".into()),
        ])),
        volumes: Some(vec![Volume {
            name: "media".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        }]),
        init_containers: Some(vec![Container {
            name: "migrate".into(),
            image: Some("registry.example/shop:1.0".into()),
            args: Some(vec!["manage.py".into(), "migrate".into()]),
            ..Default::default()
        }]),
    }
}

#[test]
fn pod_settings_reach_the_pod_template() {
    let mut ts = TaskStream::test().with_pod(pod_settings());
    ts.spec.app.as_mut().expect("app").volume_mounts = Some(vec![VolumeMount {
        name: "media".into(),
        mount_path: "/app/media".into(),
        ..Default::default()
    }]);
    let d = built(&ts).deployment;
    let p = pod(&d);
    assert_eq!(p.service_account_name.as_deref(), Some("shop"));
    assert_eq!(
        p.image_pull_secrets.as_ref().map(|s| s[0].name.as_str()),
        Some("registry-creds")
    );
    assert_eq!(
        p.node_selector
            .as_ref()
            .and_then(|n| n.get("pool"))
            .map(String::as_str),
        Some("web")
    );
    assert_eq!(p.tolerations.as_ref().map(Vec::len), Some(1));
    assert!(
        p.affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .is_some()
    );
    assert_eq!(
        p.topology_spread_constraints.as_ref().map(Vec::len),
        Some(1)
    );
    assert_eq!(p.priority_class_name.as_deref(), Some("web-critical"));
    assert_eq!(
        p.volumes.as_ref().map(|v| v[0].name.as_str()),
        Some("media")
    );
    let app = &p.containers[0];
    assert_eq!(
        app.volume_mounts.as_ref().map(|m| m[0].mount_path.as_str()),
        Some("/app/media")
    );
    // The user's init containers run first, then the native sidecar.
    let init: Vec<_> = p
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["migrate", SIDECAR_CONTAINER]);
}

#[test]
fn the_operators_labels_and_annotations_win() {
    let d = built(&TaskStream::test().with_pod(pod_settings())).deployment;
    let meta = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .expect("template metadata");
    let labels = meta.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("shop"));
    assert_eq!(
        labels.get("app.kubernetes.io/instance").map(String::as_str),
        Some(NAME),
        "the selector label cannot be overridden"
    );
    let annotations = template_annotations(&d);
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_ne!(
        annotations.get(CONFIG_HASH_ANNOTATION).map(String::as_str),
        Some("spoofed")
    );
    // The sidecar's hardened security context stays.
    let sc = sidecar_of(&d).security_context.as_ref().expect("security");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
}

#[test]
fn classic_sidecar_leaves_only_the_users_init_containers() {
    let ts = TaskStream::test()
        .with_pod(pod_settings())
        .with_sidecar(SidecarSpec {
            native: Some(false),
            ..Default::default()
        });
    let d = built(&ts).deployment;
    let init: Vec<_> = pod(&d)
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["migrate"]);
}

#[test]
fn the_operators_names_are_reserved() {
    let mut settings = pod_settings();
    settings.volumes = Some(vec![Volume {
        name: "taskstream-redis-ca".into(),
        ..Default::default()
    }]);
    let err = build(&TaskStream::test().with_pod(settings), &params(), None)
        .expect_err("reserved volume");
    assert!(err.to_string().contains("taskstream-redis-ca"), "{err}");
    let mut settings = pod_settings();
    settings.init_containers = Some(vec![Container {
        name: SIDECAR_CONTAINER.into(),
        ..Default::default()
    }]);
    let err = build(&TaskStream::test().with_pod(settings), &params(), None)
        .expect_err("reserved container");
    assert!(err.to_string().contains("initContainers"), "{err}");
}

// --- Secret value hash ------------------------------------------------------------------------

#[test]
fn secret_hash_lands_in_the_pod_template_only_when_known() {
    let ts = TaskStream::test().with_redis_secret("redis", "url");
    let d = deployment(&ts, &params(), Some("0123abcd")).expect("deployment");
    assert_eq!(
        template_annotations(&d)
            .get(SECRET_HASH_ANNOTATION)
            .map(String::as_str),
        Some("0123abcd")
    );
    let d = deployment(&ts, &params(), None).expect("deployment");
    assert!(!template_annotations(&d).contains_key(SECRET_HASH_ANNOTATION));
}

#[test]
fn secret_hash_changes_with_a_value_and_hides_it() {
    let a = secret_hash([("redis", "url", &b"redis://:old@r:6379"[..])]);
    let b = secret_hash([("redis", "url", &b"redis://:new@r:6379"[..])]);
    assert_ne!(a, b);
    assert_eq!(a.len(), 16);
    assert!(!a.contains("old"));
    // Order-independent, and the key is part of it.
    let x = secret_hash([("s", "a", &b"1"[..]), ("s", "b", &b"2"[..])]);
    let y = secret_hash([("s", "b", &b"2"[..]), ("s", "a", &b"1"[..])]);
    assert_eq!(x, y);
    assert_ne!(
        x,
        secret_hash([("s", "a", &b"2"[..]), ("s", "b", &b"1"[..])])
    );
    // No two inputs share a byte stream.
    assert_ne!(
        secret_hash([("ab", "c", &b""[..])]),
        secret_hash([("a", "bc", &b""[..])])
    );
}
