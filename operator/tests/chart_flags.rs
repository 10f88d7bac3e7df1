//! The chart <-> operator contract: `helm template` the chart with each CI values file, take
//! the operator container's args and env, parse them with the operator's own `Cli` and
//! `RunArgs::validate()`, and check the result field by field against the values.
//!
//! ```text
//! charts/taskstream + ci/<x>-values.yaml --helm template--> Deployment/operator container
//!   args ------------------------------------------------------+
//!   env NAME (a Cli flag's env) --> --flag=value ---------------+--> Cli::try_parse_from --> RunArgs == values?
//!   env RUST_LOG / POD_NAME (read outside clap) --> checked on their own
//! ```
//!
//! Needs helm: `.tools/bin/helm` (`./scripts/install-test-deps.sh`, which `scripts/test.sh`
//! runs) or `helm` on PATH; without it the test says so and passes.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use clap::{ArgAction, CommandFactory, Parser};
use serde::Deserialize;
use serde_json::Value;
use taskstream_operator::cli::{Cli, Command, LogFormat, RunArgs, WebhookListen};

const RELEASE: &str = "ts";
const NAMESPACE: &str = "taskstream-system";
const APP_VERSION: &str = env!("CARGO_PKG_VERSION");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn helm() -> Option<PathBuf> {
    let local = workspace().join(".tools/bin/helm");
    if local.is_file() {
        return Some(local);
    }
    let on_path = Process::new("helm").arg("version").output();
    on_path
        .is_ok_and(|o| o.status.success())
        .then(|| PathBuf::from("helm"))
}

/// The operator container of the chart rendered with `values` (none: the chart's defaults).
fn operator_container(helm: &Path, values: Option<&Path>) -> Value {
    let chart = workspace().join("charts/taskstream");
    let mut cmd = Process::new(helm);
    cmd.args(["template", RELEASE])
        .arg(&chart)
        .args(["--namespace", NAMESPACE]);
    if let Some(v) = values {
        cmd.arg("--values").arg(v);
    }
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "helm template {values:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut found = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let doc = Value::deserialize(doc).expect("yaml document");
        if doc["kind"] != "Deployment" {
            continue;
        }
        for c in doc["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if c["name"] == "operator" {
                found.push(c.clone());
            }
        }
    }
    assert_eq!(found.len(), 1, "one operator container in {values:?}");
    found.remove(0)
}

/// What the operator process would parse: its flags (env turned into flags), `RUST_LOG`.
fn parse(container: &Value) -> (Cli, Option<String>) {
    let command = Cli::command();
    let run = command
        .find_subcommand("run")
        .expect("run subcommand")
        .clone();
    let mut argv = vec!["taskstream-operator".to_string()];
    let args: Vec<String> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect();
    argv.extend(args);
    let mut rust_log = None;
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name");
        match name {
            "RUST_LOG" => {
                rust_log = Some(var["value"].as_str().expect("RUST_LOG value").to_string());
                continue;
            }
            // The Lease identity fallback (--lease-identity's default), read by the leader code.
            "POD_NAME" => {
                assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
                continue;
            }
            _ => {}
        }
        let value = var["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: only plain values become flags"));
        let arg = run
            .get_arguments()
            .find(|a| a.get_env() == Some(OsStr::new(name)))
            .unwrap_or_else(|| panic!("the chart sets {name}, which the operator does not read"));
        let long = arg.get_long().expect("a --flag");
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            assert_eq!(value, "true", "{name}");
            argv.push(format!("--{long}"));
        } else {
            argv.push(format!("--{long}={value}"));
        }
    }
    let cli = Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("the operator refuses the chart's flags {argv:?}: {e}"));
    (cli, rust_log)
}

/// What the values ask of `run`.
struct Expected {
    namespace: Option<&'static str>,
    sidecar_image: String,
    admin_port: u16,
    leader_election: bool,
    lease_name: &'static str,
    lease_namespace: Option<&'static str>,
    lease_duration_seconds: u64,
    lease_grace_seconds: u64,
    log_format: LogFormat,
    rust_log: &'static str,
    /// The attach-mode webhook: on, with the chart's configuration, Secret and Service names.
    webhook: bool,
    webhook_port: u16,
    webhook_cert_secret: &'static str,
}

impl Default for Expected {
    fn default() -> Self {
        Self {
            namespace: None,
            sidecar_image: format!("ghcr.io/taskstream/taskstream-sidecar:{APP_VERSION}"),
            admin_port: 8081,
            leader_election: true,
            lease_name: "taskstream-operator",
            lease_namespace: Some(NAMESPACE),
            lease_duration_seconds: 15,
            lease_grace_seconds: 5,
            log_format: LogFormat::Json,
            rust_log: "info",
            webhook: true,
            webhook_port: 9443,
            webhook_cert_secret: "taskstream-webhook-tls",
        }
    }
}

