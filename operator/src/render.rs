//! `render`: the objects `run` would apply for the TaskStreams in a manifest, as multi-document
//! YAML, offline. Secrets are referenced (by `secretKeyRef` / volume), never resolved, so no
//! cluster is needed. Owner references need the TaskStream's uid, which only the API server
//! assigns; the operator adds them when it applies.

use serde::Deserialize;
use serde_json::Value;

use crate::crd::TaskStream;
use crate::error::{Error, Result};
use crate::resources::{self, Params};

/// Renders every TaskStream document of `input` (`source` names it in errors).
pub fn render(
    input: &str,
    source: &str,
    params: &Params,
    default_namespace: &str,
) -> Result<String> {
    let manifest_err = |reason: String| Error::Manifest {
        path: source.to_string(),
        reason,
    };
    let mut out = String::from(
        "# Rendered by taskstream-operator. ownerReferences to the TaskStream are added at apply time.\n",
    );
    let mut count = 0;
    for (i, doc) in serde_norway::Deserializer::from_str(input).enumerate() {
        let value = Value::deserialize(doc)
            .map_err(|e| manifest_err(format!("document {}: {e}", i + 1)))?;
        if value.is_null() {
            continue;
        }
        let (api_version, kind) = (value["apiVersion"].as_str(), value["kind"].as_str());
        if api_version != Some("taskstream.dev/v1alpha1") || kind != Some("TaskStream") {
            return Err(manifest_err(format!(
                "document {}: expected apiVersion taskstream.dev/v1alpha1 kind TaskStream, got {} {}",
                i + 1,
                api_version.unwrap_or("<none>"),
                kind.unwrap_or("<none>")
            )));
        }
        let mut ts: TaskStream = serde_json::from_value(value.clone())
            .map_err(|e| manifest_err(format!("document {}: {e}", i + 1)))?;
        // The API server's strict field validation refuses what the types do not know; serde
        // would drop it silently (as it once dropped a misspelt autoscaling field).
        let known = serde_json::to_value(&ts).map_err(|e| manifest_err(format!("{e}")))?;
        if let Some(field) = unknown_field("", &value, &known) {
            return Err(manifest_err(format!(
                "document {}: unknown field \"{field}\"",
                i + 1
            )));
        }
        if ts.metadata.namespace.is_none() {
            ts.metadata.namespace = Some(default_namespace.to_string());
        }
        let yaml = |obj: &dyn erased::Yaml| {
            obj.yaml()
                .map_err(|e| manifest_err(format!("serialize: {e}")))
        };
        if ts.spec.attach.is_some() {
            // Attach mode: the Service and route only; the pods are the team's (the webhook
            // adds the sidecar when they are created).
            let children = resources::attach::build(&ts)?;
            out.push_str(&format!("---\n{}", yaml(&children.service)?));
            if let Some(ing) = &children.ingress {
                out.push_str(&format!("---\n{}", yaml(ing)?));
            }
            if let Some(route) = &children.route {
                out.push_str(&format!("---\n{}", yaml(route)?));
            }
            count += 1;
            continue;
        }
        let children = resources::build(&ts, params, None)?;
        out.push_str(&format!("---\n{}", yaml(&children.deployment)?));
        out.push_str(&format!("---\n{}", yaml(&children.service)?));
        if let Some(pdb) = &children.pdb {
            out.push_str(&format!("---\n{}", yaml(pdb)?));
        }
        if let Some(hpa) = &children.hpa {
            out.push_str(&format!("---\n{}", yaml(hpa)?));
        }
        if let Some(ing) = &children.ingress {
            out.push_str(&format!("---\n{}", yaml(ing)?));
        }
        if let Some(route) = &children.route {
            out.push_str(&format!("---\n{}", yaml(route)?));
        }
        count += 1;
    }
    if count == 0 {
        return Err(manifest_err("no TaskStream document found".into()));
    }
    Ok(out)
}

/// The first field of `input` that did not survive a round trip through the types (`known`),
/// as a dotted path; `null`s and empty lists, which the types may drop, do not count.
fn unknown_field(path: &str, input: &Value, known: &Value) -> Option<String> {
    match (input, known) {
        (Value::Object(input), Value::Object(known)) => input.iter().find_map(|(k, v)| {
            let here = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match known.get(k) {
                None if v.is_null() || v.as_array().is_some_and(Vec::is_empty) => None,
                None => Some(here),
                Some(kv) => unknown_field(&here, v, kv),
            }
        }),
        (Value::Array(input), Value::Array(known)) => input
            .iter()
            .zip(known)
            .enumerate()
            .find_map(|(n, (v, kv))| unknown_field(&format!("{path}[{n}]"), v, kv)),
        _ => None,
    }
}

