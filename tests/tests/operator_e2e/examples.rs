//! The e2e step of the examples: every object of every `examples/*.yaml` is applied (server-side,
//! dry run, `fieldValidation=Strict`) as `kubectl apply --server-side --dry-run=server
//! --validate=strict` would: an unknown field anywhere, a CEL rule or a range refuses it. The
//! old misspelt autoscaling field must be refused, so the check is known to bite.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
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

/// Server-side apply of `doc` in `ns`, dry run, strict field validation.
async fn dry_run_apply(client: &Client, ns: &str, doc: &Value) -> Result<()> {
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
    let params = PatchParams::apply(USER)
        .force()
        .dry_run()
        .validation_strict();
    api.patch(name, &params, &Patch::Apply(doc))
        .await
        .map(drop)
        .map_err(|e| anyhow!("{kind} {name}: {e}"))
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
            if let Err(e) = dry_run_apply(client, ns, &doc).await {
                refused.push(format!("{}: {e:#}", path.display()));
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
    match dry_run_apply(client, ns, &doc).await {
        Ok(()) => bail!("the misspelt targetCpuUtilizationPercentage was accepted"),
        Err(e) => {
            let message = format!("{e:#}");
            ensure!(
                message.contains("unknown field")
                    && message.contains("targetCpuUtilizationPercentage"),
                "refused for another reason: {message}"
            );
        }
    }
    Ok(())
}
