//! The CRD's contract: apiVersion, names, columns, CEL rules, ranges, formats, descriptions.

use super::schema::{KNOWN_FORMATS, unwrap_lines};
use super::*;
use kube::Resource;

#[test]
fn api_version_is_pinned() {
    assert_eq!(TaskStream::api_version(&()), "taskstream.dev/v1alpha1");
    assert_eq!(TaskStream::kind(&()), "TaskStream");
    assert_eq!(TaskStream::plural(&()), "taskstreams");
    assert_eq!(format!("{GROUP}/{VERSION}"), "taskstream.dev/v1alpha1");
}

#[test]
fn crd_has_shortname_status_and_columns() {
    let crd = crd();
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["ts".to_string()]));
    let version = &crd.spec.versions[0];
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Ready", "Replicas", "Stale", "URL", "Age"]);
}

#[test]
fn crd_carries_cel_rules_and_ranges() {
    let json = serde_json::to_string(&crd()).expect("crd serializes");
    for rule in [
        "has(self.url) != has(self.urlSecretRef)",
        "self.mode != 'jwt' || (has(self.jwt)",
        "!(has(self.secretRef) && has(self.publicKeyRef))",
        "self != 8080 && self != 9090",
    ] {
        assert!(json.contains(rule), "missing CEL rule {rule}");
    }
    for rule in [
        "!(has(self.gateway) && has(self.ingress))",
        "!(has(self.replicas) && has(self.autoscaling))",
        "!(has(self.sentinel) && has(self.cluster) && self.cluster)",
        "self.minReplicas <= self.maxReplicas",
        "has(self.app) != has(self.attach)",
        "!has(self.attach) || !(has(self.replicas) || has(self.autoscaling) || has(self.pod))",
    ] {
        assert!(json.contains(rule), "missing CEL rule {rule}");
    }
    assert!(
        json.contains(r#""enum":["Manual","Auto"]"#),
        "attach.rollout values"
    );
    assert!(json.contains("attach.appPort must not be 8080 or 9090"));
    assert!(json.contains(r#""maximum":10000"#), "history size range");
    assert!(json.contains(r#""maximum":604800"#), "history ttl range");
    assert!(json.contains(r#""pattern":"^/""#), "path pattern");
    assert!(json.contains(r#""maximum":65535"#), "port range");
    assert!(json.contains(r#""maximum":100"#), "replicas range");
}

#[test]
fn crd_has_only_formats_the_api_server_knows() {
    fn formats(node: &serde_json::Value, out: &mut Vec<String>) {
        match node {
            serde_json::Value::Object(map) => {
                if let Some(f) = map.get("format").and_then(|f| f.as_str()) {
                    out.push(f.to_string());
                }
                map.values().for_each(|v| formats(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| formats(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    formats(&serde_json::to_value(crd()).expect("json"), &mut found);
    assert!(found.iter().any(|f| f == "int32"), "known formats stay");
    let unknown: Vec<_> = found
        .iter()
        .filter(|f| !KNOWN_FORMATS.contains(&f.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "formats the API server warns about: {unknown:?}"
    );
    // The u32 fields keep their lower bound.
    let json = serde_json::to_string(&crd()).expect("json");
    assert!(!json.contains("uint"), "no unsigned formats");
}

#[test]
fn new_fields_are_described_for_kubectl_explain() {
    let v = serde_json::to_value(crd()).expect("json");
    let spec =
        &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for field in ["autoscaling", "gateway", "pod", "history"] {
        let description = spec[field]["description"].as_str().unwrap_or_default();
        assert!(description.len() > 20, "spec.{field}: {description:?}");
    }
    let labels = spec["pod"]["properties"]["labels"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(labels.contains("win"), "collision rule stated: {labels}");
    let client =
        spec["redis"]["properties"]["tls"]["properties"]["clientCertSecretRef"]["description"]
            .as_str()
            .unwrap_or_default();
    assert!(client.contains("kubernetes.io/tls"), "{client}");
}

#[test]
fn descriptions_are_unwrapped_but_keep_paragraphs_and_lists() {
    assert_eq!(unwrap_lines("one\ntwo\n\nthree"), "one two\n\nthree");
    assert_eq!(unwrap_lines("values:\n - a\n - b"), "values:\n - a\n - b");
}

#[test]
fn secret_refs_follow_the_auth_mode() {
    let mut spec = TaskStreamSpec {
        app: Some(AppSpec::default()),
        attach: None,
        replicas: None,
        autoscaling: None,
        redis: RedisSpec {
            url_secret_ref: Some(SecretKeyRef {
                name: "redis".into(),
                key: "url".into(),
            }),
            ..Default::default()
        },
        websocket: None,
        auth: AuthSpec {
            mode: AuthMode::Jwt,
            jwt: Some(JwtSpec {
                secret_ref: Some(SecretKeyRef {
                    name: "jwt".into(),
                    key: "secret".into(),
                }),
                ..Default::default()
            }),
            forward: None,
        },
        sidecar: None,
        history: None,
        ingress: None,
        gateway: None,
        pod: None,
    };
    assert_eq!(spec.secret_refs().len(), 2);
    spec.auth.mode = AuthMode::None;
    assert_eq!(spec.secret_refs().len(), 1);
}
