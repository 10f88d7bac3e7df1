//! The Ingress (one `/` Prefix route to the Service's `http` port, so the WebSocket path and the
//! app share a host) and the URL clients use, which `status.url` reports.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use kube::ResourceExt;

use super::child_meta;
use crate::crd::TaskStream;
use crate::error::Result;

/// ingress-nginx closes idle proxied connections after 60 s by default; a task-progress
/// WebSocket is mostly idle, so both directions get an hour.
pub const NGINX_TIMEOUT_ANNOTATIONS: [&str; 2] = [
    "nginx.ingress.kubernetes.io/proxy-read-timeout",
    "nginx.ingress.kubernetes.io/proxy-send-timeout",
];

/// The Ingress, when `spec.ingress` is set.
pub fn ingress(ts: &TaskStream) -> Result<Option<Ingress>> {
    let Some(spec) = &ts.spec.ingress else {
        return Ok(None);
    };
    let mut annotations: BTreeMap<String, String> = NGINX_TIMEOUT_ANNOTATIONS
        .iter()
        .map(|k| (k.to_string(), "3600".to_string()))
        .collect();
    // The user's annotations win: they know their ingress controller.
    annotations.extend(spec.annotations.clone().unwrap_or_default());
    let mut metadata = child_meta(ts)?;
    metadata.annotations = Some(annotations);
    Ok(Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(super::route_path(ts)),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: ts.name_any(),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".into()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            default_backend: None,
        }),
        status: None,
    }))
}

/// The WebSocket URL clients use: through the Ingress when there is one (`wss://` with TLS),
/// else the in-cluster Service address.
pub fn status_url(ts: &TaskStream) -> String {
    let path = ts.spec.ws_path();
    match &ts.spec.ingress {
        Some(ing) if ing.tls_secret_name.is_some() => format!("wss://{}{path}", ing.host),
        Some(ing) => format!("ws://{}{path}", ing.host),
        None => format!(
            "ws://{}.{}.svc{path}",
            ts.name_any(),
            ts.namespace().unwrap_or_else(|| "default".into())
        ),
    }
}
