//! The admin server: `/healthz` (the process is alive), `/readyz` (it can serve: the Kubernetes
//! client is up and, with the webhook on, its certificate is loaded; a standby replica is
//! ready too) and `/metrics` (Prometheus text format).
//!
//! hyper 1 with one task per connection; the accept loop stops on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::webhook::server::Resolver;

/// Readiness of the process, flipped once start-up is done; with the webhook on, also until
/// it has a certificate to serve (the Service sends admission requests only to ready replicas).
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    webhook: std::sync::OnceLock<Arc<Resolver>>,
}

impl Health {
    /// Marks the process ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Makes readiness wait for the webhook's certificate.
    pub fn require_webhook(&self, resolver: Arc<Resolver>) {
        let _ = self.webhook.set(resolver);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.webhook.get().is_none_or(|r| r.is_loaded())
    }
}

/// Binds the admin listener; a bind failure is a start-up error naming the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::AdminServer { addr, source })
}

/// Serves the admin endpoints until shutdown.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: Arc<Health>,
    shutdown: Shutdown,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin server listening");
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
                    warn!(error = %e, "admin accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = route(&req, &registry, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "admin connection");
            }
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn route(req: &Request<Incoming>, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" if health.is_ready() => text(StatusCode::OK, PLAIN, "ready\n".into()),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "not ready\n".into()),
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN,
                    "encode error\n".into(),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    }

    #[test]
    fn readiness_waits_for_the_webhook_certificate() {
        let health = Health::default();
        health.set_ready(true);
        assert!(health.is_ready());
        let resolver = Arc::new(Resolver::default());
        health.require_webhook(resolver.clone());
        assert!(!health.is_ready(), "no certificate yet");
        let names = ["127.0.0.1".to_string()];
        let now = time::OffsetDateTime::now_utc();
        let m =
            crate::webhook::certs::issue(&crate::webhook::certs::Plan::Fresh, None, &names, now)
                .expect("cert");
        resolver.set(&m.cert_pem, &m.key_pem).expect("loads");
        assert!(health.is_ready());
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics_until_shutdown() {
        let (metrics, registry) = Metrics::registered();
        metrics.reconciles.inc();
        let health = Arc::new(Health::default());
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (trigger, shutdown) = Shutdown::new();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(registry),
            health.clone(),
            shutdown,
        ));

        let within = std::time::Duration::from_secs(5);
        let check = async {
            assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
            assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
            health.set_ready(true);
            assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
            let metrics = get(addr, "/metrics").await;
            assert!(
                metrics.contains("taskstream_operator_reconciles_total 1"),
                "{metrics}"
            );
            assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        };
        tokio::time::timeout(within, check)
            .await
            .expect("admin answers in time");
        trigger.trigger();
        tokio::time::timeout(within, server)
            .await
            .expect("server stops on shutdown")
            .expect("server task");
    }
}
