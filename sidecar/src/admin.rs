//! The admin listener: `/healthz`, `/readyz`, `/readyz/broker`, `/metrics`, and
//! `POST /publish/<group>`.
//!
//! It must stay inside the pod (the operator exposes only the public port in the Service):
//! anyone who reaches it can publish to any group.

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
use tracing::{debug, warn};

use crate::broker::{Broker, PublishError, Published};
use crate::health::Health;
use crate::proxy::{Body, text};

pub struct Admin {
    pub health: Arc<Health>,
    pub registry: Registry,
    pub broker: Arc<Broker>,
    /// `--max-event-bytes`: the largest body `POST /publish/<group>` accepts.
    pub max_event_bytes: usize,
}

/// Serves the admin port until `stop` is cancelled.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
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
                async move { Ok::<_, std::convert::Infallible>(handle(&admin, req).await) }
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

async fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Body> {
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
        (&Method::POST, p) if p.starts_with("/publish/") => publish(admin, req).await,
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
            let answer = match id {
                Some(id) => serde_json::json!({"receivers": receivers, "id": id.to_string()}),
                None => serde_json::json!({"receivers": receivers}),
            };
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

fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}
