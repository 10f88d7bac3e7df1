use std::collections::BTreeMap;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::*;
use crate::crd::TaskStream;
use crate::fixtures::{NS, params};
use crate::webhook::certs::{Plan, issue, sans};

const WITHIN: Duration = Duration::from_secs(10);

fn connector(ca_bundle: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_bundle.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// One HTTP/1.1 request over TLS to 127.0.0.1, verified against `ca_bundle`.
async fn request(
    addr: SocketAddr,
    ca_bundle: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut tls = connector(ca_bundle).connect(name, tcp).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body).await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    Ok(out)
}

fn review_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NS, "operation": "CREATE", "userInfo": {},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-", "labels": {"taskstream.dev/inject": "shop"}},
                "spec": {"containers": [{"name": "web", "image": "web:1"}]}},
            "dryRun": false
        }
    }))
    .expect("json")
}

#[tokio::test]
async fn serves_reviews_over_tls_and_picks_up_a_new_certificate() {
    let names = sans(None, &["127.0.0.1".to_string()]);
    let now = time::OffsetDateTime::now_utc();
    let first = issue(&Plan::Fresh, None, &names, now).expect("cert");
    let resolver = Arc::new(Resolver::default());
    assert!(!resolver.is_loaded());
    resolver
        .set(&first.cert_pem, &first.key_pem)
        .expect("loads");
    assert!(resolver.is_loaded());

    let store = BTreeMap::from([(
        (NS.to_string(), "shop".to_string()),
        TaskStream::test().attached(8000, None),
    )]);
    let listener = bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (trigger, shutdown) = Shutdown::new();
    let server = tokio::spawn(serve(
        listener,
        resolver.clone(),
        Arc::new(store),
        Arc::new(params()),
        shutdown,
    ));

    let check = async {
        let ok = request(
            addr,
            &first.ca_bundle_pem,
            "POST",
            MUTATE_PATH,
            &review_body(),
        )
        .await
        .expect("request");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("\"patchType\":\"JSONPatch\""), "{ok}");
        let bad = request(addr, &first.ca_bundle_pem, "POST", MUTATE_PATH, b"{nope")
            .await
            .expect("request");
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        let get = request(addr, &first.ca_bundle_pem, "GET", MUTATE_PATH, b"")
            .await
            .expect("request");
        assert!(get.starts_with("HTTP/1.1 405"), "{get}");
        let other = request(addr, &first.ca_bundle_pem, "POST", "/validate", b"")
            .await
            .expect("request");
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");

        // A new CA: the next handshake presents the new certificate, which a client trusting
        // only the first CA refuses and one trusting the new bundle accepts.
        let second = issue(&Plan::Fresh, None, &names, now).expect("cert");
        resolver
            .set(&second.cert_pem, &second.key_pem)
            .expect("loads");
        let refused = request(
            addr,
            &first.ca_bundle_pem,
            "POST",
            MUTATE_PATH,
            &review_body(),
        )
        .await;
        assert!(
            refused.is_err(),
            "old CA must not verify the new certificate"
        );
        let ok = request(
            addr,
            &second.ca_bundle_pem,
            "POST",
            MUTATE_PATH,
            &review_body(),
        )
        .await
        .expect("request");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    };
    tokio::time::timeout(WITHIN, check).await.expect("in time");
    trigger.trigger();
    tokio::time::timeout(WITHIN, server)
        .await
        .expect("stops on shutdown")
        .expect("task");
}

#[tokio::test]
async fn shutdown_closes_kept_alive_connections() {
    // The API server reuses connections: a webhook that stopped accepting but kept them open
    // would go on answering after shutdown.
    let names = sans(None, &["127.0.0.1".to_string()]);
    let m = issue(&Plan::Fresh, None, &names, time::OffsetDateTime::now_utc()).expect("cert");
    let resolver = Arc::new(Resolver::default());
    resolver.set(&m.cert_pem, &m.key_pem).expect("loads");
    let listener = bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (trigger, shutdown) = Shutdown::new();
    let store: BTreeMap<(String, String), TaskStream> = BTreeMap::new();
    let server = tokio::spawn(serve(
        listener,
        resolver,
        Arc::new(store),
        Arc::new(params()),
        shutdown,
    ));
    let check = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut tls = connector(&m.ca_bundle_pem)
            .connect(name, tcp)
            .await
            .expect("tls");
        tls.write_all(b"GET /mutate-pods HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("write");
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains("POST an AdmissionReview") {
            let n = tls.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the answer");
            seen.extend_from_slice(&buf[..n]);
        }
        trigger.trigger();
        let n = tls.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "the idle connection is closed on shutdown");
    };
    tokio::time::timeout(WITHIN, check).await.expect("in time");
    tokio::time::timeout(WITHIN, server)
        .await
        .expect("stops")
        .expect("task");
}

#[test]
fn bad_pem_is_refused_and_keeps_the_old_certificate() {
    let resolver = Resolver::default();
    let err = resolver.set("garbage", "garbage").expect_err("bad pem");
    assert!(err.to_string().contains("tls.crt"), "{err}");
    assert!(!resolver.is_loaded());
}
