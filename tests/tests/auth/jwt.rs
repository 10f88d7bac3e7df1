//! jwt mode: HS256 secrets, RS256/ES256 public keys, bad tokens, algorithm confusion and
//! `?groups=` narrowing, against the real sidecar and redis-server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

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
