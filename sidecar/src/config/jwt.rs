//! The JWT verification key, from exactly one of `--jwt-secret`, `--jwt-secret-file` and
//! `--jwt-public-key-file`.

use std::path::PathBuf;

use super::JwtKey;
use crate::error::ConfigError;

/// Reads the key the flags name; every error names the flag to fix.
pub(super) fn jwt_key(
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    public_key_file: Option<PathBuf>,
) -> Result<JwtKey, ConfigError> {
    let key = match (secret, secret_file, public_key_file) {
        (Some(s), None, None) => JwtKey::Hmac(s.into_bytes()),
        (None, Some(path), None) => {
            let raw = std::fs::read(&path).map_err(|e| {
                ConfigError::new("--jwt-secret-file", format!("{}: {e}", path.display()))
            })?;
            JwtKey::Hmac(trim_trailing_newline(raw))
        }
        (None, None, Some(path)) => {
            let pem = std::fs::read(&path).map_err(|e| {
                ConfigError::new("--jwt-public-key-file", format!("{}: {e}", path.display()))
            })?;
            JwtKey::PublicPem(pem)
        }
        (None, None, None) => {
            return Err(ConfigError::new(
                "--jwt-secret",
                "--auth jwt needs one of --jwt-secret, --jwt-secret-file, --jwt-public-key-file",
            ));
        }
        _ => {
            return Err(ConfigError::new(
                "--jwt-secret",
                "give only one of --jwt-secret, --jwt-secret-file, --jwt-public-key-file",
            ));
        }
    };
    if let JwtKey::Hmac(secret) = &key
        && secret.len() < 16
    {
        return Err(ConfigError::new(
            "--jwt-secret",
            "HS256 secret is shorter than 16 bytes; use a long random secret",
        ));
    }
    Ok(key)
}

fn trim_trailing_newline(mut raw: Vec<u8>) -> Vec<u8> {
    while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        raw.pop();
    }
    raw
}
