//! A JWK Set (RFC 7517) turned into verification keys by `kid`, each with the algorithms it may
//! verify.
//!
//! ```text
//! body --json--> {"keys": [..]} --each key--> usable?  yes -> kid -> (DecodingKey, [alg..])
//!                                                      no  -> Skipped { kid, why }
//! ```
//!
//! Only signature keys of the kinds the sidecar verifies are taken: RSA (RS256/384/512), EC P-256
//! (ES256), EC P-384 (ES384) and OKP Ed25519 (EdDSA). A key's `alg`, when published, narrows
//! that list to itself and must fit the key. Symmetric (`oct`) keys are never taken: a JWKS is
//! public, and accepting HMAC with a published key would let anyone sign tokens. Keys of a type
//! not understood are skipped, as RFC 7517 section 5 asks, and reported; a set that leaves no
//! usable key is refused as a whole.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// One verification key and the algorithms a token signed with it may name.
pub struct VerifyKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The usable keys of one fetched set, by `kid`.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: HashMap<String, Arc<VerifyKey>>,
}

impl KeySet {
    pub fn get(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.keys.get(kid).cloned()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids, sorted (for logs).
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }
}

/// A key of the set that is not used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub kid: Option<String>,
    pub why: String,
    /// Published for another use (`"use": "enc"`): expected in many sets, not worth a warning.
    pub other_use: bool,
}

/// Why a body is not taken as the new set.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("body is not a JSON JWK Set ({{\"keys\": [...]}}): {0}")]
    NotJwks(#[source] serde_json::Error),
    #[error("no usable signature key in the set ({skipped} skipped: {summary})")]
    NoUsableKey { skipped: usize, summary: String },
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS body; keys that cannot be used come back in the second list.
pub fn parse(body: &[u8]) -> Result<(KeySet, Vec<Skipped>), ParseError> {
    let raw: RawSet = serde_json::from_slice(body).map_err(ParseError::NotJwks)?;
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    for value in raw.keys {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let skip = |why: String, other_use: bool| Skipped {
            kid: kid.clone(),
            why,
            other_use,
        };
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(e) => {
                skipped.push(skip(format!("not a JWK: {e}"), false));
                continue;
            }
        };
        match usable(&jwk) {
            Ok(key) => {
                let Some(kid) = kid.clone() else {
                    skipped.push(skip("no kid: tokens choose their key by kid".into(), false));
                    continue;
                };
                if set.keys.contains_key(&kid) {
                    skipped.push(skip(
                        "duplicate kid: the first key with it is used".into(),
                        false,
                    ));
                    continue;
                }
                set.keys.insert(kid, Arc::new(key));
            }
            Err(Unusable { why, other_use }) => skipped.push(skip(why, other_use)),
        }
    }
    if set.is_empty() {
        let summary = skipped
            .iter()
            .map(|s| format!("{}: {}", s.kid.as_deref().unwrap_or("<no kid>"), s.why))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ParseError::NoUsableKey {
            skipped: skipped.len(),
            summary: if summary.is_empty() {
                "the set is empty".into()
            } else {
                summary
            },
        });
    }
    Ok((set, skipped))
}

struct Unusable {
    why: String,
    other_use: bool,
}

fn unusable(why: impl Into<String>) -> Unusable {
    Unusable {
        why: why.into(),
        other_use: false,
    }
}

/// The key and its algorithms, or why it cannot verify tokens here.
fn usable(jwk: &Jwk) -> Result<VerifyKey, Unusable> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(other) => {
            return Err(Unusable {
                why: format!("use {other:?} is not sig"),
                other_use: true,
            });
        }
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            ref c => {
                return Err(unusable(format!(
                    "EC curve {c:?} is not supported (P-256, P-384)"
                )));
            }
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            ref c => {
                return Err(unusable(format!(
                    "OKP curve {c:?} is not supported (Ed25519)"
                )));
            }
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err(unusable(
                "symmetric (oct) key: HMAC keys are never taken from a public JWKS",
            ));
        }
        AlgorithmParameters::Other(other) => {
            let kty = other
                .fields
                .get("kty")
                .map(|k| k.to_string())
                .unwrap_or_else(|| "missing".into());
            return Err(unusable(format!(
                "unknown key type (kty {kty}) or incomplete key; supported: RSA, EC P-256/P-384, OKP Ed25519"
            )));
        }
        _ => return Err(unusable("key type not supported")),
    };
    let algorithms = match jwk.common.key_algorithm {
        None => family.to_vec(),
        Some(KeyAlgorithm::UNKNOWN_ALGORITHM) => {
            return Err(unusable("alg is not a known JWS algorithm"));
        }
        Some(alg) => match Algorithm::try_from(alg) {
            Ok(alg) if family.contains(&alg) => vec![alg],
            _ => {
                return Err(unusable(format!(
                    "alg {alg} does not fit the key (this key verifies {family:?})"
                )));
            }
        },
    };
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|e| unusable(format!("key material is not valid: {e}")))?;
    Ok(VerifyKey { key, algorithms })
}
