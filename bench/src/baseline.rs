//! The floor of the stack: a lean fan-out server on the sidecar's stack (tokio, hyper 1 for
//! the upgrade, tokio-tungstenite with the sidecar's buffer settings, redis-rs pub/sub,
//! jsonwebtoken) with nothing else: no metrics, no pings, no history, no proxying. The load tool
//! drives it with the same clients and the same events as the sidecar, in the same run, and
//! reports the sidecar as ratios to it. Also the tiny hyper app of the proxy scenario.
//!
//! ```text
//! PUBLISH taskstream:<g> --> [source] --+
//!                                       +--> [hub: group -> queues] --> [session] x N --ws--> clients
//! POST /publish/<g> (admin) ------------+          ^
//! GET ws ?token=JWT --> [handshake: groups, SUBSCRIBE] --+
//! ```

mod auth;
pub mod hub;
mod session;
pub mod source;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use auth::Keys;
use hub::Hub;
use session::reply;
use source::Source;

/// How the broadcast server is run.
#[derive(Clone, Debug)]
pub struct Config {
    /// WebSockets (any path, `?token=<JWT>`).
    pub listen: SocketAddr,
    /// `GET /readyz`, `POST /publish/<group>`.
    pub admin_listen: SocketAddr,
    /// HS256 secret of the clients' tokens.
    pub jwt_secret: String,
    /// Subscribe to `taskstream:<group>` here; events then come from Redis (the admin publish
    /// endpoint still works).
    pub redis_url: Option<String>,
}

/// What every connection shares.
pub(crate) struct Shared {
    hub: Arc<Hub>,
    source: Option<Source>,
    keys: Keys,
}

/// Serves until the process is killed.
pub async fn broadcast(config: Config) -> Result<()> {
    let hub = Arc::new(Hub::default());
    let source = match &config.redis_url {
        Some(url) => Some(Source::connect(url, hub.clone()).await?),
        None => None,
    };
    let shared = Arc::new(Shared {
        hub,
        source,
        keys: Keys::hs256(&config.jwt_secret),
    });
    let public = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind --listen {}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("bind --admin-listen {}", config.admin_listen))?;
    let hub = shared.hub.clone();
    tokio::spawn(serve(admin, move |req| admin_route(hub.clone(), req)));
    serve(public, move |req| session::handshake(shared.clone(), req)).await;
    Ok(())
}

/// Accepts HTTP/1 connections on `listener` and answers each request with `route`.
async fn serve<F, Fut>(listener: TcpListener, route: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("taskstream-bench-baseline: accept: {e}; backing off 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let route = route.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let route = route.clone();
                async move { Ok::<_, Infallible>(route(req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

async fn admin_route(hub: Arc<Hub>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(group) = req.uri().path().strip_prefix("/publish/") else {
        return reply(StatusCode::OK, "ok\n");
    };
    let group = group.to_owned();
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return reply(StatusCode::BAD_REQUEST, "bad body\n");
    };
    let Ok(text) = Utf8Bytes::try_from(body) else {
        return reply(StatusCode::BAD_REQUEST, "not utf-8\n");
    };
    let n = hub.publish(&group, &text);
    let mut r = Response::new(Full::new(Bytes::from(format!("{{\"receivers\":{n}}}\n"))));
    *r.status_mut() = StatusCode::OK;
    r
}

/// The tiny app behind the proxy: `200 hello, world` for every request.
pub async fn app(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind --listen {listen}"))?;
    serve(listener, |_req| async {
        reply(StatusCode::OK, "hello, world\n")
    })
    .await;
    Ok(())
}
