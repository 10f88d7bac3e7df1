//! Every auth mode's accept and reject paths, and the origin check, against the real sidecar, a
//! real redis-server and real WebSocket clients.
//!
//! ```text
//! test --token/cookie--> sidecar --(forward: GET /ws-auth/)--> App
//!   ^                       |
//!   +------ ws events ------+<-- taskstream:<group> <-- redis-server <-- test PUBLISH
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::Sidecar;
use taskstream_tests::upstream::{self, App, AuthAnswer};
use taskstream_tests::ws::{Client, connect, connect_with, recv_text};
use taskstream_tests::{free_port, loopback};

/// An HS256 secret of the required length (>= 16 bytes).
const SECRET: &str = "0123456789abcdef-test-secret";

// ---------------------------------------------------------------------------------------------
// Tokens and keys
// ---------------------------------------------------------------------------------------------

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// `{sub, groups, exp: in an hour}` plus `extra`.
fn claims(sub: &str, groups: &[&str], extra: Value) -> Value {
    let mut c = json!({"sub": sub, "groups": groups, "exp": now() + 3600});
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign token")
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(secret), claims)
}

/// Unpadded base64url, for the one token jsonwebtoken refuses to produce: the unsigned
/// `alg: none` one.
fn b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A temp directory removed on drop, even when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "taskstream-auth-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A key pair made by the `openssl` CLI: PKCS#8 private PEM, SPKI public PEM and its path.
struct KeyPair {
    private_pem: Vec<u8>,
    public_pem: Vec<u8>,
    public_path: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kind` is `"rsa"` or `"ec"`; files are named `<name>.key` / `<name>.pub` in `dir`.
fn keypair(dir: &Path, kind: &str, name: &str) -> KeyPair {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let private_s = private.to_str().expect("utf-8 temp path");
    let public_s = public.to_str().expect("utf-8 temp path");
    match kind {
        "rsa" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private_s,
        ]),
        "ec" => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            private_s,
        ]),
        other => panic!("unknown key kind {other}"),
    }
    openssl(&["pkey", "-in", private_s, "-pubout", "-out", public_s]);
    KeyPair {
        private_pem: std::fs::read(&private).expect("read private key"),
        public_pem: std::fs::read(&public).expect("read public key"),
        public_path: public,
    }
}

// ---------------------------------------------------------------------------------------------
// Sidecar and client helpers
// ---------------------------------------------------------------------------------------------

async fn sidecar(redis: &RedisServer, args: &[&str]) -> Sidecar {
    let url = redis.url();
    let mut all = vec!["--redis-url", url.as_str()];
    all.extend_from_slice(args);
    let sc = Sidecar::start(&all).await;
    // Ready = Redis connected: from then on a handshake completes only once its groups are
    // subscribed, so an event published right after `connect` is not lost. Before that the
    // sidecar admits clients without waiting (see relay.rs), and a loaded machine hits the gap.
    sc.wait_ready(200).await;
    sc
}

async fn hs256_sidecar(redis: &RedisServer, extra: &[&str]) -> Sidecar {
    let mut args = vec!["--auth", "jwt", "--jwt-secret", SECRET];
    args.extend_from_slice(extra);
    sidecar(redis, &args).await
}

/// The handshake's status when refused; panics if it was admitted.
async fn refused(url: &str, headers: &[(&str, &str)]) -> u16 {
    match connect_with(url, headers).await {
        Ok(_) => panic!("handshake to {url} with {headers:?} was admitted"),
        Err(status) => status,
    }
}

/// Publishes `payload` on each group's channel and checks `ws` receives them in order.
async fn assert_receives(redis: &RedisServer, ws: &mut Client, groups: &[&str]) {
    for g in groups {
        let payload = format!("event for {g}");
        redis.publish(&format!("taskstream:{g}"), &payload).await;
        assert_eq!(recv_text(ws).await, payload, "group {g}");
    }
}

/// A WebSocket handshake as a plain HTTP request, for reading a refusal's body (the ws client
/// gives only the status).
async fn handshake_body(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = upstream::request("GET", url, "");
    let h = req.headers_mut();
    for (k, v) in [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]
    .iter()
    .chain(headers)
    {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            v.parse().expect("header value"),
        );
    }
    upstream::send(req).await
}

fn http_url(sc: &Sidecar, query: &str) -> String {
    sc.ws_url(query).replacen("ws://", "http://", 1)
}

fn rejected(reason: &str) -> String {
    format!("taskstream_connections_rejected_total{{reason=\"{reason}\"}}")
}

// ---------------------------------------------------------------------------------------------
// jwt HS256
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn jwt_hs256_token_in_query_or_bearer_header_is_admitted_to_its_groups_and_user_group() {
    let redis = RedisServer::start().await;
    let sc = hs256_sidecar(&redis, &[]).await;
    let token = hs256(
        SECRET.as_bytes(),
        &claims("alice", &["g1", "g2"], json!({})),
    );

    let mut by_query = connect(&sc.ws_url(&format!("token={token}"))).await;
    assert_receives(&redis, &mut by_query, &["g1", "g2", "user:alice"]).await;

    let bearer = format!("Bearer {token}");
    let mut by_header = connect_with(&sc.ws_url(""), &[("authorization", &bearer)])
        .await
        .expect("bearer token admitted");
    assert_receives(&redis, &mut by_header, &["g1", "g2", "user:alice"]).await;
    assert_eq!(
        redis.channels().await,
        vec!["taskstream:g1", "taskstream:g2", "taskstream:user:alice"]
    );
    sc.stop().await;
}

#[tokio::test]
async fn jwt_custom_groups_claim_and_user_group_template() {
    let redis = RedisServer::start().await;
    let sc = hs256_sidecar(
        &redis,
        &[
            "--jwt-groups-claim",
            "roles",
            "--user-group",
            "user_{sub}_tasks",
        ],
    )
    .await;
    // `groups` is present but is not the configured claim: it must grant nothing.
    let token = hs256(
        SECRET.as_bytes(),
        &claims("42", &["ignored"], json!({"roles": ["r1", "r2"]})),
    );
    let mut ws = connect(&sc.ws_url(&format!("token={token}"))).await;
    assert_eq!(
        redis.channels().await,
        vec!["taskstream:r1", "taskstream:r2", "taskstream:user_42_tasks"]
    );
    assert_receives(&redis, &mut ws, &["r1", "r2", "user_42_tasks"]).await;
    sc.stop().await;
}

#[tokio::test]
async fn jwt_hs256_bad_tokens_are_refused_with_401() {
    let redis = RedisServer::start().await;
    let sc = hs256_sidecar(&redis, &[]).await;
    let with_token = |t: &str| sc.ws_url(&format!("token={t}"));

    // Expired 10 minutes ago: well past the 30 s leeway.
    let expired = hs256(
        SECRET.as_bytes(),
        &claims("alice", &["g"], json!({"exp": now() - 600})),
    );
    assert_eq!(refused(&with_token(&expired), &[]).await, 401, "expired");

    let not_yet = hs256(
        SECRET.as_bytes(),
        &claims("alice", &["g"], json!({"nbf": now() + 600})),
    );
    assert_eq!(
        refused(&with_token(&not_yet), &[]).await,
        401,
        "nbf in the future"
    );

    let wrong_secret = hs256(
        b"another-secret-of-enough-length",
        &claims("alice", &["g"], json!({})),
    );
    assert_eq!(
        refused(&with_token(&wrong_secret), &[]).await,
        401,
        "wrong secret"
    );
    let bearer = format!("Bearer {wrong_secret}");
    assert_eq!(
        refused(&sc.ws_url(""), &[("authorization", &bearer)]).await,
        401,
        "wrong secret in the header"
    );

    assert_eq!(refused(&sc.ws_url(""), &[]).await, 401, "missing token");
    assert_eq!(
        refused(&sc.ws_url("groups=g"), &[]).await,
        401,
        "missing token, groups asked"
    );

    let mut no_exp = claims("alice", &["g"], json!({}));
    no_exp.as_object_mut().expect("object").remove("exp");
    let no_exp = hs256(SECRET.as_bytes(), &no_exp);
    assert_eq!(refused(&with_token(&no_exp), &[]).await, 401, "no exp");

    // Unsigned: header {"alg":"none"}, the claims, and an empty signature.
    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims("alice", &["g"], json!({})).to_string().as_bytes())
    );
    assert_eq!(refused(&with_token(&alg_none), &[]).await, 401, "alg none");

    assert_eq!(
        refused(&with_token("not.a.jwt"), &[]).await,
        401,
        "garbage token"
    );
    assert_eq!(sc.metric(&rejected("Unauthorized")).await, 9.0);
    sc.stop().await;
}

#[tokio::test]
async fn refusal_body_does_not_echo_the_token_or_the_secret() {
    let redis = RedisServer::start().await;
    let sc = hs256_sidecar(&redis, &[]).await;
    let expired = hs256(
        SECRET.as_bytes(),
        &claims("alice", &["g"], json!({"exp": now() - 600})),
    );
    let bearer = format!("Bearer {expired}");
    for (url, headers) in [
        (http_url(&sc, &format!("token={expired}")), vec![]),
        (http_url(&sc, ""), vec![("authorization", bearer.as_str())]),
    ] {
        let (status, body) = handshake_body(&url, &headers).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("expired"), "says why: {body:?}");
        // Neither the whole token nor any of its parts (header, claims, signature).
        for part in expired.split('.') {
            assert!(!body.contains(part), "body echoes the token: {body:?}");
        }
        assert!(!body.contains(SECRET), "body echoes the secret: {body:?}");
    }
    sc.stop().await;
}

// ---------------------------------------------------------------------------------------------
// jwt RS256 / ES256
// ---------------------------------------------------------------------------------------------

async fn public_key_roundtrip(kind: &str, alg: Algorithm, encode: fn(&[u8]) -> EncodingKey) {
    let dir = TempDir::new();
    let good = keypair(&dir.0, kind, "good");
    let other = keypair(&dir.0, kind, "other");
    let redis = RedisServer::start().await;
    let key_path = good.public_path.to_str().expect("utf-8 temp path");
    let sc = sidecar(
        &redis,
        &["--auth", "jwt", "--jwt-public-key-file", key_path],
    )
    .await;

    let token = sign(
        alg,
        &encode(&good.private_pem),
        &claims("bob", &["g"], json!({})),
    );
    let mut ws = connect(&sc.ws_url(&format!("token={token}"))).await;
    assert_receives(&redis, &mut ws, &["g", "user:bob"]).await;
    let bearer = format!("Bearer {token}");
    let mut ws = connect_with(&sc.ws_url(""), &[("authorization", &bearer)])
        .await
        .expect("bearer token admitted");
    assert_receives(&redis, &mut ws, &["g", "user:bob"]).await;

    let forged = sign(
        alg,
        &encode(&other.private_pem),
        &claims("bob", &["g"], json!({})),
    );
    assert_eq!(
        refused(&sc.ws_url(&format!("token={forged}")), &[]).await,
        401,
        "{kind}: token signed by another key"
    );
    let expired = sign(
        alg,
        &encode(&good.private_pem),
        &claims("bob", &["g"], json!({"exp": now() - 600})),
    );
    assert_eq!(
        refused(&sc.ws_url(&format!("token={expired}")), &[]).await,
        401,
        "{kind}: expired"
    );
    sc.stop().await;
}

#[tokio::test]
async fn jwt_rs256_public_key_admits_its_tokens_and_refuses_others() {
    public_key_roundtrip("rsa", Algorithm::RS256, |pem| {
        EncodingKey::from_rsa_pem(pem).expect("RSA private key PEM")
    })
    .await;
}

#[tokio::test]
async fn jwt_es256_public_key_admits_its_tokens_and_refuses_others() {
    public_key_roundtrip("ec", Algorithm::ES256, |pem| {
        EncodingKey::from_ec_pem(pem).expect("EC PKCS#8 private key PEM")
    })
    .await;
}

#[tokio::test]
async fn jwt_algorithm_confusion_hs256_signed_with_the_public_key_is_refused() {
    let dir = TempDir::new();
    let rsa = keypair(&dir.0, "rsa", "rsa");
    let redis = RedisServer::start().await;
    let key_path = rsa.public_path.to_str().expect("utf-8 temp path");
    let sc = sidecar(
        &redis,
        &["--auth", "jwt", "--jwt-public-key-file", key_path],
    )
    .await;

    // The attacker knows the public key and uses its PEM bytes as an HMAC secret.
    let forged = hs256(&rsa.public_pem, &claims("mallory", &["admin"], json!({})));
    assert_eq!(
        refused(&sc.ws_url(&format!("token={forged}")), &[]).await,
        401
    );
    let bearer = format!("Bearer {forged}");
    assert_eq!(
        refused(&sc.ws_url(""), &[("authorization", &bearer)]).await,
        401
    );
    // Trimmed PEM (no trailing newline) is the other common variant of the attack.
    let trimmed = String::from_utf8_lossy(&rsa.public_pem).trim().to_owned();
    let forged = hs256(
        trimmed.as_bytes(),
        &claims("mallory", &["admin"], json!({})),
    );
    assert_eq!(
        refused(&sc.ws_url(&format!("token={forged}")), &[]).await,
        401
    );
    sc.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Narrowing with ?groups=
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn groups_query_narrows_granted_groups_and_never_widens_them() {
    let redis = RedisServer::start().await;
    let sc = hs256_sidecar(&redis, &[]).await;
    let token = hs256(
        SECRET.as_bytes(),
        &claims("alice", &["a", "b", "c"], json!({})),
    );

    // A client with every group keeps all channels subscribed, so an event the narrowed client
    // does not get really went through the sidecar.
    let mut full = connect(&sc.ws_url(&format!("token={token}"))).await;
    let mut narrow = connect(&sc.ws_url(&format!("token={token}&groups=a,b"))).await;
    assert_eq!(redis.publish("taskstream:c", "c").await, 1);
    assert_eq!(redis.publish("taskstream:user:alice", "mine").await, 1);
    redis.publish("taskstream:a", "a").await;
    redis.publish("taskstream:b", "b").await;
    assert_eq!(
        recv_text(&mut narrow).await,
        "a",
        "c and user:alice were not asked for"
    );
    assert_eq!(recv_text(&mut narrow).await, "b");
    for expected in ["c", "mine", "a", "b"] {
        assert_eq!(recv_text(&mut full).await, expected);
    }

    assert_eq!(
        refused(&sc.ws_url(&format!("token={token}&groups=a,z")), &[]).await,
        403,
        "z is not granted"
    );
    assert_eq!(
        refused(&sc.ws_url(&format!("token={token}&groups=user:bob")), &[]).await,
        403,
        "another user's group"
    );
    assert_eq!(sc.metric(&rejected("Forbidden")).await, 2.0);
    sc.stop().await;
}

// ---------------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------------

async fn forward_sidecar(redis: &RedisServer, upstream: &str, extra: &[&str]) -> Sidecar {
    let mut args = vec!["--auth", "forward", "--upstream", upstream];
    args.extend_from_slice(extra);
    sidecar(redis, &args).await
}

#[tokio::test]
async fn forward_allow_admits_with_the_apps_groups_and_passes_the_clients_credentials() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    app.set_auth(AuthAnswer::Allow {
        user: "carol".into(),
        groups: vec!["team".into(), "proj".into()],
    });
    let sc = forward_sidecar(&redis, &app.url(), &[]).await;
    let origin = format!("http://{}", sc.public);
    let mut ws = connect_with(
        &sc.ws_url("trace=abc"),
        &[
            ("cookie", "sessionid=s3cr3t; csrftoken=t0k"),
            ("authorization", "Bearer app-token"),
            ("origin", &origin),
        ],
    )
    .await
    .expect("allowed by the app");
    assert_receives(&redis, &mut ws, &["team", "proj", "user:carol"]).await;

    let (headers, query) = app.last_auth().expect("the app was asked");
    assert_eq!(headers["cookie"], "sessionid=s3cr3t; csrftoken=t0k");
    assert_eq!(headers["authorization"], "Bearer app-token");
    assert_eq!(headers["origin"], origin.as_str());
    assert_eq!(query.as_deref(), Some("trace=abc"));

    // Narrowing applies to the app's groups as well.
    let mut narrow = connect(&sc.ws_url("groups=proj")).await;
    assert_receives(&redis, &mut narrow, &["proj"]).await;
    assert_eq!(refused(&sc.ws_url("groups=other"), &[]).await, 403);
    sc.stop().await;
}

#[tokio::test]
async fn forward_auth_gets_the_same_forwarded_headers_as_a_proxied_request() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    app.set_auth(AuthAnswer::Allow {
        user: "dave".into(),
        groups: vec!["team".into()],
    });
    let sc = forward_sidecar(&redis, &app.url(), &[]).await;

    // No X-Forwarded-* from the client: the peer and the request's own host and scheme.
    let _ws = connect(&sc.ws_url("")).await;
    let (headers, _) = app.last_auth().expect("the app was asked");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], sc.public.to_string());

    // A client's (possibly spoofed) value is kept, and the real peer appended after it, exactly
    // as on a proxied request to the app.
    let spoof = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example.com"),
    ];
    let _ws = connect_with(&sc.ws_url(""), &spoof)
        .await
        .expect("allowed by the app");
    let (auth_headers, _) = app.last_auth().expect("the app was asked");
    let mut req = upstream::request("GET", &format!("http://{}/echo", sc.public), "");
    for (k, v) in spoof {
        req.headers_mut().insert(k, v.parse().unwrap());
    }
    let (status, body) = upstream::send(req).await;
    assert_eq!(status, 200);
    let echoed: Value = serde_json::from_str(&body).unwrap();
    for (name, want) in [
        ("x-forwarded-for", "6.6.6.6, 127.0.0.1"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example.com"),
    ] {
        assert_eq!(auth_headers[name], want, "forward auth {name}");
        assert_eq!(echoed["headers"][name], want, "proxied {name}");
    }
    sc.stop().await;
}

#[tokio::test]
async fn forward_app_refusals_and_failures_map_to_401_403_and_503() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = forward_sidecar(&redis, &app.url(), &["--auth-timeout", "300ms"]).await;
    let url = sc.ws_url("");

    app.set_auth(AuthAnswer::Status(401));
    assert_eq!(refused(&url, &[("cookie", "sessionid=old")]).await, 401);
    app.set_auth(AuthAnswer::Status(403));
    assert_eq!(refused(&url, &[]).await, 403);
    app.set_auth(AuthAnswer::Status(500));
    assert_eq!(
        refused(&url, &[]).await,
        503,
        "app error is not the client's fault"
    );

    app.set_auth(AuthAnswer::Hang);
    let started = Instant::now();
    assert_eq!(refused(&url, &[]).await, 503, "app hangs");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "bounded by --auth-timeout 300ms, took {took:?}"
    );

    assert_eq!(sc.metric(&rejected("Unauthorized")).await, 1.0);
    assert_eq!(sc.metric(&rejected("Forbidden")).await, 1.0);
    assert_eq!(sc.metric(&rejected("AuthUnavailable")).await, 2.0);
    sc.stop().await;
}

#[tokio::test]
async fn forward_with_the_app_down_answers_503() {
    let redis = RedisServer::start().await;
    // Nothing listens there: connection refused.
    let down = format!("http://{}", loopback(free_port()));
    let sc = forward_sidecar(&redis, &down, &["--auth-timeout", "2s"]).await;
    assert_eq!(refused(&sc.ws_url("groups=g"), &[]).await, 503);
    assert_eq!(sc.metric(&rejected("AuthUnavailable")).await, 1.0);
    sc.stop().await;
}

// ---------------------------------------------------------------------------------------------
// none
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn none_mode_takes_groups_from_the_query_and_refuses_none() {
    let redis = RedisServer::start().await;
    let sc = sidecar(&redis, &["--auth", "none"]).await;
    let mut ws = connect(&sc.ws_url("groups=a,b")).await;
    assert_receives(&redis, &mut ws, &["a", "b"]).await;
    assert_eq!(refused(&sc.ws_url(""), &[]).await, 403, "no groups");
    assert_eq!(
        refused(&sc.ws_url("groups="), &[]).await,
        403,
        "empty groups"
    );
    sc.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Origin
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn default_origin_policy_admits_the_same_host_only() {
    let redis = RedisServer::start().await;
    let sc = sidecar(&redis, &["--auth", "none"]).await;
    let url = sc.ws_url("groups=g");
    let same = format!("http://{}", sc.public);

    let mut ws = connect_with(&url, &[("origin", &same)])
        .await
        .expect("same-host origin admitted");
    assert_receives(&redis, &mut ws, &["g"]).await;
    assert_eq!(
        refused(&url, &[("origin", "https://evil.example")]).await,
        403
    );
    let other_port = format!("http://127.0.0.1:{}", free_port());
    assert_eq!(
        refused(&url, &[("origin", &other_port)]).await,
        403,
        "another port"
    );
    connect_with(&url, &[])
        .await
        .expect("no Origin (not a browser) admitted");

    assert_eq!(sc.metric(&rejected("Origin")).await, 2.0);
    sc.stop().await;
}

#[tokio::test]
async fn allowed_origins_admit_the_listed_origin_and_refuse_others() {
    let redis = RedisServer::start().await;
    let sc = sidecar(
        &redis,
        &[
            "--auth",
            "none",
            "--allowed-origins",
            "https://app.example.com",
        ],
    )
    .await;
    let url = sc.ws_url("groups=g");
    let mut ws = connect_with(&url, &[("origin", "https://app.example.com")])
        .await
        .expect("listed origin admitted");
    assert_receives(&redis, &mut ws, &["g"]).await;
    let same = format!("http://{}", sc.public);
    for bad in [
        "https://evil.example",
        "http://app.example.com",
        "https://app.example.com.evil.example",
        same.as_str(),
    ] {
        assert_eq!(refused(&url, &[("origin", bad)]).await, 403, "{bad}");
    }
    assert_eq!(sc.metric(&rejected("Origin")).await, 4.0);
    sc.stop().await;
}

#[tokio::test]
async fn origin_is_checked_before_auth() {
    // A foreign page must not learn whether a token is valid, nor make the app do work.
    let redis = RedisServer::start().await;
    let app = App::start().await;
    app.set_auth(AuthAnswer::Allow {
        user: "carol".into(),
        groups: vec!["g".into()],
    });
    let sc = forward_sidecar(&redis, &app.url(), &[]).await;
    assert_eq!(
        refused(
            &sc.ws_url(""),
            &[
                ("origin", "https://evil.example"),
                ("cookie", "sessionid=x")
            ]
        )
        .await,
        403
    );
    assert!(app.last_auth().is_none(), "the app was not asked");
    sc.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rejections_are_counted_by_reason() {
    let redis = RedisServer::start().await;
    let sc = hs256_sidecar(&redis, &[]).await;
    let token = hs256(SECRET.as_bytes(), &claims("alice", &["g"], json!({})));
    let _ok = connect(&sc.ws_url(&format!("token={token}"))).await;
    refused(&sc.ws_url(""), &[]).await;
    refused(&sc.ws_url("token=x.y.z"), &[]).await;
    refused(&sc.ws_url(&format!("token={token}&groups=nope")), &[]).await;
    refused(
        &sc.ws_url(&format!("token={token}")),
        &[("origin", "https://evil.example")],
    )
    .await;

    let text = sc.metrics().await;
    for (line, value) in [
        (rejected("Unauthorized"), 2.0),
        (rejected("Forbidden"), 1.0),
        (rejected("Origin"), 1.0),
    ] {
        assert_eq!(
            taskstream_tests::sidecar::metric_value(&text, &line),
            value,
            "{line} in:\n{text}"
        );
    }
    assert!(
        !text.contains("AuthUnavailable"),
        "no 503s happened:\n{text}"
    );
    sc.stop().await;
}
