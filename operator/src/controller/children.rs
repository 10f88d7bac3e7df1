//! The API calls of one reconcile, one concern each: read the referenced Secrets (their keys
//! must exist; their values feed the pod-template hash), hand `spec.replicas` to the
//! autoscaler, server-side apply a child, delete a child the spec dropped, apply the HTTPRoute
//! and read its Gateway.
//!
//! ```text
//! secret_values ─> hash ─┐
//! hand_off_replicas ─────┼─> ssa(Deployment, Service, PDB, HPA, Ingress) ─> apply_route ─> gateway
//!                        └─> delete_stale(what the spec no longer asks for)
//! ```

use std::collections::BTreeMap;

use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{debug, info};

use super::cache::{self, Cached, Children, Version, lookup};
use crate::crd::TaskStream;
use crate::error::{Error, Result};
use crate::resources::{self, FIELD_MANAGER};
use crate::status::Route;

/// Field manager that keeps `spec.replicas` of an autoscaled Deployment when the operator's
/// manager lets go of it (server-side apply would otherwise remove the field, resetting the
/// Deployment to 1 replica). Never applies anything else.
pub const REPLICAS_HANDOFF_MANAGER: &str = "taskstream-operator-replicas-handoff";

/// Checks every referenced Secret key exists and returns the hash of their values (`None` when
/// nothing is referenced). Values go only into the digest: never into a log, an error or an
/// object.
pub async fn secret_hash(
    ts: &TaskStream,
    client: &Client,
    namespace: &str,
) -> Result<Option<String>> {
    let refs = ts.spec.secret_refs();
    if refs.is_empty() {
        return Ok(None);
    }
    let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &refs {
        wanted
            .entry(r.name.as_str())
            .or_default()
            .push(r.key.as_str());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut found = Vec::new();
    for (secret, keys) in wanted {
        let got = api.get_opt(secret).await.map_err(|source| Error::Kube {
            action: "get",
            kind: "Secret",
            namespace: namespace.into(),
            name: secret.into(),
            source: Box::new(source),
        })?;
        let Some(got) = got else {
            return Err(Error::SecretNotFound {
                namespace: namespace.into(),
                name: ts.name_any(),
                secret: secret.into(),
            });
        };
        found.push((secret, keys, got));
    }
    let mut values = Vec::new();
    for (secret, keys, got) in &found {
        for key in keys {
            let value = got
                .data
                .as_ref()
                .and_then(|d| d.get(*key))
                .map(|v| &v.0[..]);
            let Some(value) = value else {
                return Err(Error::SecretKeyNotFound {
                    namespace: namespace.into(),
                    name: ts.name_any(),
                    secret: secret.to_string(),
                    key: key.to_string(),
                });
            };
            values.push((*secret, *key, value));
        }
    }
    Ok(Some(resources::secret_hash(values)))
}

/// With `spec.autoscaling`: the replica count the Deployment must be applied with. `Some(min)`
/// when it does not exist yet (so it starts at `minReplicas`, not the API server's 1); `None`
/// otherwise, after handing the field to [`REPLICAS_HANDOFF_MANAGER`] if the operator's
/// manager still owns it (it did before autoscaling was turned on, or since the creation).
pub async fn hand_off_replicas(
    ts: &TaskStream,
    client: &Client,
    namespace: &str,
) -> Result<Option<i32>> {
    let name = ts.name_any();
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let kube_err = |action, source| Error::Kube {
        action,
        kind: "Deployment",
        namespace: namespace.into(),
        name: name.clone(),
        source: Box::new(source),
    };
    let Some(existing) = api.get_opt(&name).await.map_err(|e| kube_err("get", e))? else {
        return Ok(Some(ts.spec.min_replicas()));
    };
    let owns_replicas = existing.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER)
            && m.operation.as_deref() == Some("Apply")
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
    });
    let current = existing.spec.as_ref().and_then(|s| s.replicas);
    if let (true, Some(current)) = (owns_replicas, current) {
        // Same value, so the two managers co-own the field; then ours lets go and it stays.
        let handoff = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": current},
        });
        api.patch(
            &name,
            &PatchParams::apply(REPLICAS_HANDOFF_MANAGER).force(),
            &Patch::Apply(&handoff),
        )
        .await
        .map_err(|e| kube_err("hand off replicas of", e))?;
        info!(taskstream = %name, replicas = current, "replica count handed to the autoscaler");
    }
    Ok(None)
}

/// Server-side apply with the one field manager, forcing ownership of the fields we set.
pub async fn ssa<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    kind: &'static str,
    obj: &K,
) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Kube {
        action: "apply",
        kind,
        namespace: namespace.into(),
        name: name.into(),
        source: Box::new(source),
    })
}

/// [`ssa`], unless `cached` (the child in the watch cache) shows that this process's last
/// apply of the same object is still in place: then nothing is sent and `None` returned.
// `ssa`'s five plus what the skip needs (cache, cached child, how to compare): a struct for
// one call shape would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn apply_unless_unchanged<K>(
    children: &Children,
    client: &Client,
    namespace: &str,
    name: &str,
    kind: &'static str,
    obj: &K,
    cached: Option<&ObjectMeta>,
    version: Version,
) -> Result<Option<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let digest = cache::digest(obj);
    if let Some(cached) = cached
        && children.unchanged(kind, obj.meta(), &digest, cached, version)
    {
        return Ok(None);
    }
    let answer = ssa(client, namespace, name, kind, obj).await?;
    children.record(kind, digest, answer.meta(), version);
    Ok(Some(answer))
}

