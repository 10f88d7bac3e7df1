//! The e2e step of a child the API server will not take: a real ResourceQuota allows no more
//! Services, so the TaskStream's Service is refused (`403 ... exceeded quota`). The TaskStream
//! shows it within one reconcile (`Degraded=True QuotaExceeded` with the API server's message
//! and `observedGeneration`), one Warning Event says it (not one per retry), and raising the
//! quota clears it.

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::api::core::v1::{ResourceQuota, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use taskstream_operator::crd::TaskStream;

use super::{USER, apply_ts, exists, wait_for};

const NAME: &str = "quota";

fn degraded(ts: &TaskStream) -> Option<(String, String, String, Option<i64>)> {
    let c = ts
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")?;
    Some((
        c.status.clone(),
        c.reason.clone(),
        c.message.clone(),
        c.observed_generation,
    ))
}

async fn set_quota(client: &Client, ns: &str, services: usize) -> Result<()> {
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    let quota = json!({
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "services"},
        "spec": {"hard": {"services": services.to_string()}},
    });
    quotas
        .patch(
            "services",
            &PatchParams::apply(USER).force(),
            &Patch::Apply(&quota),
        )
        .await
        .context("applying the ResourceQuota")?;
    // Admission enforces a quota once its controller has written status.hard; until then it
    // refuses with "status unknown for quota", a different message.
    let want = services.to_string();
    wait_for(
        &quotas,
        "services",
        "the ResourceQuota's status",
        move |q: Option<&ResourceQuota>| {
            q.and_then(|q| q.status.as_ref())
                .and_then(|s| s.hard.as_ref())
                .and_then(|h| h.get("services"))
                .is_some_and(|v| v.0 == want)
        },
    )
    .await?;
    Ok(())
}

pub async fn scenario(client: &Client, ns: &str) -> Result<()> {
    let tss: Api<TaskStream> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let used = services.list(&ListParams::default()).await?.items.len();
    set_quota(client, ns, used).await?;

    let spec = json!({
        "app": {"image": "registry.example/shop:1", "port": 8000},
        "redis": {"url": "redis://redis.example:6379/0"},
        "auth": {"mode": "none"},
    });
    let ts = apply_ts(&tss, NAME, spec).await?;
    let generation = ts.metadata.generation;
    let refused = wait_for(
        &tss,
        NAME,
        "Degraded=True QuotaExceeded",
        |t: Option<&TaskStream>| {
            t.and_then(degraded)
                .is_some_and(|d| d.0 == "True" && d.1 == "QuotaExceeded")
        },
    )
    .await?
    .ok_or_else(|| anyhow!("taskstream vanished"))?;
    let (_, _, message, observed) = degraded(&refused).unwrap_or_default();
    ensure!(
        message.starts_with(&format!("apply Service {ns}/{NAME}: "))
            && message.contains("exceeded quota: services"),
        "the API server's message: {message}"
    );
    ensure!(
        observed == generation,
        "observedGeneration {observed:?}, want {generation:?}"
    );
    ensure!(
        refused.status.as_ref().and_then(|s| s.observed_generation) == generation,
        "status.observedGeneration"
    );

    // Raising the quota lets the Service in (on the next retry, with backoff) and clears it.
    set_quota(client, ns, used + 1).await?;
    wait_for(&services, NAME, "the Service", exists).await?;
    wait_for(&tss, NAME, "Degraded=False", |t: Option<&TaskStream>| {
        t.and_then(degraded).is_some_and(|d| d.0 == "False")
    })
    .await?;

    // One Warning Event for the refusal, whatever the number of retries.
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let uid = refused.uid().unwrap_or_default();
    let quota_events: Vec<Event> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid.as_str())
                && e.reason.as_deref() == Some("QuotaExceeded")
        })
        .collect();
    ensure!(
        quota_events.len() == 1,
        "{} QuotaExceeded Events, want 1",
        quota_events.len()
    );
    let event = &quota_events[0];
    ensure!(event.type_.as_deref() == Some("Warning"), "event type");
    ensure!(
        event.note.as_deref() == Some(message.as_str()),
        "event note {:?}",
        event.note
    );
    Ok(())
}
