//! The admin listener: `/healthz`, `/readyz`, `/readyz/broker`, `/metrics`, and
//! `POST /publish/<group>`.
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
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::{Broker, PublishError, Published};
use crate::health::Health;
use crate::proxy::{Body, text};

pub struct Admin {
    pub health: Arc<Health>,
    pub registry: Registry,
    pub broker: Arc<Broker>,
    /// `--max-event-bytes`: the largest body `POST /publish/<group>` accepts.
    pub max_event_bytes: usize,
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

/// Generic over the body so tests can call it with any peer address, without a network.
async fn handle<B>(admin: &Admin, req: Request<B>, peer: SocketAddr) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if admin.health.shutting_down() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else if !admin.health.ready() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker (redis) not connected, and --ready-requires-broker is set\n",
                )
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (&Method::GET, "/readyz/broker") => {
            if admin.health.broker_up() {
                text(StatusCode::OK, "broker connected\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker (redis) not connected; clients stay connected and get events again once it is back\n",
                )
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
        (_, "/healthz" | "/readyz" | "/readyz/broker" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        (_, p) if p.starts_with("/publish/") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /healthz /readyz /readyz/broker /metrics POST /publish/<group>\n",
        ),
    }
}

async fn publish<B>(admin: &Admin, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
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
    let body = match Limited::new(req.into_body(), admin.max_event_bytes)
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
                    format!(
                        "event larger than {} bytes (--max-event-bytes)\n",
                        admin.max_event_bytes
                    ),
                );
            }
            return text(StatusCode::BAD_REQUEST, format!("read body: {e}\n"));
        }
    };
    match admin.broker.publish(&group, body).await {
        Ok(Published { receivers, id }) => {
            let mut answer = serde_json::Map::new();
            if let Some(n) = receivers {
                answer.insert("receivers".into(), n.into());
            }
            if let Some(id) = id {
                answer.insert("id".into(), id.to_string().into());
            }
            let answer = serde_json::Value::Object(answer);
            text(StatusCode::OK, format!("{answer}\n"))
        }
        Err(e @ (PublishError::NotUtf8 | PublishError::Reserved)) => {
            text(StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
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
    use crate::hub::Hub;
    use crate::metrics::Metrics;

    fn admin(allow_remote: bool) -> (Admin, Arc<Hub>) {
        let hub = Hub::new(8, 1 << 20, true, Metrics::default());
        let admin = Admin {
            health: Arc::new(Health::new(false)),
            registry: Registry::default(),
            broker: Arc::new(Broker::memory(hub.clone(), None, Metrics::default())),
            max_event_bytes: 1 << 20,
            publish_allow_remote: allow_remote,
        };
        (admin, hub)
    }

    async fn call(admin: &Admin, method: &str, path: &str, peer: &str) -> (u16, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
            .unwrap();
        let resp = handle(admin, req, peer.parse().unwrap()).await;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn publish_answers_loopback_only_unless_allowed_while_probes_answer_everyone() {
        let (strict, hub) = admin(false);
        let member = hub.join(vec!["g".into()]);
        let pod = "10.1.2.3:40000"; // another pod, as the sidecar would see it (no traffic sent)
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(call(&strict, "GET", path, pod).await.0, 200, "{path}");
        }
        let (status, body) = call(&strict, "POST", "/publish/g", pod).await;
        assert_eq!(status, 403);
        assert!(
            body.contains("127.0.0.1") && body.contains("--publish-allow-remote"),
            "{body}"
        );
        assert!(member.queue.try_pop().is_none(), "nothing published");
        for local in [
            "127.0.0.1:1",
            "127.9.9.9:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(
                call(&strict, "POST", "/publish/g", local).await.0,
                200,
                "{local}"
            );
            assert_eq!(member.queue.try_pop().unwrap().payload, "{\"n\":1}");
        }
        let (open, hub) = admin(true);
        let member = hub.join(vec!["g".into()]);
        assert_eq!(call(&open, "POST", "/publish/g", pod).await.0, 200);
        assert!(
            member.queue.try_pop().is_some(),
            "--publish-allow-remote opens it"
        );
    }

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
