//! The table against the code: the controller's watches, reconciles that take every path that
//! talks to the API, and leader election all run against a fake API server. Every request
//! needs a row of operator/rbac.yaml, and every row must be needed by some request.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::controller::{self, Context};
use crate::crd::{AutoscalingSpec, GatewayParentRef, GatewaySpec, TaskStream};
use crate::fixtures::fakeapi::{FakeApi, Seen};
use crate::fixtures::{NAME, NS, params};
use crate::leader::{self, LeaseConfig};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

const LEASE_NS: &str = "taskstream-system";
const WITHIN: Duration = Duration::from_secs(10);

fn context(client: kube::Client) -> Arc<Context> {
    Arc::new(Context::new(client, params(), Metrics::default()))
}

/// Polls `api`'s log until `done` holds, failing the test after [`WITHIN`].
async fn wait_for(api: &FakeApi, what: &str, done: impl Fn(&[Seen]) -> bool) {
    let poll = async {
        while !done(&api.log()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WITHIN, poll)
        .await
        .unwrap_or_else(|_| panic!("fake API server never saw {what}: {:#?}", api.log()));
}

/// Reconciles that between them apply every child, delete stale ones, read Secrets, write the
/// status and publish (then re-publish, as a series) a Warning Event.
async fn reconcile_requests() -> Vec<Seen> {
    let (client, api) = FakeApi::start(NS);
    let ctx = context(client);
    api.put(
        &format!("/apis/taskstream.dev/v1alpha1/namespaces/{NS}/taskstreams/{NAME}"),
        serde_json::to_value(TaskStream::test()).expect("json"),
    );
    api.put(
        &format!("/api/v1/namespaces/{NS}/secrets/redis"),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "redis", "namespace": NS},
            "data": {"url": "cmVkaXM6Ly9yZWRpcw=="},
        }),
    );
    api.put(
        &format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/gateways/public"),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "public", "namespace": NS},
            "spec": {"gatewayClassName": "eg",
                     "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]},
        }),
    );
    let full = TaskStream::test()
        .with_redis_secret("redis", "url")
        .with_replicas(2)
        .with_ingress("shop.example", Some("shop-tls"));
    let run = |ts: TaskStream| controller::reconcile(Arc::new(ts), ctx.clone());
    run(full).await.expect("full reconcile");
    // Autoscaled, behind a Gateway: HPA and HTTPRoute applied, the Deployment read (twice: at
    // creation, then to hand spec.replicas off), the Gateway read.
    let mut scaled = TaskStream::test();
    scaled.spec.autoscaling = Some(AutoscalingSpec {
        min_replicas: Some(2),
        max_replicas: 4,
        target_cpu_utilization_percentage: None,
    });
    scaled.spec.gateway = Some(GatewaySpec {
        parent_refs: vec![GatewayParentRef {
            name: "public".into(),
            ..Default::default()
        }],
        hostnames: Some(vec!["shop.example".into()]),
    });
    run(scaled.clone()).await.expect("autoscaled reconcile");
    // The spec drops its PDB, HPA, Ingress and HTTPRoute: the operator deletes the ones it owns.
    run(TaskStream::test()).await.expect("minimal reconcile");
    // A missing Secret, twice: the second Warning patches the Event series.
    for _ in 0..2 {
        run(TaskStream::test().with_redis_secret("absent", "url"))
            .await
            .expect_err("secret is missing");
    }
    api.log()
}

