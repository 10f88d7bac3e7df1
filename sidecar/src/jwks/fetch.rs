//! One `GET` of the JWKS URL over HTTPS (rustls), read with a bound.
//!
//! ```text
//! HttpsFetcher --TLS (--jwt-jwks-ca-file, or the system roots)--> IdP
//!      <-- status, Cache-Control, body (at most 1 MiB, refused as soon as it goes past)
//! ```
//!
//! Redirects are not followed and no proxy is used: identity providers serve their JWKS
//! directly at the URL their discovery document (`jwks_uri`) names.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, HeaderMap, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;

use super::JwksError;
use crate::error::ConfigError;

/// Largest JWKS body read; a set of a few dozen keys is a few tens of KiB.
pub const MAX_BODY: usize = 1024 * 1024;
/// Time for one fetch: connect, TLS, answer and body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one successful `GET` brought back.
#[derive(Debug)]
pub struct Fetched {
    pub body: Bytes,
    /// `Cache-Control: max-age` (`no-cache`/`no-store` count as 0); `None` without one.
    pub max_age: Option<Duration>,
}

/// Where a key set comes from: the HTTPS fetcher in production; a scripted source in the
/// refresh-timing unit tests.
pub trait Fetch: Send + Sync + 'static {
    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, JwksError>>;
}

/// Fetches the JWKS URL over HTTPS.
pub struct HttpsFetcher {
    url: Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl HttpsFetcher {
    /// `roots`: the CAs of `--jwt-jwks-ca-file`; `None` trusts the system roots.
    pub fn new(url: Uri, roots: Option<&[CertificateDer<'static>]>) -> Result<Self, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = HttpsConnectorBuilder::new();
        let builder = match roots {
            Some(roots) => {
                let mut store = rustls::RootCertStore::empty();
                for cert in roots {
                    store.add(cert.clone()).map_err(|e| {
                        ConfigError::new(
                            "--jwt-jwks-ca-file",
                            format!("not a usable CA certificate: {e}"),
                        )
                    })?;
                }
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| ConfigError::new("--jwt-jwks-url", format!("TLS setup: {e}")))?
                    .with_root_certificates(store)
                    .with_no_client_auth();
                builder.with_tls_config(config)
            }
            None => builder.with_provider_and_native_roots(provider).map_err(|e| {
                ConfigError::new(
                    "--jwt-jwks-url",
                    format!(
                        "no system CA certificates to verify the JWKS server ({e}); install them or pass --jwt-jwks-ca-file"
                    ),
                )
            })?,
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = builder.https_only().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { url, client })
    }

    async fn get(&self) -> Result<Fetched, JwksError> {
        let url = &self.url;
        let req = Request::get(url.clone())
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .header(
                USER_AGENT,
                concat!("taskstream-sidecar/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| JwksError::Request {
                url: url.to_string(),
                source: Box::new(e),
            })?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| JwksError::Request {
                url: url.to_string(),
                source: Box::new(e),
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(JwksError::Status {
                url: url.to_string(),
                status,
            });
        }
        let max_age = max_age(resp.headers());
        let announced = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(JwksError::TooLarge {
                url: url.to_string(),
                limit: MAX_BODY,
            });
        }
        // Limited stops reading at the bound: a huge or endless body never sits in memory.
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    JwksError::TooLarge {
                        url: url.to_string(),
                        limit: MAX_BODY,
                    }
                } else {
                    JwksError::Request {
                        url: url.to_string(),
                        source: e,
                    }
                }
            })?
            .to_bytes();
        Ok(Fetched { body, max_age })
    }
}

impl Fetch for HttpsFetcher {
    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, JwksError>> {
        Box::pin(async move {
            tokio::time::timeout(FETCH_TIMEOUT, self.get())
                .await
                .map_err(|_| JwksError::Timeout {
                    url: self.url.to_string(),
                    after: FETCH_TIMEOUT,
                })?
        })
    }
}

/// `max-age` of a `Cache-Control` header; `no-cache` and `no-store` mean "ask again soon" (0).
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut found = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim();
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive, None),
            };
            if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
                return Some(Duration::ZERO);
            }
            if name.eq_ignore_ascii_case("max-age")
                && let Some(secs) = arg.and_then(|a| a.parse::<u64>().ok())
            {
                found = Some(Duration::from_secs(secs));
            }
        }
    }
    found
}
