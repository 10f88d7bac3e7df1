//! `rediss://`: a real `redis-server --tls-port` with a CA, server and client certificates made
//! here (rcgen), relaying to real WebSocket clients through the sidecar.
//!
//! Each server keeps a plain port too, used only by the test to PING and publish; the sidecar is
//! given only the TLS port.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use taskstream_tests::free_port;
use taskstream_tests::redis_server::{RedisServer, TempDir};
use taskstream_tests::sidecar::{Sidecar, SidecarProcess, run_binary};
use taskstream_tests::upstream::{App, http_get, request, send};
use taskstream_tests::ws::{connect, recv_text};

/// A CA and the PEM files signed by it, in a temp dir.
struct Pki {
    dir: TempDir,
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    /// A CA that signed nothing here.
    other_ca: String,
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params, KeyPair::generate().expect("ca key"))
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("client"),
    );
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Self {
        let dir = TempDir::new("tls");
        let (ca_params, ca_key) = ca("taskstream test CA");
        let ca_pem = ca_params.self_signed(&ca_key).expect("self-sign ca").pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let (server_cert, server_key) = leaf(
            &issuer,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(&issuer, &["sidecar"], ExtendedKeyUsagePurpose::ClientAuth);
        let (other_params, other_key) = ca("somebody else's CA");
        let other_pem = other_params
            .self_signed(&other_key)
            .expect("other ca")
            .pem();
        Self {
            ca: dir.write("ca.pem", ca_pem),
            server_cert: dir.write("server.pem", server_cert),
            server_key: dir.write("server.key", server_key),
            client_cert: dir.write("client.pem", client_cert),
            client_key: dir.write("client.key", client_key),
            other_ca: dir.write("other-ca.pem", other_pem),
            dir,
        }
    }

    /// A redis-server with a TLS port (returned) besides its plain one.
    async fn server(&self, auth_clients: bool) -> (RedisServer, u16) {
        let tls_port = free_port();
        let extra = [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &self.server_cert,
            "--tls-key-file",
            &self.server_key,
            "--tls-ca-cert-file",
            &self.ca,
            "--tls-auth-clients",
            if auth_clients { "yes" } else { "no" },
        ]
        .map(String::from)
        .to_vec();
        (RedisServer::start_with(extra).await, tls_port)
    }
}

fn tls_url(port: u16) -> String {
    format!("rediss://127.0.0.1:{port}")
}