/// Attach mode: an attached reconcile (and one switched from owned mode), `rollout: Auto`
/// restarting a Deployment and a StatefulSet, the webhook reading a TaskStream, and the
/// certificate keeper creating, then renewing, its Secret and patching the caBundle.
async fn attach_requests() -> Vec<Seen> {
    use crate::controller::attach::restart_stale;
    use crate::crd::AttachRollout;
    use crate::status::attach::{Census, Owner};
    use crate::webhook::admission::TaskStreams;
    use crate::webhook::keeper::{KeeperConfig, refresh};
    use crate::webhook::server::Resolver;

    let (client, api) = FakeApi::start(NS);
    let ctx = context(client.clone());
    let attached = TaskStream::test().attached(8000, Some(AttachRollout::Auto));
    api.put(
        &format!("/apis/taskstream.dev/v1alpha1/namespaces/{NS}/taskstreams/{NAME}"),
        serde_json::to_value(&attached).expect("json"),
    );
    api.put(
        &format!("/apis/apps/v1/namespaces/{NS}/deployments/{NAME}"),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": NAME, "namespace": NS,
                            "ownerReferences": [{"apiVersion": "taskstream.dev/v1alpha1",
                                "kind": "TaskStream", "name": NAME, "uid": crate::fixtures::UID,
                                "controller": true}]}}),
    );
    controller::reconcile(Arc::new(attached.clone()), ctx.clone())
        .await
        .expect("attached reconcile");
    for (plural, kind) in [
        ("deployments", "Deployment"),
        ("statefulsets", "StatefulSet"),
    ] {
        api.put(
            &format!("/apis/apps/v1/namespaces/{NS}/{plural}/web"),
            json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "web", "namespace": NS}}),
        );
    }
    let census = Census {
        pods: 2,
        stale: 2,
        stale_owners: ["Deployment", "StatefulSet"]
            .into_iter()
            .map(|kind| Owner {
                kind: kind.into(),
                name: "web".into(),
            })
            .collect(),
        ..Default::default()
    };
    restart_stale(&attached, &ctx, NS, &census, "h1")
        .await
        .expect("restarts");

    let found = TaskStreams::get(&client, NS, NAME)
        .await
        .expect("webhook lookup");
    assert!(found.is_some());

    api.put(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/taskstream-operator",
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
               "metadata": {"name": "taskstream-operator"},
               "webhooks": [{"name": "inject.taskstream.dev", "clientConfig": {"url": "https://127.0.0.1:9443/mutate-pods"},
                             "sideEffects": "None", "admissionReviewVersions": ["v1"]}]}),
    );
    let cfg = KeeperConfig {
        namespace: LEASE_NS.into(),
        secret: "taskstream-webhook-tls".into(),
        configuration: "taskstream-operator".into(),
        sans: vec!["127.0.0.1".into()],
    };
    let resolver = Resolver::default();
    refresh(&client, &cfg, &resolver)
        .await
        .expect("creates the certificate");
    assert!(resolver.is_loaded());
    // A Secret without the CA key (made by hand): renewed in place.
    api.put(
        &format!("/api/v1/namespaces/{LEASE_NS}/secrets/taskstream-webhook-tls"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "taskstream-webhook-tls", "namespace": LEASE_NS, "resourceVersion": "5"},
               "data": {"tls.crt": "eA==", "tls.key": "eA=="}}),
    );
    refresh(&client, &cfg, &resolver)
        .await
        .expect("renews the certificate");
    api.log()
}

/// The controller's initial lists and watches, cluster-wide or in one namespace.
async fn controller_requests(namespace: Option<&str>) -> Vec<Seen> {
    let (client, api) = FakeApi::start(NS);
    // Discovery says the Gateway API is installed, so HTTPRoutes are watched too.
    api.put(
        "/apis/gateway.networking.k8s.io/v1",
        json!({
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "gateway.networking.k8s.io/v1",
            "resources": [{"name": "httproutes", "singularName": "httproute",
                           "namespaced": true, "kind": "HTTPRoute",
                           "verbs": ["get", "list", "watch"]}],
        }),
    );
    let task = tokio::spawn(controller::run(
        context(client),
        namespace.map(String::from),
        std::future::pending(),
    ));
    // TaskStreams, six kinds of children, Secrets and labelled pods: nine watches.
    wait_for(&api, "nine watches", |log| {
        log.iter()
            .filter(|s| s.query.contains("watch=true"))
            .count()
            >= 9
    })
    .await;
    task.abort();
    api.log()
}

/// Leader election: create the Lease, take it, start the controller, release it on shutdown.
async fn leader_requests() -> Vec<Seen> {
    let (client, api) = FakeApi::start(NS);
    let (trigger, shutdown) = Shutdown::new();
    let lease = LeaseConfig {
        name: "taskstream-operator".into(),
        namespace: Some(LEASE_NS.into()),
        identity: Some("operator-0".into()),
        duration_seconds: 15,
        grace_seconds: 5,
    };
    let task = tokio::spawn(leader::run(context(client), None, lease, shutdown));
    wait_for(&api, "the controller started by the leader", |log| {
        log.iter().any(|s| s.query.contains("watch=true"))
    })
    .await;
    trigger.trigger();
    match tokio::time::timeout(WITHIN, task).await {
        Ok(result) => result.expect("leader task").expect("leader run"),
        Err(_) => panic!("leader election did not stop on shutdown"),
    }
    api.log()
}

/// `GET /apis/<group>/<version>`: API discovery, which every authenticated user may read
/// (the `system:discovery` ClusterRole), so it needs no row.
fn is_discovery(seen: &Seen) -> bool {
    let segments: Vec<&str> = seen.path.split('/').filter(|s| !s.is_empty()).collect();
    seen.method == Method::GET && segments.len() == 3 && segments[0] == "apis"
}

