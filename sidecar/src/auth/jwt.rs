//! `--auth jwt`: which key verifies a token (one fixed key from the flags, or the JWKS key its
//! `kid` names) and what a verified token grants.
//!
//! ```text
//! token --header kid/alg--> JwtKeys::Static (alg fixed) | JwtKeys::Jwks (kid -> key, alg fits)
//!       --signature, exp, nbf--> claims --groups claim + user group of sub--> Identity
//! ```

use std::sync::Arc;

use http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Identity, Rejection, user_group_of};
use crate::config::JwtKey;
use crate::error::ConfigError;
use crate::jwks::{Jwks, KeyMiss};
use crate::metrics::RejectReason;

/// Where the JWT verification key comes from.
pub(super) enum JwtKeys {
    /// One key from the flags, its algorithm fixed.
    Static {
        key: Box<DecodingKey>,
        validation: Box<Validation>,
    },
    /// The keys of a JWKS endpoint, by `kid`.
    Jwks(Arc<Jwks>),
}

impl JwtKeys {
    pub(super) fn new(key: &JwtKey) -> Result<Self, ConfigError> {
        Ok(match key {
            JwtKey::Jwks(jwks) => JwtKeys::Jwks(Arc::new(Jwks::new(jwks)?)),
            JwtKey::Hmac(secret) => JwtKeys::Static {
                key: Box::new(DecodingKey::from_secret(secret)),
                validation: Box::new(validation(Algorithm::HS256)),
            },
            JwtKey::PublicPem(pem) => {
                let (key, alg) = public_pem(pem)?;
                JwtKeys::Static {
                    key: Box::new(key),
                    validation: Box::new(validation(alg)),
                }
            }
        })
    }

    /// Verifies `token` and returns who it names and the groups it grants.
    pub(super) async fn verify(
        &self,
        token: &str,
        groups_claim: &str,
        user_group: &str,
    ) -> Result<Identity, Rejection> {
        match self {
            JwtKeys::Static { key, validation } => {
                verify_jwt(token, key, validation, groups_claim, user_group)
            }
            JwtKeys::Jwks(jwks) => {
                let (key, alg) = jwks.key_for(token).await.map_err(|miss| match miss {
                    // Keys are on their way: like forward auth's outage, "try again".
                    KeyMiss::NotLoaded => Rejection::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        RejectReason::AuthUnavailable,
                        miss.to_string(),
                    ),
                    miss => Rejection::unauthorized(miss.to_string()),
                })?;
                verify_jwt(token, &key.key, &validation(alg), groups_claim, user_group)
            }
        }
    }
}

/// Exactly one algorithm, fixed by the key: a token whose header names another (`none`, or
/// HS256 signed with a public key) fails validation.
fn validation(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.validate_nbf = true;
    validation.validate_exp = true;
    validation.leeway = 30;
    validation.set_required_spec_claims(&["exp"]);
    validation
}

/// An RSA (RS256) or EC P-256 (ES256) public key in PEM form.
fn public_pem(pem: &[u8]) -> Result<(DecodingKey, Algorithm), ConfigError> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((k, Algorithm::RS256));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((k, Algorithm::ES256));
    }
    Err(ConfigError::new(
        "--jwt-public-key-file",
        "not an RSA or EC (P-256) public key in PEM form",
    ))
}

fn verify_jwt(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
    groups_claim: &str,
    user_group: &str,
) -> Result<Identity, Rejection> {
    use jsonwebtoken::errors::ErrorKind;
    let data =
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, validation)
            .map_err(|e| {
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "token signature invalid",
                    ErrorKind::InvalidAlgorithm => "token algorithm not accepted",
                    ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (exp)",
                    _ => "token malformed or not accepted",
                };
                Rejection::unauthorized(why)
            })?;
    let claims = data.claims;
    let mut groups: Vec<String> = match claims.get(groups_claim) {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let user = claims
        .get("sub")
        .and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .filter(|s| !s.is_empty());
    if let Some(sub) = &user {
        groups.extend(user_group_of(user_group, sub));
    }
    Ok(Identity { user, groups })
}
