//! `taskstream-demo`: the demo app of local mode. Run it behind the sidecar; see scripts/demo.sh.

use std::io::IsTerminal;

use clap::Parser;
use taskstream_demo::Args;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colour only for a person at a terminal: `kubectl logs` and files get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // Handled explicitly, not left to the default action: as PID 1 (a container without an
    // init) the kernel ignores signals that have no handler, and a pod deletion would wait out
    // the whole grace period.
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| anyhow::anyhow!("install the SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| anyhow::anyhow!("install the SIGINT handler: {e}"))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("bind --listen {}: {e}", args.listen))?;
    // Running tasks are simulations: nothing to drain, so stopping is dropping them.
    tokio::select! {
        () = taskstream_demo::serve(listener, args) => {}
        _ = term.recv() => info!("SIGTERM received, exiting"),
        _ = int.recv() => info!("SIGINT received, exiting"),
    }
    Ok(())
}
