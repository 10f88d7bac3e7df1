//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and `POST /publish/<group>`.
//!
//! It listens on the pod IP (kubelet probes and Prometheus come from outside the pod), so
//! `POST /publish/<group>` answers only loopback peers, the app in the same pod, unless
//! `--publish-allow-remote`: otherwise any pod could publish to any group.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::{Broker, PublishError};
use crate::health::Health;
use crate::proxy::{Body, text};

/// Largest event accepted by `POST /publish/<group>`.
pub const MAX_PUBLISH_BYTES: usize = 1024 * 1024;

pub struct Admin {
    pub health: Arc<Health>,
    pub registry: Registry,
    pub broker: Broker,
    /// `--publish-allow-remote`: accept `POST /publish` from non-loopback peers.
    pub publish_allow_remote: bool,
}

/// Serves the admin port until `stop` is cancelled.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "admin accept failed; backing off 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&admin, req, peer).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "admin connection error");
            }
        });
    }
}

async fn handle(admin: &Admin, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if admin.health.shutting_down() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else if !admin.health.broker_up() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker (redis) not connected\n",
                )
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut out = String::new();
            if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &admin.registry) {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encode metrics: {e}\n"),
                );
            }
            let mut resp = Response::new(
                Full::new(Bytes::from(out))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (&Method::POST, p) if p.starts_with("/publish/") => {
            if !admin.publish_allow_remote && !is_loopback(peer.ip()) {
                info!(%peer, "refused POST /publish from a non-loopback peer (see --publish-allow-remote)");
                return text(
                    StatusCode::FORBIDDEN,
                    "403 forbidden: POST /publish/<group> is accepted from loopback only; \
                     publish from the app's container to http://127.0.0.1:<admin port>, or start \
                     the sidecar with --publish-allow-remote (TASKSTREAM_PUBLISH_ALLOW_REMOTE=true) \
                     to accept it from other pods\n",
                );
            }
            publish(admin, req).await
        }
        (_, "/healthz" | "/readyz" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        (_, p) if p.starts_with("/publish/") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /healthz /readyz /metrics POST /publish/<group>\n",
        ),
    }
}

async fn publish(admin: &Admin, req: Request<Incoming>) -> Response<Body> {
    let raw = &req.uri().path()["/publish/".len()..];
    let group: String = match percent_decode(raw) {
        Some(g) if !g.is_empty() && !g.contains('/') => g,
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "usage: POST /publish/<group> with the event as the body\n",
            );
        }
    };
    let body = match Limited::new(req.into_body(), MAX_PUBLISH_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("event larger than {MAX_PUBLISH_BYTES} bytes\n"),
                );
            }
            return text(StatusCode::BAD_REQUEST, format!("read body: {e}\n"));
        }
    };
    match admin.broker.publish(&group, body).await {
        Ok(n) => text(StatusCode::OK, format!("{{\"receivers\":{n}}}\n")),
        Err(e @ PublishError::NotUtf8) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        Err(e) => {
            warn!(group, error = %e, "publish failed");
            text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
        }
    }
}

/// Whether `ip` is this host talking to itself: `127.0.0.0/8`, `::1`, and the IPv4-mapped
/// `::ffff:127.x.y.z` a dual-stack (`[::]`) listener sees for IPv4 loopback clients. The pod IP
/// is not loopback even when the app uses it from inside the pod: it is what other pods use too.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_peers() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:127.9.9.9",
        ] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.7",
            "192.0.2.2",
            "0.0.0.0",
            "::",
            "::ffff:10.0.0.7",
            "fd00::2",
            "fe80::1",
            // IPv4-compatible (deprecated), not mapped: not loopback.
            "::127.0.0.1",
        ] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }
}
