//! The e2e steps of what a production app needs: the Gateway API route (`gateway.rs`), Secret
//! rotation (a referenced value rolls the pods, an unreferenced key does not), autoscaling
//! (`spec.replicas` handed to the autoscaler, `kubectl scale` not reverted) and pod settings.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::conditions;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use taskstream_operator::crd::TaskStream;
use taskstream_operator::resources::{SECRET_HASH_ANNOTATION, SIDECAR_CONTAINER};

use super::{USER, apply_secret, apply_ts, exists, step, wait_for};

#[path = "gateway.rs"]
mod gateway;
pub use gateway::GatewayCrds;

pub fn base_spec() -> Value {
    json!({
        "app": {"image": "registry.example/shop:1", "port": 8000},
        "redis": {"url": "redis://redis.example:6379/0"},
        "auth": {"mode": "none"},
    })
}

fn template_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(key))
        .cloned()
}

fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.replicas)
}

/// Waits until the operator has reconciled generation `generation` of `name`.
async fn observed(tss: &Api<TaskStream>, name: &str, generation: Option<i64>) -> Result<()> {
    wait_for(
        tss,
        name,
        "the operator to observe the new generation",
        move |t: Option<&TaskStream>| {
            t.and_then(|t| t.status.as_ref())
                .is_some_and(|s| s.observed_generation == generation)
        },
    )
    .await?;
    Ok(())
}

pub async fn scenario(client: &Client, ns: &str, crds: &mut GatewayCrds) -> Result<()> {
    step(
        "gateway: HTTPRoute, Degraded without the Gateway API",
        gateway::gateway(client, ns, crds),
    )
    .await?;
    step(
        "secret rotation rolls only on referenced values",
        rotation(client, ns),
    )
    .await?;
    step(
        "autoscaling owns replicas; kubectl scale stays",
        autoscaling(client, ns),
    )
    .await?;
    step(
        "pod settings land in the deployment",
        pod_settings(client, ns),
    )
    .await?;
    Ok(())
}

async fn set_secret(client: &Client, ns: &str, data: &[(&str, &str)]) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let string_data: BTreeMap<&str, &str> = data.iter().copied().collect();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rot-redis"},
        "stringData": string_data,
    });
    secrets
        .patch(
            "rot-redis",
            &PatchParams::apply(USER).force(),
            &Patch::Apply(secret),
        )
        .await
        .context("applying secret rot-redis")?;
    Ok(())
}

async fn rotation(client: &Client, ns: &str) -> Result<()> {
    let tss: Api<TaskStream> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    set_secret(
        client,
        ns,
        &[
            ("url", "redis://:first@redis.example:6379/0"),
            ("other", "a"),
        ],
    )
    .await?;
    let mut spec = base_spec();
    spec["redis"] = json!({"urlSecretRef": {"name": "rot-redis", "key": "url"}});
    spec["ingress"] = json!({"host": "rot.example"});
    apply_ts(&tss, "rotating", spec.clone()).await?;
    let first = wait_for(
        &deployments,
        "rotating",
        "a deployment with the secret hash",
        |d: Option<&Deployment>| {
            d.and_then(|d| template_annotation(d, SECRET_HASH_ANNOTATION))
                .is_some()
        },
    )
    .await?
    .ok_or_else(|| anyhow!("deployment vanished"))?;
    let hash = template_annotation(&first, SECRET_HASH_ANNOTATION).unwrap_or_default();
    ensure!(
        !serde_json::to_string(&first)?.contains("first@"),
        "secret value copied into the deployment"
    );

    // An unreferenced key changes, then a spec change that touches only the Ingress: once the
    // operator has observed it (so it read the Secret after the change), nothing rolled.
    set_secret(
        client,
        ns,
        &[
            ("url", "redis://:first@redis.example:6379/0"),
            ("other", "b"),
        ],
    )
    .await?;
    spec["ingress"]["annotations"] = json!({"e2e/changed": "yes"});
    let ts = apply_ts(&tss, "rotating", spec).await?;
    observed(&tss, "rotating", ts.metadata.generation).await?;
    let now = deployments.get("rotating").await?;
    ensure!(
        template_annotation(&now, SECRET_HASH_ANNOTATION).as_deref() == Some(hash.as_str()),
        "an unreferenced key changed the secret hash"
    );
    ensure!(
        now.metadata.generation == first.metadata.generation,
        "an unreferenced key rolled the pods (generation {:?} -> {:?})",
        first.metadata.generation,
        now.metadata.generation
    );

    // The referenced value changes: a new pod template, by the Secret watch alone.
    set_secret(
        client,
        ns,
        &[
            ("url", "redis://:second@redis.example:6379/0"),
            ("other", "b"),
        ],
    )
    .await?;
    let rolled = wait_for(
        &deployments,
        "rotating",
        "a new secret hash after the value changed",
        move |d: Option<&Deployment>| {
            d.and_then(|d| template_annotation(d, SECRET_HASH_ANNOTATION))
                .is_some_and(|h| h != hash)
        },
    )
    .await?
    .ok_or_else(|| anyhow!("deployment vanished"))?;
    ensure!(
        rolled.metadata.generation > first.metadata.generation,
        "the pod template did not change"
    );
    Ok(())
}

