//! Keeps the webhook certificate: one Secret shared by every replica, created if absent
//! (the first writer wins, the others read its result), renewed well before expiry, its CA
//! bundle patched into the MutatingWebhookConfiguration, and its certificate loaded into the
//! server. Every replica runs this; each step is idempotent.
//!
//! ```text
//! every REFRESH: get Secret ─┬─ 404 ─> issue ─> create ─(409: another replica won)─> get again
//!                            ├─ cert-manager's ─> read only
//!                            └─ plan: Keep | Leaf | Fresh ─> replace (resourceVersion; 409 ─> again)
//!                ─> caBundle of the webhook configuration (strategic merge by webhook name)
//!                ─> Resolver::set (after the caBundle: a new CA is trusted before it is served)
//! ```

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::certs::{Material, Plan, issue, managed_by_cert_manager, plan};
use super::server::Resolver;
use crate::error::{Error, Result};
use crate::resources::FIELD_MANAGER;
use crate::shutdown::Shutdown;

/// How often every replica re-reads the Secret: picks up a renewal by another replica, and
/// renews on time (renewal is due months before expiry).
pub const REFRESH: Duration = Duration::from_secs(300);
/// Retry delay after a failed refresh (API server unreachable, RBAC missing).
const RETRY: Duration = Duration::from_secs(10);
/// Attempts of one refresh when other replicas write the Secret at the same time.
const ATTEMPTS: usize = 3;

/// Where the certificate lives and what it must cover.
#[derive(Clone, Debug)]
pub struct KeeperConfig {
    /// Namespace of the Secret (the operator's).
    pub namespace: String,
    /// Name of the Secret (`--webhook-cert-secret`).
    pub secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle` is kept (`--webhook-configuration`).
    pub configuration: String,
    /// DNS names and IPs of the serving certificate.
    pub sans: Vec<String>,
}

fn kube_err(
    action: &'static str,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> Error {
    let (namespace, name) = (namespace.to_string(), name.to_string());
    move |source| Error::Kube {
        action,
        kind,
        namespace,
        name,
        source: Box::new(source),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn secret_of(cfg: &KeeperConfig, material: &Material, base: Option<&Secret>) -> Secret {
    let (data, annotations) = material.to_secret_parts();
    let mut secret = base.cloned().unwrap_or_default();
    secret.metadata.name = Some(cfg.secret.clone());
    secret.metadata.namespace = Some(cfg.namespace.clone());
    secret
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .extend(annotations);
    secret
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    secret.type_ = Some("kubernetes.io/tls".into());
    secret.data = Some(data);
    secret.string_data = None;
    secret
}

/// The Secret with a usable, current certificate: created or renewed if needed.
pub async fn ensure_secret(client: &Client, cfg: &KeeperConfig) -> Result<Secret> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let (ns, name) = (cfg.namespace.as_str(), cfg.secret.as_str());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let now = time::OffsetDateTime::now_utc();
        let current = api
            .get_opt(name)
            .await
            .map_err(kube_err("get", "Secret", ns, name))?;
        let result = match current {
            None => {
                let material = issue(&Plan::Fresh, None, &cfg.sans, now)?;
                let secret = secret_of(cfg, &material, None);
                api.create(&PostParams::default(), &secret).await
            }
            Some(s) if managed_by_cert_manager(&s) => return Ok(s),
            Some(s) => {
                let material = Material::from_secret(&s);
                let todo = plan(material.as_ref(), &cfg.sans, now);
                if todo == Plan::Keep {
                    return Ok(s);
                }
                info!(secret = %format!("{ns}/{name}"), plan = ?todo, "renewing the webhook certificate");
                let material = issue(&todo, material.as_ref(), &cfg.sans, now)?;
                // Replace carries the resourceVersion read above: a concurrent renewal by
                // another replica answers 409 and this one starts over from its result.
                api.replace(
                    name,
                    &PostParams::default(),
                    &secret_of(cfg, &material, Some(&s)),
                )
                .await
            }
        };
        match result {
            Ok(s) => return Ok(s),
            // Another replica wrote it first: read its result and decide again.
            Err(e) if is_conflict(&e) && attempt < ATTEMPTS => {}
            Err(e) => return Err(kube_err("write", "Secret", ns, name)(e)),
        }
    }
}

/// Sets the `caBundle` of every webhook of the configuration to `bundle`, where it differs.
/// A missing configuration is not an error (the chart may not be installed yet; tests register
/// their own): it is logged.
pub async fn patch_ca_bundle(client: &Client, configuration: &str, bundle: &[u8]) -> Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(current) = api.get_opt(configuration).await.map_err(kube_err(
        "get",
        "MutatingWebhookConfiguration",
        "",
        configuration,
    ))?
    else {
        warn!(
            configuration,
            "no MutatingWebhookConfiguration of that name: its caBundle is not kept (--webhook-configuration)"
        );
        return Ok(());
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
    let stale: Vec<_> = current
        .webhooks
        .iter()
        .flatten()
        .filter(|w| w.client_config.ca_bundle.as_ref().map(|b| &b.0[..]) != Some(bundle))
        .map(|w| json!({"name": w.name, "clientConfig": {"caBundle": encoded}}))
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    // Strategic merge: `webhooks` merges by `name`, so only caBundle changes.
    api.patch(
        configuration,
        &PatchParams::default(),
        &Patch::Strategic(json!({"webhooks": stale})),
    )
    .await
    .map_err(kube_err(
        "patch caBundle of",
        "MutatingWebhookConfiguration",
        "",
        configuration,
    ))?;
    info!(
        configuration,
        webhooks = stale.len(),
        "webhook caBundle updated"
    );
    Ok(())
}

/// One refresh: the Secret, the caBundle, then the served certificate.
pub async fn refresh(client: &Client, cfg: &KeeperConfig, resolver: &Resolver) -> Result<()> {
    let secret = ensure_secret(client, cfg).await?;
    let material = Material::from_secret(&secret).ok_or_else(|| Error::CertificateData {
        reason: format!(
            "secret {}/{} has no tls.crt and tls.key",
            cfg.namespace,
            secret.name_any()
        ),
    })?;
    if !managed_by_cert_manager(&secret) {
        patch_ca_bundle(
            client,
            &cfg.configuration,
            material.ca_bundle_pem.as_bytes(),
        )
        .await?;
    }
    resolver.set(&material.cert_pem, &material.key_pem)
}

/// Refreshes until shutdown: every [`REFRESH`], and every [`RETRY`] after a failure.
pub async fn run(client: Client, cfg: KeeperConfig, resolver: Arc<Resolver>, shutdown: Shutdown) {
    loop {
        let delay = match refresh(&client, &cfg, &resolver).await {
            Ok(()) => REFRESH,
            Err(e) => {
                warn!(error = %e, retry_in = ?RETRY, "webhook certificate refresh failed");
                RETRY
            }
        };
        tokio::select! {
            _ = shutdown.clone().wait() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
