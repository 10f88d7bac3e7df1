//! `--jwt-jwks-url`: the real sidecar binary takes its JWT keys from a local HTTPS JWKS server
//! (a CA and certificate made here with rcgen, trusted through `--jwt-jwks-ca-file`), relays
//! from a real redis-server to real WebSocket clients, and follows the server's key rotation.
//!
//! ```text
//! test --token (kid)--> sidecar binary --GET /jwks (HTTPS, counted)--> JwksServer (test)
//!   ^                       |
//!   +------ ws events ------+<-- taskstream:<group> <-- redis-server <-- test PUBLISH
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use taskstream_tests::redis_server::{RedisServer, TempDir};
use taskstream_tests::sidecar::{SidecarProcess, metric_value, ws_url};
use taskstream_tests::upstream::http_get;
use taskstream_tests::ws::{connect_with, recv_text};
use taskstream_tests::{WAIT, eventually};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const RSA_A: &[u8] = include_bytes!("../../sidecar/testdata/jwks/rsa-a.pem");
const RSA_B: &[u8] = include_bytes!("../../sidecar/testdata/jwks/rsa-b.pem");
const EC256_A: &[u8] = include_bytes!("../../sidecar/testdata/jwks/ec256-a.pem");
const ED25519_A: &[u8] = include_bytes!("../../sidecar/testdata/jwks/ed25519-a.pem");

/// A signing key of the identity provider the test plays.
struct SigningKey {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
}

impl SigningKey {
    fn new(kid: &'static str, alg: Algorithm, pem: &[u8]) -> Self {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            other => panic!("no test key for {other:?}"),
        }
        .expect("test signing key");
        Self { kid, alg, key }
    }

    /// Its public JWK, as an identity provider publishes it.
    fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).expect("public jwk");
        jwk.common.key_id = Some(self.kid.into());
        let mut v = serde_json::to_value(jwk).expect("jwk json");
        v["use"] = json!("sig");
        v
    }

    fn token(&self, sub: &str, groups: &[&str]) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.into());
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
            + 3600;
        let claims = json!({"sub": sub, "groups": groups, "exp": exp});
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign token")
    }
}

fn key_set(keys: &[&SigningKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()})
}

/// What the JWKS server answers.
#[derive(Clone)]
enum Serve {
    Set(Value),
    Status(u16),
    /// A body that never ends (64 KiB chunks, no Content-Length): only a bounded read survives.
    Endless,
}

