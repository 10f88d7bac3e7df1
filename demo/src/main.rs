//! `taskstream-demo`: the demo app of local mode. Run it behind the sidecar; see scripts/demo.sh.

use clap::Parser;
use taskstream_demo::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("bind --listen {}: {e}", args.listen))?;
    taskstream_demo::serve(listener, args).await;
    Ok(())
}
