//! The reconcile with the children cache listed: what the API server is still asked.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::PartialObjectMeta;
use serde_json::{Value, json};

use super::cache::Writers;
use super::*;
use crate::fixtures::apiserver::{
    CHILD_RESOURCE_VERSION, CHILD_UID, Scenario, settled_status, timeout_after_1s,
};
use crate::fixtures::{NAME, NS, UID};

/// Every store listed, empty: what the watches deliver at start-up in an empty namespace.
fn listed(w: &mut Writers) {
    w.deployments
        .apply_watcher_event(&watcher::Event::<Deployment>::InitDone);
    w.services.apply_watcher_event(&watcher::Event::InitDone);
    w.pdbs.apply_watcher_event(&watcher::Event::InitDone);
    w.hpas.apply_watcher_event(&watcher::Event::InitDone);
    w.ingresses.apply_watcher_event(&watcher::Event::InitDone);
    w.routes.apply_watcher_event(&watcher::Event::InitDone);
}

/// An applied body as the API server stored it (see the mocked apply).
fn stored(body: &Value) -> Value {
    let mut stored = body.clone();
    stored["metadata"]["uid"] = json!(CHILD_UID);
    stored["metadata"]["resourceVersion"] = json!(CHILD_RESOURCE_VERSION);
    stored["metadata"]["generation"] = json!(1);
    stored
}

fn meta<K>(value: &Value) -> PartialObjectMeta<K> {
    PartialObjectMeta {
        types: None,
        metadata: serde_json::from_value(value["metadata"].clone()).expect("metadata"),
        _phantom: std::marker::PhantomData,
    }
}

/// The watches deliver what the first reconcile applied.
fn deliver(w: &mut Writers, deployment: &Value, service: &Value) {
    let mut deployment = stored(deployment);
    deployment["status"] = settled_status(1);
    let deployment: Deployment = serde_json::from_value(deployment).expect("deployment");
    w.deployments
        .apply_watcher_event(&watcher::Event::Apply(deployment));
    w.services
        .apply_watcher_event(&watcher::Event::Apply(meta(&stored(service))));
}

#[tokio::test]
async fn a_listed_cache_spares_the_reads_and_an_unchanged_world_sends_nothing() {
    let (ctx, server) = Context::test();
    let mut w = ctx.renew_children();
    listed(&mut w);
    let mut ts = TaskStream::test();
    // No GET of a PDB, HPA, Ingress or HTTPRoute: the cache says there is none.
    let mocksrv = server.run(Scenario::ApplyMinimalCached);
    reconcile(Arc::new(ts.clone()), ctx.clone())
        .await
        .expect("first reconcile");
    let seen = timeout_after_1s(mocksrv).await;

    // Its own triggers come back: the status (TaskStream watch), the Deployment and Service
    // (their watches). The mocked API server is gone: any request would fail the reconcile.
    deliver(&mut w, &seen[0], &seen[1]);
    ts.status = Some(serde_json::from_value(seen[2]["status"].clone()).expect("status"));
    let action = reconcile(Arc::new(ts.clone()), ctx.clone())
        .await
        .expect("steady state: no request");
    assert_eq!(action, Action::requeue(RESYNC));

    // Someone edits the Deployment's spec (its generation moves): applied again, alone.
    let (fresh, server) = Context::test();
    let ctx = ctx.with_client_of(&fresh);
    let mut edited = stored(&seen[0]);
    edited["metadata"]["generation"] = json!(2);
    edited["status"] = settled_status(1);
    w.deployments.apply_watcher_event(&watcher::Event::Apply(
        serde_json::from_value(edited).expect("deployment"),
    ));
    let mocksrv = server.run(Scenario::ApplyDeploymentOnly);
    reconcile(Arc::new(ts), ctx)
        .await
        .expect("re-apply the edited Deployment");
    let again = timeout_after_1s(mocksrv).await;
    assert_eq!(again[0], seen[0], "the same desired Deployment");
}

#[tokio::test]
async fn a_cached_stale_child_is_deleted_without_a_read() {
    let (ctx, server) = Context::test();
    let mut w = ctx.renew_children();
    listed(&mut w);
    let pdb = json!({"metadata": {
        "name": NAME, "namespace": NS, "uid": "pdb-uid", "resourceVersion": "150",
        "ownerReferences": [{
            "apiVersion": "taskstream.dev/v1alpha1", "kind": "TaskStream",
            "name": NAME, "uid": UID, "controller": true,
        }],
    }});
    w.pdbs
        .apply_watcher_event(&watcher::Event::Apply(meta(&pdb)));
    let mocksrv = server.run(Scenario::DeleteCachedPdb);
    reconcile(Arc::new(TaskStream::test()), ctx)
        .await
        .expect("reconcile");
    timeout_after_1s(mocksrv).await;
}

#[tokio::test]
async fn a_cached_child_someone_else_owns_is_left_alone() {
    let (ctx, server) = Context::test();
    let mut w = ctx.renew_children();
    listed(&mut w);
    let foreign = json!({"metadata": {
        "name": NAME, "namespace": NS, "uid": "pdb-uid", "resourceVersion": "150",
    }});
    w.pdbs
        .apply_watcher_event(&watcher::Event::Apply(meta(&foreign)));
    let mocksrv = server.run(Scenario::ApplyMinimalCached);
    reconcile(Arc::new(TaskStream::test()), ctx)
        .await
        .expect("reconcile");
    timeout_after_1s(mocksrv).await;
}
