//! `taskstream-operator`: parse the command line, start logging, call the library.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use taskstream_operator::cli::LogFormat;
use taskstream_operator::{Cli, Command, Shutdown, crd, render, resources};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Crd => crd::crd_yaml()
            .map(|yaml| print!("{yaml}"))
            .map_err(anyhow::Error::from),
        Command::Render(args) => render_cmd(args),
        Command::Run(args) => {
            if let Err(message) = args.validate() {
                Cli::command()
                    .error(clap::error::ErrorKind::ValueValidation, message)
                    .exit();
            }
            init_tracing(args.log_format);
            taskstream_operator::run(args, Shutdown::on_signal())
                .await
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our errors carry their causes in their message already; `{e:#}` would repeat them.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn render_cmd(args: taskstream_operator::RenderArgs) -> anyhow::Result<()> {
    let source = args.file.display().to_string();
    let input = if source == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .map_err(|e| anyhow::anyhow!("--filename {source}: {e}"))?
    };
    let params = resources::Params {
        sidecar_image: args.sidecar_image,
    };
    print!(
        "{}",
        render::render(&input, &source, &params, &args.namespace)?
    );
    Ok(())
}

/// Logs go to stderr (stdout is for `crd` and `render` output); colours only on a terminal, so
/// `kubectl logs` and log collectors get no escape sequences.
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
