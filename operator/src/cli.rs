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
// Parsed once at start-up: the size of the `Run` variant costs nothing, and boxing it would
// ripple into every caller.
#[allow(clippy::large_enum_variant)]
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

    /// Address of the attach-mode webhook's HTTPS server (path /mutate-pods), served by every
    /// replica; `off` disables the webhook.
    #[arg(
        long,
        env = "TASKSTREAM_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    pub webhook_listen: WebhookListen,

    /// MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(
        long,
        env = "TASKSTREAM_WEBHOOK_CONFIGURATION",
        default_value = "taskstream-operator"
    )]
    pub webhook_configuration: String,

    /// Secret (in the operator's namespace) holding the webhook's CA and serving certificate;
    /// created and renewed by the operator unless cert-manager issues it.
    #[arg(
        long,
        env = "TASKSTREAM_WEBHOOK_CERT_SECRET",
        default_value = "taskstream-webhook-tls"
    )]
    pub webhook_cert_secret: String,

    /// `namespace/name` of the webhook's Service: its DNS names go into the serving certificate.
    #[arg(long, env = "TASKSTREAM_WEBHOOK_SERVICE")]
    pub webhook_service: Option<String>,

    /// Extra DNS names or IPs of the serving certificate, comma-separated (e.g. 127.0.0.1 for
    /// an operator run outside the cluster).
    #[arg(long, env = "TASKSTREAM_WEBHOOK_EXTRA_SANS", value_delimiter = ',')]
    pub webhook_extra_sans: Vec<String>,
}

/// `--webhook-listen`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookListen {
    Off,
    On(SocketAddr),
}

impl std::str::FromStr for WebhookListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(WebhookListen::Off);
        }
        s.parse()
            .map(WebhookListen::On)
            .map_err(|e| format!("{e}: expected an address like 0.0.0.0:9443, or off"))
    }
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
    /// `--webhook-service` split into namespace and name.
    pub fn webhook_service_ref(&self) -> Option<(&str, &str)> {
        let (ns, name) = self.webhook_service.as_deref()?.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then_some((ns, name))
    }

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
        if self.webhook_listen != WebhookListen::Off {
            if let Some(service) = &self.webhook_service
                && self.webhook_service_ref().is_none()
            {
                return Err(format!(
                    "--webhook-service {service:?} must be namespace/name"
                ));
            }
            if self.webhook_service.is_none() && self.webhook_extra_sans.is_empty() {
                return Err(
                    "--webhook-service (or --webhook-extra-sans) is needed: the names \
                            the webhook's certificate is valid for; or --webhook-listen off"
                        .into(),
                );
            }
            for (flag, value) in [
                ("--webhook-configuration", &self.webhook_configuration),
                ("--webhook-cert-secret", &self.webhook_cert_secret),
            ] {
                if value.trim().is_empty() {
                    return Err(format!("{flag} must not be empty"));
                }
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
        let cli = parse(&["--namespace", "apps", "--webhook-listen", "off"]).expect("parses");
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
    fn webhook_flags() {
        let cli = parse(&["--webhook-service", "ops/taskstream-webhook"]).expect("parses");
        assert_eq!(
            cli.run.webhook_listen,
            WebhookListen::On("0.0.0.0:9443".parse().expect("addr"))
        );
        assert_eq!(cli.run.webhook_configuration, "taskstream-operator");
        assert_eq!(cli.run.webhook_cert_secret, "taskstream-webhook-tls");
        assert_eq!(
            cli.run.webhook_service_ref(),
            Some(("ops", "taskstream-webhook"))
        );
        assert!(cli.run.validate().is_ok());

        let cli = parse(&["--webhook-extra-sans", "127.0.0.1,localhost"]).expect("parses");
        assert_eq!(cli.run.webhook_extra_sans, ["127.0.0.1", "localhost"]);
        assert!(cli.run.validate().is_ok());

        let cli = parse(&[]).expect("parses");
        let err = cli
            .run
            .validate()
            .expect_err("no names for the certificate");
        assert!(err.contains("--webhook-service"), "{err}");
        let cli = parse(&["--webhook-listen", "off"]).expect("parses");
        assert_eq!(cli.run.webhook_listen, WebhookListen::Off);
        assert!(cli.run.validate().is_ok());

        let cli = parse(&["--webhook-service", "just-a-name"]).expect("parses");
        let err = cli.run.validate().expect_err("not namespace/name");
        assert!(err.contains("namespace/name"), "{err}");
        let err = parse(&["--webhook-listen", "nowhere"]).expect_err("bad address");
        assert!(err.to_string().contains("--webhook-listen"), "{err}");
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
