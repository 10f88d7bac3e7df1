//! Key selection (RS256/384/512, ES256/384, EdDSA; `alg` fits the key) and the refresh timing
//! (paused tokio time, a scripted source in place of the HTTPS fetcher).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header, Validation};
use serde_json::json;

use super::*;

const RSA_A: &[u8] = include_bytes!("../../testdata/jwks/rsa-a.pem");
const RSA_B: &[u8] = include_bytes!("../../testdata/jwks/rsa-b.pem");
const EC256_A: &[u8] = include_bytes!("../../testdata/jwks/ec256-a.pem");
const EC384_A: &[u8] = include_bytes!("../../testdata/jwks/ec384-a.pem");
const ED25519_A: &[u8] = include_bytes!("../../testdata/jwks/ed25519-a.pem");

fn encoding_key(pem: &[u8], alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
            EncodingKey::from_rsa_pem(pem).unwrap()
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem).unwrap(),
        other => panic!("no test key for {other:?}"),
    }
}

/// The public JWK of a private key; `alg` published only when `with_alg`.
fn jwk(pem: &[u8], alg: Algorithm, kid: &str, with_alg: bool) -> serde_json::Value {
    let mut jwk = Jwk::from_encoding_key(&encoding_key(pem, alg), alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    if !with_alg {
        jwk.common.key_algorithm = None;
    }
    serde_json::to_value(jwk).unwrap()
}

fn token(pem: &[u8], alg: Algorithm, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let claims = json!({"sub": "42", "exp": jsonwebtoken::get_current_timestamp() + 600});
    jsonwebtoken::encode(&header, &claims, &encoding_key(pem, alg)).unwrap()
}

fn set(keys: Vec<serde_json::Value>) -> Bytes {
    Bytes::from(serde_json::to_vec(&json!({ "keys": keys })).unwrap())
}

/// What the scripted source answers next.
#[derive(Clone)]
enum Answer {
    Body(Bytes, Option<Duration>),
    Status(u16),
    TooLarge,
}

struct Script {
    answer: Mutex<Answer>,
    calls: AtomicUsize,
    /// How long a fetch takes (virtual time).
    delay: Duration,
}

impl Script {
    fn new(answer: Answer) -> Arc<Self> {
        Arc::new(Self {
            answer: Mutex::new(answer),
            calls: AtomicUsize::new(0),
            delay: Duration::from_millis(200),
        })
    }
    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

struct Scripted(Arc<Script>);

impl Fetch for Scripted {
    fn fetch(&self) -> futures_util::future::BoxFuture<'_, Result<Fetched, JwksError>> {
        Box::pin(async move {
            self.0.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.0.delay).await;
            let url = "https://idp.test/jwks".to_string();
            match self.0.answer.lock().unwrap().clone() {
                Answer::Body(body, max_age) => Ok(Fetched { body, max_age }),
                Answer::Status(s) => Err(JwksError::Status {
                    url,
                    status: StatusCode::from_u16(s).unwrap(),
                }),
                Answer::TooLarge => Err(JwksError::TooLarge {
                    url,
                    limit: MAX_BODY,
                }),
            }
        })
    }
}

fn source(script: &Arc<Script>) -> Arc<Jwks> {
    Arc::new(Jwks::with_fetcher(
        "https://idp.test/jwks".into(),
        Box::new(Scripted(script.clone())),
    ))
}

