//! taskstream operator: reconciles `TaskStream` resources (group `taskstream.dev`) into the
//! user's app with the taskstream sidecar in front of it.
//!
//! ```text
//! main.rs ─> cli (clap) ─> run ─┬─> admin   (/healthz /readyz /metrics)
//!                               ├─> webhook (every replica: HTTPS /mutate-pods, certificates)
//!                               └─> leader  (Lease) ─> controller ─┬─> resources (pure builders)
//!                 ─> crd     (print the CRD)                       └─> status    (pure)
//!                 ─> render  (print the children, offline; same builders)
//! ```

pub mod admin;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod render;
pub mod resources;
pub mod shutdown;
pub mod status;
pub mod webhook;

#[cfg(test)]
pub mod fixtures;

use std::sync::Arc;

use kube::Client;
use tracing::info;

pub use cli::{Cli, Command, RenderArgs, RunArgs};
pub use error::{Error, Result};
pub use shutdown::Shutdown;

/// The API client, every request counted in `metrics.api_requests`.
async fn client(metrics: &metrics::Metrics) -> Result<Client> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| Error::Client(Box::new(kube::Error::InferConfig(e))))?;
    let builder =
        kube::client::ClientBuilder::try_from(config).map_err(|e| Error::Client(Box::new(e)))?;
    // Outermost, so a request counts once however the stack below retries or refreshes auth.
    Ok(builder
        .with_layer(&metrics::api::CountRequests::new(
            metrics.api_requests.clone(),
        ))
        .build())
}

/// Runs the operator until `shutdown`: admin server, then the controller (under leader
/// election unless disabled). `args` must have passed [`RunArgs::validate`].
pub async fn run(args: RunArgs, shutdown: Shutdown) -> Result<()> {
    let service = args
        .webhook_service_ref()
        .map(|(ns, name)| (ns.to_string(), name.to_string()));
    let RunArgs {
        namespace,
        sidecar_image,
        admin_listen,
        leader_election,
        lease_name,
        lease_namespace,
        lease_identity,
        lease_duration_seconds,
        lease_grace_seconds,
        log_format: _,
        webhook_listen,
        webhook_configuration,
        webhook_cert_secret,
        webhook_service: _,
        webhook_extra_sans,
    } = args;

    let listener = admin::bind(admin_listen).await?;
    let (metrics, registry) = metrics::Metrics::registered();
    let health = Arc::new(admin::Health::default());
    let admin = tokio::spawn(admin::serve(
        listener,
        Arc::new(registry),
        health.clone(),
        shutdown.clone(),
    ));

    let client = client(&metrics).await?;
    let params = resources::Params { sidecar_image };

    // The webhook runs on every replica, leader or not: the API server calls any of them.
    let webhook = match webhook_listen {
        cli::WebhookListen::Off => None,
        cli::WebhookListen::On(addr) => {
            let listener = webhook::server::bind(addr).await?;
            let resolver = Arc::new(webhook::server::Resolver::default());
            health.require_webhook(resolver.clone());
            let keeper = webhook::keeper::KeeperConfig {
                namespace: client.default_namespace().to_string(),
                secret: webhook_cert_secret,
                configuration: webhook_configuration,
                sans: webhook::certs::sans(
                    service.as_ref().map(|(ns, n)| (ns.as_str(), n.as_str())),
                    &webhook_extra_sans,
                ),
            };
            let keeper = tokio::spawn(webhook::keeper::run(
                client.clone(),
                keeper,
                resolver.clone(),
                shutdown.clone(),
            ));
            let server = tokio::spawn(webhook::server::serve(
                listener,
                resolver,
                Arc::new(client.clone()),
                Arc::new(params.clone()),
                shutdown.clone(),
            ));
            Some((keeper, server))
        }
    };
    let ctx = Arc::new(controller::Context::new(client, params, metrics));
    health.set_ready(true);

    let result = if leader_election {
        let lease = leader::LeaseConfig {
            name: lease_name,
            namespace: lease_namespace,
            identity: lease_identity,
            duration_seconds: lease_duration_seconds,
            grace_seconds: lease_grace_seconds,
        };
        leader::run(ctx, namespace, lease, shutdown.clone()).await
    } else {
        ctx.metrics.leader.set(1);
        controller::run(ctx, namespace, shutdown.clone().wait()).await;
        Ok(())
    };
    health.set_ready(false);
    if let Some((keeper, server)) = webhook {
        let _ = keeper.await;
        let _ = server.await;
    }
    let _ = admin.await;
    info!("stopped");
    result
}
