//! The webhook's HTTPS server: TLS with a certificate swapped in place when the Secret changes,
//! one task per connection, `POST /mutate-pods` only.
//!
//! ```text
//! TcpListener :9443 ─> TLS (Resolver: current cert) ─> hyper http1 ─> POST /mutate-pods
//!                                                                      └─> admission::review
//! keeper ──Resolver::set(new cert)──┘   (next handshakes use it; open connections keep theirs)
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::admission::{TaskStreams, review};
use crate::error::{Error, Result};
use crate::resources::Params;
use crate::shutdown::Shutdown;

/// The path the MutatingWebhookConfiguration calls.
pub const MUTATE_PATH: &str = "/mutate-pods";
/// Largest AdmissionReview accepted: a pod is far smaller (the API server caps objects at
/// 1.5 MiB); anything bigger is refused instead of buffered.
const MAX_BODY_BYTES: usize = 4 << 20;
/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The serving certificate, replaced whole when the Secret changes. The lock is held only to
/// clone or swap the `Arc`, never across an `.await`.
#[derive(Debug, Default)]
pub struct Resolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Resolver {
    /// Serves `cert_pem` with `key_pem` from the next handshake on.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let bad = |reason: String| Error::CertificateData { reason };
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("tls.crt: {e}")))?;
        if certs.is_empty() {
            return Err(bad("tls.crt holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| bad(format!("tls.key: {e}")))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| bad(format!("tls.key: {e}")))?;
        let certified = Arc::new(CertifiedKey::new(certs, signer));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(certified);
        Ok(())
    }

    /// Whether a certificate is loaded (the webhook can serve).
    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Binds the webhook listener; a bind failure is a start-up error naming the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::WebhookServer { addr, source })
}

/// Serves the webhook until shutdown.
pub async fn serve<T: TaskStreams + 'static>(
    listener: TcpListener,
    resolver: Arc<Resolver>,
    taskstreams: Arc<T>,
    params: Arc<Params>,
    shutdown: Shutdown,
) {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_no_client_auth().with_cert_resolver(resolver));
    let config = match config.as_mut() {
        Ok(c) => {
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(c.clone())
        }
        Err(e) => {
            warn!(error = %e, "webhook TLS configuration");
            return;
        }
    };
    let acceptor = TlsAcceptor::from(config);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, path = MUTATE_PATH, "webhook server listening");
    }
    let stop = shutdown.clone().wait();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "webhook accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let conn_shutdown = shutdown.clone();
        let taskstreams = taskstreams.clone();
        let params = params.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "webhook TLS handshake"),
                Err(_) => return debug!(%peer, "webhook TLS handshake timed out"),
            };
            let service = service_fn(move |req| {
                let taskstreams = taskstreams.clone();
                let params = params.clone();
                async move { Ok::<_, Infallible>(handle(req, taskstreams.as_ref(), &params).await) }
            });
            // The API server keeps connections alive: on shutdown each one finishes its
            // request in flight and closes, so the webhook really stops answering.
            let conn = http1::Builder::new().serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = conn_shutdown.wait() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "webhook connection");
            }
        });
    }
    info!("webhook server stopped");
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

async fn handle(
    req: Request<Incoming>,
    taskstreams: &impl TaskStreams,
    params: &Params,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.uri().path() != MUTATE_PATH {
        return reply(StatusCode::NOT_FOUND, PLAIN, b"not found\n".to_vec());
    }
    if req.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            b"POST an AdmissionReview\n".to_vec(),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                PLAIN,
                format!("reading the AdmissionReview: {e}\n").into_bytes(),
            );
        }
    };
    let answer = review(&body, taskstreams, params).await;
    let content_type = if answer.status == StatusCode::OK {
        "application/json"
    } else {
        PLAIN
    };
    reply(answer.status, content_type, answer.body)
}

#[cfg(test)]
mod tests;
