//! The controller: `reconcile` turns one TaskStream into its children and status;
//! `error_policy` retries failures with a per-object exponential backoff.
//!
//! ```text
//! TaskStream ─┐                       ┌─> check Secrets ─> apply Deployment, Service (SSA)
//! owned kids ─┼─> Controller ─> reconcile ─> apply or delete PDB, Ingress
//! Secrets ────┘  (metadata only,      └─> status (SSA on /status) ; Event on a problem
//!                 mapped to referrers)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::crd::TaskStream;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::resources::{self, FIELD_MANAGER, MANAGED_BY, Params};
use crate::status::{self, Problem, Rollout};

/// First retry delay after a failure; doubles per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Resync of a healthy TaskStream; changes arrive by watch long before this.
const RESYNC: Duration = Duration::from_secs(300);

/// State shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub params: Params,
    /// Consecutive failures per TaskStream, for the backoff. Never held across an `.await`.
    failures: Mutex<HashMap<ObjectRef<TaskStream>, u32>>,
}

impl Context {
    /// A context for `client`, publishing Events as `taskstream-operator` (instance `POD_NAME`).
    pub fn new(client: Client, params: Params, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            params,
            failures: Mutex::default(),
        }
    }

    /// The delay before the next retry of `ts`: 5 s, 10 s, 20 s, ... up to 5 min.
    pub fn next_backoff(&self, ts: &TaskStream) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(ObjectRef::from_obj(ts)).or_insert(0);
        let delay = BACKOFF_BASE
            .saturating_mul(2u32.saturating_pow(*n))
            .min(BACKOFF_MAX);
        *n = n.saturating_add(1);
        delay
    }

    fn reset_backoff(&self, ts: &TaskStream) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&ObjectRef::from_obj(ts));
    }
}

/// Reconciles one TaskStream. User-fixable problems (a missing Secret, an invalid spec) are
/// also written to the status and published as a Warning Event before the error is returned.
pub async fn reconcile(ts: Arc<TaskStream>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = ts.namespace().ok_or(Error::MissingField {
        kind: "TaskStream",
        field: "metadata.namespace",
    })?;
    match apply(&ts, &ctx, &namespace).await {
        Ok(action) => {
            ctx.reset_backoff(&ts);
            Ok(action)
        }
        Err(err) => {
            if let Some(reason) = err.degraded_reason() {
                let problem = Problem {
                    reason: reason.into(),
                    message: err.to_string(),
                };
                let status = status::compute(&ts, None, Some(&problem), Timestamp::now());
                // The original error is what gets retried; a failure to report it is logged.
                if let Err(e) = patch_status(&ctx.client, &ts, &namespace, &status).await {
                    warn!(error = %e, "reporting degraded status");
                }
                publish_warning(&ctx, &ts, &problem).await;
            }
            Err(err)
        }
    }
}

/// Retries a failed reconcile with exponential backoff per object (not a fixed delay), so a
/// broken TaskStream does not hammer the API server and a healed one recovers fast.
pub fn error_policy(ts: Arc<TaskStream>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(err);
    let delay = ctx.next_backoff(&ts);
    warn!(taskstream = %ts.name_any(), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn apply(ts: &TaskStream, ctx: &Context, namespace: &str) -> Result<Action> {
    check_secrets(ts, &ctx.client, namespace).await?;
    let children = resources::build(ts, &ctx.params)?;
    let name = ts.name_any();
    let client = &ctx.client;

    let deployment = ssa(client, namespace, &name, "Deployment", &children.deployment).await?;
    ssa(client, namespace, &name, "Service", &children.service).await?;
    match &children.pdb {
        Some(pdb) => drop(ssa(client, namespace, &name, "PodDisruptionBudget", pdb).await?),
        None => {
            delete_stale::<PodDisruptionBudget>(ts, client, namespace, "PodDisruptionBudget")
                .await?
        }
    }
    match &children.ingress {
        Some(ing) => drop(ssa(client, namespace, &name, "Ingress", ing).await?),
        None => delete_stale::<Ingress>(ts, client, namespace, "Ingress").await?,
    }

    let rollout = Rollout::of(&deployment, ts.spec.replicas());
    let status = status::compute(ts, Some(&rollout), None, Timestamp::now());
    patch_status(client, ts, namespace, &status).await?;
    if let Some(message) = &rollout.stalled {
        let problem = Problem {
            reason: "ProgressDeadlineExceeded".into(),
            message: format!("deployment does not progress: {message}"),
        };
        publish_warning(ctx, ts, &problem).await;
    }
    debug!(taskstream = %name, ready = rollout.ready, "reconciled");
    Ok(Action::requeue(RESYNC))
}

/// Every referenced Secret key must exist before pods are rolled that would fail without it.
/// Only key names are looked at; no secret value is read into a log or an object.
async fn check_secrets(ts: &TaskStream, client: &Client, namespace: &str) -> Result<()> {
    let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in ts.spec.secret_refs() {
        wanted
            .entry(r.name.as_str())
            .or_default()
            .push(r.key.as_str());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for (secret, keys) in wanted {
        let found = api.get_opt(secret).await.map_err(|source| Error::Kube {
            action: "get",
            kind: "Secret",
            namespace: namespace.into(),
            name: secret.into(),
            source: Box::new(source),
        })?;
        let Some(found) = found else {
            return Err(Error::SecretNotFound {
                namespace: namespace.into(),
                name: ts.name_any(),
                secret: secret.into(),
            });
        };
        for key in keys {
            let in_data = found.data.as_ref().is_some_and(|d| d.contains_key(key));
            let in_string_data = found
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(key));
            if !in_data && !in_string_data {
                return Err(Error::SecretKeyNotFound {
                    namespace: namespace.into(),
                    name: ts.name_any(),
                    secret: secret.into(),
                    key: key.into(),
                });
            }
        }
    }
    Ok(())
}

/// Server-side apply with the one field manager, forcing ownership of the fields we set.
async fn ssa<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    kind: &'static str,
    obj: &K,
) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Kube {
        action: "apply",
        kind,
        namespace: namespace.into(),
        name: name.into(),
        source: Box::new(source),
    })
}

