//! The floor of the stack: a minimal tokio-tungstenite broadcast server (no auth, no Redis, no
//! metrics, no pings) and a tiny hyper app for the proxy scenario. The load tool measures these
//! with the same load as the sidecar, in the same run, and reports the sidecar as ratios to them.
//!
//! ```text
//! POST /publish/<group> (admin) --> [hub: group -> bounded queues] --> [session] x N --ws--> clients
//! ```
//!
//! It uses the sidecar's WebSocket buffer settings (4 KiB read buffer, write-through), so the
//! comparison measures everything else the sidecar does, not a buffer size.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Result;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Events queued per client; a full queue drops the event for that client (the sidecar closes it).
const QUEUE: usize = 256;
/// Events written per flush.
const BATCH: usize = 64;

type Subscribers = Vec<(u64, mpsc::Sender<Utf8Bytes>)>;

#[derive(Default)]
struct Hub {
    groups: RwLock<HashMap<String, Subscribers>>,
    next: AtomicU64,
}

impl Hub {
    fn publish(&self, group: &str, payload: Utf8Bytes) -> usize {
        let map = self.groups.read().unwrap_or_else(|e| e.into_inner());
        map.get(group).map_or(0, |subs| {
            subs.iter()
                .filter(|(_, tx)| tx.try_send(payload.clone()).is_ok())
                .count()
        })
    }
}

/// Serves WebSockets on `listen` (`/ws?groups=a,b`) and `POST /publish/<group>` on `admin`.
pub async fn broadcast(listen: SocketAddr, admin: SocketAddr) -> Result<()> {
    let hub = Arc::new(Hub::default());
    let public = TcpListener::bind(listen).await?;
    let admin = TcpListener::bind(admin).await?;
    let h = hub.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = admin.accept().await else {
                continue;
            };
            let hub = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let hub = hub.clone();
                    async move { Ok::<_, Infallible>(admin_route(&hub, req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    loop {
        let Ok((stream, _)) = public.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(session(hub.clone(), stream));
    }
}

async fn session(hub: Arc<Hub>, stream: TcpStream) {
    let mut groups: Vec<String> = Vec::new();
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    // The callback's signature (and its large error type) is tungstenite's, not ours.
    #[allow(clippy::result_large_err)]
    let callback = |req: &WsRequest, resp: WsResponse| {
        groups = form_groups(req.uri().query().unwrap_or(""));
        Ok(resp)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    let id = hub.next.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(QUEUE);
    {
        let mut map = hub.groups.write().unwrap_or_else(|e| e.into_inner());
        for g in &groups {
            map.entry(g.clone()).or_default().push((id, tx.clone()));
        }
    }
    drop(tx);
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            event = rx.recv() => {
                let Some(first) = event else { break };
                let write = async {
                    sink.feed(Message::Text(first)).await?;
                    for _ in 1..BATCH {
                        match rx.try_recv() {
                            Ok(next) => sink.feed(Message::Text(next)).await?,
                            Err(_) => break,
                        }
                    }
                    sink.flush().await
                };
                if write.await.is_err() {
                    break;
                }
            }
        }
    }
    let mut map = hub.groups.write().unwrap_or_else(|e| e.into_inner());
    for g in &groups {
        if let Some(subs) = map.get_mut(g) {
            subs.retain(|(i, _)| *i != id);
            if subs.is_empty() {
                map.remove(g);
            }
        }
    }
}

fn form_groups(query: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("groups="))
        .flat_map(|v| v.split(',').map(str::to_owned))
        .filter(|g| !g.is_empty())
        .collect()
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn admin_route(hub: &Hub, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if let Some(group) = path.strip_prefix("/publish/") {
        let group = group.to_owned();
        let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
            return reply(StatusCode::BAD_REQUEST, "bad body\n");
        };
        let Ok(text) = Utf8Bytes::try_from(body) else {
            return reply(StatusCode::BAD_REQUEST, "not utf-8\n");
        };
        let n = hub.publish(&group, text);
        return reply(StatusCode::OK, format!("{{\"receivers\":{n}}}\n"));
    }
    reply(StatusCode::OK, "ok\n")
}

/// The tiny app behind the proxy: `200 hello` for every request.
pub async fn app(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(reply(StatusCode::OK, "hello, world\n"))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