/// Applies the HTTPRoute. A 404 means the API server has no HTTPRoute resource: the Gateway
/// API CRDs are not installed, which the user must fix (Degraded), not a transient failure.
pub async fn apply_route(
    ts: &TaskStream,
    client: &Client,
    namespace: &str,
    route: &HttpRoute,
) -> Result<HttpRoute> {
    let name = ts.name_any();
    match ssa(client, namespace, &name, "HTTPRoute", route).await {
        Err(Error::Kube { source, .. }) if matches!(source.as_ref(), kube::Error::Api(s) if s.code == 404) => {
            Err(Error::GatewayApiMissing {
                namespace: namespace.into(),
                name,
            })
        }
        other => other,
    }
}

/// The route's first parent Gateway, for the URL. Unreadable (absent, forbidden: a Gateway in
/// another namespace under a namespaced operator) is not an error: the URL falls back.
pub async fn parent_gateway(ts: &TaskStream, client: &Client) -> Option<Gateway> {
    let (ns, name) = resources::route::first_parent(ts)?;
    let api: Api<Gateway> = Api::namespaced(client.clone(), &ns);
    match api.get_opt(&name).await {
        Ok(gateway) => gateway,
        Err(e) => {
            debug!(gateway = %format!("{ns}/{name}"), error = %e, "reading the route's gateway");
            None
        }
    }
}

/// Applies the browser's way in that the spec asks for (an Ingress or an HTTPRoute) and deletes
/// the other if this TaskStream owns it; returns the applied route's acceptance and URL.
pub async fn apply_entry(
    ts: &TaskStream,
    children: &Children,
    client: &Client,
    namespace: &str,
    ingress: Option<&Ingress>,
    route: Option<&HttpRoute>,
) -> Result<Option<Route>> {
    let name = ts.name_any();
    let cached_ingress = lookup(&children.ingresses, namespace, &name);
    match ingress {
        Some(ing) => {
            let cached = match &cached_ingress {
                Cached::Present(c) => Some(&c.metadata),
                _ => None,
            };
            let kind = "Ingress";
            let version = Version::ResourceVersion;
            apply_unless_unchanged(
                children, client, namespace, &name, kind, ing, cached, version,
            )
            .await?;
        }
        None => {
            delete_stale_cached::<Ingress, _>(ts, client, namespace, "Ingress", cached_ingress)
                .await?
        }
    }
    match route {
        // Always applied: the answer carries the Gateways' acceptance the status shows.
        Some(route) => {
            let applied = apply_route(ts, client, namespace, route).await?;
            let gateway = parent_gateway(ts, client).await;
            Ok(Some(Route {
                acceptance: resources::route::acceptance(&applied),
                url: resources::route::route_url(ts, gateway.as_ref()),
            }))
        }
        None => {
            let cached = children.route(namespace, &name);
            delete_stale_cached::<HttpRoute, _>(ts, client, namespace, "HTTPRoute", cached).await?;
            Ok(None)
        }
    }
}

/// [`delete_stale`] with the watch cache's answer: `Absent` costs no request, `Present` only
/// the delete (if owned), `Unknown` (the cache has not listed yet) reads the API server.
pub async fn delete_stale_cached<K, C>(
    ts: &TaskStream,
    client: &Client,
    namespace: &str,
    kind: &'static str,
    cached: Cached<C>,
) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    C: Resource,
{
    match cached {
        Cached::Unknown => delete_stale::<K>(ts, client, namespace, kind).await,
        Cached::Absent => Ok(()),
        Cached::Present(obj) => {
            delete_if_owned::<K>(ts, client, namespace, kind, obj.owner_references()).await
        }
    }
}

/// Deletes a child the spec no longer asks for, if this TaskStream owns it (a same-named object
/// someone else made is left alone). A kind the API server does not serve (HTTPRoute without
/// the Gateway API) answers 404, like a missing object: nothing to delete.
pub async fn delete_stale<K>(
    ts: &TaskStream,
    client: &Client,
    namespace: &str,
    kind: &'static str,
) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = ts.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let kube_err = |action, source| Error::Kube {
        action,
        kind,
        namespace: namespace.into(),
        name: name.clone(),
        source: Box::new(source),
    };
    // Any 404: `get_opt` knows only the JSON NotFound of a missing object, while an API group
    // the server does not serve answers a plain-text "404 page not found".
    let existing = match api.get(&name).await {
        Ok(existing) => existing,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(kube_err("get", e)),
    };
    delete_if_owned::<K>(ts, client, namespace, kind, existing.owner_references()).await
}

/// Deletes the child named like `ts` when `owners` name `ts` (a same-named object someone else
/// made is left alone).
async fn delete_if_owned<K>(
    ts: &TaskStream,
    client: &Client,
    namespace: &str,
    kind: &'static str,
    owners: &[OwnerReference],
) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let uid = ts.uid();
    if !owners.iter().any(|o| Some(&o.uid) == uid.as_ref()) {
        return Ok(());
    }
    let name = ts.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => {
            info!(taskstream = %name, kind, "deleted child the spec no longer asks for");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube {
            action: "delete",
            kind,
            namespace: namespace.into(),
            name,
            source: Box::new(e),
        }),
    }
}