async fn autoscaling(client: &Client, ns: &str) -> Result<()> {
    let tss: Api<TaskStream> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);

    let mut spec = base_spec();
    spec["replicas"] = json!(3);
    apply_ts(&tss, "scaled", spec.clone()).await?;
    wait_for(
        &deployments,
        "scaled",
        "3 replicas",
        |d: Option<&Deployment>| d.and_then(replicas) == Some(3),
    )
    .await?;

    // Autoscaling on: the count the operator owned is handed over, not reset.
    spec.as_object_mut().map(|s| s.remove("replicas"));
    spec["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 5});
    let ts = apply_ts(&tss, "scaled", spec.clone()).await?;
    wait_for(&hpas, "scaled", "the HPA", exists).await?;
    observed(&tss, "scaled", ts.metadata.generation).await?;
    let d = deployments.get("scaled").await?;
    ensure!(
        replicas(&d) == Some(3),
        "turning autoscaling on changed replicas to {:?}",
        replicas(&d)
    );
    let ours = d.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some("taskstream-operator")
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
    });
    ensure!(!ours, "the operator still owns spec.replicas");

    // `kubectl scale --replicas 4` (a PATCH of the scale subresource), then a reconcile.
    deployments
        .patch_scale(
            "scaled",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .context("scaling the deployment")?;
    spec["autoscaling"]["maxReplicas"] = json!(6);
    let ts = apply_ts(&tss, "scaled", spec.clone()).await?;
    wait_for(
        &hpas,
        "scaled",
        "the HPA with maxReplicas 6",
        |h: Option<&HorizontalPodAutoscaler>| {
            h.and_then(|h| h.spec.as_ref())
                .is_some_and(|s| s.max_replicas == 6)
        },
    )
    .await?;
    observed(&tss, "scaled", ts.metadata.generation).await?;
    let d = deployments.get("scaled").await?;
    ensure!(
        replicas(&d) == Some(4),
        "kubectl scale was reverted: replicas {:?}",
        replicas(&d)
    );
    let status = tss.get("scaled").await?.status.unwrap_or_default();
    ensure!(
        status.replicas == Some(4),
        "status.replicas {:?}",
        status.replicas
    );

    // Autoscaling off: the HPA goes, the operator owns the count again.
    let hpa_uid = hpas.get("scaled").await?.uid().unwrap_or_default();
    spec.as_object_mut().map(|s| s.remove("autoscaling"));
    spec["replicas"] = json!(2);
    apply_ts(&tss, "scaled", spec).await?;
    wait_for(
        &hpas,
        "scaled",
        "the HPA to be deleted",
        conditions::is_deleted(&hpa_uid),
    )
    .await?;
    wait_for(
        &deployments,
        "scaled",
        "2 replicas again",
        |d: Option<&Deployment>| d.and_then(replicas) == Some(2),
    )
    .await?;
    Ok(())
}

