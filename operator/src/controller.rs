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
use std::sync::{Arc, Mutex, RwLock};
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
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::crd::{INJECT_LABEL, TaskStream};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::resources::{self, FIELD_MANAGER, MANAGED_BY, Params};
use crate::status::{self, Problem, Rollout};

pub(crate) mod attach;
pub mod cache;
mod children;
mod gateway_watch;
pub use attach::{RESTARTED_AT, RESTARTED_FOR, ROLLOUT_MANAGER};
use cache::{Cached, Children, Version, Writers, lookup};
pub use children::REPLICAS_HANDOFF_MANAGER;
use children::{
    apply_entry, apply_unless_unchanged, delete_stale_cached, hand_off_replicas, secret_hash,
};

/// First retry delay after a failure; doubles per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Resync of a healthy TaskStream; changes arrive by watch long before this.
const RESYNC: Duration = Duration::from_secs(300);
/// Reconciles running at once. Each is a few sequential API calls; bounded so 1,000 new
/// TaskStreams share a few connections to the API server instead of opening one TLS connection
/// each (CPU on both sides, and the operator's memory).
const CONCURRENCY: u16 = 16;
/// Triggers of one TaskStream within this window merge into one reconcile: its creation, its
/// children's creation and the Deployment controller's first status updates come together.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest `note` of an events.k8s.io/v1 Event the API server takes.
const EVENT_NOTE_MAX_BYTES: usize = 1024;

