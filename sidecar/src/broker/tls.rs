//! TLS towards Redis (`rediss://`): which CAs to trust (a PEM bundle, or the system roots), the
//! client certificate for mutual TLS, or no verification at all.
//!
//! ```text
//! --redis-ca-file ----------+
//! --redis-client-cert-file -+-> read + parsed once at start-up -> Tls -> every redis::Client
//! --redis-client-key-file --+   (bad file: exit 2 naming the flag)      (pub/sub, publisher,
//! --redis-tls-insecure -----+                                            sentinels, cluster nodes,
//!                                                                        channels hosts)
//! ```
//!
//! The handshake itself is redis-rs's own rustls support; nothing here links OpenSSL.

use std::path::Path;
use std::sync::Arc;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ConfigError;

/// How connections to `rediss://` servers are secured; plain `redis://` URLs ignore it.
#[derive(Clone, Default)]
pub struct Tls {
    /// The CA bundle and/or the client identity; `None` = system roots, no client certificate.
    certs: Option<Arc<TlsCertificates>>,
    /// `--redis-tls-insecure`: no certificate or host name check.
    insecure: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field(
                "custom_ca",
                &self.certs.as_ref().is_some_and(|c| c.root_cert.is_some()),
            )
            .field(
                "client_cert",
                &self.certs.as_ref().is_some_and(|c| c.client_tls.is_some()),
            )
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl Tls {
    /// Reads and checks the files named by the TLS flags; the error names the flag at fault.
    pub fn from_files(
        ca: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
        insecure: bool,
    ) -> Result<Self, ConfigError> {
        let root_cert = match ca {
            Some(path) => {
                let pem = read("--redis-ca-file", path)?;
                let mut n = 0;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        ConfigError::new("--redis-ca-file", format!("{}: {e}", path.display()))
                    })?;
                    let mut store = rustls::RootCertStore::empty();
                    store.add(cert).map_err(|e| {
                        ConfigError::new(
                            "--redis-ca-file",
                            format!("{}: not a usable CA certificate: {e}", path.display()),
                        )
                    })?;
                    n += 1;
                }
                if n == 0 {
                    return Err(ConfigError::new(
                        "--redis-ca-file",
                        format!(
                            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
                            path.display()
                        ),
                    ));
                }
                Some(pem)
            }
            None => None,
        };
        let client_tls = match (client_cert, client_key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "--redis-client-key-file",
                    "required with --redis-client-cert-file (mutual TLS needs both)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "--redis-client-cert-file",
                    "required with --redis-client-key-file (mutual TLS needs both)",
                ));
            }
            (Some(cert_path), Some(key_path)) => {
                let cert = read("--redis-client-cert-file", cert_path)?;
                let chain = CertificateDer::pem_slice_iter(&cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        ConfigError::new(
                            "--redis-client-cert-file",
                            format!("{}: {e}", cert_path.display()),
                        )
                    })?;
                if chain.is_empty() {
                    return Err(ConfigError::new(
                        "--redis-client-cert-file",
                        format!("{}: no PEM certificate in the file", cert_path.display()),
                    ));
                }
                let key = read("--redis-client-key-file", key_path)?;
                // The error of a key parse may quote key bytes: say only what is wrong.
                PrivateKeyDer::from_pem_slice(&key).map_err(|_| {
                    ConfigError::new(
                        "--redis-client-key-file",
                        format!(
                            "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file",
                            key_path.display()
                        ),
                    )
                })?;
                Some(redis::ClientTlsConfig {
                    client_cert: cert,
                    client_key: key,
                })
            }
        };
        let certs = (root_cert.is_some() || client_tls.is_some()).then(|| {
            Arc::new(TlsCertificates {
                client_tls,
                root_cert,
            })
        });
        Ok(Self { certs, insecure })
    }

    /// Whether any TLS flag was given (they only matter with `rediss://`).
    pub fn configured(&self) -> bool {
        self.certs.is_some() || self.insecure
    }

    pub fn insecure(&self) -> bool {
        self.insecure
    }

    /// The certificates for redis-rs builders (sentinel, cluster), if any flag gave some.
    pub fn certificates(&self) -> Option<TlsCertificates> {
        self.certs.as_deref().cloned()
    }

    /// A client for `info`, with this TLS applied when its address is `rediss://`.
    pub fn client(&self, info: impl IntoConnectionInfo) -> RedisResult<redis::Client> {
        let info = self.apply(info.into_connection_info()?);
        if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
            install_crypto_provider();
            if let Some(certs) = &self.certs {
                return redis::Client::build_with_tls(info, TlsCertificates::clone(certs));
            }
        }
        redis::Client::open(info)
    }

    /// `info` with `--redis-tls-insecure` applied to a TLS address.
    pub fn apply(&self, info: ConnectionInfo) -> ConnectionInfo {
        match info.addr().clone() {
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                tls_params,
            } => info.set_addr(ConnectionAddr::TcpTls {
                host,
                port,
                insecure: insecure || self.insecure,
                tls_params,
            }),
            _ => info,
        }
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::new(flag, format!("{}: {e}", path.display())))
}

/// rustls needs one process-wide crypto provider; the sidecar uses ring (as the operator does).
/// Installing is idempotent: a provider already in place is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What to check when a connection error looks like a failed TLS handshake; `None` otherwise.
pub fn hint(error: &redis::RedisError) -> Option<&'static str> {
    let text = error.to_string();
    let has = |s: &str| text.contains(s);
    if has("UnknownIssuer") || has("BadSignature") || has("invalid peer certificate") {
        if has("NotValidForName") || has("not valid for name") {
            return Some(
                "TLS: the server certificate does not name the host of the Redis URL; connect by a name or IP the certificate lists",
            );
        }
        return Some(
            "TLS: the server certificate is not signed by a trusted CA; check --redis-ca-file (default: the system roots)",
        );
    }
    if has("NotValidForName") || has("not valid for name") {
        return Some(
            "TLS: the server certificate does not name the host of the Redis URL; connect by a name or IP the certificate lists",
        );
    }
    if has("Expired") || has("NotValidYet") {
        return Some("TLS: the server certificate is expired or not yet valid");
    }
    if has("CertificateRequired") || has("certificate required") || has("BadCertificate") {
        return Some(
            "TLS: the server wants a client certificate it trusts; check --redis-client-cert-file and --redis-client-key-file",
        );
    }
    if has("InvalidContentType") || has("corrupt message") || has("HandshakeFailure") {
        return Some(
            "TLS: handshake failed; is the server listening with TLS on this port (rediss:// needs a TLS port, redis:// a plain one)?",
        );
    }
    None
}
