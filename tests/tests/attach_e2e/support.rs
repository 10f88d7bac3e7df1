//! Helpers of the attach e2e: waits (watches with a timeout), the in-process operator, and the
//! manifests the test applies.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Parser;
use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use taskstream_operator::crd::TaskStream;
use taskstream_operator::resources::{CONFIG_HASH_ANNOTATION, SIDECAR_CONTAINER};
use taskstream_operator::{Cli, Shutdown};
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(60);
const USER: &str = "taskstream-e2e";

/// Waits for `cond` on `name`, bounded by [`WAIT`].
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    cond: impl kube::runtime::wait::Condition<K>,
) -> Result<Option<K>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::time::timeout(WAIT, await_condition(api.clone(), name, cond))
        .await
        .map_err(|_| anyhow!("timed out after {WAIT:?} waiting for {what}"))?
        .with_context(|| format!("watching for {what}"))
}

/// The first pod matching `labels` for which `pred` holds, watched, bounded by [`WAIT`].
pub async fn wait_pod(
    api: &Api<Pod>,
    labels: &str,
    what: &str,
    pred: impl Fn(&Pod) -> bool,
) -> Result<Pod> {
    let stream = watcher(api.clone(), watcher::Config::default().labels(labels)).applied_objects();
    let found = async {
        let mut stream = std::pin::pin!(stream);
        while let Some(pod) = stream.try_next().await? {
            if pred(&pod) {
                return Ok(pod);
            }
        }
        bail!("pod watch ended")
    };
    tokio::time::timeout(WAIT, found)
        .await
        .map_err(|_| anyhow!("timed out after {WAIT:?} waiting for {what}"))?
}

pub fn sidecar_of(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == SIDECAR_CONTAINER)
}

pub fn hash_of(pod: &Pod) -> Option<String> {
    pod.annotations().get(CONFIG_HASH_ANNOTATION).cloned()
}

/// The operator in-process: controller for `ns` and the webhook on 127.0.0.1:`port`.
pub struct Operator {
    stop: taskstream_operator::shutdown::Trigger,
    task: JoinHandle<taskstream_operator::Result<()>>,
}

impl Operator {
    pub fn start(ns: &str, port: u16, configuration: &str, secret: &str) -> Result<Self> {
        let cli = Cli::try_parse_from([
            "taskstream-operator",
            "--namespace",
            ns,
            "--leader-election=false",
            "--admin-listen",
            "127.0.0.1:0",
            "--sidecar-image",
            "ghcr.io/taskstream/taskstream-sidecar:e2e",
            "--webhook-listen",
            &format!("127.0.0.1:{port}"),
            "--webhook-extra-sans",
            "127.0.0.1",
            "--webhook-configuration",
            configuration,
            "--webhook-cert-secret",
            secret,
        ])
        .context("operator flags")?;
        cli.run.validate().map_err(|e| anyhow!(e))?;
        let (stop, shutdown) = Shutdown::new();
        let task = tokio::spawn(taskstream_operator::run(cli.run, shutdown));
        Ok(Self { stop, task })
    }

    pub async fn stop(self) -> Result<()> {
        self.stop.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("operator stops")?
            .context("operator task")?
            .context("operator run")
    }
}

pub fn webhook_configuration(name: &str, ns: &str, port: u16) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "inject.taskstream.dev",
            "objectSelector": {"matchExpressions": [{"key": "taskstream.dev/inject", "operator": "Exists"}]},
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [ns]}]},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate-pods")},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded",
            "failurePolicy": "Fail",
        }],
    })
}

pub fn taskstream(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "taskstream.dev/v1alpha1", "kind": "TaskStream",
           "metadata": {"name": name}, "spec": spec})
}

pub fn attach_spec(redis: &str, rollout: &str) -> Value {
    json!({"attach": {"appPort": 8000, "rollout": rollout},
           "redis": {"url": redis}, "auth": {"mode": "none"}})
}

pub fn deployment(name: &str, inject: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "taskstream.dev/inject": inject}},
                "spec": {"containers": [{"name": "web", "image": "registry.example/web:1",
                                         "ports": [{"containerPort": 8000}]}]},
            },
        },
    })
}

pub fn bare_pod(name: &str, inject: &str, container: &str, port: i32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"taskstream.dev/inject": inject}},
        "spec": {"containers": [{"name": container, "image": "registry.example/web:1",
                                 "ports": [{"containerPort": port}]}]},
    })
}

pub async fn apply<K>(api: &Api<K>, name: &str, obj: Value) -> Result<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply(USER).force(), &Patch::Apply(obj))
        .await
        .with_context(|| format!("applying {name}"))
}

pub async fn step<T>(name: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    println!("attach e2e: {name}");
    let started = std::time::Instant::now();
    let result = fut.await.with_context(|| format!("step '{name}'"));
    println!("attach e2e:   done in {:.1?}", started.elapsed());
    result
}

pub fn condition(ts: &TaskStream, type_: &str) -> Option<(String, String)> {
    let c = ts
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}
