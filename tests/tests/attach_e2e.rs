//! End-to-end test of attach mode against a real API server and kube-controller-manager: runs
//! when `KUBECONFIG` is set, and is skipped (passing, with a printed message) when it is not.
//!
//! ```text
//! test ─> MutatingWebhookConfiguration (clientConfig.url https://127.0.0.1:<port>/mutate-pods)
//!      ─> operator, in-process: controller (one namespace) + webhook over HTTPS (own CA,
//!         --webhook-extra-sans 127.0.0.1), which patches the configuration's caBundle
//!      ─> team Deployment labelled taskstream.dev/inject=shop ─> ReplicaSet controller ─> Pod
//!         (created through the webhook: the sidecar is in it; no kubelet is needed to see that)
//! ```
//!
//! Covered: injection into the ReplicaSet's pod, status.attach and PodsUpToDate going Stale on
//! a spec change, `rollout: Auto` restarting the Deployment, every bad input (unknown
//! TaskStream, owned-mode TaskStream, port and name conflicts), and the webhook down with
//! `failurePolicy: Fail` (the pod is not created, then appears once the webhook is back).
//!
//! ```sh
//! export KUBECONFIG=...   # any cluster whose API server can reach 127.0.0.1 (kind, k3d: no)
//! cargo test -p taskstream-tests --test attach_e2e -- --nocapture
//! ```
//! The API server calls the webhook at 127.0.0.1, so the cluster's API server must run on this
//! machine (a local control plane); elsewhere the test fails at the first injection.

#[path = "attach_e2e/support.rs"]
mod support;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use futures_util::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::conditions;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResourceExt};
use serde_json::json;
use support::*;
use taskstream_operator::crd::TaskStream;
use taskstream_operator::resources::SIDECAR_CONTAINER;

#[tokio::test]
async fn attach_e2e() -> Result<()> {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!(
            "skipping attach e2e: KUBECONFIG is not set; point it at a cluster whose API server \
             runs on this machine (see the top of tests/tests/attach_e2e.rs)"
        );
        return Ok(());
    }
    let client = Client::try_default().await.context("kubernetes client")?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    apply(
        &crds,
        TaskStream::crd_name(),
        serde_json::to_value(taskstream_operator::crd::crd())?,
    )
    .await?;
    wait_for(
        &crds,
        TaskStream::crd_name(),
        "the CRD",
        conditions::is_crd_established(),
    )
    .await?;

    let ns = format!(
        "ts-attach-{}-{}",
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
    let configuration = format!("taskstream-e2e-{ns}");
    let secret = format!("taskstream-webhook-tls-{ns}");
    let port = taskstream_tests::free_port();
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());

    let mut operator = None;
    let result = async {
        apply(
            &configs,
            &configuration,
            webhook_configuration(&configuration, &ns, port),
        )
        .await?;
        operator = Some(Operator::start(&ns, port, &configuration, &secret)?);
        scenario(&client, &ns, port, &configuration, &secret, &mut operator).await
    }
    .await;

    // Clean up whatever happened: the configuration first, so nothing else calls a dead URL.
    if let Err(e) = configs
        .delete(&configuration, &DeleteParams::default())
        .await
    {
        println!("cleanup: deleting {configuration}: {e}");
    }
    if let Some(op) = operator
        && let Err(e) = op.stop().await
    {
        println!("cleanup: stopping the operator: {e:#}");
    }
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let _ = secrets.delete(&secret, &DeleteParams::default()).await;
    if let Err(e) = namespaces.delete(&ns, &DeleteParams::background()).await {
        println!("cleanup: deleting namespace {ns}: {e}");
    }
    result
}