async fn pod_settings(client: &Client, ns: &str) -> Result<()> {
    let tss: Api<TaskStream> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    apply_secret(
        client,
        ns,
        "redis-ca",
        "ca.crt",
        "-----BEGIN CERTIFICATE-----",
    )
    .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let tls = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "redis-client"},
        "stringData": {"tls.crt": "cert", "tls.key": "key"},
    });
    secrets
        .patch(
            "redis-client",
            &PatchParams::apply(USER).force(),
            &Patch::Apply(tls),
        )
        .await
        .context("applying the client certificate secret")?;

    let mut spec = base_spec();
    spec["redis"] = json!({
        "url": "rediss://redis.example:6380/0",
        "tls": {"caSecretRef": {"name": "redis-ca", "key": "ca.crt"},
                "clientCertSecretRef": {"name": "redis-client"}},
        "sentinel": {"hosts": ["sentinel-0.redis:26379", "sentinel-1.redis:26379"],
                     "masterName": "mymaster"},
    });
    spec["history"] = json!({"size": 1000, "ttlSeconds": 600});
    spec["app"]["volumeMounts"] = json!([{"name": "media", "mountPath": "/app/media"}]);
    spec["pod"] = json!({
        "serviceAccountName": "shop",
        "imagePullSecrets": [{"name": "registry-creds"}],
        "nodeSelector": {"pool": "web"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web",
                         "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "ScheduleAnyway"}],
        "priorityClassName": "web-critical",
        "labels": {"team": "shop", "app.kubernetes.io/instance": "spoofed"},
        "annotations": {"prometheus.io/scrape": "true"},
        "volumes": [{"name": "media", "emptyDir": {}}],
        "initContainers": [{"name": "migrate", "image": "registry.example/shop:1",
                            "args": ["python", "manage.py", "migrate"]}],
    });
    apply_ts(&tss, "shaped", spec).await?;
    let d = wait_for(&deployments, "shaped", "the deployment", exists)
        .await?
        .ok_or_else(|| anyhow!("deployment vanished"))?;
    let template = d
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .ok_or_else(|| anyhow!("no template"))?;
    let pod = template
        .spec
        .clone()
        .ok_or_else(|| anyhow!("no pod spec"))?;
    ensure!(
        pod.service_account_name.as_deref() == Some("shop"),
        "serviceAccountName"
    );
    ensure!(
        pod.image_pull_secrets.as_ref().map(|s| s[0].name.as_str()) == Some("registry-creds"),
        "imagePullSecrets"
    );
    ensure!(
        pod.node_selector
            .as_ref()
            .and_then(|n| n.get("pool"))
            .map(String::as_str)
            == Some("web"),
        "nodeSelector"
    );
    ensure!(
        pod.tolerations.as_ref().map(Vec::len) == Some(1),
        "tolerations"
    );
    ensure!(pod.affinity.is_some(), "affinity");
    ensure!(
        pod.topology_spread_constraints.as_ref().map(Vec::len) == Some(1),
        "topologySpreadConstraints"
    );
    ensure!(
        pod.priority_class_name.as_deref() == Some("web-critical"),
        "priorityClassName"
    );
    let meta = template.metadata.clone().unwrap_or_default();
    let labels = meta.labels.unwrap_or_default();
    ensure!(
        labels.get("team").map(String::as_str) == Some("shop"),
        "pod label"
    );
    ensure!(
        labels.get("app.kubernetes.io/instance").map(String::as_str) == Some("shaped"),
        "the operator's label must win"
    );
    ensure!(
        meta.annotations
            .unwrap_or_default()
            .get("prometheus.io/scrape")
            .map(String::as_str)
            == Some("true"),
        "pod annotation"
    );
    let volumes: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    ensure!(
        volumes == ["media", "taskstream-redis-ca", "taskstream-redis-client"],
        "volumes {volumes:?}"
    );
    let init: Vec<_> = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    ensure!(init.first() == Some(&"migrate"), "init containers {init:?}");
    let app = pod
        .containers
        .iter()
        .find(|c| c.name == "app")
        .ok_or_else(|| anyhow!("no app container"))?;
    ensure!(
        app.volume_mounts.as_ref().map(|m| m[0].mount_path.as_str()) == Some("/app/media"),
        "app volumeMounts"
    );
    let sidecar = pod
        .init_containers
        .iter()
        .flatten()
        .chain(pod.containers.iter())
        .find(|c| c.name == SIDECAR_CONTAINER)
        .ok_or_else(|| anyhow!("no sidecar"))?;
    let env: BTreeMap<_, _> = sidecar
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
        .collect();
    for (name, value) in [
        (
            "TASKSTREAM_REDIS_CA_FILE",
            "/etc/taskstream/redis-ca/ca.crt",
        ),
        (
            "TASKSTREAM_REDIS_CLIENT_CERT_FILE",
            "/etc/taskstream/redis-client/tls.crt",
        ),
        (
            "TASKSTREAM_REDIS_SENTINELS",
            "sentinel-0.redis:26379,sentinel-1.redis:26379",
        ),
        ("TASKSTREAM_HISTORY_SIZE", "1000"),
        ("TASKSTREAM_HISTORY_TTL", "600s"),
        ("TASKSTREAM_LOG_FORMAT", "json"),
    ] {
        ensure!(
            env.get(name).map(String::as_str) == Some(value),
            "{name} = {:?}",
            env.get(name)
        );
    }
    let sc = sidecar
        .security_context
        .as_ref()
        .ok_or_else(|| anyhow!("sidecar lost its security context"))?;
    ensure!(
        sc.run_as_non_root == Some(true) && sc.read_only_root_filesystem == Some(true),
        "sidecar hardening"
    );

    // A mount of a volume the pod lacks: only the API server can tell; the user sees why.
    let mut broken = base_spec();
    broken["app"]["volumeMounts"] = json!([{"name": "missing", "mountPath": "/data"}]);
    apply_ts(&tss, "broken", broken).await?;
    let ts = wait_for(
        &tss,
        "broken",
        "Degraded=True ChildInvalid",
        |t: Option<&TaskStream>| {
            t.and_then(|t| super::ts_condition(t, "Degraded"))
                == Some(("True".into(), "ChildInvalid".into()))
        },
    )
    .await?
    .ok_or_else(|| anyhow!("taskstream vanished"))?;
    let message = ts
        .status
        .iter()
        .flat_map(|s| s.conditions.iter())
        .find(|c| c.type_ == "Degraded")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    ensure!(message.contains("missing"), "message: {message}");
    Ok(())
}
