//! The admin port as seen from inside the pod (loopback) and from other pods (the pod IP):
//! probes and metrics answer everyone, `POST /publish/<group>` only loopback unless
//! `--publish-allow-remote`.
//!
//! ```text
//! test --127.0.0.1:admin--> sidecar binary (admin on 0.0.0.0) --> ws client on group g
//! test --<host IP>:admin--/
//! ```
//!
//! "Another pod" is this machine's own non-loopback address (from `hostname -I`): a connection
//! to it comes from it, so the sidecar sees a non-loopback peer. Without one the test is skipped.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use taskstream_tests::free_port;
use taskstream_tests::sidecar::{SidecarProcess, ws_url};
use taskstream_tests::upstream::{http_get, request, send};
use taskstream_tests::ws::{connect, recv_text};

/// A non-loopback address of this machine, IPv4 first.
fn host_address() -> Option<IpAddr> {
    let out = Command::new("hostname").arg("-I").output().ok()?;
    let mut ips: Vec<IpAddr> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .filter(|ip: &IpAddr| !ip.is_loopback() && !ip.is_unspecified())
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips.into_iter().next()
}

async fn start(env: &[(&str, &str)]) -> (SidecarProcess, u16) {
    let port = free_port();
    let admin = format!("0.0.0.0:{port}");
    let sc = SidecarProcess::spawn_captured(
        &[
            "--auth",
            "none",
            "--broker",
            "memory",
            "--admin-listen",
            &admin,
        ],
        env,
    )
    .await;
    (sc, port)
}

async fn publish(at: SocketAddr, body: &str) -> (u16, String) {
    send(request(
        "POST",
        &format!("http://{at}/publish/g"),
        body.to_owned(),
    ))
    .await
}

#[tokio::test]
async fn publish_answers_loopback_only_while_probes_and_metrics_answer_everyone() {
    let Some(host) = host_address() else {
        eprintln!("skipped: this machine has no non-loopback address (hostname -I) to call from");
        return;
    };
    let (sc, port) = start(&[]).await;
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let remote = SocketAddr::new(host, port);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _) = http_get(&format!("http://{remote}{path}")).await;
        assert_eq!(status, 200, "{path} from {remote}");
    }

    let mut ws = connect(&ws_url(sc.public, "groups=g")).await;
    let (status, body) = publish(remote, "from another pod").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("127.0.0.1") && body.contains("--publish-allow-remote"),
        "the refusal says what to do: {body}"
    );
    let (status, body) = publish(local, "from the app").await;
    assert_eq!((status, body.as_str()), (200, "{\"receivers\":1}\n"));
    // Events of one group arrive in order: the refused one was never sent.
    assert_eq!(recv_text(&mut ws).await, "from the app");
}

#[tokio::test]
async fn publish_allow_remote_opens_publish_to_other_pods() {
    let Some(host) = host_address() else {
        eprintln!("skipped: this machine has no non-loopback address (hostname -I) to call from");
        return;
    };
    let (sc, port) = start(&[("TASKSTREAM_PUBLISH_ALLOW_REMOTE", "true")]).await;
    let mut ws = connect(&ws_url(sc.public, "groups=g")).await;
    let (status, body) = publish(SocketAddr::new(host, port), "from another pod").await;
    assert_eq!((status, body.as_str()), (200, "{\"receivers\":1}\n"));
    assert_eq!(recv_text(&mut ws).await, "from another pod");
}
