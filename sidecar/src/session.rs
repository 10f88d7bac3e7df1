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
//!
//! [`Session`] owns everything one client needs (its socket halves, queue, positions and the
//! shutdown signal) and is given the rest by [`Context`], so it borrows nothing back from the
//! server; each kind of event has its own method, and the connection gauge goes down when the
//! session is dropped, whichever way it ended.

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::poll_immediate;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, info};

use crate::broker::Broker;
use crate::broker::id::StreamId;
use crate::hub::{Event, Link, Membership};
use crate::metrics::{CloseReason, Metrics};
use crate::resume::{self as catchup, Placed, Positions};
use crate::stall::Stall;

mod close;
mod heart;

use self::close::{Ended, caught_up_or_close, close};
use self::heart::Heart;

/// The upgraded client socket.
pub type Ws = WebSocketStream<Stall<TokioIo<Upgraded>>>;

/// Events written per flush, so a burst costs one syscall rather than one per event.
const BATCH: usize = 64;
/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pong bytes a client may be owed while our writes to it are stalled (it pings but does not
/// read); past this it is closed with 1008. Also the slack of the write buffer above one event.
pub const OWED_LIMIT: usize = 64 * 1024;

/// What a session is given by the server, and nothing more of its state.
pub struct Context {
    /// History reads (resume and catch-up).
    pub broker: Arc<Broker>,
    pub metrics: Arc<Metrics>,
    /// Server pings (the hub's beat ticks at it); also how long a catch-up may take.
    pub ping_interval: Duration,
    /// `--max-connections`: a session gives its slot back when it is dropped.
    pub slots: Arc<Semaphore>,
}

/// An answered handshake, handed to [`serve_client`] in one box: the client's task holds a
/// pointer to it until the upgrade instead of every field for its whole life (the state of an
/// async block keeps room for everything it captured).
pub struct Start {
    pub on_upgrade: OnUpgrade,
    pub ws_config: WebSocketConfig,
    pub membership: Membership,
    pub cx: Arc<Context>,
    pub peer: SocketAddr,
    pub user: Option<String>,
    pub v1: bool,
    /// Positions at connect, read before the 101.
    pub placed: Placed,
    /// The `last_id`s to resume from.
    pub resume: Vec<(String, StreamId)>,
    /// The broker confirmed the subscriptions before the 101.
    pub confirmed: bool,
    /// The client's slot under `--max-connections`, given back when the session ends.
    pub permit: OwnedSemaphorePermit,
}

/// Serves one client from its upgrade until it leaves, lags, goes silent or the sidecar shuts
/// down.
///
/// Memory per idle client is this task: the [`Session`] and its `serve` loop. Everything a
/// client needs only now and then runs in a future boxed for the occasion (the upgrade,
/// positions and resume, a catch-up, a ping, a close), so it does not size every idle task.
pub async fn serve_client(start: Box<Start>) {
    // A client gone during the upgrade: its connection's end told the trimmer already.
    let Some(mut session) = Box::pin(Session::open(start)).await else {
        return;
    };
    let reason = session.serve().await;
    session.cx.metrics.closed(reason);
    debug!(peer = %session.peer, ?reason, "client disconnected");
    drop(session);
    crate::memory::churned();
}

/// The session ends (for this reason), or goes on.
type Step = Result<(), CloseReason>;

/// One connected client: owns its socket, its queue, its positions and its shutdown signal.
///
/// Every idle client holds one, inside its task's cell (tokio rounds the cell up to 128
/// bytes), so its fields are kept narrow: the context is one pointer shared by all sessions,
/// the connection gauge and the `--max-connections` slot are given back in `Drop` rather than
/// held as guards, ticks are counted in 32 bits, and the stall flag lives in the socket.
pub struct Session {
    ws: Ws,
    /// Leaves the hub's groups when the session is dropped; holds the client's queue.
    membership: Membership,
    positions: Positions,
    /// Broker, metrics and settings shared by every session.
    cx: Arc<Context>,
    peer: Peer,
    /// Pings, the broker's link and shutdown ([`crate::hub::Beat`]).
    heart: Heart,
    /// The link as this client last saw it: its generation (low 32 bits) is the one it is
    /// caught up to (only `taskstream.v1` clients follow the link).
    link_generation: u32,
    link_up: bool,
    /// The last ping tick acted on (its low 32 bits, compared wrapping).
    tick: u32,
    /// The ping tick current when the client last sent a frame.
    seen: u32,
    /// Pong bytes owed since our writes stalled (at most [`OWED_LIMIT`] before the close).
    owed: u32,
    v1: bool,
    /// A beat came in while the session waited on something else (see [`Heart::shutdown`]).
    pending: bool,
    /// Live events wait in the queue: with history, v1 clients hold them from a lost link
    /// until its catch-up ([`holds_on_loss`]).
    held: bool,
}

/// Counts the client out of `taskstream_connections` and gives its `--max-connections` slot
/// back, however the session ended.
impl Drop for Session {
    fn drop(&mut self) {
        self.cx.metrics.connections.dec();
        self.cx.slots.add_permits(1);
    }
}

impl Session {
    /// The upgrade, then positions and missed events; `None` when the client is gone by then
    /// (counted and logged here).
    async fn open(start: Box<Start>) -> Option<Self> {
        let Start {
            on_upgrade,
            ws_config,
            membership,
            cx,
            peer,
            user,
            v1,
            placed,
            resume,
            confirmed,
            permit,
        } = *start;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(%peer, error = %e, "client went away during the upgrade");
                return None;
            }
        };
        let io = Stall::new(TokioIo::new(upgraded));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
        debug!(%peer, user = user.as_deref().unwrap_or("-"), groups = ?membership.groups(), "client connected");
        let mut session = Self::new(ws, membership, cx, peer, v1, permit);
        let started = match session.place(placed).await {
            Ok(()) => session.resume(resume, confirmed).await,
            Err(reason) => Err(reason),
        };
        match started {
            Ok(()) => Some(session),
            Err(reason) => {
                session.cx.metrics.closed(reason);
                debug!(%peer, ?reason, "client disconnected");
                None
            }
        }
    }

    /// Takes over an upgraded client: counted as connected from here until it is dropped,
    /// and holds its slot until then (given back in `Drop`).
    fn new(
        ws: Ws,
        membership: Membership,
        cx: Arc<Context>,
        peer: SocketAddr,
        v1: bool,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        permit.forget();
        cx.metrics.connections.inc();
        let beat = membership.beat();
        let now = *beat.borrow();
        // v1 clients are caught up (or reset) when the broker re-made a lost subscription. With
        // history they also hold live events from the loss until then, so that no event
        // published after the new subscription reaches them before the ones the catch-up
        // recovers.
        let held = holds_on_loss(v1, &cx) && !now.link.up;
        Self {
            ws,
            membership,
            positions: Positions::default(),
            cx,
            peer: Peer(peer.ip(), peer.port()),
            heart: Heart { rx: beat },
            link_generation: now.link.generation as u32,
            link_up: now.link.up,
            tick: now.tick as u32,
            seen: now.tick as u32,
            owed: 0,
            v1,
            // Shutting down already: the loop closes the client first thing.
            pending: now.shutdown,
            held,
        }
    }

    /// Positions at connect (read before the 101) for the groups without a `last_id`, sent
    /// before any of their events.
    async fn place(&mut self, placed: Placed) -> Step {
        if matches!(placed, Placed::Nothing) {
            return Ok(());
        }
        let sent = tokio::select! {
            r = tokio::time::timeout(self.cx.ping_interval, catchup::place(&mut self.ws, &self.cx.metrics, placed, &mut self.positions)) => r,
            _ = self.heart.shutdown(&mut self.pending) => Ok(Err(WsError::ConnectionClosed)),
        };
        caught_up_or_close(&mut self.ws, sent, self.peer).await
    }

    /// Missed events first; live ones wait in the queue meanwhile (subscribed before the 101).
    async fn resume(&mut self, resume: Vec<(String, StreamId)>, confirmed: bool) -> Step {
        if resume.is_empty() {
            return Ok(());
        }
        let caught_up = tokio::select! {
            r = tokio::time::timeout(self.cx.ping_interval, catchup::resume(&mut self.ws, &self.cx.broker, &self.cx.metrics, resume, confirmed, &mut self.positions)) => r,
            _ = self.heart.shutdown(&mut self.pending) => Ok(Err(WsError::ConnectionClosed)),
        };
        caught_up_or_close(&mut self.ws, caught_up, self.peer).await
    }

    /// The event loop: one method per kind of event, shutdown first. Only live events are
    /// handled in place; the rest are boxed (see [`serve_client`]).
    ///
    /// The beat is looked at first on every turn, by its version alone; its wait is polled
    /// last, so a turn that finds an event or a frame never registers with the beat's shard,
    /// which a few hundred sessions share (registering and leaving its waiter list takes that
    /// shard's lock twice per event, from both cores).
    async fn serve(&mut self) -> CloseReason {
        loop {
            // A beat that came in since the last turn, or while a write or a catch-up waited.
            let Ok(changed) = self.heart.rx.has_changed() else {
                // The hub is gone, so is the server.
                let _ = Box::pin(self.on_shutdown()).await;
                return CloseReason::Shutdown;
            };
            if (std::mem::take(&mut self.pending) || changed)
                && let Err(reason) = Box::pin(self.on_beat()).await
            {
                return reason;
            }
            let step = tokio::select! {
                biased;
                frame = self.ws.next() => Box::pin(self.on_client(frame)).await,
                event = self.membership.queue.pop(), if !self.held => self.on_event(event).await,
                beat = self.heart.rx.changed() => match beat {
                    Ok(()) => Box::pin(self.on_beat()).await,
                    Err(_) => Box::pin(self.on_shutdown()).await,
                },
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    /// The beat changed: shutdown, then the link, then a ping, whichever differ from what this
    /// client saw last.
    async fn on_beat(&mut self) -> Step {
        let now = *self.heart.rx.borrow_and_update();
        if now.shutdown {
            return self.on_shutdown().await;
        }
        if self.v1
            && (now.link.up != self.link_up || now.link.generation as u32 != self.link_generation)
        {
            self.on_link(now.link).await?;
        }
        if now.tick as u32 != self.tick {
            self.tick = now.tick as u32;
            self.on_ping().await?;
        }
        Ok(())
    }

    async fn on_shutdown(&mut self) -> Step {
        close(
            &mut self.ws,
            CloseCode::Away,
            "server shutting down, reconnect",
        )
        .await;
        Err(CloseReason::Shutdown)
    }

    /// A frame (or the end) from the client: it only sends pings, pongs and closes.
    async fn on_client(&mut self, frame: Option<Result<Message, WsError>>) -> Step {
        let peer = self.peer;
        let (code, why, reason) = match frame {
            None => return Err(CloseReason::Client),
            Some(Ok(Message::Close(_))) => {
                // tungstenite queued the close reply; flush it out.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::close(&mut self.ws)).await;
                return Err(CloseReason::Client);
            }
            Some(Ok(Message::Ping(p))) => {
                self.seen = self.heart.now_tick();
                if !self.ws.get_ref().is_stalled() {
                    self.owed = 0;
                    return Ok(());
                }
                self.owed = self.owed.saturating_add(p.len() as u32 + 2);
                if self.owed as usize <= OWED_LIMIT {
                    return Ok(());
                }
                info!(%peer, owed = self.owed, "closing a client that pings but does not read (its pongs would pile up)");
                (
                    CloseCode::Policy,
                    "not reading: unsent data over the limit",
                    CloseReason::Unread,
                )
            }
            Some(Ok(_)) => {
                self.seen = self.heart.now_tick();
                return Ok(());
            }
            Some(Err(WsError::Capacity(e))) => {
                debug!(%peer, error = %e, "client frame too big");
                (CloseCode::Size, "message too big", CloseReason::TooBig)
            }
            Some(Err(WsError::Utf8(_))) => {
                debug!(%peer, "client sent a text frame that is not UTF-8");
                (
                    CloseCode::Invalid,
                    "text frame is not UTF-8",
                    CloseReason::InvalidUtf8,
                )
            }
            Some(Err(WsError::Protocol(e))) => {
                debug!(%peer, error = %e, "client broke the WebSocket protocol");
                (CloseCode::Protocol, "protocol error", CloseReason::Protocol)
            }
            Some(Err(WsError::WriteBufferFull(_))) => {
                debug!(%peer, "client does not read; write buffer full");
                (
                    CloseCode::Policy,
                    "not reading: unsent data over the limit",
                    CloseReason::Unread,
                )
            }
            Some(Err(e)) => {
                debug!(%peer, error = %e, "client connection error");
                return Err(CloseReason::Protocol);
            }
        };
        close(&mut self.ws, code, why).await;
        Err(reason)
    }

    /// The broker's subscription link went down or came back: hold, or catch up.
    async fn on_link(&mut self, now: Link) -> Step {
        self.held = holds_on_loss(self.v1, &self.cx) && !now.up;
        self.link_up = now.up;
        if !now.up || now.generation as u32 == self.link_generation {
            return Ok(());
        }
        self.link_generation = now.generation as u32;
        let caught_up = tokio::select! {
            r = tokio::time::timeout(self.cx.ping_interval, catchup::catch_up(&mut self.ws, &self.cx.broker, &self.cx.metrics, self.membership.groups(), &mut self.positions)) => r,
            _ = self.heart.shutdown(&mut self.pending) => Ok(Err(WsError::ConnectionClosed)),
        };
        caught_up_or_close(&mut self.ws, caught_up, self.peer).await
    }

    /// Live events: the first popped, then up to a batch more, in one flush. The hot path, so
    /// handled in the loop's own state; ending the session is boxed.
    async fn on_event(&mut self, first: Option<Arc<Event>>) -> Step {
        let Some(first) = first else {
            return Box::pin(self.end(Ended::Lagged)).await;
        };
        let outcome = {
            let Self {
                ws,
                membership,
                positions,
                heart,
                pending,
                v1,
                ..
            } = self;
            let (queue, v1) = (&membership.queue, *v1);
            // Poll-level writes: a `feed` future would keep a frame in every idle task's state.
            let write = async {
                let mut next = Some(first);
                let mut taken = 1;
                while let Some(ev) = next.take() {
                    poll_fn(|cx| ws.poll_ready_unpin(cx)).await?;
                    if let Some(f) = frame(v1, &ev, positions) {
                        ws.start_send_unpin(Message::Text(f))?;
                    }
                    if taken < BATCH {
                        next = queue.try_pop();
                        taken += 1;
                    }
                }
                poll_fn(|cx| ws.poll_flush_unpin(cx)).await
            };
            // Most writes finish at once (the socket has room). One that does not waits boxed,
            // beside the lag and shutdown signals: inline, they would size every idle task.
            let mut write = pin!(write);
            match poll_immediate(write.as_mut()).await {
                Some(r) => Ok(r),
                // A client that stops reading stalls the write; the hub then marks it lagging.
                None => {
                    Box::pin(async {
                        tokio::select! {
                            r = write => Ok(r),
                            _ = queue.lagged() => Err(Ended::Lagged),
                            _ = heart.shutdown(pending) => Err(Ended::Shutdown),
                        }
                    })
                    .await
                }
            }
        };
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Box::pin(self.end(Ended::WriteFailed(e))).await,
            Err(why) => Box::pin(self.end(why)).await,
        }
    }

    /// Our ping: drops a client silent for two intervals, or one that does not take the ping.
    async fn on_ping(&mut self) -> Step {
        let interval = self.cx.ping_interval;
        // `seen` is the last tick before the client's last frame, so three ticks since then
        // mean more than two intervals of silence (between two and three).
        let silent = self.tick.wrapping_sub(self.seen);
        if silent > 2 {
            info!(peer = %self.peer, silent_for = ?interval * silent, "dropping a client silent for two ping intervals");
            return Err(CloseReason::Timeout);
        }
        let sent =
            tokio::time::timeout(interval, self.ws.send(Message::Ping(Default::default()))).await;
        match sent {
            Ok(Ok(())) => Ok(()),
            _ => Err(CloseReason::Timeout),
        }
    }
}

/// The frame a live event goes out as, if it goes out: v1 clients skip what history sent.
fn frame(v1: bool, ev: &Event, positions: &mut Positions) -> Option<Utf8Bytes> {
    if !v1 {
        return Some(ev.payload.clone());
    }
    positions.admit(ev).then(|| ev.v1_frame().clone())
}

/// Whether a client holds live events from a lost link until its catch-up: v1 clients, with
/// history. (Asked when the link changes, not kept: every byte of an idle session counts.)
fn holds_on_loss(v1: bool, cx: &Context) -> bool {
    v1 && cx.broker.history().is_some()
}

/// A client's address for the logs, in 20 bytes: a `SocketAddr` takes 32 (IPv6's flow label
/// and scope), in every idle session.
#[derive(Clone, Copy)]
pub(super) struct Peer(IpAddr, u16);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        SocketAddr::new(self.0, self.1).fmt(f)
    }
}

#[cfg(test)]
mod tests;