/// Deletes a child the spec no longer asks for, if this TaskStream owns it (a same-named object
/// someone else made is left alone).
async fn delete_stale<K>(
    ts: &TaskStream,
    client: &Client,
    namespace: &str,
    kind: &'static str,
) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = ts.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let kube_err = |action, source| Error::Kube {
        action,
        kind,
        namespace: namespace.into(),
        name: name.clone(),
        source: Box::new(source),
    };
    let Some(existing) = api.get_opt(&name).await.map_err(|e| kube_err("get", e))? else {
        return Ok(());
    };
    let uid = ts.uid();
    if !existing
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == uid.as_ref())
    {
        return Ok(());
    }
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => {
            info!(taskstream = %name, kind, "deleted child the spec no longer asks for");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_err("delete", e)),
    }
}

async fn patch_status(
    client: &Client,
    ts: &TaskStream,
    namespace: &str,
    status: &crate::crd::TaskStreamStatus,
) -> Result<()> {
    let api: Api<TaskStream> = Api::namespaced(client.clone(), namespace);
    let name = ts.name_any();
    let patch = serde_json::json!({
        "apiVersion": TaskStream::api_version(&()),
        "kind": TaskStream::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Kube {
        action: "apply status of",
        kind: "TaskStream",
        namespace: namespace.into(),
        name,
        source: Box::new(source),
    })?;
    Ok(())
}

async fn publish_warning(ctx: &Context, ts: &TaskStream, problem: &Problem) {
    let event = Event {
        type_: EventType::Warning,
        reason: problem.reason.clone(),
        note: Some(problem.message.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &ts.object_ref(&())).await {
        warn!(error = %e, taskstream = %ts.name_any(), "publishing event");
    }
}

/// TaskStreams in the Secret's namespace that reference it.
fn referrers(
    store: &Store<TaskStream>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<TaskStream>> {
    let (Some(name), Some(ns)) = (&secret.metadata.name, &secret.metadata.namespace) else {
        return Vec::new();
    };
    store
        .state()
        .iter()
        .filter(|ts| ts.metadata.namespace.as_ref() == Some(ns))
        .filter(|ts| ts.spec.secret_refs().iter().any(|r| &r.name == name))
        .map(|ts| ObjectRef::from_obj(ts.as_ref()))
        .collect()
}

/// Runs the controller until `shutdown` resolves, then lets in-flight reconciles finish.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = namespace.as_deref();
    // Children are watched by label, so the operator caches only its own objects.
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let controller = Controller::new(api::<TaskStream>(&client, ns), watcher::Config::default());
    let store = controller.store();
    // Secrets as metadata only: a change (or creation) of a referenced Secret re-triggers its
    // TaskStreams, and no secret data ever streams into the operator.
    let secrets = api::<PartialObjectMeta<Secret>>(&client, ns);
    info!(namespace = ns.unwrap_or("<all>"), "starting controller");
    controller
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, ns), owned.clone())
        .owns(api::<Ingress>(&client, ns), owned)
        .watches(secrets, watcher::Config::default(), move |secret| {
            referrers(&store, &secret)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(taskstream = %obj, "reconcile done"),
                Err(e) => debug!(error = %e, "controller event"),
            }
        })
        .await;
    info!("controller stopped");
}

#[cfg(test)]
mod tests;