async fn scenario(
    client: &Client,
    ns: &str,
    port: u16,
    configuration: &str,
    secret: &str,
    operator: &mut Option<Operator>,
) -> Result<()> {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let tss: Api<TaskStream> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);

    step(
        "the operator patches its CA into the webhook configuration",
        async {
            wait_for(
                &configs,
                configuration,
                "a caBundle",
                |c: Option<&MutatingWebhookConfiguration>| {
                    c.and_then(|c| c.webhooks.as_ref())
                        .and_then(|w| w.first())
                        .and_then(|w| w.client_config.ca_bundle.as_ref())
                        .is_some_and(|b| {
                            String::from_utf8_lossy(&b.0).contains("BEGIN CERTIFICATE")
                        })
                },
            )
            .await?;
            let secrets: Api<Secret> = Api::default_namespaced(client.clone());
            let s = secrets
                .get(secret)
                .await
                .context("the certificate Secret")?;
            ensure!(s.type_.as_deref() == Some("kubernetes.io/tls"), "{s:?}");
            Ok(())
        },
    )
    .await?;

    let first_hash = step("a labelled Deployment's pod gets the sidecar", async {
        apply(
            &tss,
            "shop",
            taskstream("shop", attach_spec("redis://redis:6379/0", "Manual")),
        )
        .await?;
        apply(&deployments, "web", deployment("web", "shop")).await?;
        let pod = wait_pod(&pods, "app=web", "the web pod", |_| true).await?;
        let sidecar = sidecar_of(&pod).ok_or_else(|| anyhow!("no sidecar in {pod:?}"))?;
        let upstream = sidecar
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "TASKSTREAM_UPSTREAM")
            .and_then(|e| e.value.clone());
        ensure!(
            upstream.as_deref() == Some("http://127.0.0.1:8000"),
            "{upstream:?}"
        );
        let hash = hash_of(&pod).ok_or_else(|| anyhow!("no config hash"))?;
        let svc: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), ns);
        wait_for(
            &svc,
            "shop",
            "the attach Service",
            |s: Option<&k8s_openapi::api::core::v1::Service>| s.is_some(),
        )
        .await?;
        let svc = svc.get("shop").await.context("Service shop")?;
        let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
        ensure!(
            selector.get("taskstream.dev/inject").map(String::as_str) == Some("shop"),
            "{selector:?}"
        );
        ensure!(
            deployments.get_opt("shop").await?.is_none(),
            "no Deployment in attach mode"
        );
        wait_for(
            &tss,
            "shop",
            "status.attach 1/1 up to date",
            |ts: Option<&TaskStream>| {
                ts.and_then(|t| t.status.as_ref())
                    .and_then(|s| s.attach.as_ref())
                    .is_some_and(|a| a.pods == 1 && a.up_to_date == 1 && a.stale == 0)
            },
        )
        .await?;
        Ok(hash)
    })
    .await?;

    step(
        "a spec change makes the pod stale; rollout Auto restarts the Deployment",
        async {
            apply(
                &tss,
                "shop",
                taskstream("shop", attach_spec("redis://other:6379/0", "Manual")),
            )
            .await?;
            let ts = wait_for(
                &tss,
                "shop",
                "PodsUpToDate=False Stale",
                |ts: Option<&TaskStream>| {
                    ts.and_then(|t| condition(t, "PodsUpToDate"))
                        == Some(("False".to_string(), "Stale".to_string()))
                },
            )
            .await?
            .ok_or_else(|| anyhow!("taskstream gone"))?;
            let message = ts
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "PodsUpToDate"))
                .map(|c| c.message.clone())
                .unwrap_or_default();
            ensure!(
                message.contains(&format!("kubectl rollout restart deployment/web -n {ns}")),
                "{message}"
            );
            let before = deployments.get("web").await?;
            let annotations = |d: &Deployment| {
                d.spec
                    .as_ref()
                    .and_then(|s| s.template.metadata.as_ref())
                    .and_then(|m| m.annotations.clone())
                    .unwrap_or_default()
            };
            ensure!(
                !annotations(&before).contains_key("kubectl.kubernetes.io/restartedAt"),
                "Manual never restarts"
            );

            apply(
                &tss,
                "shop",
                taskstream("shop", attach_spec("redis://other:6379/0", "Auto")),
            )
            .await?;
            wait_for(
                &deployments,
                "web",
                "restartedAt on the pod template",
                |d: Option<&Deployment>| {
                    d.is_some_and(|d| {
                        annotations(d).contains_key("kubectl.kubernetes.io/restartedAt")
                    })
                },
            )
            .await?;
            let fresh = wait_pod(&pods, "app=web", "a pod with the new sidecar", |p| {
                hash_of(p).is_some_and(|h| h != first_hash)
            })
            .await?;
            ensure!(sidecar_of(&fresh).is_some());
            Ok(())
        },
    )
    .await?;

    step("the API server refuses app with attach, and attach with replicas", async {
        let both = json!({"app": {"image": "registry.example/x:1", "port": 8000},
            "attach": {"appPort": 8000}, "redis": {"url": "redis://r:6379"}, "auth": {"mode": "none"}});
        let scaled = json!({"attach": {"appPort": 8000}, "replicas": 2,
            "redis": {"url": "redis://r:6379"}, "auth": {"mode": "none"}});
        for (name, spec, words) in [
            ("both", both, "exactly one of app"),
            ("scaled", scaled, "not allowed with attach"),
        ] {
            match apply(&tss, name, taskstream(name, spec)).await {
                Ok(_) => bail!("{name}: accepted"),
                Err(e) => {
                    let message = format!("{e:#}");
                    ensure!(message.contains(words), "{name}: {message}");
                }
            }
        }
        Ok(())
    })
    .await?;

    step(
        "bad input: admitted unchanged, or denied with the reason",
        async {
            apply(
                &tss,
                "owned",
                taskstream(
                    "owned",
                    json!({
            "app": {"image": "registry.example/owned:1", "port": 8000},
            "redis": {"url": "redis://redis:6379/0"}, "auth": {"mode": "none"}}),
                ),
            )
            .await?;
            for (name, inject) in [("unknown", "nope"), ("owned-mode", "owned")] {
                let pod: Pod = pods
                    .create(
                        &PostParams::default(),
                        &serde_json::from_value(bare_pod(name, inject, "web", 8000))?,
                    )
                    .await
                    .with_context(|| format!("pod {name} is admitted"))?;
                ensure!(sidecar_of(&pod).is_none(), "{name}: unchanged");
            }
            for (name, container, port, reason) in [
                ("port-clash", "web", 8080, "uses port 8080"),
                (
                    "name-clash",
                    SIDECAR_CONTAINER,
                    8000,
                    "already has a container named",
                ),
            ] {
                match pods
                    .create(
                        &PostParams::default(),
                        &serde_json::from_value(bare_pod(name, "shop", container, port))?,
                    )
                    .await
                {
                    Ok(_) => bail!("{name}: admitted"),
                    Err(kube::Error::Api(s)) => {
                        ensure!(s.message.contains(reason), "{name}: {}", s.message)
                    }
                    Err(e) => bail!("{name}: {e}"),
                }
            }
            Ok(())
        },
    )
    .await?;

    step(
        "webhook down with failurePolicy Fail: no pod until it is back",
        async {
            operator
                .take()
                .ok_or_else(|| anyhow!("operator"))?
                .stop()
                .await?;
            match pods
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(bare_pod("while-down", "shop", "web", 8000))?,
                )
                .await
            {
                Ok(_) => bail!("a labelled pod was created without the webhook"),
                Err(kube::Error::Api(s)) => {
                    ensure!(s.message.contains("inject.taskstream.dev"), "{}", s.message)
                }
                Err(e) => bail!("{e}"),
            }
            apply(&deployments, "late", deployment("late", "shop")).await?;
            let rs: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
                Api::namespaced(client.clone(), ns);
            let failed = async {
                let stream =
                    watcher(rs, watcher::Config::default().labels("app=late")).applied_objects();
                let mut stream = std::pin::pin!(stream);
                while let Some(r) = stream.next().await {
                    let r = r?;
                    let failure = r
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c.type_ == "ReplicaFailure" && c.status == "True")
                        });
                    if failure {
                        return Ok::<_, anyhow::Error>(());
                    }
                }
                bail!("replicaset watch ended")
            };
            tokio::time::timeout(WAIT, failed)
                .await
                .map_err(|_| anyhow!("no ReplicaFailure"))??;
            ensure!(
                pods.list(&kube::api::ListParams::default().labels("app=late"))
                    .await?
                    .items
                    .is_empty()
            );
            *operator = Some(Operator::start(ns, port, configuration, secret)?);
            let pod = wait_pod(
                &pods,
                "app=late",
                "the late pod once the webhook is back",
                |_| true,
            )
            .await?;
            ensure!(sidecar_of(&pod).is_some(), "the late pod has the sidecar");
            Ok(())
        },
    )
    .await?;
    Ok(())
}
