//! The WebSocket path: check the handshake, authenticate, join the hub and confirm the Redis
//! subscriptions before the 101 (so every event published after the handshake arrives), then one
//! task per client relaying its queue.
//!
//! ```text
//! GET (upgrade) -> token -> groups -> hub.join + SUBSCRIBE new groups -> 101 -> session loop
//! session loop: select { client frame (close ends it), queue -> feed up to BATCH -> flush }
//! ```
//!
//! The WebSocket settings are the sidecar's (`sidecar/src/server.rs`), so the comparison
//! measures everything else the sidecar does, not a buffer size.

use std::sync::Arc;

use futures_util::future::try_join_all;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::Shared;
use super::hub::Queue;

/// The sidecar's initial read buffer per client (its `READ_BUFFER`).
const READ_BUFFER: usize = 256;
/// The sidecar's `--max-message-bytes` default.
const MAX_MESSAGE: usize = 64 * 1024;
/// The sidecar's `--max-event-bytes` default, its `EVENT_FRAMING` and `OWED_LIMIT`: together its
/// write-buffer limit.
const MAX_WRITE_BUFFER: usize = 1024 * 1024 + 1024 + 64 * 1024;
/// Events written per flush (the sidecar's batch).
const BATCH: usize = 64;

/// The sidecar's WebSocket configuration with its default flags.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

pub fn reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

/// Answers one request on the public port: a WebSocket handshake on any path, else 404.
pub async fn handshake(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let h = req.headers();
    let upgrade = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade || req.method() != http::Method::GET {
        return reply(StatusCode::NOT_FOUND, "websocket only\n");
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return reply(StatusCode::BAD_REQUEST, "need Sec-WebSocket-Version: 13\n");
    }
    let Some(accept) = h
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| HeaderValue::from_str(&derive_accept_key(k.as_bytes())).ok())
    else {
        return reply(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let groups = match shared.keys.groups(req.uri().query(), h) {
        Ok(g) => g,
        Err(why) => return reply(StatusCode::UNAUTHORIZED, why),
    };
    let queue = Arc::new(Queue::default());
    let cells = shared.hub.join(&groups, &queue);
    if let Some(source) = &shared.source {
        let confirmed = try_join_all(
            groups
                .iter()
                .zip(&cells)
                .map(|(g, cell)| cell.get_or_try_init(|| source.subscribe(g))),
        );
        if let Err(e) = confirmed.await {
            shared.hub.leave(&groups, &queue);
            eprintln!("taskstream-bench-baseline: redis subscribe failed: {e}");
            return reply(StatusCode::SERVICE_UNAVAILABLE, "redis subscribe failed\n");
        }
    }
    drop(cells);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let io = TokioIo::new(upgraded);
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
            relay(ws, &queue).await;
        }
        shared.hub.leave(&groups, &queue);
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// Until the client goes: its queue out in batches, its frames read (tungstenite answers pings
/// and closes by itself).
async fn relay<S>(mut ws: WebSocketStream<S>, queue: &Queue)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Not split: select! drops both futures before a branch runs, so one owner suffices (and
    // saves the split's shared lock per client).
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            event = queue.pop() => {
                let Some(first) = event else {
                    let close = CloseFrame { code: CloseCode::Again, reason: "too slow: events were dropped, reconnect".into() };
                    let _ = ws.send(Message::Close(Some(close))).await;
                    return;
                };
                let write = async {
                    ws.feed(Message::Text(first)).await?;
                    for _ in 1..BATCH {
                        let Some(next) = queue.try_pop() else { break };
                        ws.feed(Message::Text(next)).await?;
                    }
                    ws.flush().await
                };
                if write.await.is_err() {
                    return;
                }
            }
        }
    }
}
