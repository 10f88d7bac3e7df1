//! Reverse proxy to the app: every request that is not the sidecar's WebSocket path.
//!
//! Bodies stream both ways (never buffered whole), connections to the app are pooled keep-alive,
//! hop-by-hop headers are dropped, `X-Forwarded-*` are added, and WebSocket upgrades on other
//! paths are spliced through to the app byte for byte.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// Body type of every request and response the sidecar produces.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// A short plain-text body.
pub fn text(status: StatusCode, msg: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(msg.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The app behind the sidecar, with a pooled HTTP/1.1 client.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    base: Uri,
    metrics: Metrics,
}

impl Upstream {
    pub fn new(base: Uri, metrics: Metrics) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Self {
            client,
            base,
            metrics,
        }
    }

    /// The app's URI for `path_and_query` (which starts with `/`).
    pub fn uri(&self, path_and_query: &str) -> Uri {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = path_and_query.parse().ok();
        Uri::from_parts(parts).unwrap_or_else(|_| self.base.clone())
    }

    pub fn base(&self) -> &Uri {
        &self.base
    }

    /// Sends a request to the app as is.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, String> {
        self.client.request(req).await.map_err(|e| describe(&e))
    }

    /// Proxies one client request to the app.
    pub async fn proxy(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let mut out = Request::builder()
            .method(parts.method.clone())
            .uri(self.uri(&path))
            .body(body.boxed_unsync())
            .expect("method and uri come from a parsed request");
        *out.headers_mut() = forward_headers(&parts.headers, peer, upgrade);

        let started = std::time::Instant::now();
        let resp = match self.client.request(out).await {
            Ok(resp) => resp,
            Err(e) if client_body_failed(&e) => {
                // The client's own body broke (bad chunk size, upload aborted): nothing the app
                // did, so no warning and no `class="error"` that would page someone about it.
                debug!(method = %parts.method, path = %parts.uri.path(), %peer, error = %describe(&e), "client request body broken; answering 400");
                self.metrics.proxied_client_error();
                return text(
                    StatusCode::BAD_REQUEST,
                    "400 bad request: the request body could not be read\n",
                );
            }
            Err(e) => {
                let e = describe(&e);
                warn!(method = %parts.method, path = %parts.uri.path(), upstream = %self.base, error = %e, "app did not answer; returning 502 (is the app running and listening on --upstream?)");
                self.metrics.proxied(None);
                return text(
                    StatusCode::BAD_GATEWAY,
                    "502 bad gateway: the app behind taskstream is not reachable\n",
                );
            }
        };
        self.metrics.proxied(Some(resp.status().as_u16()));
        self.metrics
            .proxy_response_seconds
            .observe(started.elapsed().as_secs_f64());

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            return splice_upgrade(resp, client_upgrade);
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, body.boxed_unsync())
    }
}

/// The legacy client's Display is terse; its source says what really happened.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    match std::error::Error::source(e) {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

/// Whether a failed request to the app failed because the client's request body did.
///
/// The body streamed to the app is the client's `Incoming`, whose errors are `hyper::Error`s
/// (a bad chunk, the connection closed mid-body). When polling it fails, the client connection
/// to the app reports a *user* error ("error from user's Body stream") caused by that
/// `hyper::Error`. Every app-side failure (refused, reset, closed, timed out) is a connect or
/// I/O error instead, and so stays a 502.
fn client_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && h.is_user()
            && std::error::Error::source(h).is_some_and(|src| src.is::<hyper::Error>())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Answers the client with the app's 101 and copies bytes both ways once both sides upgraded.
fn splice_upgrade(
    mut resp: Response<Incoming>,
    client_upgrade: hyper::upgrade::OnUpgrade,
) -> Response<Body> {
    let app_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (client, app) = match tokio::try_join!(client_upgrade, app_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "websocket passthrough: upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut app = TokioIo::new(app);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut app).await {
            debug!(error = %e, "websocket passthrough ended");
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, empty())
}

/// `Connection: upgrade` with an `Upgrade` header.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(h);
    }
}

/// The headers sent to the app: the client's, minus hop-by-hop, plus `X-Forwarded-*`
/// (see [`add_forwarded`]).
pub fn forward_headers(incoming: &HeaderMap, peer: SocketAddr, upgrade: bool) -> HeaderMap {
    let mut headers = incoming.clone();
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::UPGRADE);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(v) = upgrade_value {
            headers.insert(header::UPGRADE, v);
        }
    }
    add_forwarded(&mut headers, incoming, peer);
    headers
}

