//! The JWT verification key, from exactly one of `--jwt-secret`, `--jwt-secret-file`,
//! `--jwt-public-key-file` and `--jwt-jwks-url` (with `--jwt-jwks-ca-file` for a private CA).

use std::path::PathBuf;

use http::Uri;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::JwtKey;
use crate::error::ConfigError;
use crate::jwks::JwksConfig;

/// The key flags as given.
pub(super) struct JwtKeyFlags {
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub public_key_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub jwks_ca_file: Option<PathBuf>,
}

const ALL: &str = "--jwt-secret, --jwt-secret-file, --jwt-public-key-file, --jwt-jwks-url";

/// Reads the key the flags name; every error names the flag to fix.
pub(super) fn jwt_key(flags: JwtKeyFlags) -> Result<JwtKey, ConfigError> {
    let JwtKeyFlags {
        secret,
        secret_file,
        public_key_file,
        jwks_url,
        jwks_ca_file,
    } = flags;
    if jwks_ca_file.is_some() && jwks_url.is_none() {
        return Err(ConfigError::new(
            "--jwt-jwks-ca-file",
            "only used with --jwt-jwks-url",
        ));
    }
    let key = match (secret, secret_file, public_key_file, jwks_url) {
        (Some(s), None, None, None) => JwtKey::Hmac(s.into_bytes()),
        (None, Some(path), None, None) => {
            let raw = std::fs::read(&path).map_err(|e| {
                ConfigError::new("--jwt-secret-file", format!("{}: {e}", path.display()))
            })?;
            JwtKey::Hmac(trim_trailing_newline(raw))
        }
        (None, None, Some(path), None) => {
            let pem = std::fs::read(&path).map_err(|e| {
                ConfigError::new("--jwt-public-key-file", format!("{}: {e}", path.display()))
            })?;
            JwtKey::PublicPem(pem)
        }
        (None, None, None, Some(url)) => JwtKey::Jwks(jwks(&url, jwks_ca_file)?),
        (None, None, None, None) => {
            return Err(ConfigError::new(
                "--jwt-secret",
                format!("--auth jwt needs one of {ALL}"),
            ));
        }
        (_, _, _, Some(_)) => {
            return Err(ConfigError::new(
                "--jwt-jwks-url",
                "give only one of --jwt-jwks-url and the static keys (--jwt-secret, --jwt-secret-file, --jwt-public-key-file): with a JWKS the identity provider's published keys are the only ones trusted",
            ));
        }
        _ => {
            return Err(ConfigError::new(
                "--jwt-secret",
                format!("give only one of {ALL}"),
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

/// An `https://` URL with a host, and the CA bundle when one is named.
fn jwks(url: &str, ca_file: Option<PathBuf>) -> Result<JwksConfig, ConfigError> {
    let url: Uri = url
        .trim()
        .parse()
        .map_err(|e| ConfigError::new("--jwt-jwks-url", format!("{url:?}: {e}")))?;
    if url.scheme_str() != Some("https") || url.host().is_none_or(str::is_empty) {
        return Err(ConfigError::new(
            "--jwt-jwks-url",
            format!(
                "{url} must be an https:// URL with a host (the keys that decide who may connect are never fetched in clear text), e.g. https://idp.example.com/realms/app/protocol/openid-connect/certs"
            ),
        ));
    }
    let roots = match ca_file {
        None => None,
        Some(path) => {
            let pem = std::fs::read(&path).map_err(|e| {
                ConfigError::new("--jwt-jwks-ca-file", format!("{}: {e}", path.display()))
            })?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    ConfigError::new("--jwt-jwks-ca-file", format!("{}: {e}", path.display()))
                })?;
            if certs.is_empty() {
                return Err(ConfigError::new(
                    "--jwt-jwks-ca-file",
                    format!(
                        "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
                        path.display()
                    ),
                ));
            }
            let mut store = rustls::RootCertStore::empty();
            for cert in &certs {
                store.add(cert.clone()).map_err(|e| {
                    ConfigError::new(
                        "--jwt-jwks-ca-file",
                        format!("{}: not a usable CA certificate: {e}", path.display()),
                    )
                })?;
            }
            Some(certs)
        }
    };
    Ok(JwksConfig { url, roots })
}

fn trim_trailing_newline(mut raw: Vec<u8>) -> Vec<u8> {
    while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        raw.pop();
    }
    raw
}