fn diff(what: &str, used: &BTreeSet<Permission>, table: &BTreeSet<Permission>) -> String {
    format!(
        "{what}: requests without a row in operator/rbac.yaml: {:?}; rows no request needs: {:?}",
        used.difference(table).collect::<Vec<_>>(),
        table.difference(used).collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn the_table_is_exactly_what_the_code_uses() {
    let rules = rules().expect("operator/rbac.yaml parses");
    let mut requests = reconcile_requests().await;
    requests.extend(controller_requests(None).await);
    requests.extend(leader_requests().await);
    requests.extend(attach_requests().await);

    let (mut watched, mut lease) = (BTreeSet::new(), BTreeSet::new());
    let (mut webhook, mut cluster) = (BTreeSet::new(), BTreeSet::new());
    for seen in requests.iter().filter(|s| !is_discovery(s)) {
        let (permission, namespace) = permission_of(&seen.method, &seen.path, &seen.query)
            .unwrap_or_else(|| panic!("not a resource request: {seen:?}"));
        // A server-side apply that creates the object is authorized as patch and as create.
        let create = (seen.created && permission.2 != "create").then(|| {
            (
                permission.0.clone(),
                permission.1.clone(),
                "create".to_string(),
            )
        });
        let into = if permission.1 == "leases" {
            assert_eq!(namespace.as_deref(), Some(LEASE_NS), "{seen:?}");
            &mut lease
        } else if permission.1 == "secrets" && namespace.as_deref() == Some(LEASE_NS) {
            &mut webhook
        } else if permission.1 == "mutatingwebhookconfigurations" {
            assert_eq!(namespace, None, "{seen:?}");
            &mut cluster
        } else {
            assert!(
                namespace.is_none() || namespace.as_deref() == Some(NS),
                "{seen:?}"
            );
            &mut watched
        };
        into.insert(permission);
        into.extend(create);
    }
    let table = permissions(&rules, Scope::Watched);
    assert_eq!(watched, table, "{}", diff("watched", &watched, &table));
    let table = permissions(&rules, Scope::Lease);
    assert_eq!(lease, table, "{}", diff("lease", &lease, &table));
    let table = permissions(&rules, Scope::Webhook);
    assert_eq!(webhook, table, "{}", diff("webhook", &webhook, &table));
    let table = permissions(&rules, Scope::Cluster);
    assert_eq!(cluster, table, "{}", diff("cluster", &cluster, &table));
}

#[tokio::test]
async fn a_namespaced_operator_stays_in_its_namespace() {
    // scope=namespace in the chart grants a Role in one namespace: nothing may be cluster-wide.
    for seen in controller_requests(Some(NS))
        .await
        .into_iter()
        .filter(|s| !is_discovery(s))
    {
        let (_, namespace) =
            permission_of(&seen.method, &seen.path, &seen.query).expect("resource request");
        assert_eq!(namespace.as_deref(), Some(NS), "{seen:?}");
    }
}

#[test]
fn requests_map_to_rbac_verbs() {
    let p = |m: Method, path: &str, q: &str| {
        permission_of(&m, path, q).map(|((g, r, v), ns)| (g, r, v, ns))
    };
    let s = |x: &str| x.to_string();
    assert_eq!(
        p(
            Method::GET,
            "/apis/apps/v1/deployments",
            "labelSelector=x&limit=500"
        ),
        Some((s("apps"), s("deployments"), s("list"), None))
    );
    assert_eq!(
        p(
            Method::GET,
            "/api/v1/namespaces/apps/secrets",
            "watch=true&resourceVersion=1"
        ),
        Some((s(""), s("secrets"), s("watch"), Some(s("apps"))))
    );
    assert_eq!(
        p(
            Method::PATCH,
            "/apis/taskstream.dev/v1alpha1/namespaces/apps/taskstreams/shop/status",
            ""
        ),
        Some((
            s("taskstream.dev"),
            s("taskstreams/status"),
            s("patch"),
            Some(s("apps"))
        ))
    );
    assert_eq!(
        p(
            Method::DELETE,
            "/apis/policy/v1/namespaces/apps/poddisruptionbudgets/shop",
            ""
        ),
        Some((
            s("policy"),
            s("poddisruptionbudgets"),
            s("delete"),
            Some(s("apps"))
        ))
    );
    assert_eq!(p(Method::GET, "/healthz", ""), None);
}

#[test]
fn the_table_parses_and_names_each_resource_once_per_scope() {
    let rules = rules().expect("operator/rbac.yaml parses");
    let mut seen = BTreeSet::new();
    for r in &rules {
        assert!(
            seen.insert((r.scope, r.group.clone(), r.resource.clone())),
            "{r:?} repeated"
        );
        assert!(!r.verbs.is_empty(), "{r:?} has no verbs");
        assert!(
            !r.verbs.iter().any(|v| v == "*") && r.resource != "*",
            "{r:?}: no wildcards"
        );
    }
}
