//! The Gateway API HTTPRoute (one `/` PathPrefix rule to the Service's `http` port, so the
//! WebSocket path and the app share the route), what its Gateways say about it, and the URL
//! clients use through it.
//!
//! ```text
//! spec.gateway ─> httproute() ─> HTTPRoute ──(Gateway controller)──> status.parents[].conditions
//!                                                                      └─> acceptance() ─> status
//! parent Gateway (listeners, addresses) ─> route_url() ─> status.url
//! ```

use gateway_api::gateways::{Gateway, GatewayListeners};
use gateway_api::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs,
    HttpRouteRulesMatches, HttpRouteRulesMatchesPath, HttpRouteRulesMatchesPathType, HttpRouteSpec,
};
use kube::ResourceExt;

use super::child_meta;
use super::service::SERVICE_PORT;
use crate::crd::TaskStream;
use crate::error::Result;

/// The HTTPRoute, when `spec.gateway` is set.
pub fn httproute(ts: &TaskStream) -> Result<Option<HttpRoute>> {
    let Some(gateway) = &ts.spec.gateway else {
        return Ok(None);
    };
    let parent_refs = gateway
        .parent_refs
        .iter()
        .map(|p| HttpRouteParentRefs {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            section_name: p.section_name.clone(),
            ..Default::default()
        })
        .collect();
    Ok(Some(HttpRoute {
        metadata: child_meta(ts)?,
        spec: HttpRouteSpec {
            parent_refs: Some(parent_refs),
            hostnames: gateway.hostnames.clone().filter(|h| !h.is_empty()),
            rules: Some(vec![HttpRouteRules {
                matches: Some(vec![HttpRouteRulesMatches {
                    path: Some(HttpRouteRulesMatchesPath {
                        r#type: Some(HttpRouteRulesMatchesPathType::PathPrefix),
                        value: Some(super::route_path(ts)),
                    }),
                    ..Default::default()
                }]),
                // By number: a Service backendRef needs the port number, not its name.
                backend_refs: Some(vec![HttpRouteRulesBackendRefs {
                    name: ts.name_any(),
                    port: Some(SERVICE_PORT),
                    ..Default::default()
                }]),
                ..Default::default()
            }]),
        },
        status: None,
    }))
}

/// What the route's Gateways say about it (`status.parents[].conditions`, type `Accepted`).
#[derive(Clone, Debug, PartialEq)]
pub enum Acceptance {
    /// No Gateway controller has reported on the route yet.
    Pending,
    /// Every parent that reported accepted the route.
    Accepted,
    /// A parent refused it: `gateway` is `namespace/name`, with the controller's reason and
    /// message.
    Refused {
        gateway: String,
        reason: String,
        message: String,
    },
}

/// Reads the acceptance from an applied HTTPRoute.
pub fn acceptance(route: &HttpRoute) -> Acceptance {
    let parents = route.status.as_ref().map(|s| s.parents.as_slice());
    let mut reported = false;
    for parent in parents.unwrap_or_default() {
        let Some(accepted) = parent.conditions.iter().find(|c| c.type_ == "Accepted") else {
            continue;
        };
        reported = true;
        if accepted.status != "True" {
            let ns = parent
                .parent_ref
                .namespace
                .clone()
                .or_else(|| route.namespace())
                .unwrap_or_default();
            return Acceptance::Refused {
                gateway: format!("{ns}/{}", parent.parent_ref.name),
                reason: accepted.reason.clone(),
                message: accepted.message.clone(),
            };
        }
    }
    if reported {
        Acceptance::Accepted
    } else {
        Acceptance::Pending
    }
}

/// The namespace and name of the first parent Gateway, whose listeners decide the URL.
pub fn first_parent(ts: &TaskStream) -> Option<(String, String)> {
    let parent = ts.spec.gateway.as_ref()?.parent_refs.first()?;
    let ns = parent.namespace.clone().or_else(|| ts.namespace())?;
    Some((ns, parent.name.clone()))
}

/// The WebSocket URL through the route, from the first parent Gateway: the route's first host
/// name (else the listener's, else the Gateway's first address), `wss://` when the listener is
/// HTTPS. `None` when the Gateway (or a host for it) is unknown: then there is no URL to claim.
pub fn route_url(ts: &TaskStream, gateway: Option<&Gateway>) -> Option<String> {
    let spec = ts.spec.gateway.as_ref()?;
    let gateway = gateway?;
    let section = spec.parent_refs.first()?.section_name.as_deref();
    let route_host = spec
        .hostnames
        .iter()
        .flatten()
        .find(|h| !h.starts_with('*'))
        .cloned();
    let candidates: Vec<&GatewayListeners> = gateway
        .spec
        .listeners
        .iter()
        .filter(|l| section.is_none_or(|s| l.name == s))
        .filter(|l| matches!(l.protocol.as_str(), "HTTP" | "HTTPS"))
        .filter(|l| match (&route_host, &l.hostname) {
            (Some(host), Some(lh)) => host_matches(lh, host),
            _ => true,
        })
        .collect();
    // A client reaching the route over TLS is the one to advertise when both are offered.
    let listener = candidates
        .iter()
        .find(|l| l.protocol == "HTTPS")
        .or_else(|| candidates.first())?;
    let host = route_host
        .or_else(|| listener.hostname.clone().filter(|h| !h.starts_with('*')))
        .or_else(|| {
            gateway
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .first()
                .map(|a| a.value.clone())
        })?;
    let (scheme, default_port) = if listener.protocol == "HTTPS" {
        ("wss", 443)
    } else {
        ("ws", 80)
    };
    let port = if listener.port == default_port {
        String::new()
    } else {
        format!(":{}", listener.port)
    };
    Some(format!("{scheme}://{host}{port}{}", ts.spec.ws_path()))
}

/// Whether `host` is served by a listener host name (exact, or `*.` suffix).
fn host_matches(listener: &str, host: &str) -> bool {
    match listener.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => listener == host,
    }
}
