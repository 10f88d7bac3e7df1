//! `taskstream-sidecar`: parse flags, start logging, run.

use clap::Parser;
use taskstream_sidecar::config::{Args, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("taskstream-sidecar: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = async {
        let stop = taskstream_sidecar::shutdown_signal().await?;
        taskstream_sidecar::run(config, stop, |_| {}).await
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskstream-sidecar: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
