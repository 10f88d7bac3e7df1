//! Every auth mode's accept and reject paths, and the origin check, against the real sidecar, a
//! real redis-server and real WebSocket clients.
//!
//! ```text
//! test --token/cookie--> sidecar --(forward: GET /ws-auth/)--> App
//!   ^                       |
//!   +------ ws events ------+<-- taskstream:<group> <-- redis-server <-- test PUBLISH
//! ```
//!
//! One file per mode (`auth/jwt.rs`, `auth/forward.rs`) and for the origin check
//! (`auth/origin.rs`); here the shared helpers, `none` mode, the rejection metrics and the
//! plain-GET preflight.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::Sidecar;
use taskstream_tests::upstream;
use taskstream_tests::ws::{Client, connect, connect_with, recv_text};

/// An HS256 secret of the required length (>= 16 bytes).
const SECRET: &str = "0123456789abcdef-test-secret";

#[path = "auth/forward.rs"]
mod forward;
#[path = "auth/jwt.rs"]
mod jwt;
#[path = "auth/origin.rs"]
mod origin;

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

// ---------------------------------------------------------------------------------------------
// Sidecar and client helpers
// ---------------------------------------------------------------------------------------------

async fn sidecar(redis: &RedisServer, args: &[&str]) -> Sidecar {
    let url = redis.url();
    let mut all = vec!["--redis-url", url.as_str()];
    all.extend_from_slice(args);
    let sc = Sidecar::start(&all).await;
    // Redis connected: from then on a handshake completes only once its groups are subscribed,
    // so an event published right after `connect` is not lost. Before that the sidecar admits
    // clients without waiting (see relay.rs), and a loaded machine hits the gap.
    sc.wait_broker(200).await;
    sc
}

async fn forward_sidecar(redis: &RedisServer, upstream: &str, extra: &[&str]) -> Sidecar {
    let mut args = vec!["--auth", "forward", "--upstream", upstream];
    args.extend_from_slice(extra);
    sidecar(redis, &args).await
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

#[tokio::test]
async fn a_plain_get_of_the_ws_path_answers_what_a_handshake_would_get() {
    let redis = RedisServer::start().await;
    let sc = hs256_sidecar(&redis, &[]).await;
    let token = hs256(SECRET.as_bytes(), &claims("7", &["team:1"], json!({})));
    let get = |query: String| {
        let url = http_url(&sc, &query);
        async move { upstream::send(upstream::request("GET", &url, "")).await }
    };
    // Admitted: 426 (upgrade to connect).
    assert_eq!(get(format!("token={token}")).await.0, 426);
    assert_eq!(
        get(format!("token={token}&groups=team:1&last_id=team:1:0"))
            .await
            .0,
        426
    );
    // Refused as the handshake would be, with its reason (a browser's WebSocket cannot see it).
    let (status, body) = get(String::new()).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("missing token"), "{body}");
    assert_eq!(get(format!("token={token}&groups=team:2")).await.0, 403);
    assert_eq!(get(format!("token={token}&last_id=other:0")).await.0, 403);
    assert_eq!(
        get(format!("token={token}&last_id=team:1:bad")).await.0,
        400
    );
    assert_eq!(get("token=not.a.token".into()).await.0, 401);
    // A preflight is not a refused handshake.
    assert_eq!(sc.metric(&rejected("Unauthorized")).await, 0.0);
    sc.stop().await;
}