/// Starts the run task and waits (virtual time) until the first set is in.
async fn started(script: &Arc<Script>) -> (Arc<Jwks>, Arc<Health>, CancellationToken) {
    let jwks = source(script);
    let health = Arc::new(Health::new(false));
    health.set_keys_pending(true);
    let stop = CancellationToken::new();
    tokio::spawn(jwks.clone().run(health.clone(), stop.clone()));
    tokio::time::timeout(Duration::from_secs(120), async {
        while !health.ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("first key set within 2 min");
    (jwks, health, stop)
}

fn count(jwks: &Jwks, result: &'static str, trigger: &'static str) -> u64 {
    jwks.metrics
        .refreshes
        .get_or_create(&RefreshLabel { result, trigger })
        .get()
}

async fn verifies(jwks: &Jwks, token: &str) -> Result<(), KeyMiss> {
    let (key, alg) = jwks.key_for(token).await?;
    let mut v = Validation::new(alg);
    v.set_required_spec_claims(&["exp"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &v).expect("signature verifies");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn rsa_ec_and_eddsa_keys_verify_by_kid() {
    let body = set(vec![
        jwk(RSA_A, Algorithm::RS256, "rsa", false),
        jwk(EC256_A, Algorithm::ES256, "p256", true),
        jwk(EC384_A, Algorithm::ES384, "p384", false),
        jwk(ED25519_A, Algorithm::EdDSA, "ed", true),
    ]);
    let script = Script::new(Answer::Body(body, None));
    let (jwks, _health, _stop) = started(&script).await;
    // An RSA key without `alg` verifies the three RSASSA-PKCS1 algorithms.
    for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
        verifies(&jwks, &token(RSA_A, alg, Some("rsa")))
            .await
            .unwrap();
    }
    verifies(&jwks, &token(EC256_A, Algorithm::ES256, Some("p256")))
        .await
        .unwrap();
    verifies(&jwks, &token(EC384_A, Algorithm::ES384, Some("p384")))
        .await
        .unwrap();
    verifies(&jwks, &token(ED25519_A, Algorithm::EdDSA, Some("ed")))
        .await
        .unwrap();
    // Signed by another key under a known kid: the signature does not verify.
    let (key, alg) = jwks
        .key_for(&token(RSA_B, Algorithm::RS256, Some("rsa")))
        .await
        .unwrap();
    let forged = jsonwebtoken::decode::<serde_json::Value>(
        token(RSA_B, Algorithm::RS256, Some("rsa")),
        &key.key,
        &Validation::new(alg),
    );
    assert!(forged.is_err());
}

#[tokio::test(start_paused = true)]
async fn alg_must_fit_the_key_and_none_or_hmac_are_refused() {
    let body = set(vec![
        jwk(RSA_A, Algorithm::RS256, "rsa256", true),
        jwk(EC256_A, Algorithm::ES256, "p256", false),
    ]);
    let script = Script::new(Answer::Body(body, None));
    let (jwks, _health, _stop) = started(&script).await;
    // The key publishes RS256: an RS512 token under its kid is refused.
    let miss = jwks
        .key_for(&token(RSA_A, Algorithm::RS512, Some("rsa256")))
        .await;
    assert_eq!(miss.unwrap_err(), KeyMiss::AlgorithmMismatch);
    // HS256 "signed" with the public key's bytes under an RSA or EC kid.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("p256".into());
    let hmac = jsonwebtoken::encode(
        &header,
        &json!({"exp": jsonwebtoken::get_current_timestamp() + 600}),
        &EncodingKey::from_secret(b"the public key bytes"),
    )
    .unwrap();
    assert_eq!(
        jwks.key_for(&hmac).await.unwrap_err(),
        KeyMiss::AlgorithmMismatch
    );
    // alg none: not a JWS algorithm at all.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","kid":"rsa256"}"#),
        b64.encode(r#"{"sub":"42","exp":99999999999}"#)
    );
    assert_eq!(jwks.key_for(&none).await.unwrap_err(), KeyMiss::Malformed);
    assert_eq!(
        jwks.key_for(&token(RSA_A, Algorithm::RS256, None))
            .await
            .unwrap_err(),
        KeyMiss::NoKid
    );
}

#[test]
fn unusable_keys_are_skipped_with_a_reason() {
    let mut wrong_alg = jwk(RSA_A, Algorithm::RS256, "rsa-es", true);
    wrong_alg["alg"] = json!("ES256");
    let mut enc = jwk(RSA_B, Algorithm::RS256, "enc", false);
    enc["use"] = json!("enc");
    enc["alg"] = json!("RSA-OAEP");
    let mut no_kid = jwk(EC256_A, Algorithm::ES256, "x", true);
    no_kid.as_object_mut().unwrap().remove("kid");
    let body = set(vec![
        jwk(RSA_A, Algorithm::RS256, "good", true),
        wrong_alg,
        enc,
        no_kid,
        json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0c2VjcmV0c2VjcmV0"}),
        json!({"kty": "AKP", "kid": "pq", "alg": "ML-DSA-44", "pub": "AAAA"}),
        json!({"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"}),
    ]);
    let (keys, skipped) = parse(&body).unwrap();
    assert_eq!(keys.kids(), vec!["good"]);
    let why = |kid: &str| {
        skipped
            .iter()
            .find(|s| s.kid.as_deref() == Some(kid))
            .unwrap_or_else(|| panic!("{kid} not skipped: {skipped:?}"))
            .why
            .clone()
    };
    assert!(why("rsa-es").contains("does not fit"), "{}", why("rsa-es"));
    assert!(why("enc").contains("not sig"));
    assert!(why("hmac").contains("symmetric"));
    assert!(why("pq").contains("unknown key type"), "{}", why("pq"));
    assert!(why("p521").contains("P521"), "{}", why("p521"));
    assert!(
        skipped
            .iter()
            .any(|s| s.kid.is_none() && s.why.contains("no kid"))
    );
    assert!(
        skipped
            .iter()
            .find(|s| s.kid.as_deref() == Some("enc"))
            .unwrap()
            .other_use
    );

    let err = parse(&set(vec![json!({"kty": "oct", "kid": "h", "k": "AAAA"})])).unwrap_err();
    assert!(
        matches!(err, ParseError::NoUsableKey { skipped: 1, .. }),
        "{err}"
    );
    assert!(matches!(
        parse(b"<html>").unwrap_err(),
        ParseError::NotJwks(_)
    ));
    assert!(matches!(
        parse(b"{\"keys\": 3}").unwrap_err(),
        ParseError::NotJwks(_)
    ));
}

#[test]
fn cache_control_is_clamped() {
    let h = |v: &str| {
        let mut m = http::HeaderMap::new();
        m.insert(http::header::CACHE_CONTROL, v.parse().unwrap());
        max_age(&m)
    };
    assert_eq!(h("public, max-age=600"), Some(Duration::from_secs(600)));
    assert_eq!(
        h("Max-Age=\"30\", must-revalidate"),
        Some(Duration::from_secs(30))
    );
    assert_eq!(h("no-cache"), Some(Duration::ZERO));
    assert_eq!(h("public"), None);
    assert_eq!(max_age(&http::HeaderMap::new()), None);
    assert_eq!(refresh_after(None), DEFAULT_REFRESH);
    assert_eq!(refresh_after(Some(Duration::from_secs(15))), MIN_REFRESH);
    assert_eq!(refresh_after(Some(Duration::ZERO)), MIN_REFRESH);
    assert_eq!(
        refresh_after(Some(Duration::from_secs(7 * 86400))),
        MAX_REFRESH
    );
    assert_eq!(
        refresh_after(Some(Duration::from_secs(3600))),
        Duration::from_secs(3600)
    );
}

#[tokio::test(start_paused = true)]
async fn background_refresh_follows_max_age() {
    let a = set(vec![jwk(EC256_A, Algorithm::ES256, "a", true)]);
    let script = Script::new(Answer::Body(a.clone(), Some(Duration::from_secs(120))));
    let (_jwks, _health, _stop) = started(&script).await;
    assert_eq!(script.calls(), 1);
    tokio::time::sleep(Duration::from_secs(118)).await;
    assert_eq!(script.calls(), 1, "not before max-age");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(script.calls(), 2, "refetched at max-age");
    // max-age 5 s is clamped to 1 min.
    script.set(Answer::Body(a.clone(), Some(Duration::from_secs(5))));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(script.calls(), 3);
    tokio::time::sleep(Duration::from_secs(58)).await;
    assert_eq!(
        script.calls(),
        3,
        "max-age 5 s refreshes after 1 min, not sooner"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(script.calls(), 4);
    // No header: every 5 minutes.
    script.set(Answer::Body(a, None));
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(script.calls(), 5, "fetched at 360 s, next at 660 s");
    tokio::time::sleep(Duration::from_secs(295)).await;
    assert_eq!(script.calls(), 5);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(script.calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn unknown_kids_refetch_once_per_ten_seconds() {
    let a = set(vec![jwk(EC256_A, Algorithm::ES256, "a", true)]);
    let script = Script::new(Answer::Body(a, Some(Duration::from_secs(3600))));
    let (jwks, _health, _stop) = started(&script).await;
    assert_eq!(script.calls(), 1);
    // 20 handshakes at once with a kid nobody published: one fetch, all refused.
    let misses = futures_util::future::join_all((0..20).map(|_| {
        let jwks = jwks.clone();
        async move { jwks.key("nope").await }
    }))
    .await;
    assert!(
        misses
            .iter()
            .all(|m| m.as_ref().unwrap_err() == &KeyMiss::UnknownKid)
    );
    assert_eq!(
        script.calls(),
        2,
        "one refetch for 20 concurrent unknown kids"
    );
    assert_eq!(count(&jwks, "ok", "unknown_kid"), 1);
    // Within 10 s: no more fetches, however many unknown kids come.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(jwks.key("other").await.unwrap_err(), KeyMiss::UnknownKid);
    assert_eq!(script.calls(), 2);
    // After 10 s a new key is picked up by the next unknown kid.
    script.set(Answer::Body(
        set(vec![
            jwk(EC256_A, Algorithm::ES256, "a", true),
            jwk(RSA_A, Algorithm::RS256, "b", true),
        ]),
        Some(Duration::from_secs(3600)),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(jwks.key("b").await.is_ok(), "new kid after the window");
    assert_eq!(script.calls(), 3);
    assert!(jwks.key("a").await.is_ok());
    assert_eq!(script.calls(), 3, "known kids never fetch");
}

#[tokio::test(start_paused = true)]
async fn bad_answers_keep_the_last_good_set() {
    let a = set(vec![jwk(EC256_A, Algorithm::ES256, "a", true)]);
    let script = Script::new(Answer::Body(a, Some(Duration::from_secs(3600))));
    let (jwks, health, _stop) = started(&script).await;
    let bad = [
        (Answer::Status(503), "error"),
        (Answer::TooLarge, "refused"),
        (
            Answer::Body(Bytes::from_static(b"<html>oops</html>"), None),
            "refused",
        ),
        (
            Answer::Body(
                set(vec![json!({"kty": "oct", "kid": "h", "k": "AAAA"})]),
                None,
            ),
            "refused",
        ),
        (Answer::Body(set(vec![]), None), "refused"),
    ];
    let mut expected_refused = 0;
    for (answer, result) in bad {
        script.set(answer);
        tokio::time::sleep(UNKNOWN_KID_MIN_INTERVAL).await;
        let before = script.calls();
        assert_eq!(jwks.key("new").await.unwrap_err(), KeyMiss::UnknownKid);
        assert_eq!(script.calls(), before + 1);
        assert!(jwks.key("a").await.is_ok(), "the good set still serves");
        expected_refused += u64::from(result == "refused");
        assert!(health.ready());
    }
    assert_eq!(count(&jwks, "error", "unknown_kid"), 1);
    assert_eq!(count(&jwks, "refused", "unknown_kid"), expected_refused);
}

#[tokio::test(start_paused = true)]
async fn not_ready_until_a_first_good_set() {
    let script = Script::new(Answer::Status(500));
    let jwks = source(&script);
    let health = Arc::new(Health::new(false));
    health.set_keys_pending(true);
    let stop = CancellationToken::new();
    let task = tokio::spawn(jwks.clone().run(health.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!health.ready());
    // Retries back off: 1, 2, 4, 8, 16 s (+ the fetch time) within the first 30 s.
    assert!((4..=6).contains(&script.calls()), "{}", script.calls());
    assert_eq!(jwks.key("a").await.unwrap_err(), KeyMiss::NotLoaded);
    assert_eq!(count(&jwks, "error", "start") as usize, script.calls());
    script.set(Answer::Body(
        set(vec![jwk(EC256_A, Algorithm::ES256, "a", true)]),
        None,
    ));
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(health.ready());
    assert!(jwks.key("a").await.is_ok());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("run ends on stop")
        .unwrap();
}