fn expected(values: &str) -> Expected {
    let default = Expected::default();
    match values {
        "default"
        | "monitoring-values.yaml"
        | "observability-values.yaml"
        | "cert-manager-values.yaml" => default,
        "no-webhook-values.yaml" => Expected {
            webhook: false,
            ..default
        },
        "everything-values.yaml" => Expected {
            sidecar_image: "registry.example.com/taskstream/sidecar:0.1.0-rc1".into(),
            admin_port: 9100,
            log_format: LogFormat::Text,
            rust_log: "info,kube=debug",
            webhook_port: 10443,
            webhook_cert_secret: "taskstream-webhook-cert",
            ..default
        },
        "ha-values.yaml" => Expected {
            lease_name: "taskstream-ha",
            lease_duration_seconds: 20,
            lease_grace_seconds: 8,
            ..default
        },
        "namespaced-values.yaml" => Expected {
            namespace: Some(NAMESPACE),
            ..default
        },
        "namespaced-other-values.yaml" => Expected {
            namespace: Some("apps"),
            ..default
        },
        // The Lease flags are left out; clap's defaults fill them.
        "no-leader-election-values.yaml" => Expected {
            leader_election: false,
            lease_namespace: None,
            ..default
        },
        other => panic!("no expectations for {other}: add them here"),
    }
}

fn check(values: &str, run: &RunArgs, rust_log: Option<&str>) {
    let want = expected(values);
    assert_eq!(
        run.namespace.as_deref(),
        want.namespace,
        "{values}: namespace"
    );
    assert_eq!(
        run.sidecar_image, want.sidecar_image,
        "{values}: sidecar image"
    );
    assert_eq!(
        run.admin_listen,
        ([0, 0, 0, 0], want.admin_port).into(),
        "{values}: admin listen"
    );
    assert_eq!(run.leader_election, want.leader_election, "{values}");
    assert_eq!(run.lease_name, want.lease_name, "{values}: lease name");
    assert_eq!(
        run.lease_namespace.as_deref(),
        want.lease_namespace,
        "{values}: lease namespace"
    );
    assert_eq!(
        run.lease_identity, None,
        "{values}: identity comes from POD_NAME"
    );
    assert_eq!(
        run.lease_duration_seconds, want.lease_duration_seconds,
        "{values}"
    );
    assert_eq!(
        run.lease_grace_seconds, want.lease_grace_seconds,
        "{values}"
    );
    assert_eq!(run.log_format, want.log_format, "{values}: log format");
    assert_eq!(rust_log, Some(want.rust_log), "{values}: RUST_LOG");
    if want.webhook {
        assert_eq!(
            run.webhook_listen,
            WebhookListen::On(([0, 0, 0, 0], want.webhook_port).into()),
            "{values}: webhook listen"
        );
        assert_eq!(
            run.webhook_configuration,
            format!("{RELEASE}-taskstream-operator"),
            "{values}: the MutatingWebhookConfiguration the chart creates"
        );
        assert_eq!(
            run.webhook_service.as_deref(),
            Some(format!("{NAMESPACE}/{RELEASE}-taskstream-operator-webhook").as_str()),
            "{values}: the webhook Service the chart creates"
        );
    } else {
        assert_eq!(
            run.webhook_listen,
            WebhookListen::Off,
            "{values}: webhook off"
        );
    }
    assert_eq!(
        run.webhook_cert_secret, want.webhook_cert_secret,
        "{values}: webhook certificate Secret"
    );
    tracing_subscriber::EnvFilter::try_new(want.rust_log).expect("RUST_LOG is an EnvFilter");
    run.validate()
        .unwrap_or_else(|e| panic!("{values}: the operator refuses its flags: {e}"));
}

#[test]
fn the_chart_starts_the_operator_with_flags_it_parses_as_the_values_say() {
    let Some(helm) = helm() else {
        println!(
            "skipped: no helm (run ./scripts/install-test-deps.sh for .tools/bin/helm, or put helm on PATH)"
        );
        return;
    };
    let ci = workspace().join("charts/taskstream/ci");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&ci)
        .expect("charts/taskstream/ci")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension() == Some(OsStr::new("yaml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no CI values files in {}", ci.display());
    let runs = std::iter::once(None).chain(files.iter().map(Some));
    for values in runs {
        let label = values
            .and_then(|p| p.file_name())
            .map_or("default".to_string(), |n| n.to_string_lossy().into_owned());
        let (cli, rust_log) = parse(&operator_container(&helm, values.map(PathBuf::as_path)));
        let Some(Command::Run(run)) = &cli.command else {
            panic!("{label}: the chart runs `run`, got {:?}", cli.command);
        };
        check(&label, run, rust_log.as_deref());
    }
}