/// Sets `X-Forwarded-*` on a request to the app from the client's `incoming` headers: every
/// request the sidecar sends the app on a client's behalf (proxied, or forward auth) goes
/// through here, so the app sees one story.
///
/// `X-Forwarded-For` is the client's value (all its lines, in order) with the peer appended: the
/// app trusts only the hops it knows, and the last one is always the real peer. `-Proto` and
/// `-Host` are kept when an ingress in front already set them (it knows the scheme the browser
/// used); otherwise they describe the request the sidecar received.
pub fn add_forwarded(out: &mut HeaderMap, incoming: &HeaderMap, peer: SocketAddr) {
    let mut xff: Vec<&str> = incoming
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let peer_ip = peer.ip().to_canonical().to_string();
    xff.push(&peer_ip);
    out.remove(&X_FORWARDED_FOR);
    match HeaderValue::from_str(&xff.join(", ")) {
        Ok(v) => out.insert(X_FORWARDED_FOR.clone(), v),
        // Only the peer then: never pass on a value we could not extend.
        Err(_) => out.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_str(&peer_ip).expect("an IP address is a valid header value"),
        ),
    };
    for (name, fallback) in [
        (&X_FORWARDED_PROTO, Some(HeaderValue::from_static("http"))),
        (&X_FORWARDED_HOST, incoming.get(header::HOST).cloned()),
    ] {
        out.remove(name);
        let mut given = incoming.get_all(name).iter().peekable();
        if given.peek().is_none()
            && let Some(v) = fallback
        {
            out.insert(name.clone(), v);
        }
        for v in given {
            out.append(name.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.1.2.3:5555".parse().unwrap()
    }

    #[test]
    fn forwarded_headers_are_added_and_hop_by_hop_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app.example.com"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::COOKIE, HeaderValue::from_static("sessionid=abc"));
        let out = forward_headers(&h, peer(), false);
        assert_eq!(out["host"], "app.example.com");
        assert_eq!(out["cookie"], "sessionid=abc");
        assert_eq!(out["x-forwarded-for"], "10.1.2.3");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "app.example.com");
        assert!(!out.contains_key("connection"));
        assert!(!out.contains_key("x-secret-hop"));
        assert!(!out.contains_key("keep-alive"));
    }

    #[test]
    fn existing_forwarded_headers_are_extended_not_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let out = forward_headers(&h, peer(), false);
        assert_eq!(out["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(out["x-forwarded-proto"], "https");
    }

    #[test]
    fn every_forwarded_for_line_is_kept_in_order_and_the_peer_is_last() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.append("x-forwarded-for", HeaderValue::from_static(" 7.7.7.7 "));
        h.append("x-forwarded-host", HeaderValue::from_static("a.example"));
        h.append("x-forwarded-host", HeaderValue::from_static("b.example"));
        let mut out = HeaderMap::new();
        out.insert("x-forwarded-for", HeaderValue::from_static("stale"));
        add_forwarded(&mut out, &h, peer());
        assert_eq!(out["x-forwarded-for"], "6.6.6.6, 7.7.7.7, 10.1.2.3");
        assert_eq!(out.get_all("x-forwarded-for").iter().count(), 1);
        let hosts: Vec<_> = out.get_all("x-forwarded-host").iter().collect();
        assert_eq!(hosts, ["a.example", "b.example"]);
        assert_eq!(out["x-forwarded-proto"], "http");
        let v6: SocketAddr = "[::ffff:10.9.8.7]:1".parse().unwrap();
        let mut out = HeaderMap::new();
        add_forwarded(&mut out, &HeaderMap::new(), v6);
        assert_eq!(
            out["x-forwarded-for"], "10.9.8.7",
            "IPv4-mapped peers read as IPv4"
        );
        assert!(
            !out.contains_key("x-forwarded-host"),
            "no Host, nothing to forward"
        );
    }

    #[test]
    fn upgrade_headers_survive_for_passthrough() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        let out = forward_headers(&h, peer(), true);
        assert_eq!(out["connection"], "upgrade");
        assert_eq!(out["upgrade"], "websocket");
        let plain = forward_headers(&h, peer(), false);
        assert!(!plain.contains_key("upgrade"));
    }
}
