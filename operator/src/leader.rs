//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): only the holder runs
//! the controller, so two replicas never both write. Losing the lease stops the controller
//! (in-flight reconciles finish) and the replica goes back to standing by.

use std::sync::Arc;
use std::time::Duration;

use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

use crate::controller::{self, Context};
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;

/// Where and how to hold the Lease.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    /// Namespace of the Lease; `None` = the client's default namespace (the pod's own).
    pub namespace: Option<String>,
    /// Identity in the Lease; `None` = `$POD_NAME`, `$HOSTNAME`, or a random one.
    pub identity: Option<String>,
    pub duration_seconds: u64,
    pub grace_seconds: u64,
}

/// Runs the controller whenever this replica holds the Lease, until shutdown.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    lease: LeaseConfig,
    shutdown: Shutdown,
) -> Result<()> {
    let lease_ns = lease
        .namespace
        .clone()
        .unwrap_or_else(|| ctx.client.default_namespace().to_string());
    let lease_err = |source| Error::Lease {
        namespace: lease_ns.clone(),
        lease: lease.name.clone(),
        source: Box::new(source),
    };
    let identity = lease
        .identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok());
    let mut builder = LeaseManagerBuilder::new(ctx.client.clone(), &lease.name)
        .with_namespace(&lease_ns)
        .with_duration(lease.duration_seconds)
        .with_grace(lease.grace_seconds);
    if let Some(identity) = identity {
        builder = builder.with_identity(identity);
    }
    let manager = builder.build().await.map_err(lease_err)?;
    let (mut leading, task) = manager.watch().await;
    info!(lease = %lease.name, namespace = %lease_ns, "waiting for leadership");

    loop {
        if !*leading.borrow_and_update() {
            tokio::select! {
                _ = shutdown.clone().wait() => break,
                changed = leading.changed() => {
                    if changed.is_err() {
                        warn!("lease manager stopped");
                        break;
                    }
                    continue;
                }
            }
        }
        info!(lease = %lease.name, "leading: starting the controller");
        ctx.metrics.leader.set(1);
        let mut lost = leading.clone();
        let down = shutdown.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // Bridges "shutdown or leadership lost" into one Sync future for the controller.
        let watcher = tokio::spawn(async move {
            tokio::select! {
                _ = down.wait() => {}
                _ = lost.wait_for(|leader| !*leader) => {}
            }
            let _ = stop_tx.send(());
        });
        controller::run(ctx.clone(), namespace.clone(), async move {
            let _ = stop_rx.await;
        })
        .await;
        watcher.abort();
        ctx.metrics.leader.set(0);
        if shutdown.is_triggered() {
            break;
        }
        warn!(lease = %lease.name, "lost leadership: controller stopped, standing by");
    }

    // Closing the channel makes the manager release the Lease, so a standby takes over at once.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(10), task).await {
        Ok(Ok(Ok(_))) => info!("lease released"),
        Ok(Ok(Err(e))) => warn!(error = %e, "releasing lease"),
        Ok(Err(e)) => warn!(error = %e, "lease task"),
        Err(_) => warn!("lease release timed out"),
    }
    Ok(())
}
