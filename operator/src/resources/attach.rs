//! Attach mode (`spec.attach`): what the operator builds when the team owns the workload.
//!
//! ```text
//! TaskStream (spec.attach) ─┬─> service() ─> Service: selector taskstream.dev/inject=<name>, 80 -> 8080
//!                           ├─> ingress / httproute (route_path = the WebSocket path only)
//!                           └─> injection() ─> sidecar container + Secret volumes + config hash
//!                                              (what the webhook adds to each labelled pod)
//! ```
//!
//! The injected sidecar is built by the same functions as owned mode's Deployment, so the two
//! modes run the same container and the same config hash marks a pod up to date.

use std::collections::BTreeMap;

use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Container, Service, ServicePort, ServiceSpec, Volume};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{
    HTTP_PORT, Params, SERVICE_PORT, child_meta, config_hash, httproute, ingress, secret_mounts,
    sidecar_container, validate,
};
use crate::crd::{INJECT_LABEL, TaskStream};
use crate::error::{Error, Result};

/// Everything an attached TaskStream turns into. No Deployment, HPA or PDB: the workload is the
/// team's.
#[derive(Clone, Debug)]
pub struct AttachChildren {
    pub service: Service,
    pub ingress: Option<Ingress>,
    pub route: Option<HttpRoute>,
}

/// Builds the children of an attached TaskStream.
pub fn build(ts: &TaskStream) -> Result<AttachChildren> {
    validate(ts)?;
    if ts.spec.attach.is_none() {
        return Err(Error::InvalidSpec {
            name: ts.name_any(),
            reason: "spec.attach is not set".into(),
        });
    }
    Ok(AttachChildren {
        service: service(ts)?,
        ingress: ingress(ts)?,
        route: httproute(ts)?,
    })
}

/// Selector of the labelled pods: `taskstream.dev/inject=<name>`.
pub fn pod_selector(ts: &TaskStream) -> BTreeMap<String, String> {
    BTreeMap::from([(INJECT_LABEL.to_string(), ts.name_any())])
}

