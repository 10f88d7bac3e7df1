//! The demo app: serves a page with "Start task" buttons, logs visitors in with a cookie, answers
//! the sidecar's forward auth, and runs simulated tasks that publish progress to the visitor's
//! group through the sidecar's `POST /publish/<group>` admin API.
//!
//! ```text
//! browser --GET / , POST /api/tasks--> sidecar :8080 --proxy--> demo app :8000
//! browser <==== ws /ws/tasks/ ======== sidecar <--POST /publish/user:<id>-- demo app (task loop)
//!                                       sidecar --GET /ws-auth/ (cookie)--> demo app
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{info, warn};

const PAGE: &str = include_str!("../static/index.html");
const COOKIE: &str = "demo_user";

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Flags of `taskstream-demo`.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "taskstream-demo", about = "Local-mode demo app for taskstream")]
pub struct Args {
    /// Where the app listens (the sidecar's --upstream).
    #[arg(long, env = "TASKSTREAM_DEMO_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// The sidecar's admin address, where events are published.
    #[arg(
        long,
        env = "TASKSTREAM_DEMO_PUBLISH_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    pub publish_url: String,
    /// Time between two progress events of a task, in milliseconds.
    #[arg(long, env = "TASKSTREAM_DEMO_STEP_MS", default_value_t = 250)]
    pub step_ms: u64,
    /// Every Nth task fails part-way (0: none fail).
    #[arg(long, env = "TASKSTREAM_DEMO_FAIL_EVERY", default_value_t = 4)]
    pub fail_every: u64,
}

struct App {
    args: Args,
    client: Client<HttpConnector, Body>,
    next_task: AtomicU64,
}

/// Serves the demo app on `listener` forever.
pub async fn serve(listener: TcpListener, args: Args) {
    let app = Arc::new(App {
        client: Client::builder(TokioExecutor::new()).build_http(),
        args,
        next_task: AtomicU64::new(1),
    });
    info!(addr = ?listener.local_addr().ok(), publish = %app.args.publish_url, "demo app listening");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(app, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The visitor's id from the `demo_user` cookie.
fn user_of(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric()))
}

async fn route(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let user = user_of(&req);
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => {
            let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", PAGE);
            if user.is_none() {
                // "Log in" every new visitor as a fresh user, so each browser has its own group.
                let id: String = std::iter::repeat_with(fastrand::alphanumeric)
                    .take(12)
                    .collect();
                if let Ok(v) =
                    HeaderValue::from_str(&format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax"))
                {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
            }
            r
        }
        // Forward auth: the sidecar asks this before admitting a WebSocket.
        (&Method::GET, "/ws-auth/") => match user {
            Some(u) => respond(
                StatusCode::OK,
                "application/json",
                json!({"user": u, "groups": []}).to_string(),
            ),
            None => respond(StatusCode::UNAUTHORIZED, "text/plain", "not logged in\n"),
        },
        (&Method::POST, "/api/tasks") => {
            let Some(user) = user else {
                return respond(
                    StatusCode::UNAUTHORIZED,
                    "text/plain",
                    "not logged in: load / first\n",
                );
            };
            let id = app.next_task.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(run_task(app.clone(), user, id));
            respond(
                StatusCode::ACCEPTED,
                "application/json",
                json!({"task": id}).to_string(),
            )
        }
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// A simulated background task: progress in uneven steps, then done (or, now and then, failed).
async fn run_task(app: Arc<App>, user: String, id: u64) {
    let group = format!("user:{user}");
    let fails = app.args.fail_every > 0 && id.is_multiple_of(app.args.fail_every);
    let mut progress = 0u64;
    publish(
        &app,
        &group,
        json!({"task": id, "state": "running", "progress": 0}),
    )
    .await;
    loop {
        tokio::time::sleep(Duration::from_millis(app.args.step_ms)).await;
        progress = (progress + fastrand::u64(8..=20)).min(100);
        if fails && progress >= 60 {
            publish(&app, &group, json!({"task": id, "state": "failed", "progress": progress, "error": "simulated failure: the worker raised an exception"})).await;
            return;
        }
        if progress >= 100 {
            publish(
                &app,
                &group,
                json!({"task": id, "state": "done", "progress": 100}),
            )
            .await;
            return;
        }
        publish(
            &app,
            &group,
            json!({"task": id, "state": "running", "progress": progress}),
        )
        .await;
    }
}

async fn publish(app: &App, group: &str, event: serde_json::Value) {
    let url = format!(
        "{}/publish/{group}",
        app.args.publish_url.trim_end_matches('/')
    );
    let req =
        match Request::post(&url).body(Full::new(Bytes::from(event.to_string())).boxed_unsync()) {
            Ok(r) => r,
            Err(e) => {
                warn!(%url, error = %e, "bad publish url");
                return;
            }
        };
    match tokio::time::timeout(Duration::from_secs(2), app.client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => {}
        Ok(Ok(resp)) => warn!(%url, status = %resp.status(), "publish refused"),
        Ok(Err(e)) => {
            warn!(%url, error = %e, "publish failed (is the sidecar running?); the event is lost")
        }
        Err(_) => warn!(%url, "publish timed out; the event is lost"),
    }
}
