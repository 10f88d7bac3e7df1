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

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::{Instant, Interval};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, info};

use crate::broker::Broker;
use crate::broker::id::StreamId;
use crate::hub::{Event, Link, Membership, Queue};
use crate::metrics::{CloseReason, Metrics};
use crate::resume::{self as catchup, Placed, Positions};
use crate::stall::{Stall, StallFlag};

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
    pub metrics: Metrics,
    /// The broker's subscription link (`Hub::link`); only `taskstream.v1` clients watch it.
    pub link: Option<watch::Receiver<Link>>,
    /// Server pings; also how long a catch-up may take.
    pub ping_interval: Duration,
    /// Cancelled on shutdown: the session closes with 1001.
    pub shutdown: CancellationToken,
}

/// The session ends (for this reason), or goes on.
type Step = Result<(), CloseReason>;

/// One connected client: owns its socket, its queue, its positions and its shutdown signal.
pub struct Session {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
    stall: StallFlag,
    /// Leaves the hub's groups when the session is dropped.
    membership: Membership,
    queue: Arc<Queue>,
    positions: Positions,
    broker: Arc<Broker>,
    metrics: Metrics,
    peer: SocketAddr,
    v1: bool,
    ping: Interval,
    ping_interval: Duration,
    last_seen: Instant,
    /// Pong bytes owed since our writes stalled.
    owed: usize,
    link: Option<watch::Receiver<Link>>,
    /// The link generation this client is caught up to.
    generation: u64,
    /// With history, v1 clients hold live events from a lost link until its catch-up.
    hold_on_loss: bool,
    held: bool,
    shutdown: Shutdown,
    /// Counts this client in `taskstream_connections` for as long as the session lives.
    _connected: Connected,
}

impl Session {
    /// Takes over an upgraded client: counted as connected from here until it is dropped.
    pub fn new(
        ws: Ws,
        stall: StallFlag,
        membership: Membership,
        cx: Context,
        peer: SocketAddr,
        v1: bool,
    ) -> Self {
        let Context {
            broker,
            metrics,
            link,
            ping_interval,
            shutdown,
        } = cx;
        let connected = Connected::new(metrics.connections.clone());
        let (sink, stream) = ws.split();
        let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // v1 clients are caught up (or reset) when the broker re-made a lost subscription. With
        // history they also hold live events from the loss until then, so that no event
        // published after the new subscription reaches them before the ones the catch-up
        // recovers.
        let link = link.filter(|_| v1);
        let hold_on_loss = v1 && broker.history().is_some();
        let (generation, held) = match &link {
            Some(rx) => {
                let l = *rx.borrow();
                (l.generation, hold_on_loss && !l.up)
            }
            None => (0, false),
        };
        Self {
            sink,
            stream,
            stall,
            queue: membership.queue.clone(),
            membership,
            positions: Positions::default(),
            broker,
            metrics,
            peer,
            v1,
            ping,
            ping_interval,
            last_seen: Instant::now(),
            owed: 0,
            link,
            generation,
            hold_on_loss,
            held,
            shutdown: Shutdown::new(shutdown),
            _connected: connected,
        }
    }

    /// Serves the client until it leaves, lags, goes silent or the sidecar shuts down.
    pub async fn run(mut self, placed: Placed, resume: Vec<(String, StreamId)>, confirmed: bool) {
        let started = match self.place(placed).await {
            Ok(()) => self.resume(resume, confirmed).await,
            Err(reason) => Err(reason),
        };
        let reason = match started {
            Ok(()) => self.serve().await,
            Err(reason) => reason,
        };
        self.metrics.closed(reason);
        debug!(peer = %self.peer, ?reason, "client disconnected");
    }

    /// Positions at connect (read before the 101) for the groups without a `last_id`, sent
    /// before any of their events.
    async fn place(&mut self, placed: Placed) -> Step {
        if matches!(placed, Placed::Nothing) {
            return Ok(());
        }
        let sent = tokio::select! {
            // Boxed like the resume below: inline, the read would grow every idle session's task.
            r = tokio::time::timeout(self.ping_interval, Box::pin(catchup::place(&mut self.sink, &self.metrics, placed, &mut self.positions))) => r,
            _ = self.shutdown.recv() => Ok(Err(WsError::ConnectionClosed)),
        };
        caught_up_or_close(&mut self.sink, sent, self.peer).await
    }

    /// Missed events first; live ones wait in the queue meanwhile (subscribed before the 101).
    async fn resume(&mut self, resume: Vec<(String, StreamId)>, confirmed: bool) -> Step {
        if resume.is_empty() {
            return Ok(());
        }
        let caught_up = tokio::select! {
            // Boxed: a history read is a large future, and inline it would grow every idle
            // session's task by kilobytes (measured: 3.4 -> 7.8 KB per idle connection).
            r = tokio::time::timeout(self.ping_interval, Box::pin(catchup::resume(&mut self.sink, &self.broker, &self.metrics, resume, confirmed, &mut self.positions))) => r,
            _ = self.shutdown.recv() => Ok(Err(WsError::ConnectionClosed)),
        };
        caught_up_or_close(&mut self.sink, caught_up, self.peer).await
    }

