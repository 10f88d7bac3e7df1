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
//! classic sidecar (`sidecar.native: false`), and the test says so. The production features
//! (Gateway API route, Secret rotation, autoscaling, pod settings) are in `operator_e2e/`.

#[path = "operator_e2e/examples.rs"]
mod examples;
#[path = "operator_e2e/production.rs"]
mod production;
#[path = "operator_e2e/quota.rs"]
mod quota;

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
        scenario(&client, &ns).await?;
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

async fn scenario(client: &Client, ns: &str) -> Result<()> {
    let tss: Api<TaskStream> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);

    step(
        "invalid specs are refused by the API server",
        refused_specs(client, ns),
    )
    .await?;

    apply_secret(client, ns, "redis", "url", "redis://redis.example:6379/0").await?;
    apply_secret(client, ns, "jwt", "secret", "e2e-not-a-real-secret").await?;
    let ts = apply_ts(&tss, "shop", full_spec()).await?;
    let uid = ts.uid().ok_or_else(|| anyhow!("taskstream has no uid"))?;

    let deployment = step("children appear", async {
        let d = wait_for(&deployments, "shop", "the deployment", exists).await?;
        wait_for(&services, "shop", "the service", exists).await?;
        wait_for(&pdbs, "shop", "the pod disruption budget", exists).await?;
        wait_for(&ingresses, "shop", "the ingress", exists).await?;
        d.ok_or_else(|| anyhow!("deployment vanished"))
    })
    .await?;

    step("children have the expected shape", async {
        for (kind, owners) in [
            ("Deployment", deployment.owner_references().to_vec()),
            (
                "Service",
                services.get("shop").await?.owner_references().to_vec(),
            ),
            (
                "PodDisruptionBudget",
                pdbs.get("shop").await?.owner_references().to_vec(),
            ),
            (
                "Ingress",
                ingresses.get("shop").await?.owner_references().to_vec(),
            ),
        ] {
            ensure!(
                owners
                    .iter()
                    .any(|o| o.uid == uid && o.controller == Some(true)),
                "{kind} is not controlled by the taskstream"
            );
        }
        let pod = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .ok_or_else(|| anyhow!("deployment has no pod spec"))?;
        let native = NATIVE_SIDECARS.load(Ordering::Relaxed);
        let sidecar = if native {
            pod.init_containers
                .iter()
                .flatten()
                .find(|c| c.name == SIDECAR_CONTAINER)
        } else {
            pod.containers.iter().find(|c| c.name == SIDECAR_CONTAINER)
        }
        .ok_or_else(|| anyhow!("no sidecar (native: {native})"))?;
        ensure!(
            !native || sidecar.restart_policy.as_deref() == Some("Always"),
            "sidecar restartPolicy"
        );
        let redis = sidecar
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "TASKSTREAM_REDIS_URL")
            .ok_or_else(|| anyhow!("no TASKSTREAM_REDIS_URL"))?;
        ensure!(
            redis.value.is_none(),
            "redis URL copied into the deployment"
        );
        ensure!(
            redis
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|s| s.name.as_str())
                == Some("redis"),
            "redis URL not from the secret"
        );
        let ing = ingresses.get("shop").await?;
        let ann = ing.metadata.annotations.clone().unwrap_or_default();
        ensure!(
            ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout")
                .map(String::as_str)
                == Some("7200"),
            "user annotation merged over the default"
        );
        ensure!(
            ann.get("nginx.ingress.kubernetes.io/proxy-send-timeout")
                .map(String::as_str)
                == Some("3600"),
            "websocket send timeout"
        );
        Ok(())
    })
    .await?;

    step("status is reported", async {
        let ts = wait_for(
            &tss,
            "shop",
            "status with observedGeneration 1 and conditions",
            |t: Option<&TaskStream>| {
                t.and_then(|t| t.status.as_ref()).is_some_and(|s| {
                    s.observed_generation == t.and_then(|t| t.metadata.generation)
                        && s.conditions.len() == 3
                })
            },
        )
        .await?
        .ok_or_else(|| anyhow!("taskstream vanished"))?;
        let status = ts.status.clone().unwrap_or_default();
        ensure!(
            status.url.as_deref() == Some("wss://shop.example/ws/tasks/"),
            "url: {:?}",
            status.url
        );
        ensure!(
            status.replicas == Some(2),
            "replicas: {:?}",
            status.replicas
        );
        ensure!(
            ts_condition(&ts, "Degraded").map(|c| c.0) == Some("False".into()),
            "not degraded"
        );
        // Pods may never run here (no kubelet on a bare API server): Ready is informational.
        println!("e2e: Ready = {:?}", ts_condition(&ts, "Ready"));
        Ok(())
    })
    .await?;

    step("a spec change rolls the pod template", async {
        let before = config_hash(&deployment)?;
        let mut spec = full_spec();
        spec["redis"]["channelPrefix"] = json!("changed:");
        apply_ts(&tss, "shop", spec).await?;
        wait_for(
            &deployments,
            "shop",
            "a new config hash",
            move |d: Option<&Deployment>| {
                d.and_then(|d| config_hash(d).ok())
                    .is_some_and(|h| h != before)
            },
        )
        .await?;
        Ok(())
    })
    .await?;

    step(
        "scaling to one replica deletes the PDB; dropping the ingress deletes it",
        async {
            let pdb_uid = pdbs.get("shop").await?.uid().unwrap_or_default();
            let ing_uid = ingresses.get("shop").await?.uid().unwrap_or_default();
            let mut spec = full_spec();
            spec["replicas"] = json!(1);
            spec.as_object_mut().map(|s| s.remove("ingress"));
            apply_ts(&tss, "shop", spec).await?;
            wait_for(
                &pdbs,
                "shop",
                "the PDB to be deleted",
                conditions::is_deleted(&pdb_uid),
            )
            .await?;
            wait_for(
                &ingresses,
                "shop",
                "the ingress to be deleted",
                conditions::is_deleted(&ing_uid),
            )
            .await?;
            Ok(())
        },
    )
    .await?;

    step(
        "a missing secret degrades the taskstream, and creating it heals it",
        async {
            let mut spec = full_spec();
            spec["redis"]["urlSecretRef"]["name"] = json!("late-redis");
            spec.as_object_mut().map(|s| s.remove("ingress"));
            apply_ts(&tss, "late", spec).await?;
            wait_for(
                &tss,
                "late",
                "Degraded=True SecretNotFound",
                |t: Option<&TaskStream>| {
                    t.and_then(|t| ts_condition(t, "Degraded"))
                        == Some(("True".into(), "SecretNotFound".into()))
                },
            )
            .await?;
            apply_secret(
                client,
                ns,
                "late-redis",
                "url",
                "redis://redis.example:6379/1",
            )
            .await?;
            wait_for(
                &tss,
                "late",
                "Degraded=False after the secret appears",
                |t: Option<&TaskStream>| {
                    t.and_then(|t| ts_condition(t, "Degraded"))
                        .is_some_and(|c| c.0 == "False")
                },
            )
            .await?;
            wait_for(
                &deployments,
                "late",
                "the deployment of the healed taskstream",
                exists,
            )
            .await?;
            Ok(())
        },
    )
    .await?;

    step("deleting the taskstream deletes its children", async {
        let dep_uid = deployments.get("shop").await?.uid().unwrap_or_default();
        tss.delete("shop", &DeleteParams::foreground()).await?;
        match wait_for(
            &deployments,
            "shop",
            "the deployment to be garbage-collected",
            conditions::is_deleted(&dep_uid),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if std::env::var_os("TASKSTREAM_E2E_REQUIRE_GC").is_none() => {
                println!(
                    "e2e: children not garbage-collected ({e:#}); this cluster may have no \
                     kube-controller-manager. Owner references were verified above."
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    })
    .await?;
    Ok(())
}

fn config_hash(d: &Deployment) -> Result<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
        .cloned()
        .ok_or_else(|| anyhow!("deployment has no {CONFIG_HASH_ANNOTATION}"))
}

/// Specs the CRD's schema (ranges, patterns, CEL) must refuse. Sent as dry runs: nothing stays.
async fn refused_specs(client: &Client, ns: &str) -> Result<()> {
    let tss: Api<TaskStream> = Api::namespaced(client.clone(), ns);
    let base = full_spec();
    let mut cases: Vec<(&str, Value, &str)> = Vec::new();
    let mut both = base.clone();
    both["redis"]["url"] = json!("redis://x:6379");
    cases.push((
        "both redis url and urlSecretRef",
        both,
        "exactly one of redis.url",
    ));
    let mut neither = base.clone();
    neither["redis"] = json!({});
    cases.push(("no redis url", neither, "exactly one of redis.url"));
    let mut jwt_no_key = base.clone();
    jwt_no_key["auth"] = json!({"mode": "jwt"});
    cases.push(("jwt without a key", jwt_no_key, "auth.mode jwt needs"));
    let mut port = base.clone();
    port["app"]["port"] = json!(70000);
    cases.push(("port out of range", port, "65535"));
    let mut clash = base.clone();
    clash["app"]["port"] = json!(8080);
    cases.push(("port of the sidecar", clash, "must not be 8080 or 9090"));
    let mut path = base.clone();
    path["websocket"] = json!({"path": "ws/tasks"});
    cases.push(("relative websocket path", path, "should match '^/'"));
    let mut replicas = base.clone();
    replicas["replicas"] = json!(-1);
    cases.push((
        "negative replicas",
        replicas,
        "should be greater than or equal to 0",
    ));

    let mut both_routes = base.clone();
    both_routes["gateway"] = json!({"parentRefs": [{"name": "public"}]});
    cases.push((
        "gateway and ingress",
        both_routes,
        "set only one of gateway and ingress",
    ));
    let mut scaled = base.clone();
    scaled["autoscaling"] = json!({"maxReplicas": 4});
    cases.push((
        "replicas and autoscaling",
        scaled,
        "set only one of replicas and autoscaling",
    ));
    let mut inverted = base.clone();
    inverted.as_object_mut().map(|s| s.remove("replicas"));
    inverted["autoscaling"] = json!({"minReplicas": 5, "maxReplicas": 2});
    cases.push((
        "minReplicas above maxReplicas",
        inverted,
        "must not exceed autoscaling.maxReplicas",
    ));
    let mut ha = base.clone();
    ha["redis"]["sentinel"] = json!({"hosts": ["s1:26379"], "masterName": "m"});
    ha["redis"]["cluster"] = json!(true);
    cases.push((
        "sentinel and cluster",
        ha,
        "set only one of redis.sentinel and redis.cluster",
    ));
    let mut host = base.clone();
    host["redis"]["sentinel"] = json!({"hosts": ["s1"], "masterName": "m"});
    cases.push(("sentinel host without port", host, "should match"));
    let mut hostname = base.clone();
    hostname.as_object_mut().map(|s| s.remove("ingress"));
    hostname["gateway"] =
        json!({"parentRefs": [{"name": "public"}], "hostnames": ["Shop_Example"]});
    cases.push(("invalid route hostname", hostname, "should match"));
    let mut history = base.clone();
    history["history"] = json!({"size": 10001});
    cases.push((
        "history size out of range",
        history,
        "should be less than or equal to 10000",
    ));

    let dry_run = PostParams {
        dry_run: true,
        field_manager: Some(USER.into()),
    };
    for (what, spec, expected) in cases {
        let ts: TaskStream = match serde_json::from_value(manifest("invalid", spec.clone())) {
            Ok(ts) => ts,
            // Some invalid specs (a negative u32) cannot even be typed; send those untyped.
            Err(_) => {
                let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
                    client.clone(),
                    ns,
                    &kube::api::ApiResource::erase::<TaskStream>(&()),
                );
                let obj: kube::api::DynamicObject =
                    serde_json::from_value(manifest("invalid", spec))?;
                check_refused(what, expected, raw.create(&dry_run, &obj).await.map(|_| ()))?;
                continue;
            }
        };
        check_refused(what, expected, tss.create(&dry_run, &ts).await.map(|_| ()))?;
    }
    Ok(())
}

fn check_refused(what: &str, expected: &str, result: Result<(), kube::Error>) -> Result<()> {
    match result {
        Ok(()) => bail!("{what}: accepted, expected refusal mentioning {expected:?}"),
        Err(kube::Error::Api(status)) => {
            ensure!(
                status.code == 422,
                "{what}: expected 422 Invalid, got {}: {}",
                status.code,
                status.message
            );
            ensure!(
                status.message.contains(expected),
                "{what}: refusal does not mention {expected:?}: {}",
                status.message
            );
            Ok(())
        }
        Err(e) => bail!("{what}: {e}"),
    }
}
