//! The public listener: accepts connections, routes the WebSocket path to a session and
//! everything else to the app, and checks every handshake before upgrading.
//!
//! ```text
//! accept -> http/1 conn -> request -+- ws path -> checks (origin, limit, auth) -> join hub -> 101 -> session
//!                                   +- other   -> proxy -> app
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::auth::{Authenticator, Rejection};
use crate::broker::Broker;
use crate::broker::id::StreamId;
use crate::config::Config;
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::{Metrics, RejectReason};
use crate::origin::check_origin;
use crate::protocol;
use crate::proxy::{Body, Upstream, text};
use crate::session;

/// Initial WebSocket read buffer per client (see the comment at the upgrade).
const READ_BUFFER: usize = 256;

/// Room for a frame header and the `taskstream.v1` JSON envelope around an event's payload.
const EVENT_FRAMING: usize = 1024;

/// How long a handshake waits for the broker to confirm the client's subscriptions.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything a connection needs, shared by all of them.
pub struct Shared {
    pub config: Config,
    pub hub: Arc<Hub>,
    /// Publishing and history (resume reads).
    pub broker: Arc<Broker>,
    pub auth: Authenticator,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// What every session is given (one allocation for all of them), `--max-connections`'
    /// slots included.
    pub sessions: Arc<session::Context>,
    /// Cancelled on shutdown: sessions send 1001, HTTP connections finish and close.
    pub shutdown: CancellationToken,
    /// Sessions and HTTP connections, awaited (with a grace period) on shutdown.
    pub tasks: TaskTracker,
}

/// Accepts connections until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed; backing off 100ms (raise the open-file limit?)");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn_shared = shared.clone();
        shared.tasks.spawn(async move {
            let shared = conn_shared;
            let svc_shared = shared.clone();
            let svc = service_fn(move |req| {
                let shared = svc_shared.clone();
                async move { Ok::<_, std::convert::Infallible>(route(shared, req, peer).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            let shutdown = shared.shutdown.clone();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    // Finish the request in flight, then close instead of keeping alive.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "http connection ended with an error");
            }
            // A handshake's buffers are freed here (the session keeps only the socket).
            crate::memory::churned();
        });
    }
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let ws = is_ws_path(req.uri().path(), &shared.config.ws_path);
    if let Some(why) = host_problem(&req) {
        if ws {
            shared.metrics.rejected(RejectReason::BadRequest);
        }
        debug!(%peer, why, "refused a request with a bad Host");
        return text(StatusCode::BAD_REQUEST, format!("400 bad request: {why}\n"));
    }
    if ws {
        handshake(shared, req, peer).await
    } else {
        shared.upstream.proxy(req, peer).await
    }
}

/// RFC 9112 section 3.2: an HTTP/1.1 request without `Host`, or any request with more than
/// one, gets 400 (neither the app nor the origin check should guess which host was meant).
/// HTTP/1.0 predates `Host` and may omit it.
fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    match req.headers().get_all(header::HOST).iter().count() {
        0 if req.version() >= http::Version::HTTP_11 => Some("HTTP/1.1 requires a Host header"),
        0 | 1 => None,
        _ => Some("more than one Host header"),
    }
}

/// `/ws/tasks/` also matches `/ws/tasks`, and the other way round.
fn is_ws_path(path: &str, ws_path: &str) -> bool {
    path == ws_path || path.trim_end_matches('/') == ws_path.trim_end_matches('/')
}

fn reject(shared: &Shared, status: StatusCode, reason: RejectReason, msg: &str) -> Response<Body> {
    shared.metrics.rejected(reason);
    text(status, format!("{msg}\n"))
}

async fn handshake(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    if shared.health.shutting_down() {
        return reject(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            RejectReason::ShuttingDown,
            "shutting down, reconnect",
        );
    }
    let headers = req.headers();
    let is_ws = crate::proxy::is_upgrade(headers)
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_ws || req.method() != http::Method::GET {
        return preflight(&shared, &req, peer).await;
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return reject(
            &shared,
            StatusCode::BAD_REQUEST,
            RejectReason::BadRequest,
            "unsupported Sec-WebSocket-Version (need 13)",
        );
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return reject(
            &shared,
            StatusCode::BAD_REQUEST,
            RejectReason::BadRequest,
            "missing Sec-WebSocket-Key",
        );
    };
    let Ok(permit) = shared.sessions.slots.clone().try_acquire_owned() else {
        warn!(%peer, max = shared.config.max_connections, "connection limit reached; answering 503 (raise --max-connections or add replicas)");
        return reject(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            RejectReason::Limit,
            "too many connections, try again later",
        );
    };
    let v1 = protocol::offered(req.headers());
    let (identity, resume) = match admit(&shared, &req, peer, v1).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.answer(&shared, peer),
    };

    let membership = shared.hub.join(identity.groups);
    // Subscribed before the 101: every event published after the handshake arrives. Also at
    // start-up, before the first Redis connection. Only while Redis is known to be down is the
    // client admitted at once (and subscribed when Redis is back).
    let confirmed =
        !shared.health.broker_lost() && membership.wait_confirmed(CONFIRM_TIMEOUT).await;
    // Positions at connect: read now, so that every event after the handshake is after them.
    let placed = crate::resume::read_positions(
        &shared.broker,
        v1,
        membership.groups(),
        &resume,
        confirmed,
        CONFIRM_TIMEOUT,
    )
    .await;
    let ws_config = WebSocketConfig::default()
        // Clients only send pongs and closes, and tungstenite zero-fills (so touches) the
        // whole read buffer on the first read: a small one keeps idle connections cheap.
        // It still grows to fit any larger frame (up to --max-message-bytes).
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        // Events are written only once the previous write drained, so the buffer holds at
        // most one event plus what tungstenite adds by itself (pongs, the close reply).
        .max_write_buffer_size(shared.config.max_event_bytes + EVENT_FRAMING + session::OWED_LIMIT)
        .max_message_size(Some(shared.config.max_message_bytes))
        .max_frame_size(Some(shared.config.max_message_bytes));
    let start = Box::new(session::Start {
        on_upgrade: hyper::upgrade::on(&mut req),
        ws_config,
        cx: shared.sessions.clone(),
        membership,
        peer,
        user: identity.user,
        v1,
        placed,
        resume,
        confirmed,
        permit,
    });
    shared.tasks.spawn(session::serve_client(start));

    let mut resp = Response::new(crate::proxy::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if v1 {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol::SUBPROTOCOL),
        );
    }
    resp
}