    /// The event loop: one method per kind of event, shutdown first.
    async fn serve(&mut self) -> CloseReason {
        loop {
            let step = tokio::select! {
                biased;
                _ = self.shutdown.recv() => self.on_shutdown().await,
                frame = self.stream.next() => self.on_client(frame).await,
                _ = changed(&mut self.link) => self.on_link().await,
                event = self.queue.pop(), if !self.held => self.on_event(event).await,
                _ = self.ping.tick() => self.on_ping().await,
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    async fn on_shutdown(&mut self) -> Step {
        close(
            &mut self.sink,
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
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sink.close()).await;
                return Err(CloseReason::Client);
            }
            Some(Ok(Message::Ping(p))) => {
                self.last_seen = Instant::now();
                if !self.stall.is_stalled() {
                    self.owed = 0;
                    return Ok(());
                }
                self.owed += p.len() + 2;
                if self.owed <= OWED_LIMIT {
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
                self.last_seen = Instant::now();
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
        close(&mut self.sink, code, why).await;
        Err(reason)
    }

    /// The broker's subscription link went down or came back: hold, or catch up.
    async fn on_link(&mut self) -> Step {
        let Some(now) = self.link.as_ref().map(|rx| *rx.borrow()) else {
            return Ok(());
        };
        self.held = self.hold_on_loss && !now.up;
        if !now.up || now.generation == self.generation {
            return Ok(());
        }
        self.generation = now.generation;
        let caught_up = tokio::select! {
            r = tokio::time::timeout(self.ping_interval, Box::pin(catchup::catch_up(&mut self.sink, &self.broker, &self.metrics, self.membership.groups(), &mut self.positions))) => r,
            _ = self.shutdown.recv() => Ok(Err(WsError::ConnectionClosed)),
        };
        caught_up_or_close(&mut self.sink, caught_up, self.peer).await
    }

    /// Live events: the first popped, then up to a batch more, in one flush.
    async fn on_event(&mut self, first: Option<Arc<Event>>) -> Step {
        let Self {
            sink,
            queue,
            positions,
            shutdown,
            peer,
            v1,
            ..
        } = self;
        let (peer, v1) = (*peer, *v1);
        let Some(first) = first else {
            close(
                sink,
                CloseCode::Again,
                "too slow: events were dropped, reconnect",
            )
            .await;
            return Err(CloseReason::SlowClient);
        };
        let write = async {
            if let Some(f) = frame(v1, &first, positions) {
                sink.feed(Message::Text(f)).await?;
            }
            for _ in 1..BATCH {
                match queue.try_pop() {
                    Some(next) => {
                        if let Some(f) = frame(v1, &next, positions) {
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
            _ = shutdown.recv() => None,
        };
        let (code, why, reason) = match outcome {
            Some(Ok(())) => return Ok(()),
            Some(Err(WsError::WriteBufferFull(_))) => {
                debug!(%peer, "client does not read; write buffer full");
                (
                    CloseCode::Policy,
                    "not reading: unsent data over the limit",
                    CloseReason::Unread,
                )
            }
            Some(Err(e)) => {
                debug!(%peer, error = %e, "write to client failed");
                return Err(CloseReason::Gone);
            }
            None if queue.is_lagged() => (
                CloseCode::Again,
                "too slow: events were dropped, reconnect",
                CloseReason::SlowClient,
            ),
            None => (
                CloseCode::Away,
                "server shutting down, reconnect",
                CloseReason::Shutdown,
            ),
        };
        close(sink, code, why).await;
        Err(reason)
    }

    /// Our ping: drops a client silent for two intervals, or one that does not take the ping.
    async fn on_ping(&mut self) -> Step {
        let interval = self.ping_interval;
        if self.last_seen.elapsed() > interval * 2 {
            info!(peer = %self.peer, silent_for = ?self.last_seen.elapsed(), "dropping a client silent for two ping intervals");
            return Err(CloseReason::Timeout);
        }
        let sent =
            tokio::time::timeout(interval, self.sink.send(Message::Ping(Default::default()))).await;
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

/// The server's shutdown signal, as mini-redis's `Shutdown`: registered once for the whole
/// session, because every session waits on the same token and a future made anew per loop
/// would re-register with it for every event.
struct Shutdown(Pin<Box<WaitForCancellationFutureOwned>>);

impl Shutdown {
    fn new(token: CancellationToken) -> Self {
        Self(Box::pin(token.cancelled_owned()))
    }

    /// Resolves once the server shuts down (at once, every time, after that).
    async fn recv(&mut self) {
        self.0.as_mut().await
    }
}

/// `taskstream_connections` up while it lives: the one place the gauge goes down again.
struct Connected(Gauge);

impl Connected {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Resolves when the broker's subscription link changed (never for `None`).
async fn changed(rx: &mut Option<watch::Receiver<Link>>) {
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
) -> Step
where
    S: futures_util::Sink<Message> + Unpin,
{
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "client went away while catching up");
            close(sink, CloseCode::Away, "reconnect").await;
            Err(CloseReason::Gone)
        }
        Err(_) => {
            info!(%peer, "client did not take its missed events within a ping interval; closing");
            close(sink, CloseCode::Again, "too slow catching up, reconnect").await;
            Err(CloseReason::SlowClient)
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
