//! The operator binary's text logs: on stderr, and without ANSI colour escapes when stderr is
//! not a terminal (`kubectl logs` shows them as `[2m...[0m` garbage otherwise).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(20);

#[test]
fn text_logs_to_a_pipe_have_no_ansi_escapes() {
    // A kubeconfig whose API server refuses connections: the operator starts, logs, retries.
    let dir = std::env::temp_dir().join(format!("taskstream-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: none\n\
         clusters: [{name: none, cluster: {server: 'http://127.0.0.1:9'}}]\n\
         contexts: [{name: none, context: {cluster: none, user: none, namespace: default}}]\n\
         users: [{name: none, user: {}}]\n",
    )
    .expect("kubeconfig");

    let mut child = Command::new(env!("CARGO_BIN_EXE_taskstream-operator"))
        .args([
            "run",
            "--leader-election",
            "false",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
            // Not about the webhook (whose certificate would need names): off.
            "--webhook-listen",
            "off",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the operator");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + WITHIN;
    let mut lines = Vec::new();
    let started = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains("starting controller");
                lines.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    assert!(
        started,
        "no 'starting controller' log line within {WITHIN:?}: {lines:#?}"
    );
    let text = lines.join("\n");
    assert!(text.contains("INFO"), "text format: {text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape in piped logs: {text:?}"
    );
}
