//! The e2e step of the examples: every object of every `examples/*.yaml` is sent to the API
//! server twice, dry run with `fieldValidation=Strict`: server-side applied (`kubectl apply
//! --server-side --dry-run=server`) and created (`kubectl apply` / `kubectl create`). An
//! unknown field anywhere, a CEL rule or a range refuses it. The old misspelt autoscaling field
//! must be refused both ways, so the check is known to bite.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Client, Resource};
use serde::Deserialize;
use serde_json::Value;

use super::USER;

fn examples() -> Result<Vec<PathBuf>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    found.sort();
    ensure!(!found.is_empty(), "no examples/*.yaml");
    Ok(found)
}

/// How an object reaches the API server: `kubectl apply --server-side` or a plain create
/// (`kubectl apply` / `kubectl create`), both as dry runs with strict field validation.
#[derive(Clone, Copy, Debug)]
enum Via {
    ServerSideApply,
    Create,
}

/// `doc` sent to the API server in `ns` `via`, dry run, strict field validation.
async fn dry_run(client: &Client, ns: &str, doc: &Value, via: Via) -> Result<()> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {api_version} {kind}"))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), ns, &resource),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let name = doc["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow!("{kind} without metadata.name"))?;
    let result = match via {
        Via::ServerSideApply => {
            let params = PatchParams::apply(USER)
                .force()
                .dry_run()
                .validation_strict();
            api.patch(name, &params, &Patch::Apply(doc)).await
        }
        Via::Create => {
            // kube's PostParams has no fieldValidation: the request is built by hand.
            let namespace = matches!(caps.scope, Scope::Namespaced).then_some(ns);
            let uri = format!(
                "{}?dryRun=All&fieldValidation=Strict&fieldManager={USER}",
                DynamicObject::url_path(&resource, namespace)
            );
            let request = http::Request::post(uri)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(doc)?)?;
            client.request::<DynamicObject>(request).await
        }
    };
    result
        .map(drop)
        .map_err(|e| anyhow!("{kind} {name} ({via:?}): {e}"))
}

/// Every example applies; a misspelt field does not.
pub async fn scenario(client: &Client, ns: &str) -> Result<()> {
    let mut refused = Vec::new();
    let mut count = 0;
    for path in examples()? {
        let text = std::fs::read_to_string(&path)?;
        for doc in serde_norway::Deserializer::from_str(&text) {
            let doc = Value::deserialize(doc).with_context(|| format!("{}", path.display()))?;
            if doc.is_null() {
                continue;
            }
            count += 1;
            for via in [Via::ServerSideApply, Via::Create] {
                if let Err(e) = dry_run(client, ns, &doc, via).await {
                    refused.push(format!("{}: {e:#}", path.display()));
                }
            }
        }
    }
    if !refused.is_empty() {
        bail!("the API server refuses examples:\n{}", refused.join("\n"));
    }
    println!("e2e:   {count} example objects applied (dry run, strict)");

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/autoscaling.yaml");
    let text = std::fs::read_to_string(&path)?;
    let misspelt = text.replace(
        "targetCPUUtilizationPercentage",
        "targetCpuUtilizationPercentage",
    );
    ensure!(
        misspelt != text,
        "autoscaling.yaml has no targetCPUUtilizationPercentage"
    );
    let doc: Value = serde_norway::from_str(&misspelt)?;
    // A plain apply says "unknown field"; server-side apply "field not declared in schema".
    for (via, says) in [
        (Via::Create, "unknown field"),
        (Via::ServerSideApply, "field not declared in schema"),
    ] {
        match dry_run(client, ns, &doc, via).await {
            Ok(()) => bail!("{via:?}: the misspelt targetCpuUtilizationPercentage was accepted"),
            Err(e) => {
                let message = format!("{e:#}");
                ensure!(
                    message.contains(says) && message.contains("targetCpuUtilizationPercentage"),
                    "{via:?}: refused for another reason: {message}"
                );
            }
        }
    }
    Ok(())
}