#[tokio::test]
async fn relays_over_tls_with_the_ca_file_and_publishes_over_tls() {
    let pki = Pki::new();
    let (redis, tls_port) = pki.server(false).await;
    let app = App::start().await;
    let sc = Sidecar::start(&[
        "--auth",
        "none",
        "--upstream",
        &app.url(),
        "--redis-url",
        &tls_url(tls_port),
        "--redis-ca-file",
        &pki.ca,
    ])
    .await;
    let mut a = connect(&sc.ws_url("groups=g")).await;
    assert_eq!(redis.publish("taskstream:g", "over tls").await, 1);
    assert_eq!(recv_text(&mut a).await, "over tls");
    // The admin publisher connects over TLS as well.
    let (status, body) = send(request(
        "POST",
        &format!("http://{}/publish/g", sc.admin),
        "from admin",
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(recv_text(&mut a).await, "from admin");
    sc.stop().await;
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new();
    let (redis, tls_port) = pki.server(true).await;
    let app = App::start().await;
    let sc = Sidecar::start(&[
        "--auth",
        "none",
        "--upstream",
        &app.url(),
        "--redis-url",
        &tls_url(tls_port),
        "--redis-ca-file",
        &pki.ca,
        "--redis-client-cert-file",
        &pki.client_cert,
        "--redis-client-key-file",
        &pki.client_key,
    ])
    .await;
    let mut a = connect(&sc.ws_url("groups=m")).await;
    assert_eq!(redis.publish("taskstream:m", "mutual").await, 1);
    assert_eq!(recv_text(&mut a).await, "mutual");
    sc.stop().await;

    // Without the client certificate the server refuses the sidecar, and the log says what to
    // check; the sidecar stays up and not ready.
    let without = SidecarProcess::spawn(&[
        "--auth",
        "none",
        "--upstream",
        &app.url(),
        "--redis-url",
        &tls_url(tls_port),
        "--redis-ca-file",
        &pki.ca,
    ])
    .await;
    let line = without.wait_log("redis connect failed").await;
    assert!(line.contains("--redis-client-cert-file"), "{line}");
    assert_eq!(
        http_get(&format!("http://{}/readyz/broker", without.admin))
            .await
            .0,
        503
    );
}

#[tokio::test]
async fn a_wrong_ca_fails_with_a_clear_error_and_insecure_skips_the_check() {
    let pki = Pki::new();
    let (redis, tls_port) = pki.server(false).await;
    let app = App::start().await;
    let wrong = SidecarProcess::spawn(&[
        "--auth",
        "none",
        "--upstream",
        &app.url(),
        "--redis-url",
        &tls_url(tls_port),
        "--redis-ca-file",
        &pki.other_ca,
    ])
    .await;
    let line = wrong.wait_log("redis connect failed").await;
    assert!(
        line.contains("not signed by a trusted CA") && line.contains("--redis-ca-file"),
        "{line}"
    );
    assert_eq!(
        http_get(&format!("http://{}/readyz/broker", wrong.admin))
            .await
            .0,
        503
    );
    drop(wrong);

    // The system roots do not know the test CA either.
    let system = SidecarProcess::spawn(&[
        "--auth",
        "none",
        "--upstream",
        &app.url(),
        "--redis-url",
        &tls_url(tls_port),
    ])
    .await;
    let line = system.wait_log("redis connect failed").await;
    assert!(line.contains("--redis-ca-file"), "{line}");
    drop(system);

    // --redis-tls-insecure connects without checking, and warns at start-up.
    let insecure = SidecarProcess::spawn(&[
        "--auth",
        "none",
        "--upstream",
        &app.url(),
        "--redis-url",
        &tls_url(tls_port),
        "--redis-tls-insecure",
    ])
    .await;
    insecure
        .wait_log("--redis-tls-insecure: the Redis server certificate is not verified")
        .await;
    insecure.wait_log("redis subscribed").await;
    let mut a = connect(&taskstream_tests::sidecar::ws_url(
        insecure.public,
        "groups=i",
    ))
    .await;
    assert_eq!(redis.publish("taskstream:i", "unchecked").await, 1);
    assert_eq!(recv_text(&mut a).await, "unchecked");
}

#[tokio::test]
async fn channels_pubsub_layer_works_over_tls() {
    let pki = Pki::new();
    let (redis, tls_port) = pki.server(false).await;
    let app = App::start().await;
    let sc = Sidecar::start(&[
        "--auth",
        "none",
        "--upstream",
        &app.url(),
        "--redis-url",
        &tls_url(tls_port),
        "--redis-ca-file",
        &pki.ca,
        "--redis-protocol",
        "channels-pubsub",
    ])
    .await;
    let mut a = connect(&sc.ws_url("groups=g")).await;
    // msgpack {"type": "x", "data": "hi"}, as group_send("g", ...) publishes it.
    let mut msg = vec![0x82, 0xa4];
    msg.extend_from_slice(b"type");
    msg.push(0xa1);
    msg.extend_from_slice(b"x");
    msg.push(0xa4);
    msg.extend_from_slice(b"data");
    msg.push(0xa2);
    msg.extend_from_slice(b"hi");
    assert_eq!(redis.publish("asgi__group__g", msg).await, 1);
    assert_eq!(recv_text(&mut a).await, "\"hi\"");
    sc.stop().await;
}

#[test]
fn unreadable_or_bad_tls_files_exit_2_naming_the_flag() {
    let pki = Pki::new();
    let not_pem = pki.dir.write("not.pem", "hello");
    let base = [
        "--auth",
        "none",
        "--redis-url",
        "rediss://127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    let cases: [(&[&str], &str); 5] = [
        (
            &["--redis-ca-file", "/nonexistent/ca.pem"],
            "--redis-ca-file",
        ),
        (&["--redis-ca-file", &not_pem], "--redis-ca-file"),
        (
            &["--redis-client-cert-file", &pki.client_cert],
            "--redis-client-key-file",
        ),
        (
            &[
                "--redis-client-cert-file",
                &pki.client_cert,
                "--redis-client-key-file",
                &not_pem,
            ],
            "--redis-client-key-file",
        ),
        (
            &[
                "--redis-client-cert-file",
                &not_pem,
                "--redis-client-key-file",
                &pki.client_key,
            ],
            "--redis-client-cert-file",
        ),
    ];
    for (flags, named) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(flags);
        let (code, stderr) = run_binary(&args, &[]);
        assert_eq!(code, Some(2), "{flags:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{flags:?} should name {named}: {stderr}"
        );
    }
    // The environment variables are the same contract.
    let (code, stderr) = run_binary(
        &base,
        &[("TASKSTREAM_REDIS_CA_FILE", "/nonexistent/ca.pem")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--redis-ca-file"), "{stderr}");
}

/// The keep-alive PING (every 5 s) in subscribe mode over TLS and RESP3 (`?protocol=resp3`),
/// where PING is answered with `PONG` rather than RESP2's `["pong", ""]`: two ticks pass with
/// events flowing, no reconnect, nothing lost.
#[tokio::test]
async fn keep_alive_holds_over_tls_with_resp3() {
    let pki = Pki::new();
    let (redis, tls_port) = pki.server(false).await;
    let app = App::start().await;
    let url = format!("{}/?protocol=resp3", tls_url(tls_port));
    let sc = Sidecar::start(&[
        "--auth",
        "none",
        "--upstream",
        &app.url(),
        "--redis-url",
        &url,
        "--redis-ca-file",
        &pki.ca,
    ])
    .await;
    let mut a = connect(&sc.ws_url("groups=k")).await;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(11);
    let mut n = 0;
    while std::time::Instant::now() < until {
        assert_eq!(redis.publish("taskstream:k", n.to_string()).await, 1);
        assert_eq!(recv_text(&mut a).await, n.to_string());
        n += 1;
        // Pacing of the publisher, not synchronisation: each event is awaited above.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(sc.metric("taskstream_redis_reconnects_total").await, 0.0);
    sc.stop().await;
}