/// The `last_id` query parameters, one per group; they need the `taskstream.v1` subprotocol
/// (a client without it never saw an id).
fn last_ids(query: Option<&str>, v1: bool) -> Result<Vec<(String, StreamId)>, String> {
    let mut out: Vec<(String, StreamId)> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k != "last_id" {
            continue;
        }
        if !v1 {
            return Err(format!(
                "last_id needs the WebSocket subprotocol {} (Sec-WebSocket-Protocol)",
                protocol::SUBPROTOCOL
            ));
        }
        let (group, id) = protocol::parse_last_id(&v)?;
        if out.iter().any(|(g, _)| *g == group) {
            return Err(format!("last_id given twice for group {group:?}"));
        }
        out.push((group, id));
    }
    Ok(out)
}

/// Why a handshake is refused: its HTTP answer.
struct Refusal {
    status: StatusCode,
    reason: RejectReason,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: RejectReason, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }

    /// The refused handshake's answer, counted.
    fn answer(self, shared: &Shared, peer: SocketAddr) -> Response<Body> {
        debug!(%peer, status = %self.status, why = %self.message, "websocket handshake refused");
        reject(shared, self.status, self.reason, &self.message)
    }
}

/// The checks that decide who may connect and to what: origin, `last_id`, authentication and
/// groups. Shared by the handshake and the plain-GET preflight.
async fn admit(
    shared: &Shared,
    req: &Request<Incoming>,
    peer: SocketAddr,
    v1: bool,
) -> Result<(crate::auth::Identity, Vec<(String, StreamId)>), Refusal> {
    if let Err(why) = check_origin(&shared.config.allowed_origins, req.headers()) {
        info!(%peer, origin = why, "refused websocket from a foreign origin (cross-site websocket hijacking?); add it to --allowed-origins if it is yours");
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            RejectReason::Origin,
            "origin not allowed",
        ));
    }
    let resume = last_ids(req.uri().query(), v1)
        .map_err(|msg| Refusal::new(StatusCode::BAD_REQUEST, RejectReason::BadRequest, msg))?;
    let identity = shared.auth.authenticate(req, peer).await.map_err(
        |Rejection {
             status,
             reason,
             message,
         }| Refusal::new(status, reason, message),
    )?;
    if let Some((g, _)) = resume.iter().find(|(g, _)| !identity.groups.contains(g)) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            RejectReason::Forbidden,
            format!(
                "last_id names group {g:?}, which is not one of this connection's groups (granted, and in ?groups= when given)"
            ),
        ));
    }
    Ok((identity, resume))
}

/// A plain `GET` of the WebSocket path (no upgrade) runs the same checks as a handshake and
/// answers their refusal (401, 403, 400, 503), or `426` when the handshake would be admitted:
/// a browser cannot see why a WebSocket was refused, so clients ask this way to tell "stop
/// retrying" from "try again". Not counted as a refused handshake. (Browsers cannot send the
/// subprotocol header with fetch, so `last_id` is checked as for a `taskstream.v1` client.)
async fn preflight(shared: &Shared, req: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let upgrade = || {
        let mut resp = text(
            StatusCode::UPGRADE_REQUIRED,
            "this path serves WebSocket connections only (a handshake would be admitted)\n",
        );
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        resp
    };
    if req.method() != http::Method::GET {
        return upgrade();
    }
    match admit(shared, req, peer, true).await {
        Ok(_) => upgrade(),
        Err(refusal) => text(refusal.status, format!("{}\n", refusal.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_required_on_http_1_1_and_unique_everywhere() {
        let req = |version, hosts: &[&'static str]| {
            let mut r = Request::builder().version(version).uri("/x");
            for h in hosts {
                r = r.header(header::HOST, *h);
            }
            r.body(()).unwrap()
        };
        use http::Version;
        assert!(host_problem(&req(Version::HTTP_11, &[])).is_some());
        assert!(host_problem(&req(Version::HTTP_11, &["a"])).is_none());
        assert!(host_problem(&req(Version::HTTP_11, &["a", "b"])).is_some());
        assert!(host_problem(&req(Version::HTTP_10, &[])).is_none());
        assert!(host_problem(&req(Version::HTTP_10, &["a", "a"])).is_some());
    }

    #[test]
    fn ws_path_matching() {
        assert!(is_ws_path("/ws/tasks/", "/ws/tasks/"));
        assert!(is_ws_path("/ws/tasks", "/ws/tasks/"));
        assert!(!is_ws_path("/ws/tasks/other", "/ws/tasks/"));
        assert!(!is_ws_path("/", "/ws/tasks/"));
    }
}
