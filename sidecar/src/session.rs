//! One task per WebSocket client: `select!` over the client, the hub queue, pings and shutdown.
//!
//! ```text
//! hub --bounded queue--> [session] --text frames--> browser
//!                            ^  <----pong/close----
//!                 shutdown (1001), lagged (1013), too big (1009), silent (dropped)
//! ```
//!
//! The session never blocks the hub: if the client stops reading, writes stall, the queue fills,
//! the hub marks the client lagging, and the session closes it with 1013. What tungstenite writes
//! on its own (pongs, the close reply) sits in its bounded write buffer; a client that keeps
//! pinging while not reading is closed with 1008 once it is owed more than [`OWED_LIMIT`].

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, info};

use crate::broker::id::StreamId;
use crate::hub::{Event, Membership};
use crate::metrics::CloseReason;
use crate::resume::{self as catchup, Placed, Positions};
use crate::server::Shared;
use crate::stall::{Stall, StallFlag};

type Ws = WebSocketStream<Stall<TokioIo<Upgraded>>>;

/// Events written per flush, so a burst costs one syscall rather than one per event.
const BATCH: usize = 64;
/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pong bytes a client may be owed while our writes to it are stalled (it pings but does not
/// read); past this it is closed with 1008. Also the slack of the write buffer above one event.
pub const OWED_LIMIT: usize = 64 * 1024;

/// What the handshake settled for this client.
#[derive(Debug, Default)]
pub struct Options {
    /// It speaks `taskstream.v1`: JSON frames with ids, resets.
    pub v1: bool,
    /// `last_id` per group: deliver what it missed first.
    pub resume: Vec<(String, StreamId)>,
    /// The broker confirmed its subscriptions before the 101 (every later event is live).
    pub confirmed: bool,
    /// Positions at connect of the groups without a `last_id`, read before the 101.
    pub placed: Placed,
    pub user: Option<String>,
}

/// Serves one client until it leaves, lags, goes silent or the sidecar shuts down.
pub async fn run(
    ws: Ws,
    stall: StallFlag,
    membership: Membership,
    shared: &Shared,
    peer: SocketAddr,
    options: Options,
) {
    let Options {
        v1,
        resume,
        confirmed,
        placed,
        user,
    } = options;
    let metrics = &shared.metrics;
    metrics.connections.inc();
    debug!(%peer, user = user.as_deref().unwrap_or("-"), groups = ?membership.groups(), "client connected");
    let (mut sink, mut stream) = ws.split();
    let interval = shared.config.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    // Pong bytes owed since our writes stalled.
    let mut owed = 0usize;
    let queue = membership.queue.clone();
    // Registered once for the whole session: every session waits on the same token, and a
    // future made anew per loop would re-register with it for every event.
    let shutdown = shared.shutdown.cancelled();
    tokio::pin!(shutdown);

    // Missed events first; live ones wait in the queue meanwhile (subscribed before the 101).
    let mut positions = Positions::default();
    // Positions at connect (read before the 101) for the groups without a last_id.
    if !matches!(placed, Placed::Nothing) {
        let sent = tokio::select! {
            r = tokio::time::timeout(interval, catchup::place(&mut sink, metrics, placed, &mut positions)) => r,
            _ = &mut shutdown => Ok(Err(WsError::ConnectionClosed)),
        };
        if let Some(reason) = caught_up_or_close(&mut sink, sent, peer).await {
            metrics.closed(reason);
            metrics.connections.dec();
            return;
        }
    }
    if !resume.is_empty() {
        let caught_up = tokio::select! {
            // Boxed: a history read is a large future, and inline it would grow every idle
            // session's task by kilobytes (measured: 3.4 -> 7.8 KB per idle connection).
            r = tokio::time::timeout(interval, Box::pin(catchup::resume(&mut sink, &shared.broker, metrics, resume, confirmed, &mut positions))) => r,
            _ = &mut shutdown => Ok(Err(WsError::ConnectionClosed)),
        };
        if let Some(reason) = caught_up_or_close(&mut sink, caught_up, peer).await {
            metrics.closed(reason);
            metrics.connections.dec();
            return;
        }
    }
    // v1 clients are caught up (or reset) when the broker re-made a lost subscription. With
    // history they also hold live events from the loss until then, so that no event published
    // after the new subscription reaches them before the ones the catch-up recovers.
    let mut link = v1.then(|| shared.hub.link());
    let hold_on_loss = v1 && shared.broker.history().is_some();
    let (mut generation, mut held) = match &link {
        Some(rx) => {
            let l = *rx.borrow();
            (l.generation, hold_on_loss && !l.up)
        }
        None => (0, false),
    };
    let frame = |ev: &Event, positions: &mut Positions| -> Option<Utf8Bytes> {
        if !v1 {
            return Some(ev.payload.clone());
        }
        positions.admit(ev).then(|| ev.v1_frame().clone())
    };

    let reason = loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => {
                close(&mut sink, CloseCode::Away, "server shutting down, reconnect").await;
                break CloseReason::Shutdown;
            }
            frame = stream.next() => match frame {
                None => break CloseReason::Client,
                Some(Ok(Message::Close(_))) => {
                    // tungstenite queued the close reply; flush it out.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
                    break CloseReason::Client;
                }
                Some(Ok(Message::Ping(p))) => {
                    last_seen = Instant::now();
                    if !stall.is_stalled() {
                        owed = 0;
                    } else {
                        owed += p.len() + 2;
                        if owed > OWED_LIMIT {
                            info!(%peer, owed, "closing a client that pings but does not read (its pongs would pile up)");
                            close(&mut sink, CloseCode::Policy, "not reading: unsent data over the limit").await;
                            break CloseReason::Unread;
                        }
                    }
                }
                Some(Ok(_)) => last_seen = Instant::now(),
                Some(Err(WsError::Capacity(e))) => {
                    debug!(%peer, error = %e, "client frame too big");
                    close(&mut sink, CloseCode::Size, "message too big").await;
                    break CloseReason::TooBig;
                }
                Some(Err(WsError::Utf8(_))) => {
                    debug!(%peer, "client sent a text frame that is not UTF-8");
                    close(&mut sink, CloseCode::Invalid, "text frame is not UTF-8").await;
                    break CloseReason::InvalidUtf8;
                }
                Some(Err(WsError::Protocol(e))) => {
                    debug!(%peer, error = %e, "client broke the WebSocket protocol");
                    close(&mut sink, CloseCode::Protocol, "protocol error").await;
                    break CloseReason::Protocol;
                }
                Some(Err(WsError::WriteBufferFull(_))) => {
                    debug!(%peer, "client does not read; write buffer full");
                    close(&mut sink, CloseCode::Policy, "not reading: unsent data over the limit").await;
                    break CloseReason::Unread;
                }
                Some(Err(e)) => {
                    debug!(%peer, error = %e, "client connection error");
                    break CloseReason::Protocol;
                }
            },
            _ = changed(&mut link) => {
                let now = link.as_ref().map(|rx| *rx.borrow());
                if let Some(now) = now {
                    held = hold_on_loss && !now.up;
                    if now.up && now.generation != generation {
                        generation = now.generation;
                        let caught_up = tokio::select! {
                            r = tokio::time::timeout(interval, Box::pin(catchup::catch_up(&mut sink, &shared.broker, metrics, membership.groups(), &mut positions))) => r,
                            _ = &mut shutdown => Ok(Err(WsError::ConnectionClosed)),
                        };
                        if let Some(reason) = caught_up_or_close(&mut sink, caught_up, peer).await {
                            break reason;
                        }
                    }
                }
            }
            event = queue.pop(), if !held => {
                let Some(first) = event else {
                    close(&mut sink, CloseCode::Again, "too slow: events were dropped, reconnect").await;
                    break CloseReason::SlowClient;
                };
                let write = async {
                    if let Some(f) = frame(&first, &mut positions) {
                        sink.feed(Message::Text(f)).await?;
                    }
                    for _ in 1..BATCH {
                        match queue.try_pop() {
                            Some(next) => {
                                if let Some(f) = frame(&next, &mut positions) {
                                    sink.feed(Message::Text(f)).await?;
                                }
                            }
                            None => break,
                        }
                    }
                    sink.flush().await
                };
                // A client that stops reading stalls the write; the hub then marks it lagging.
                let outcome = tokio::select! {
                    r = write => Some(r),
                    _ = queue.lagged() => None,
                    _ = &mut shutdown => None,
                };
                match outcome {
                    Some(Ok(())) => {}
                    Some(Err(WsError::WriteBufferFull(_))) => {
                        debug!(%peer, "client does not read; write buffer full");
                        close(&mut sink, CloseCode::Policy, "not reading: unsent data over the limit").await;
                        break CloseReason::Unread;
                    }
                    Some(Err(e)) => {
                        debug!(%peer, error = %e, "write to client failed");
                        break CloseReason::Gone;
                    }
                    None if queue.is_lagged() => {
                        close(&mut sink, CloseCode::Again, "too slow: events were dropped, reconnect").await;
                        break CloseReason::SlowClient;
                    }
                    None => {
                        close(&mut sink, CloseCode::Away, "server shutting down, reconnect").await;
                        break CloseReason::Shutdown;
                    }
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > interval * 2 {
                    info!(%peer, silent_for = ?last_seen.elapsed(), "dropping a client silent for two ping intervals");
                    break CloseReason::Timeout;
                }
                let sent = tokio::time::timeout(interval, sink.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break CloseReason::Timeout;
                }
            }
        }
    };
    metrics.closed(reason);
    metrics.connections.dec();
    debug!(%peer, ?reason, "client disconnected");
}

/// Resolves when the broker's subscription link changed (never for `None`).
async fn changed(rx: &mut Option<tokio::sync::watch::Receiver<crate::hub::Link>>) {
    if let Some(rx) = rx
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Ends the session when catching up failed: the client went away, or it did not take its
/// missed events within a ping interval.
async fn caught_up_or_close<S>(
    sink: &mut S,
    outcome: Result<Result<(), WsError>, tokio::time::error::Elapsed>,
    peer: SocketAddr,
) -> Option<CloseReason>
where
    S: futures_util::Sink<Message> + Unpin,
{
    match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "client went away while catching up");
            close(sink, CloseCode::Away, "reconnect").await;
            Some(CloseReason::Gone)
        }
        Err(_) => {
            info!(%peer, "client did not take its missed events within a ping interval; closing");
            close(sink, CloseCode::Again, "too slow catching up, reconnect").await;
            Some(CloseReason::SlowClient)
        }
    }
}

/// Sends a close frame, bounded in time: a client that does not read must not hold us.
async fn close<S>(sink: &mut S, code: CloseCode, reason: &'static str)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = sink.send(frame).await;
        let _ = sink.close().await;
    })
    .await;
}