/// The ClusterIP Service in front of the injected sidecars. The target port is the number, not
/// the name `http`: the team's own app container may well have a port named `http` too.
pub fn service(ts: &TaskStream) -> Result<Service> {
    Ok(Service {
        metadata: child_meta(ts)?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(pod_selector(ts)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::Int(HTTP_PORT)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

/// What the webhook adds to a labelled pod: the sidecar container (native or classic, exactly
/// as in owned mode), the Secret volumes it mounts, and the config hash annotation value.
#[derive(Clone, Debug, PartialEq)]
pub struct Injection {
    pub sidecar: Container,
    pub volumes: Vec<Volume>,
    pub config_hash: String,
    /// Native sidecar (an init container with `restartPolicy: Always`) or beside the app.
    pub native: bool,
    /// The pod's termination grace period must be at least this (sidecar drain + 10 s).
    pub min_grace_seconds: i64,
}

/// The injection for `ts`.
pub fn injection(ts: &TaskStream, params: &Params) -> Result<Injection> {
    let sidecar = sidecar_container(&ts.spec, params);
    let volumes: Vec<Volume> = secret_mounts(&ts.spec)
        .into_iter()
        .map(|m| m.volume)
        .collect();
    let config_hash = config_hash(&sidecar, &volumes)?;
    Ok(Injection {
        sidecar,
        volumes,
        config_hash,
        native: ts.spec.native_sidecar(),
        min_grace_seconds: super::deployment::min_grace_seconds(&ts.spec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AttachRollout;
    use crate::fixtures::params;
    use crate::resources::{CONFIG_HASH_ANNOTATION, build as build_owned};

    #[test]
    fn service_selects_the_labelled_pods_on_the_sidecar_port() {
        let ts = TaskStream::test().attached(8000, None);
        let svc = build(&ts).expect("builds").service;
        let spec = svc.spec.expect("spec");
        assert_eq!(
            spec.selector,
            Some(BTreeMap::from([(INJECT_LABEL.into(), "shop".into())]))
        );
        let port = &spec.ports.expect("ports")[0];
        assert_eq!(port.port, 80);
        assert_eq!(port.target_port, Some(IntOrString::Int(8080)));
        assert_eq!(svc.metadata.owner_references.expect("owner").len(), 1);
    }

    #[test]
    fn routes_carry_only_the_websocket_path() {
        let mut ts = TaskStream::test()
            .attached(8000, None)
            .with_ingress("shop.example.com", None);
        ts.spec.websocket = Some(crate::crd::WebSocketSpec {
            path: Some("/live/".into()),
            ..Default::default()
        });
        let ing = build(&ts).expect("builds").ingress.expect("ingress");
        let rules = ing.spec.expect("spec").rules.expect("rules");
        let paths = &rules[0].http.as_ref().expect("http").paths;
        assert_eq!(paths.len(), 1);
        assert_eq!(paths[0].path.as_deref(), Some("/live/"));
        assert_eq!(paths[0].path_type, "Prefix");

        let ts = TaskStream::test()
            .attached(8000, None)
            .with_gateway(&["shop.example.com"]);
        let route = build(&ts).expect("builds").route.expect("route");
        let rules = route.spec.rules.expect("rules");
        let path = rules[0].matches.as_ref().expect("matches")[0]
            .path
            .as_ref()
            .expect("path");
        assert_eq!(path.value.as_deref(), Some("/ws/tasks/"));
        // Owned mode keeps routing the whole host.
        let owned = build_owned(
            &TaskStream::test().with_gateway(&["a.example"]),
            &params(),
            None,
        )
        .expect("builds")
        .route
        .expect("route");
        let rules = owned.spec.rules.expect("rules");
        let path = rules[0].matches.as_ref().expect("m")[0]
            .path
            .as_ref()
            .expect("p");
        assert_eq!(path.value.as_deref(), Some("/"));
    }

    #[test]
    fn owned_only_fields_and_sidecar_ports_are_refused() {
        let ts = TaskStream::test().attached(8000, None).with_replicas(2);
        let err = build(&ts).expect_err("replicas with attach");
        assert!(err.to_string().contains("not allowed with attach"), "{err}");
        let ts = TaskStream::test().attached(9090, Some(AttachRollout::Auto));
        let err = build(&ts).expect_err("sidecar port");
        assert!(err.to_string().contains("8080 or 9090"), "{err}");
        let mut both = TaskStream::test().attached(8000, None);
        both.spec.app = TaskStream::test().spec.app;
        let err = build(&both).expect_err("both modes");
        assert!(
            err.to_string().contains("exactly one of app and attach"),
            "{err}"
        );
        let err = build_owned(&TaskStream::test().attached(8000, None), &params(), None)
            .expect_err("no Deployment in attach mode");
        assert!(err.to_string().contains("spec.app"), "{err}");
    }

    #[test]
    fn injection_is_the_owned_mode_sidecar_and_hash() {
        // Same spec, two modes: the sidecar and its hash must be identical, apart from the
        // upstream port that each mode takes from its own field.
        let owned = TaskStream::test().with_jwt_public_key("jwt", "key.pem");
        let attached = owned.clone().attached(8000, None);
        let inj = injection(&attached, &params()).expect("injection");
        let deployment = build_owned(&owned, &params(), None)
            .expect("builds")
            .deployment;
        let template = deployment.spec.expect("spec").template;
        let hash = template.metadata.expect("meta").annotations.expect("ann")
            [CONFIG_HASH_ANNOTATION]
            .clone();
        assert_eq!(inj.config_hash, hash);
        let pod = template.spec.expect("pod");
        assert_eq!(pod.init_containers.expect("native")[0], inj.sidecar);
        assert_eq!(pod.volumes.expect("volumes"), inj.volumes);
        assert_eq!(
            Some(inj.min_grace_seconds),
            pod.termination_grace_period_seconds
        );
    }
}
