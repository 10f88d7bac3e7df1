//! End-to-end test of the operator against a real cluster: runs when `KUBECONFIG` is set, and is
//! skipped (passing, with a printed message) when it is not.
//!
//! It installs the CRD (server-side apply), runs the controller in-process (from the library,
//! watching one fresh namespace), applies TaskStreams, and checks children, status, rollouts,
//! Secret healing, CEL refusals and garbage collection. It never needs pods to run: a bare API
//! server has no kubelet, so pod readiness is not asserted. Every wait is a watch with a timeout.
//!
//! Against kind:
//! ```sh
//! kind create cluster --name taskstream
//! KUBECONFIG=$(mktemp) && kind get kubeconfig --name taskstream > $KUBECONFIG && export KUBECONFIG
//! cargo test -p taskstream-tests --test operator_e2e -- --nocapture
//! ```
//! Against k3d:
//! ```sh
//! k3d cluster create taskstream
//! export KUBECONFIG=$(k3d kubeconfig write taskstream)
//! cargo test -p taskstream-tests --test operator_e2e -- --nocapture
//! ```
//! Garbage collection of children after the TaskStream is deleted needs kube-controller-manager
//! (kind and k3d have it). Without it the test checks the owner references only, and says so;
//! `TASKSTREAM_E2E_REQUIRE_GC=1` makes a missing collection a failure.
//!
//! On an API server older than 1.29 (no native sidecars by default) the TaskStreams ask for the
//! classic sidecar (`sidecar.native: false`), and the test says so. This file is the harness;
//! the steps are in `operator_e2e/`: `lifecycle.rs` (children, status, rollouts, healing,
//! garbage collection), `refusals.rs` (CEL and schema refusals) and `production.rs` (Gateway
//! API route, Secret rotation, autoscaling, pod settings).

#[path = "operator_e2e/examples.rs"]
mod examples;
#[path = "operator_e2e/lifecycle.rs"]
mod lifecycle;
#[path = "operator_e2e/production.rs"]
mod production;
#[path = "operator_e2e/quota.rs"]
mod quota;
#[path = "operator_e2e/refusals.rs"]
mod refusals;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt, Resource, ResourceExt};
use serde_json::{Value, json};
use taskstream_operator::controller::{self, Context};
use taskstream_operator::crd::TaskStream;
use taskstream_operator::metrics::Metrics;
use taskstream_operator::resources::{CONFIG_HASH_ANNOTATION, Params, SIDECAR_CONTAINER};
use taskstream_operator::shutdown::Shutdown;

const WAIT: Duration = Duration::from_secs(60);
const USER: &str = "taskstream-e2e";

/// Waits for `cond` on `name`, bounded by [`WAIT`]; the error says what was awaited.
async fn wait_for<K>(
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

fn exists<K>(obj: Option<&K>) -> bool {
    obj.is_some()
}

fn ts_condition(ts: &TaskStream, type_: &str) -> Option<(String, String)> {
    let status = ts.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

/// Whether the API server runs native sidecars (init containers with `restartPolicy: Always`,
/// on by default from 1.29); set once at the start.
static NATIVE_SIDECARS: AtomicBool = AtomicBool::new(true);

fn manifest(name: &str, mut spec: Value) -> Value {
    if !NATIVE_SIDECARS.load(Ordering::Relaxed) && spec.get("sidecar").is_none() {
        spec["sidecar"] = json!({"native": false});
    }
    json!({
        "apiVersion": "taskstream.dev/v1alpha1",
        "kind": "TaskStream",
        "metadata": {"name": name},
        "spec": spec,
    })
}

fn full_spec() -> Value {
    json!({
        "app": {"image": "registry.example/shop:1", "port": 8000},
        "replicas": 2,
        "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
        "auth": {"mode": "jwt", "jwt": {"secretRef": {"name": "jwt", "key": "secret"}}},
        "ingress": {"host": "shop.example", "tlsSecretName": "shop-tls",
                    "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "7200"}},
    })
}

async fn apply_ts(api: &Api<TaskStream>, name: &str, spec: Value) -> Result<TaskStream> {
    api.patch(
        name,
        &PatchParams::apply(USER).force(),
        &Patch::Apply(manifest(name, spec)),
    )
    .await
    .with_context(|| format!("applying taskstream {name}"))
}

async fn apply_secret(client: &Client, ns: &str, name: &str, key: &str, value: &str) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": {key: value},
    });
    secrets
        .patch(
            name,
            &PatchParams::apply(USER).force(),
            &Patch::Apply(secret),
        )
        .await
        .with_context(|| format!("applying secret {name}"))?;
    Ok(())
}

#[tokio::test]
async fn operator_e2e() -> Result<()> {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!(
            "skipping operator e2e: KUBECONFIG is not set; point it at a kind or k3d cluster \
             to run it (see the top of tests/tests/operator_e2e.rs)"
        );
        return Ok(());
    }
    let client = Client::try_default()
        .await
        .context("kubernetes client from KUBECONFIG")?;
    let version = client.apiserver_version().await.context("server version")?;
    let minor: u32 = version
        .minor
        .trim_end_matches('+')
        .parse()
        .unwrap_or(u32::MAX);
    println!("e2e: API server {}", version.git_version);
    if version.major == "1" && minor < 29 {
        println!("e2e: Kubernetes 1.{minor} has no native sidecars by default: classic sidecar");
        NATIVE_SIDECARS.store(false, Ordering::Relaxed);
    }
    install_crd(&client).await?;

    let ns = format!(
        "ts-e2e-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_micros())
            .unwrap_or(0)
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await
        .with_context(|| format!("creating namespace {ns}"))?;

    // The operator, in-process, watching only the test namespace.
    let (stop, shutdown) = Shutdown::new();
    let params = Params {
        sidecar_image: "ghcr.io/taskstream/taskstream-sidecar:e2e".into(),
    };
    let ctx = Arc::new(Context::new(client.clone(), params, Metrics::default()));
    let operator = tokio::spawn(controller::run(ctx, Some(ns.clone()), shutdown.wait()));

    let mut gateway_crds = production::GatewayCrds::default();
    let result = async {
        step(
            "examples apply (dry run, strict)",
            examples::scenario(&client, &ns),
        )
        .await?;
        lifecycle::scenario(&client, &ns).await?;
        production::scenario(&client, &ns, &mut gateway_crds).await?;
        step("a refused child shows", quota::scenario(&client, &ns)).await
    }
    .await;

    // Clean up whatever happened.
    stop.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(30), operator).await;
    if let Err(e) = namespaces.delete(&ns, &DeleteParams::background()).await {
        println!("cleanup: deleting namespace {ns}: {e}");
    }
    gateway_crds.remove_if_installed(&client).await;
    result
}

async fn install_crd(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = TaskStream::crd_name();
    crds.patch(
        name,
        &PatchParams::apply(USER).force(),
        &Patch::Apply(taskstream_operator::crd::crd()),
    )
    .await
    .context("installing the TaskStream CRD")?;
    wait_for(
        &crds,
        name,
        "the CRD to be established",
        conditions::is_crd_established(),
    )
    .await?;
    Ok(())
}

async fn step<T>(name: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    println!("e2e: {name}");
    let started = std::time::Instant::now();
    let result = fut.await.with_context(|| format!("step '{name}'"));
    println!("e2e:   done in {:.1?}", started.elapsed());
    result
}
