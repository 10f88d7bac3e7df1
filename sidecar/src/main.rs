//! `taskstream-sidecar`: parse flags, start logging, run.

use std::io::IsTerminal;

use clap::Parser;
use taskstream_sidecar::config::{Args, LogFormat};
use tracing_subscriber::EnvFilter;

/// `--features dhat-heap`: every allocation is tracked, and the profile (live bytes by call
/// site at the heap's peak) is written to `dhat-heap.json` when the process exits cleanly.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(taskstream_contract::default::LOG_LEVEL));
    match args.log_format {
        // Colour only for a person at a terminal: `kubectl logs` and files get plain text.
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(std::io::stderr().is_terminal())
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
