//! The demo app: serves a page with "Start task" buttons (and the browser client
//! `@taskstream/client` it uses, from clients/js), logs visitors in with a cookie, answers the
//! sidecar's forward auth, and runs simulated tasks that publish progress events to the visitor's
//! group `user:<id>`, with history, through the sidecar's `POST /publish/<group>` admin API or
//! straight to Redis (`--redis-url`), see [`publish`].
//!
//! ```text
//! browser --GET / , POST /api/tasks--> sidecar :8080 --proxy--> demo app :8000
//! browser <==== ws /ws/tasks/ ======== sidecar <--POST /publish/user:<id>-- demo app (task loop)
//!         (taskstream.v1, last_id)      sidecar --GET /ws-auth/ (cookie)--> demo app
//! ```

pub mod publish;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::publish::Publisher;

const PAGE: &str = include_str!("../static/index.html");
/// The browser client, served as a static file (no bundler: the page imports it as a module).
const CLIENT_JS: &str = include_str!("../../clients/js/index.js");
const COOKIE: &str = "demo_user";
/// Tasks whose published events the app remembers (for `GET /api/tasks/<id>`).
const KEEP_TASKS: usize = 100;

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
    /// Publish straight to this Redis with the publish-with-history script (as an app's
    /// workers would) instead of through --publish-url; events then outlive sidecar restarts.
    #[arg(long, env = "TASKSTREAM_DEMO_REDIS_URL")]
    pub redis_url: Option<String>,
    /// With --redis-url: events kept per group (match the sidecar's --history-size).
    #[arg(long, env = "TASKSTREAM_DEMO_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: u64,
}

struct App {
    args: Args,
    publisher: Publisher,
    next_task: AtomicU64,
    /// task -> the events it published, with their ids (bounded to KEEP_TASKS tasks).
    published: Mutex<BTreeMap<u64, Vec<serde_json::Value>>>,
}

/// Serves the demo app on `listener` forever (returns at once if --redis-url is unusable).
pub async fn serve(listener: TcpListener, args: Args) {
    let publisher = match &args.redis_url {
        Some(url) => match Publisher::redis(url, args.history_size, Duration::from_secs(600)).await
        {
            Ok(p) => p,
            Err(e) => {
                error!(error = %e, "--redis-url: cannot connect");
                return;
            }
        },
        None => Publisher::admin(&args.publish_url),
    };
    let via = match &args.redis_url {
        Some(_) => "redis".to_owned(),
        None => args.publish_url.clone(),
    };
    let app = Arc::new(App {
        publisher,
        args,
        next_task: AtomicU64::new(1),
        published: Mutex::new(BTreeMap::new()),
    });
    info!(addr = ?listener.local_addr().ok(), publish = %via, "demo app listening");
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
            // "Log in" every new visitor as a fresh user, so each browser has its own group.
            let (id, new) = match user {
                Some(u) => (u, false),
                None => (
                    std::iter::repeat_with(fastrand::alphanumeric)
                        .take(12)
                        .collect::<String>(),
                    true,
                ),
            };
            // The page resumes its group from the start of its history (a reload shows every step).
            let page = PAGE.replace("__TASKSTREAM_GROUP__", &format!("user:{id}"));
            let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", page);
            if new
                && let Ok(v) =
                    HeaderValue::from_str(&format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax"))
            {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        (&Method::GET, "/static/taskstream-client.js") => {
            respond(StatusCode::OK, "text/javascript; charset=utf-8", CLIENT_JS)
        }
        (&Method::GET, path) if path.starts_with("/api/tasks/") => {
            let task = path["/api/tasks/".len()..].parse::<u64>().ok();
            let events = task.and_then(|t| app.published.lock().ok()?.get(&t).cloned());
            match events {
                Some(events) => respond(
                    StatusCode::OK,
                    "application/json",
                    json!({ "events": events }).to_string(),
                ),
                None => respond(StatusCode::NOT_FOUND, "text/plain", "no such task\n"),
            }
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
/// Events have the shape of the Python package's Celery helper, which the browser client reads:
/// `{"type":"progress","task":ID,"percent":P,"state":"running|done|failed","message":M}`.
async fn run_task(app: Arc<App>, user: String, id: u64) {
    let group = format!("user:{user}");
    let fails = app.args.fail_every > 0 && id.is_multiple_of(app.args.fail_every);
    let mut percent = 0u64;
    publish(&app, &group, id, percent, "running", "started").await;
    loop {
        tokio::time::sleep(Duration::from_millis(app.args.step_ms)).await;
        percent = (percent + fastrand::u64(8..=20)).min(100);
        if fails && percent >= 60 {
            let msg = "simulated failure: the worker raised an exception";
            publish(&app, &group, id, percent, "failed", msg).await;
            return;
        }
        if percent >= 100 {
            publish(&app, &group, id, 100, "done", "finished").await;
            return;
        }
        publish(&app, &group, id, percent, "running", "working").await;
    }
}

async fn publish(app: &App, group: &str, task: u64, percent: u64, state: &str, message: &str) {
    let event = json!({"type": "progress", "task": task, "percent": percent, "state": state, "message": message});
    let id = app.publisher.publish(group, &event).await;
    if let Ok(mut published) = app.published.lock() {
        published
            .entry(task)
            .or_default()
            .push(json!({"id": id, "percent": percent, "state": state}));
        while published.len() > KEEP_TASKS {
            published.pop_first();
        }
    }
}