/// A local HTTPS JWKS endpoint whose answer the test changes, counting the requests.
struct JwksServer {
    url: String,
    ca_file: String,
    serve: Arc<Mutex<Serve>>,
    requests: Arc<AtomicUsize>,
    _dir: TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    async fn start(first: Serve) -> Self {
        let dir = TempDir::new("jwks");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "taskstream test IdP CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca_pem = ca_params.self_signed(&ca_key).expect("self-sign ca").pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("leaf params");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("sign leaf");
        let ca_file = dir.write("ca.pem", ca_pem);

        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).expect("leaf key"),
        )
        .expect("server tls config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind jwks");
        let port = listener.local_addr().expect("jwks addr").port();
        let serve = Arc::new(Mutex::new(first));
        let requests = Arc::new(AtomicUsize::new(0));
        let (s, r) = (serve.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, serve, requests) = (acceptor.clone(), s.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let answer = serve.lock().expect("serve lock").clone();
                        if req.uri().path() == "/jwks" {
                            requests.fetch_add(1, Ordering::SeqCst);
                        }
                        async move { Ok::<_, Infallible>(respond(answer)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            url: format!("https://127.0.0.1:{port}/jwks"),
            ca_file,
            serve,
            requests,
            _dir: dir,
            task,
        }
    }

    fn serve(&self, answer: Serve) {
        *self.serve.lock().expect("serve lock") = answer;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn respond(answer: Serve) -> Response<BoxBody<Bytes, Infallible>> {
    let (status, body) = match answer {
        Serve::Set(set) => (
            StatusCode::OK,
            Full::new(Bytes::from(set.to_string())).boxed(),
        ),
        Serve::Status(s) => (
            StatusCode::from_u16(s).expect("status"),
            Full::new(Bytes::from_static(b"unavailable")).boxed(),
        ),
        Serve::Endless => {
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            let frames = stream::repeat_with(move || Ok(Frame::data(chunk.clone())));
            (StatusCode::OK, StreamBody::new(frames).boxed())
        }
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "public, max-age=3600")
        .body(body)
        .expect("response")
}

/// The sidecar binary in jwt mode with keys from `jwks`, relaying from `redis`.
async fn sidecar(jwks: &JwksServer, redis: &RedisServer) -> SidecarProcess {
    let redis_url = redis.url();
    SidecarProcess::spawn(&[
        "--auth",
        "jwt",
        "--jwt-jwks-url",
        &jwks.url,
        "--jwt-jwks-ca-file",
        &jwks.ca_file,
        "--redis-url",
        &redis_url,
    ])
    .await
}

async fn readyz(p: &SidecarProcess) -> u16 {
    http_get(&format!("http://{}/readyz", p.admin)).await.0
}

async fn wait_ready(p: &SidecarProcess, status: u16) {
    let admin = p.admin;
    eventually(&format!("/readyz == {status}"), || async move {
        (http_get(&format!("http://{admin}/readyz")).await.0 == status).then_some(())
    })
    .await;
}

async fn metric(p: &SidecarProcess, name: &str) -> f64 {
    metric_value(
        &http_get(&format!("http://{}/metrics", p.admin)).await.1,
        name,
    )
}

/// Connects with `token` as a bearer; `Err(status)` when refused.
async fn open(p: &SidecarProcess, token: &str) -> Result<taskstream_tests::ws::Client, u16> {
    connect_with(
        &ws_url(p.public, ""),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// Publishes on `group` until `client` receives it (the subscription may lag the handshake).
async fn delivered(redis: &RedisServer, client: &mut taskstream_tests::ws::Client, group: &str) {
    let channel = format!("taskstream:{group}");
    let event = json!({"group": group, "n": 1}).to_string();
    eventually(&format!("a subscriber on {channel}"), || async {
        (redis.publish(&channel, &event).await > 0).then_some(())
    })
    .await;
    let got = recv_text(client).await;
    assert!(got.contains(&format!("\"group\":\"{group}\"")), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_work_without_a_restart() {
    let redis = RedisServer::start().await;
    let a = SigningKey::new("rsa-2025", Algorithm::RS256, RSA_A);
    let b = SigningKey::new("ec-2026", Algorithm::ES256, EC256_A);
    let c = SigningKey::new("ed-2027", Algorithm::EdDSA, ED25519_A);
    let jwks = JwksServer::start(Serve::Set(key_set(&[&a]))).await;
    let p = sidecar(&jwks, &redis).await;
    wait_ready(&p, 200).await;
    assert_eq!(jwks.requests(), 1, "one fetch at start");

    let mut old = open(&p, &a.token("1", &["g1"]))
        .await
        .expect("key A accepted");
    delivered(&redis, &mut old, "g1").await;

    // The IdP publishes B beside A and starts signing with it: B's kid is unknown to the
    // sidecar, which refetches once and accepts it; A's tokens keep working.
    jwks.serve(Serve::Set(key_set(&[&a, &b])));
    let mut new = open(&p, &b.token("2", &["g2"]))
        .await
        .expect("key B after rotation");
    delivered(&redis, &mut new, "g2").await;
    assert_eq!(jwks.requests(), 2, "one refetch for the new kid");
    let mut still = open(&p, &a.token("1", &["g1"]))
        .await
        .expect("key A while still published");
    delivered(&redis, &mut still, "g1").await;
    // The connection opened before the rotation is untouched by it.
    delivered(&redis, &mut old, "g1").await;

    // A signing key not published (yet) is refused with 401 and changes nothing.
    let early = open(&p, &c.token("3", &["g3"])).await.unwrap_err();
    assert_eq!(early, 401);
    assert_eq!(
        jwks.requests(),
        2,
        "within 10 s of the last unknown-kid fetch"
    );

    // Ten seconds on, the next rotation (A retired, C added) is picked up the same way.
    tokio::time::sleep(Duration::from_secs(10)).await;
    jwks.serve(Serve::Set(key_set(&[&b, &c])));
    let mut third = open(&p, &c.token("3", &["g3"]))
        .await
        .expect("key C (EdDSA)");
    delivered(&redis, &mut third, "g3").await;
    assert_eq!(jwks.requests(), 3);
    assert_eq!(
        open(&p, &a.token("1", &["g1"])).await.unwrap_err(),
        401,
        "A is refused once the fetched set no longer has it"
    );
    assert_eq!(
        metric(
            &p,
            "taskstream_jwks_refresh_total{result=\"ok\",trigger=\"unknown_kid\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(&p, "taskstream_jwks_keys").await,
        2.0,
        "B and C in use"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_refetch_once_not_once_per_request() {
    let redis = RedisServer::start().await;
    let a = SigningKey::new("a", Algorithm::ES256, EC256_A);
    let stranger = SigningKey::new("never-published", Algorithm::RS256, RSA_B);
    let jwks = JwksServer::start(Serve::Set(key_set(&[&a]))).await;
    let p = sidecar(&jwks, &redis).await;
    wait_ready(&p, 200).await;
    assert_eq!(jwks.requests(), 1);

    let token = stranger.token("9", &["g"]);
    for burst in 0..2 {
        let refused = futures_util::future::join_all((0..20).map(|_| open(&p, &token))).await;
        for r in refused {
            assert_eq!(r.err(), Some(401), "an unknown kid is refused with 401");
        }
        assert_eq!(
            jwks.requests(),
            2,
            "burst {burst}: 20 concurrent unknown kids cause one refetch in total"
        );
    }
    assert_eq!(
        metric(
            &p,
            "taskstream_connections_rejected_total{reason=\"Unauthorized\"}"
        )
        .await,
        40.0
    );
    // The known key is unaffected; tokens never reach the logs.
    let mut ok = open(&p, &a.token("1", &["g"])).await.expect("known kid");
    delivered(&redis, &mut ok, "g").await;
    assert!(!p.stderr().contains(&token), "a token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_keys_and_a_bad_answer_keeps_the_good_set() {
    let redis = RedisServer::start().await;
    let a = SigningKey::new("a", Algorithm::RS256, RSA_A);
    let jwks = JwksServer::start(Serve::Status(503)).await;
    let p = sidecar(&jwks, &redis).await;
    eventually("a first JWKS request", || async {
        (jwks.requests() >= 1).then_some(())
    })
    .await;
    assert_eq!(readyz(&p).await, 503, "not ready without keys");
    assert_eq!(
        open(&p, &a.token("1", &["g"])).await.unwrap_err(),
        503,
        "JWT clients wait for keys"
    );
    p.wait_log("JWKS fetch failed; no key set yet").await;

    jwks.serve(Serve::Set(key_set(&[&a])));
    wait_ready(&p, 200).await;
    let mut ok = open(&p, &a.token("1", &["g"])).await.expect("keys loaded");
    delivered(&redis, &mut ok, "g").await;

    // An endless body on the next fetch: refused at 1 MiB, the good set stays.
    jwks.serve(Serve::Endless);
    let before = jwks.requests();
    let stranger = SigningKey::new("b", Algorithm::RS256, RSA_B);
    let refused = tokio::time::timeout(WAIT, open(&p, &stranger.token("2", &["g"])))
        .await
        .expect("the handshake is answered although the body never ends");
    assert_eq!(refused.unwrap_err(), 401);
    assert_eq!(jwks.requests(), before + 1);
    p.wait_log("larger than 1048576 bytes").await;
    assert_eq!(
        metric(
            &p,
            "taskstream_jwks_refresh_total{result=\"refused\",trigger=\"unknown_kid\"}"
        )
        .await,
        1.0
    );
    let mut again = open(&p, &a.token("1", &["g"]))
        .await
        .expect("good set kept");
    delivered(&redis, &mut again, "g").await;
    assert_eq!(readyz(&p).await, 200);
}
