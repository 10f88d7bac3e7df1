//! A real upstream HTTP app for proxy and forward-auth tests, served by hyper on loopback.
//!
//! Routes:
//! - `ANY /echo...`: 200, JSON `{method, uri, headers, body}` of what the app received.
//! - `ANY /stream`: answers 200 at once and streams the request body back as it arrives.
//! - `GET /status/<code>`: that status.
//! - `GET /slow?ms=N`: answers after N ms.
//! - `GET /ws-auth/...`: the forward-auth answer set with [`App::set_auth`]; records the request.
//! - `GET /ws-echo/`: a WebSocket echo server (for passthrough).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

/// What `/ws-auth/` answers.
#[derive(Clone, Debug)]
pub enum AuthAnswer {
    /// 200 with `{"user": user, "groups": groups}`.
    Allow { user: String, groups: Vec<String> },
    /// That status with an empty body.
    Status(u16),
    /// Never answers (for the timeout path).
    Hang,
}

#[derive(Default)]
struct State {
    auth: Option<AuthAnswer>,
    last_auth_headers: Option<HeaderMap>,
    last_auth_query: Option<String>,
    slow_started: usize,
    connections: usize,
}

/// The app, running until dropped.
pub struct App {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("app addr");
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.lock().unwrap().connections += 1;
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(st, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_auth(&self, answer: AuthAnswer) {
        self.state.lock().unwrap().auth = Some(answer);
    }

    /// How many TCP connections the app has accepted.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// How many `/slow` requests reached the app.
    pub fn slow_started(&self) -> usize {
        self.state.lock().unwrap().slow_started
    }

    /// Headers and query of the last `/ws-auth/` request.
    pub fn last_auth(&self) -> Option<(HeaderMap, Option<String>)> {
        let s = self.state.lock().unwrap();
        s.last_auth_headers
            .clone()
            .map(|h| (h, s.last_auth_query.clone()))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(state: Arc<Mutex<State>>, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path.starts_with("/echo") {
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let headers: BTreeMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let v = json!({"method": method, "uri": uri, "headers": headers, "body": String::from_utf8_lossy(&body)});
        let mut r = full(StatusCode::OK, v.to_string());
        r.headers_mut()
            .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        r.headers_mut().insert("x-app", "echo".parse().unwrap());
        return r;
    }
    if path == "/stream" {
        // The response body is the request body, chunk by chunk, as it arrives.
        return Response::new(req.into_body().boxed_unsync());
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        return full(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            format!("status {code}"),
        );
    }
    if path == "/slow" {
        state.lock().unwrap().slow_started += 1;
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return full(StatusCode::OK, "slow done");
    }
    if path.starts_with("/ws-auth") {
        let answer = {
            let mut s = state.lock().unwrap();
            s.last_auth_headers = Some(req.headers().clone());
            s.last_auth_query = req.uri().query().map(str::to_owned);
            s.auth.clone()
        };
        return match answer {
            Some(AuthAnswer::Allow { user, groups }) => full(
                StatusCode::OK,
                json!({"user": user, "groups": groups}).to_string(),
            ),
            Some(AuthAnswer::Status(code)) => full(StatusCode::from_u16(code).unwrap(), ""),
            Some(AuthAnswer::Hang) => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                full(StatusCode::OK, "")
            }
            None => full(StatusCode::NOT_FOUND, "no auth configured"),
        };
    }
    if path.starts_with("/ws-echo") {
        let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return full(StatusCode::BAD_REQUEST, "websocket only");
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = on_upgrade.await else { return };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() || msg.is_binary() {
                    let _ = ws.send(msg).await;
                }
            }
        });
        let mut r = Response::new(Empty::new().map_err(|n| match n {}).boxed_unsync());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert(header::UPGRADE, "websocket".parse().unwrap());
        r.headers_mut()
            .insert(header::CONNECTION, "Upgrade".parse().unwrap());
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()).parse().unwrap(),
        );
        r.headers_mut().insert("x-app", "ws-echo".parse().unwrap());
        return r;
    }
    full(StatusCode::NOT_FOUND, "not found")
}

/// A plain HTTP client for tests.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `GET url` -> (status, body); status 0 when the connection fails.
pub async fn http_get(url: &str) -> (u16, String) {
    let req = Request::get(url)
        .body(Empty::new().map_err(|n| match n {}).boxed_unsync())
        .expect("request");
    send(req).await
}

/// Sends `req` -> (status, body); status 0 when the connection fails. Bounded by [`crate::WAIT`].
pub async fn send(req: Request<Body>) -> (u16, String) {
    let fut = async {
        match client().request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
            Err(_) => (0, String::new()),
        }
    };
    tokio::time::timeout(crate::WAIT, fut)
        .await
        .expect("http request within the wait")
}

/// A request with a small body.
pub fn request(method: &str, url: &str, body: impl Into<Bytes>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(
            Full::new(body.into())
                .map_err(|n| match n {})
                .boxed_unsync(),
        )
        .expect("request")
}

/// `POST url` with `body` -> (status, body).
pub async fn http_post(url: &str, body: &str) -> (u16, String) {
    send(request("POST", url, body.to_owned())).await
}
