//! Command line: `run` (default), `crd`, `render`. Every flag has a `TASKSTREAM_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default sidecar image: the release matching this operator.
pub const DEFAULT_SIDECAR_IMAGE: &str = concat!(
    "ghcr.io/taskstream/taskstream-sidecar:",
    env!("CARGO_PKG_VERSION")
);

/// taskstream-operator: reconciles TaskStream resources into apps with the taskstream sidecar.
#[derive(Debug, Parser)]
#[command(
    name = "taskstream-operator",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `run`'s flags, for when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print the TaskStream CustomResourceDefinition as YAML.
    Crd,
    /// Print, offline, the objects `run` would apply for the TaskStreams in a file.
    Render(RenderArgs),
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of `run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "TASKSTREAM_NAMESPACE")]
    pub namespace: Option<String>,

    /// Sidecar image for TaskStreams that do not set spec.sidecar.image.
    #[arg(long, env = "TASKSTREAM_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,

    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "TASKSTREAM_ADMIN_LISTEN", default_value = "0.0.0.0:8081")]
    pub admin_listen: SocketAddr,

    /// Elect a leader through a coordination.k8s.io Lease; only the leader reconciles.
    #[arg(long, env = "TASKSTREAM_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "TASKSTREAM_LEASE_NAME",
        default_value = "taskstream-operator"
    )]
    pub lease_name: String,

    /// Namespace of the Lease (default: the operator's own namespace).
    #[arg(long, env = "TASKSTREAM_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Identity of this replica in the Lease (default: $POD_NAME, else $HOSTNAME).
    #[arg(long, env = "TASKSTREAM_LEASE_IDENTITY")]
    pub lease_identity: Option<String>,

    /// Seconds a Lease stays valid without renewal.
    #[arg(long, env = "TASKSTREAM_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// Seconds before expiry at which the leader renews (must be less than the duration).
    #[arg(long, env = "TASKSTREAM_LEASE_GRACE_SECONDS", default_value_t = 5)]
    pub lease_grace_seconds: u64,

    /// Log format.
    #[arg(long, env = "TASKSTREAM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Flags of `render`.
#[derive(Clone, Debug, Args)]
pub struct RenderArgs {
    /// File with one or more TaskStream documents (`-` for standard input).
    #[arg(short = 'f', long = "filename", env = "TASKSTREAM_RENDER_FILE")]
    pub file: PathBuf,

    /// Sidecar image for TaskStreams that do not set spec.sidecar.image.
    #[arg(long, env = "TASKSTREAM_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,

    /// Namespace for TaskStreams whose manifest has none.
    #[arg(long, env = "TASKSTREAM_NAMESPACE", default_value = "default")]
    pub namespace: String,
}

impl RunArgs {
    /// Checks what clap cannot: the message names the flag at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.sidecar_image.trim().is_empty() {
            return Err("--sidecar-image must not be empty".into());
        }
        if self.leader_election {
            if self.lease_duration_seconds == 0 || self.lease_grace_seconds == 0 {
                return Err(
                    "--lease-duration-seconds and --lease-grace-seconds must be greater than 0"
                        .into(),
                );
            }
            if self.lease_grace_seconds >= self.lease_duration_seconds {
                return Err(format!(
                    "--lease-grace-seconds ({}) must be less than --lease-duration-seconds ({})",
                    self.lease_grace_seconds, self.lease_duration_seconds
                ));
            }
            if self.lease_name.trim().is_empty() {
                return Err("--lease-name must not be empty".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("taskstream-operator").chain(args.iter().copied()))
    }

    #[test]
    fn run_is_the_default() {
        let cli = parse(&["--namespace", "apps"]).expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.run.namespace.as_deref(), Some("apps"));
        assert_eq!(cli.run.admin_listen.to_string(), "0.0.0.0:8081");
        assert!(cli.run.leader_election);
        assert!(cli.run.validate().is_ok());
    }

    #[test]
    fn bad_config_names_the_flag() {
        let err = parse(&["run", "--admin-listen", "nowhere"]).expect_err("bad address");
        assert!(err.to_string().contains("--admin-listen"), "{err}");
        let cli = parse(&["run", "--lease-grace-seconds", "20"]).expect("parses");
        let Some(Command::Run(args)) = cli.command else {
            panic!("run subcommand");
        };
        let err = args.validate().expect_err("grace >= duration");
        assert!(err.contains("--lease-grace-seconds"), "{err}");
    }

    #[test]
    fn render_takes_a_file() {
        let cli = parse(&["render", "-f", "ts.yaml"]).expect("parses");
        let Some(Command::Render(args)) = cli.command else {
            panic!("render subcommand");
        };
        assert_eq!(args.file, PathBuf::from("ts.yaml"));
        assert_eq!(args.namespace, "default");
    }
}
