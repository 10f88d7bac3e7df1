//! The controller: `reconcile` turns one TaskStream into its children and status;
//! `error_policy` retries failures with a per-object exponential backoff.
//!
//! ```text
//! TaskStream ─┐                       ┌─> read Secrets (hash) ─> apply Deployment, Service (SSA)
//! owned kids ─┼─> Controller ─> reconcile ─> apply or delete PDB, HPA, Ingress, HTTPRoute
//! Secrets ────┤  (metadata only,      ├─> status (SSA on /status) ; Event on a problem
//!             │   mapped to referrers)└─> spec.attach: attach.rs (Service, route, pod census)
//! labelled ───┘  (taskstream.dev/inject=<name> -> that TaskStream)
//! pods
//! ```
//!
//! HTTPRoutes are watched once the API server serves them, at start-up or whenever the Gateway
//! API CRDs get installed later (`gateway_watch`): a watch of a missing resource fails forever.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::oneshot;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::crd::{INJECT_LABEL, TaskStream};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::resources::{self, FIELD_MANAGER, MANAGED_BY, Params};
use crate::status::{self, Problem, Rollout};

pub(crate) mod attach;
mod children;
mod gateway_watch;
pub use attach::{RESTARTED_AT, RESTARTED_FOR, ROLLOUT_MANAGER};
pub use children::REPLICAS_HANDOFF_MANAGER;
use children::{apply_entry, delete_stale, hand_off_replicas, secret_hash, ssa};

/// First retry delay after a failure; doubles per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Resync of a healthy TaskStream; changes arrive by watch long before this.
const RESYNC: Duration = Duration::from_secs(300);
/// Longest `note` of an events.k8s.io/v1 Event the API server takes.
const EVENT_NOTE_MAX_BYTES: usize = 1024;

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

/// Reconciles one TaskStream. Every failure that concerns it (a missing Secret, an invalid
/// spec, a child the API server refuses: quota, admission, invalid, server error) is also
/// written to the status (`Degraded=True`, `observedGeneration`) and published as a Warning
/// Event before the error is returned for a retry with backoff; the next successful reconcile
/// clears it.
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
                    message: err.degraded_message(),
                };
                let status = if ts.spec.attach.is_some() {
                    status::attach::compute(&ts, None, Some(&problem), None, Timestamp::now())
                } else {
                    status::compute(&ts, None, Some(&problem), None, Timestamp::now())
                };
                // The original error is what gets retried; a failure to report it is logged.
                if let Err(e) = patch_status(&ctx, &ts, &namespace, &status).await {
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
    if ts.spec.attach.is_some() {
        return attach::apply(ts, ctx, namespace).await;
    }
    let client = &ctx.client;
    let hash = secret_hash(ts, client, namespace).await?;
    let mut children = resources::build(ts, &ctx.params, hash.as_deref())?;
    let name = ts.name_any();

    if ts.spec.autoscaling.is_some()
        && let Some(spec) = children.deployment.spec.as_mut()
    {
        spec.replicas = hand_off_replicas(ts, client, namespace).await?;
    }
    let deployment = ssa(client, namespace, &name, "Deployment", &children.deployment).await?;
    ssa(client, namespace, &name, "Service", &children.service).await?;
    match &children.pdb {
        Some(pdb) => drop(ssa(client, namespace, &name, "PodDisruptionBudget", pdb).await?),
        None => {
            delete_stale::<PodDisruptionBudget>(ts, client, namespace, "PodDisruptionBudget")
                .await?
        }
    }
    match &children.hpa {
        Some(hpa) => drop(ssa(client, namespace, &name, "HorizontalPodAutoscaler", hpa).await?),
        None => {
            delete_stale::<HorizontalPodAutoscaler>(
                ts,
                client,
                namespace,
                "HorizontalPodAutoscaler",
            )
            .await?
        }
    }
    let route = apply_entry(
        ts,
        client,
        namespace,
        children.ingress.as_ref(),
        children.route.as_ref(),
    )
    .await?;

    let rollout = Rollout::of(&deployment, ts.spec.min_replicas());
    let status = status::compute(ts, Some(&rollout), None, route.as_ref(), Timestamp::now());
    patch_status(ctx, ts, namespace, &status).await?;
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

/// Writes the status and, once the API server took it, the condition metrics alerts read.
async fn patch_status(
    ctx: &Context,
    ts: &TaskStream,
    namespace: &str,
    status: &crate::crd::TaskStreamStatus,
) -> Result<()> {
    let api: Api<TaskStream> = Api::namespaced(ctx.client.clone(), namespace);
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
        name: name.clone(),
        source: Box::new(source),
    })?;
    ctx.metrics
        .status_written(namespace, &name, &status.conditions);
    Ok(())
}

/// Publishes `problem` as a Warning Event, once per reason and message: a retry that meets
/// the problem the status already shows publishes nothing (kube's recorder would only bump a
/// series, one API call per retry of a TaskStream that may stay broken for hours).
async fn publish_warning(ctx: &Context, ts: &TaskStream, problem: &Problem) {
    if status::shows(ts, problem) {
        return;
    }
    let event = Event {
        type_: EventType::Warning,
        reason: problem.reason.clone(),
        // The API server refuses an Event whose note passes 1 KiB: the status has it whole.
        note: Some(crate::error::truncate(
            problem.message.clone(),
            EVENT_NOTE_MAX_BYTES,
        )),
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
    let (found_tx, found_rx) = oneshot::channel();
    let routes = gateway_watch::httproutes(
        api::<HttpRoute>(&client, ns),
        client.clone(),
        owned.clone(),
        gateway_watch::RECHECK,
        found_tx,
    );
    let controller = controller
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, ns), owned.clone())
        .owns(api::<HorizontalPodAutoscaler>(&client, ns), owned.clone())
        .owns(api::<Ingress>(&client, ns), owned)
        .owns_stream(routes)
        // TaskStreams left Degraded (GatewayAPIMissing) retry as soon as the API appears.
        .reconcile_all_on(gateway_watch::when_found(found_rx));
    // Attach mode: only pods carrying the inject label (any value) stream in; each maps to
    // the TaskStream its label names.
    let pods = api::<Pod>(&client, ns);
    let labelled = watcher::Config::default().labels(INJECT_LABEL);
    controller
        .watches(secrets, watcher::Config::default(), move |secret| {
            referrers(&store, &secret)
        })
        .watches(pods, labelled, |pod| {
            let name = pod.labels().get(INJECT_LABEL)?.clone();
            let ns = pod.namespace()?;
            Some(ObjectRef::<TaskStream>::new(&name).within(&ns))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| {
            // A deleted TaskStream's next trigger (its children's deletion, at the latest its
            // requeue) finds it gone: its condition series go with it.
            if let Err(kube::runtime::controller::Error::ObjectNotFound(obj)) = &res {
                let namespace = obj.namespace.as_deref().unwrap_or_default();
                ctx.metrics.taskstream_gone(namespace, &obj.name);
            }
            async move {
                match res {
                    Ok((obj, _)) => debug!(taskstream = %obj, "reconcile done"),
                    Err(e) => debug!(error = %e, "controller event"),
                }
            }
        })
        .await;
    info!("controller stopped");
}

#[cfg(test)]
mod failure_tests;
#[cfg(test)]
mod production_tests;
#[cfg(test)]
mod tests;
