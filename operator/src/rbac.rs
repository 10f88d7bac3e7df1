//! The RBAC the operator needs, as one table: `operator/rbac.yaml`.
//!
//! ```text
//! controller, reconcile, leader ──(tests below: every request to a fake API server)──┐
//!                                                                                   v
//!                                        operator/rbac.yaml  (group, resource, verbs, scope)
//!                                                                                   ^
//! charts/taskstream rendered (Cluster)Role rules ──(scripts/check_chart.py)─────────┘
//! ```
//!
//! The tests fail when the code makes a request the table lacks, or when the table lists a
//! permission no code path uses; the chart check fails when the chart's rules differ from it.

use std::collections::BTreeSet;

use http::Method;
use serde::Deserialize;

/// The table, as committed.
pub const RBAC_YAML: &str = include_str!("../rbac.yaml");

/// Where a rule applies.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every watched namespace (a ClusterRole, or a Role in the one watched namespace).
    Watched,
    /// The leader election Lease's namespace only.
    Lease,
    /// The operator's own namespace: the webhook certificate Secret.
    Webhook,
    /// Cluster-scoped objects: the MutatingWebhookConfiguration.
    Cluster,
}

/// One row: `verbs` on `group`/`resource` within `scope`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Rule {
    pub scope: Scope,
    pub group: String,
    pub resource: String,
    pub verbs: Vec<String>,
}

#[derive(Deserialize)]
struct Table {
    rules: Vec<Rule>,
}

/// The rows of [`RBAC_YAML`].
pub fn rules() -> Result<Vec<Rule>, serde_norway::Error> {
    serde_norway::from_str::<Table>(RBAC_YAML).map(|t| t.rules)
}

/// A permission: (API group, resource[/subresource], verb), as the RBAC authorizer sees it.
pub type Permission = (String, String, String);

/// Every permission of the table in `scope`.
pub fn permissions(rules: &[Rule], scope: Scope) -> BTreeSet<Permission> {
    rules
        .iter()
        .filter(|r| r.scope == scope)
        .flat_map(|r| {
            r.verbs
                .iter()
                .map(|v| (r.group.clone(), r.resource.clone(), v.clone()))
        })
        .collect()
}

/// The permission a request needs and the namespace it is in (`None`: all namespaces), the
/// way the API server's request-info resolver derives them; `None` for non-resource paths.
/// A server-side apply that creates its object also needs `create`: only the caller knows
/// whether it did (see the tests).
pub fn permission_of(
    method: &Method,
    path: &str,
    query: &str,
) -> Option<(Permission, Option<String>)> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method.clone(), named) {
        (Method::GET, _) if watch => "watch",
        (Method::GET, true) => "get",
        (Method::GET, false) => "list",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, true) => "delete",
        (Method::DELETE, false) => "deletecollection",
        _ => return None,
    };
    Some(((group, resource, verb.to_string()), namespace))
}

#[cfg(test)]
mod tests;
