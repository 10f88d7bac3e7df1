//! The reconcile of an attached TaskStream (`spec.attach`): the team owns the workload, so the
//! operator applies only the Service and the WebSocket-path route, counts the labelled pods,
//! and with `rollout: Auto` restarts the workloads whose pods run an outdated sidecar.
//!
//! ```text
//! secret_hash (keys exist) ─> ssa Service ─> ssa/delete Ingress, HTTPRoute
//!   ─> delete what owned mode left (Deployment, PDB, HPA)
//!   ─> list pods taskstream.dev/inject=<name> ─> census(current config hash)
//!   ─> rollout: Auto ─> restart stale owners (SSA restartedAt, once per hash) + Event
//!   ─> status (status.attach, PodsUpToDate)
//! ```

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info};

use super::children::{apply_entry, delete_stale, secret_hash, ssa};
use super::{Context, RESYNC, patch_status};
use crate::crd::{AttachRollout, INJECT_LABEL, TaskStream};
use crate::error::{Error, Result};
use crate::resources::attach;
use crate::status;
use crate::status::attach::{Census, Owner, census};

/// Field manager of the restarts `rollout: Auto` makes: only the two annotations below.
pub const ROLLOUT_MANAGER: &str = "taskstream-operator-rollout";
/// Pod-template annotation `kubectl rollout restart` sets; a new value rolls the pods.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// Workload annotation: the config hash the last restart was for (so one change, one restart).
pub const RESTARTED_FOR: &str = "taskstream.dev/restarted-for";

/// Applies an attached TaskStream's children and status.
pub async fn apply(ts: &TaskStream, ctx: &Context, namespace: &str) -> Result<Action> {
    let client = &ctx.client;
    // The values are not used (the webhook cannot see them either): the keys must exist, or
    // every injected sidecar would fail to start.
    secret_hash(ts, client, namespace).await?;
    let children = attach::build(ts)?;
    let injection = attach::injection(ts, &ctx.params)?;
    let name = ts.name_any();

    ssa(client, namespace, &name, "Service", &children.service).await?;
    let route = apply_entry(
        ts,
        &ctx.children(),
        client,
        namespace,
        children.ingress.as_ref(),
        children.route.as_ref(),
    )
    .await?;
    // A TaskStream switched from `app` to `attach` leaves these behind; only its own are deleted.
    delete_stale::<Deployment>(ts, client, namespace, "Deployment").await?;
    delete_stale::<PodDisruptionBudget>(ts, client, namespace, "PodDisruptionBudget").await?;
    delete_stale::<HorizontalPodAutoscaler>(ts, client, namespace, "HorizontalPodAutoscaler")
        .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{INJECT_LABEL}={name}");
    let pods = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Kube {
            action: "list",
            kind: "Pod",
            namespace: namespace.into(),
            name: selector.clone(),
            source: Box::new(source),
        })?;
    let census = census(&pods.items, &injection.config_hash);
    if ts.spec.attach_rollout() == AttachRollout::Auto {
        restart_stale(ts, ctx, namespace, &census, &injection.config_hash).await?;
    }
    let status = status::attach::compute(ts, Some(&census), None, route.as_ref(), Timestamp::now());
    patch_status(ctx, ts, namespace, &status).await?;
    debug!(taskstream = %name, pods = census.pods, stale = census.stale, "reconciled (attach)");
    Ok(Action::requeue(RESYNC))
}

/// Restarts every Deployment and StatefulSet owning stale pods, at most once per config hash.
pub(crate) async fn restart_stale(
    ts: &TaskStream,
    ctx: &Context,
    namespace: &str,
    census: &Census,
    hash: &str,
) -> Result<()> {
    for owner in census.stale_owners.iter().filter(|o| o.restartable()) {
        let restarted = match owner.kind.as_str() {
            "Deployment" => restart::<Deployment>(ctx, namespace, owner, hash).await?,
            _ => restart::<StatefulSet>(ctx, namespace, owner, hash).await?,
        };
        if restarted {
            let event = Event {
                type_: EventType::Normal,
                reason: "RolloutRestart".into(),
                note: Some(format!(
                    "restarted {owner}: its pods run an outdated taskstream sidecar or none \
                     (rollout: Auto)"
                )),
                action: "Restart".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &ts.object_ref(&())).await {
                tracing::warn!(error = %e, taskstream = %ts.name_any(), "publishing event");
            }
        }
    }
    Ok(())
}

/// Restarts `owner` like `kubectl rollout restart` unless it was already restarted for `hash`;
/// `true` when it was restarted now. A workload gone meanwhile is skipped.
async fn restart<K>(ctx: &Context, namespace: &str, owner: &Owner, hash: &str) -> Result<bool>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let kind: &'static str = if owner.kind == "Deployment" {
        "Deployment"
    } else {
        "StatefulSet"
    };
    let kube_err = |action, source| Error::Kube {
        action,
        kind,
        namespace: namespace.into(),
        name: owner.name.clone(),
        source: Box::new(source),
    };
    let Some(current) = api
        .get_opt(&owner.name)
        .await
        .map_err(|e| kube_err("get", e))?
    else {
        return Ok(false);
    };
    if current.annotations().get(RESTARTED_FOR).map(String::as_str) == Some(hash) {
        return Ok(false);
    }
    // Only these two annotations, under their own manager: nothing else of the team's
    // workload is touched or claimed.
    let patch = json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": owner.name, "namespace": namespace, "annotations": {RESTARTED_FOR: hash}},
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: Timestamp::now().to_string()}}}},
    });
    api.patch(
        &owner.name,
        &PatchParams::apply(ROLLOUT_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| kube_err("restart", e))?;
    info!(workload = %owner, namespace, hash, "restarted for the new sidecar configuration");
    Ok(true)
}

#[cfg(test)]
mod tests;