/// State shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub params: Params,
    /// The children as the watches of the running controller see them, and what it applied
    /// last; new with every [`run`] (a leader that lost the Lease starts from scratch).
    children: RwLock<Arc<Children>>,
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
        let (children, _) = Children::new();
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            params,
            children: RwLock::new(Arc::new(children)),
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

    /// The children cache of the running controller.
    pub fn children(&self) -> Arc<Children> {
        self.children
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts an empty children cache (not ready until its watches list) and returns the
    /// writers that fill it.
    pub fn renew_children(&self) -> Writers {
        let (children, writers) = Children::new();
        *self.children.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(children);
        writers
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
    let children_cache = ctx.children();
    let cached = lookup(&children_cache.deployments, namespace, &name);
    let cached = match cached {
        Cached::Present(d) => Some(d),
        _ => None,
    };
    let applied = apply_unless_unchanged(
        &children_cache,
        client,
        namespace,
        &name,
        "Deployment",
        &children.deployment,
        cached.as_ref().map(|d| &d.metadata),
        Version::Generation,
    )
    .await?;
    // Skipped only against a cached Deployment: that one is in place (the rollout reads its
    // status).
    let deployment = match applied {
        Some(applied) => applied,
        None => cached.map(Arc::unwrap_or_clone).unwrap_or_default(),
    };
    let cached = cached_meta(lookup(&children_cache.services, namespace, &name));
    apply_unless_unchanged(
        &children_cache,
        client,
        namespace,
        &name,
        "Service",
        &children.service,
        cached.as_ref(),
        Version::ResourceVersion,
    )
    .await?;
    let cached_pdb = lookup(&children_cache.pdbs, namespace, &name);
    match &children.pdb {
        Some(pdb) => {
            let cached = cached_meta(cached_pdb);
            apply_unless_unchanged(
                &children_cache,
                client,
                namespace,
                &name,
                "PodDisruptionBudget",
                pdb,
                cached.as_ref(),
                Version::Generation,
            )
            .await?;
        }
        None => {
            delete_stale_cached::<PodDisruptionBudget, _>(
                ts,
                client,
                namespace,
                "PodDisruptionBudget",
                cached_pdb,
            )
            .await?
        }
    }
    let cached_hpa = lookup(&children_cache.hpas, namespace, &name);
    match &children.hpa {
        Some(hpa) => {
            let cached = cached_meta(cached_hpa);
            apply_unless_unchanged(
                &children_cache,
                client,
                namespace,
                &name,
                "HorizontalPodAutoscaler",
                hpa,
                cached.as_ref(),
                Version::ResourceVersion,
            )
            .await?;
        }
        None => {
            delete_stale_cached::<HorizontalPodAutoscaler, _>(
                ts,
                client,
                namespace,
                "HorizontalPodAutoscaler",
                cached_hpa,
            )
            .await?
        }
    }
    let route = apply_entry(
        ts,
        &children_cache,
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

/// Writes the status (unless it is already the TaskStream's) and, once the API server took it,
/// the condition metrics alerts read.
async fn patch_status(
    ctx: &Context,
    ts: &TaskStream,
    namespace: &str,
    status: &crate::crd::TaskStreamStatus,
) -> Result<()> {
    let name = ts.name_any();
    // The status the watch delivered already says this: an apply would change nothing (the
    // lastTransitionTimes are kept), so it is not sent. The gauges are set all the same, for a
    // new leader that has written nothing yet.
    if ts.status.as_ref() == Some(status) {
        ctx.metrics
            .status_written(namespace, &name, &status.conditions);
        return Ok(());
    }
    let api: Api<TaskStream> = Api::namespaced(ctx.client.clone(), namespace);
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

/// The cached child's metadata, if the cache has it.
fn cached_meta<K>(cached: Cached<PartialObjectMeta<K>>) -> Option<kube::api::ObjectMeta> {
    match cached {
        Cached::Present(obj) => Some(obj.metadata.clone()),
        _ => None,
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
    // The TaskStreams, cached without their managedFields (never read; a third of each object).
    let (store, writer) = reflector::store();
    let taskstreams = watcher(api::<TaskStream>(&client, ns), watcher::Config::default())
        .modify(|ts| ts.metadata.managed_fields = None)
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(taskstreams, store.clone()).with_config(
        controller::Config::default()
            .concurrency(CONCURRENCY)
            .debounce(DEBOUNCE),
    );
    // Secrets as metadata only: a change (or creation) of a referenced Secret re-triggers its
    // TaskStreams, and no secret data ever streams into the operator.
    let secrets = api::<PartialObjectMeta<Secret>>(&client, ns);
    info!(namespace = ns.unwrap_or("<all>"), "starting controller");
    let w = ctx.renew_children();
    let (found_tx, found_rx) = oneshot::channel();
    let routes = gateway_watch::httproutes(
        api::<PartialObjectMeta<HttpRoute>>(&client, ns),
        client.clone(),
        owned.clone(),
        gateway_watch::RECHECK,
        found_tx,
        ctx.children().routes_unserved.clone(),
        w.routes,
    );
    // Each owned kind: one watch that both fills the cache and triggers the owner.
    // (`Api<PartialObjectMeta<_>>`: the API server sends metadata only.)
    fn cached<K>(
        api: Api<PartialObjectMeta<K>>,
        config: &watcher::Config,
        writer: reflector::store::Writer<PartialObjectMeta<K>>,
    ) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
    where
        K: Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        watcher(api, config.clone())
            .default_backoff()
            .modify(cache::slim_meta)
            .reflect(writer)
            .touched_objects()
    }
    let deployments = watcher(api::<Deployment>(&client, ns), owned.clone())
        .default_backoff()
        .modify(cache::slim_deployment)
        .reflect(w.deployments)
        .touched_objects();
    let controller = controller
        .owns_stream(deployments)
        .owns_stream(cached(
            api::<PartialObjectMeta<Service>>(&client, ns),
            &owned,
            w.services,
        ))
        .owns_stream(cached(
            api::<PartialObjectMeta<PodDisruptionBudget>>(&client, ns),
            &owned,
            w.pdbs,
        ))
        .owns_stream(cached(
            api::<PartialObjectMeta<HorizontalPodAutoscaler>>(&client, ns),
            &owned,
            w.hpas,
        ))
        .owns_stream(cached(
            api::<PartialObjectMeta<Ingress>>(&client, ns),
            &owned,
            w.ingresses,
        ))
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
                ctx.children().forget(namespace, &obj.name);
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
impl Context {
    /// This context's state (backoff, children cache, metrics) with `other`'s client: the next
    /// reconcile of a test against a fresh mocked API server.
    pub(crate) fn with_client_of(&self, other: &Context) -> Arc<Context> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        Arc::new(Context {
            client: other.client.clone(),
            recorder: other.recorder.clone(),
            metrics: self.metrics.clone(),
            params: self.params.clone(),
            children: RwLock::new(self.children()),
            failures: Mutex::new(failures.clone()),
        })
    }
}

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod failure_tests;
#[cfg(test)]
mod production_tests;
#[cfg(test)]
mod tests;
