//! The shutdown signal: SIGTERM or Ctrl-C flips one watch channel every part listens to.

use tokio::sync::watch;
use tracing::info;

/// A cloneable handle that resolves once shutdown has begun.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// Triggers a [`Shutdown`] (tests and embedders use it; `on_signal` for the binary).
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    /// Begins shutdown.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// A new shutdown pair.
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Shutdown(rx))
    }

    /// A shutdown that begins on SIGTERM or SIGINT.
    pub fn on_signal() -> Shutdown {
        let (trigger, shutdown) = Self::new();
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("shutdown signal received");
            trigger.trigger();
        });
        shutdown
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown has begun (or its trigger is gone).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|down| *down).await;
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
