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
        let mut ts: TaskStream = serde_json::from_value(value)
            .map_err(|e| manifest_err(format!("document {}: {e}", i + 1)))?;
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