mod erased {
    /// Lets `render` serialize the four child kinds through one closure.
    pub trait Yaml {
        fn yaml(&self) -> Result<String, serde_norway::Error>;
    }
    impl<T: serde::Serialize> Yaml for T {
        fn yaml(&self) -> Result<String, serde_norway::Error> {
            serde_norway::to_string(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::params;

    const MANIFEST: &str = r#"
apiVersion: taskstream.dev/v1alpha1
kind: TaskStream
metadata:
  name: shop
spec:
  app: {image: "shop:1", port: 8000}
  replicas: 2
  redis: {urlSecretRef: {name: redis, key: url}}
  auth: {mode: jwt, jwt: {secretRef: {name: jwt, key: secret}}}
  ingress: {host: shop.example, tlsSecretName: shop-tls}
"#;

    #[test]
    fn renders_every_child_without_a_cluster() {
        let out = render(MANIFEST, "ts.yaml", &params(), "apps").expect("renders");
        for kind in ["Deployment", "Service", "PodDisruptionBudget", "Ingress"] {
            assert!(out.contains(&format!("kind: {kind}\n")), "{kind} in\n{out}");
        }
        assert!(out.contains("namespace: apps"));
        assert!(out.contains("secretKeyRef"));
        assert!(!out.contains("ownerReferences:"));
        // Every document parses back as a Kubernetes object.
        let docs: Vec<Value> = serde_norway::Deserializer::from_str(&out)
            .map(|d| Value::deserialize(d).expect("yaml"))
            .collect();
        assert_eq!(docs.len(), 4);
    }

    #[test]
    fn render_equals_what_run_applies() {
        let out = render(MANIFEST, "ts.yaml", &params(), "apps").expect("renders");
        let mut ts: TaskStream = serde_norway::from_str(MANIFEST).expect("taskstream");
        ts.metadata.namespace = Some("apps".into());
        let children = resources::build(&ts, &params(), None).expect("builds");
        let first: Value = serde_norway::Deserializer::from_str(&out)
            .map(|d| Value::deserialize(d).expect("yaml"))
            .next()
            .expect("first doc");
        assert_eq!(
            first,
            serde_json::to_value(&children.deployment).expect("json")
        );
    }

    /// `examples/autoscaling.yaml` spells the field as users (and `autoscaling/v1`) do:
    /// `targetCPUUtilizationPercentage` reaches the HPA, it is not silently dropped.
    #[test]
    fn the_autoscaling_example_sets_the_cpu_target() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/autoscaling.yaml");
        let input = std::fs::read_to_string(path).expect("example");
        assert!(input.contains("targetCPUUtilizationPercentage: 70"));
        let out = render(&input, path, &params(), "apps").expect("renders");
        let hpa = serde_norway::Deserializer::from_str(&out)
            .map(|d| Value::deserialize(d).expect("yaml"))
            .find(|d| d["kind"] == "HorizontalPodAutoscaler")
            .expect("an HPA");
        assert_eq!(
            hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            70
        );
        let ts: TaskStream = serde_norway::from_str(&input).expect("taskstream");
        let back = serde_json::to_value(&ts.spec.autoscaling).expect("json");
        assert_eq!(back["targetCPUUtilizationPercentage"], 70);
    }

    #[test]
    fn refuses_unknown_fields_as_strict_validation_does() {
        let bad = MANIFEST
            .replace(
                "replicas: 2",
                "replicas: 2\n  autoscaling: {maxReplicas: 3, targetCpuUtilizationPercentage: 50}",
            )
            .replace("  replicas: 2\n", "");
        let err = render(&bad, "ts.yaml", &params(), "apps").expect_err("unknown field");
        assert_eq!(
            err.to_string(),
            "manifest ts.yaml: document 1: unknown field \"spec.autoscaling.targetCpuUtilizationPercentage\""
        );
        let deep = MANIFEST.replace(
            "port: 8000}",
            "port: 8000, env: [{name: A, value: b, vaule: c}]}",
        );
        let err = render(&deep, "ts.yaml", &params(), "apps").expect_err("unknown field");
        assert!(
            err.to_string().ends_with("\"spec.app.env[0].vaule\""),
            "{err}"
        );
        // Explicit nulls and empty defaults are not unknown.
        let nulls = MANIFEST.replace("replicas: 2", "replicas: 2\n  history: null");
        render(&nulls, "ts.yaml", &params(), "apps").expect("nulls are fine");
    }

    #[test]
    fn refuses_what_the_api_server_would() {
        let bad = MANIFEST.replace("{urlSecretRef: {name: redis, key: url}}", "{}");
        let err = render(&bad, "ts.yaml", &params(), "apps").expect_err("no redis url");
        assert!(
            err.to_string().contains("exactly one of redis.url"),
            "{err}"
        );
        let err = render("kind: Pod\napiVersion: v1\n", "pod.yaml", &params(), "apps")
            .expect_err("not a ts");
        assert!(
            err.to_string().starts_with("manifest pod.yaml: document 1"),
            "{err}"
        );
    }
}
