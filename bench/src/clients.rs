//! The client fleet: N WebSocket connections opened with bounded concurrency, held, every message
//! read, and the end-to-end latency of each event recorded from the timestamp the publisher put in
//! it.
//!
//! ```text
//! publisher --(step k, t=now)--> server --ws--> [client task] x N --latency--> steps[k].hist
//! ```
//!
//! The tool must never be the bottleneck: each client reads with a small read buffer (the 128 KiB
//! default is zero-filled on every read) and parses only the two numbers it needs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::hist::Histogram;
use crate::procs::{JWT_SECRET, Kind};
use crate::seen::{Counts, Seen};

/// Most measurement steps one fleet records separately.
pub const STEPS: usize = 64;

/// Nanoseconds since this process's clock started; the publisher and every client share it.
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The event body: step, the group's sequence number within the step and the send time first,
/// so a client finds them without a JSON parser.
pub fn payload(step: usize, seq: u64, group: &str, pad: usize) -> String {
    format!(
        "{{\"k\":{step},\"s\":{seq},\"t\":{},\"group\":\"{group}\",\"progress\":42,\"pad\":\"{}\"}}",
        now_ns(),
        "x".repeat(pad)
    )
}

/// What a client reads from a [`payload`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub step: usize,
    pub seq: u64,
    pub sent_ns: u64,
}

/// The [`Stamp`] of a [`payload`].
pub fn parse(text: &[u8]) -> Option<Stamp> {
    let rest = text.strip_prefix(b"{\"k\":")?;
    let (k, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"s\":")?;
    let (seq, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"t\":")?;
    let (t, _) = number(rest)?;
    Some(Stamp {
        step: k as usize,
        seq,
        sent_ns: t,
    })
}

fn number(b: &[u8]) -> Option<(u64, &[u8])> {
    let end = b
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(b.len());
    if end == 0 {
        return None;
    }
    let mut n = 0u64;
    for c in &b[..end] {
        n = n * 10 + u64::from(c - b'0');
    }
    Some((n, &b[end..]))
}

/// What one step saw.
#[derive(Default)]
pub struct Step {
    /// Latency of every event received (duplicates included).
    pub hist: Histogram,
    /// Events new to their client, duplicates, out of range (see [`crate::seen`]).
    pub counts: Counts,
}

/// Counters shared by every client task.
pub struct Stats {
    pub steps: Vec<Step>,
    /// Connections open now.
    pub open: AtomicUsize,
    /// Handshakes that failed (refused, reset, timed out).
    pub failures: AtomicUsize,
    /// Clients whose latest (re)connection has received at least one event.
    pub receiving_again: AtomicUsize,
    /// When the last client started receiving again (ns on [`now_ns`]).
    pub last_back_ns: AtomicU64,
    /// Bumped on a server restart: a connection made after it counts as "back".
    pub epoch: AtomicUsize,
    /// `taskstream.v1` `reset` frames received (history could not cover a gap).
    pub resets: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            steps: (0..STEPS).map(|_| Step::default()).collect(),
            open: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
            receiving_again: AtomicUsize::new(0),
            last_back_ns: AtomicU64::new(0),
            epoch: AtomicUsize::new(0),
            resets: AtomicU64::new(0),
        }
    }
}

/// How the fleet connects.
#[derive(Clone, Debug)]
pub struct Plan {
    pub kind: Kind,
    pub server: SocketAddr,
    pub conns: usize,
    /// Client `i` joins group `g{i % groups}`.
    pub groups: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Reconnect after a drop, after a uniformly random delay up to this.
    pub reconnect_jitter: Option<Duration>,
    /// Hard stop for every client task.
    pub deadline: Duration,
    /// Speak `taskstream.v1` (sidecar only): JSON frames with ids, and resume with `last_id`
    /// from the last id received after a drop.
    pub v1: bool,
    /// Groups in each client's token (besides its own `user:{sub}`): client `i` is in
    /// `g{i}`, `g{i+1}`, ... (mod `groups`); events are counted for the first one only.
    pub groups_per_conn: usize,
}

/// Summary of the opening phase.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Opened {
    pub open: usize,
    pub failures: usize,
    pub secs: f64,
}

pub fn group_name(k: usize) -> String {
    format!("g{k}")
}

/// How many clients of a fleet of `conns` are in group `k` of `groups`.
pub fn members(conns: usize, groups: usize, k: usize) -> usize {
    conns / groups + usize::from(k < conns % groups)
}

/// The running fleet; dropping it (or [`Fleet::stop`]) ends every client task.
pub struct Fleet {
    pub stats: Arc<Stats>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Opens `plan.conns` connections and returns once all are open or failed (bounded by the
    /// plan's deadline).
    pub async fn open(plan: Plan) -> (Self, Opened) {
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let gate = Arc::new(Semaphore::new(plan.concurrency));
        let done = Arc::new(Semaphore::new(0));
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + 3600;
        let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
        for i in 0..plan.conns {
            let group = group_name(i % plan.groups.max(1));
            // Both servers take the same token: its groups plus the client's own `user:{sub}`.
            let token_groups: Vec<String> = (0..plan.groups_per_conn.max(1))
                .map(|j| group_name((i + j) % plan.groups.max(1)))
                .collect();
            let claims =
                serde_json::json!({"sub": format!("c{i}"), "groups": token_groups, "exp": exp});
            let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
                .unwrap_or_default();
            let url = format!("ws://{}/ws/tasks/?token={token}", plan.server);
            let client = Client {
                url,
                group,
                v1: plan.v1 && plan.kind == Kind::Sidecar,
                addr: plan.server,
                stats: stats.clone(),
                stop: stop.clone(),
                gate: gate.clone(),
                done: done.clone(),
                jitter: plan.reconnect_jitter,
            };
            let deadline = plan.deadline;
            tasks.spawn(async move {
                let _ = tokio::time::timeout(deadline, client.run()).await;
            });
        }
        // Every client signals once: connected or given up.
        let all = u32::try_from(plan.conns).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(plan.deadline, done.acquire_many(all)).await;
        let opened = Opened {
            open: stats.open.load(Ordering::Relaxed),
            failures: stats.failures.load(Ordering::Relaxed),
            secs: started.elapsed().as_secs_f64(),
        };
        (Self { stats, stop, tasks }, opened)
    }

    /// Closes every connection and waits (bounded) for the tasks to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

struct Client {
    url: String,
    group: String,
    v1: bool,
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: CancellationToken,
    gate: Arc<Semaphore>,
    done: Arc<Semaphore>,
    jitter: Option<Duration>,
}

/// The client's WebSocket settings: a small read buffer, written through at once.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

impl Client {
    async fn run(self) {
        let mut signalled = false;
        let mut attempts = 0u32;
        // Across reconnections too: an event received twice is a duplicate either way.
        let mut seen = Seen::default();
        // The id of the last event of our group (taskstream.v1), sent back as `last_id`.
        let mut last_id: Option<String> = None;
        loop {
            let epoch = self.stats.epoch.load(Ordering::Relaxed);
            let ws = {
                let _permit = self.gate.acquire().await;
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    r = tokio::time::timeout(Duration::from_secs(10), self.connect(last_id.as_deref())) => r.ok().flatten(),
                }
            };
            let Some(mut ws) = ws else {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                attempts += 1;
                if self.jitter.is_none() || attempts > 100 {
                    if !signalled {
                        self.done.add_permits(1);
                    }
                    return;
                }
                self.pause(attempts).await;
                continue;
            };
            attempts = 0;
            self.stats.open.fetch_add(1, Ordering::Relaxed);
            if !signalled {
                signalled = true;
                self.done.add_permits(1);
            }
            let mut first = true;
            loop {
                let msg = tokio::select! {
                    _ = self.stop.cancelled() => None,
                    m = ws.next() => m,
                };
                let Some(Ok(msg)) = msg else { break };
                let Message::Text(text) = msg else { continue };
                let body = if self.v1 {
                    match parse_v1(text.as_bytes()) {
                        V1::Event { id, data } => {
                            if let Some(id) = id {
                                last_id = Some(String::from_utf8_lossy(id).into_owned());
                            }
                            data
                        }
                        V1::Reset => {
                            self.stats.resets.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        V1::Other => continue,
                    }
                } else {
                    text.as_bytes()
                };
                if let Some(stamp) = parse(body) {
                    let now = now_ns();
                    if let Some(s) = self.stats.steps.get(stamp.step) {
                        s.hist.record(now.saturating_sub(stamp.sent_ns) / 1000);
                        seen.mark(stamp.step, stamp.seq, &s.counts);
                    }
                    if first {
                        first = false;
                        if epoch > 0 {
                            self.stats.receiving_again.fetch_add(1, Ordering::Relaxed);
                            self.stats.last_back_ns.fetch_max(now, Ordering::Relaxed);
                        }
                    }
                }
            }
            self.stats.open.fetch_sub(1, Ordering::Relaxed);
            if self.stop.is_cancelled() || self.jitter.is_none() {
                return;
            }
            self.pause(1).await;
        }
    }

    /// Waits a jittered delay before reconnecting; later attempts back off (capped at 2 s more).
    async fn pause(&self, attempt: u32) {
        let jitter = self.jitter.unwrap_or_default();
        let base = Duration::from_millis(50 * u64::from(attempt.min(40)));
        let wait = base + jitter.mul_f64(fastrand::f64());
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    async fn connect(
        &self,
        last_id: Option<&str>,
    ) -> Option<tokio_tungstenite::WebSocketStream<TcpStream>> {
        let url = match last_id {
            Some(id) if self.v1 => format!("{}&last_id={}:{id}", self.url, self.group),
            _ => self.url.clone(),
        };
        let mut req = url.into_client_request().ok()?;
        if self.v1 {
            req.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static(V1_SUBPROTOCOL),
            );
        }
        let stream = TcpStream::connect(self.addr).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(req, stream, Some(client_config()))
                .await
                .ok()?;
        Some(ws)
    }
}

/// The sidecar's subprotocol with ids and resume (docs/protocol.md).
pub const V1_SUBPROTOCOL: &str = "taskstream.v1";

/// A `taskstream.v1` frame, as far as the fleet cares.
#[derive(Debug, PartialEq, Eq)]
pub enum V1<'a> {
    /// `{"type":"event","group":G,"id":ID,"data":D}`: the id (absent without history) and the
    /// payload as it was published (JSON goes in unchanged).
    Event {
        id: Option<&'a [u8]>,
        data: &'a [u8],
    },
    /// `{"type":"reset",...}`.
    Reset,
    Other,
}

/// Reads a `taskstream.v1` frame without a JSON parser (the sidecar writes the fields in this
/// order; see `sidecar/src/protocol.rs`).
pub fn parse_v1(text: &[u8]) -> V1<'_> {
    if text.starts_with(b"{\"type\":\"reset\"") {
        return V1::Reset;
    }
    if !text.starts_with(b"{\"type\":\"event\"") {
        return V1::Other;
    }
    let Some(at) = find(text, b",\"data\":") else {
        return V1::Other;
    };
    let head = &text[..at];
    let id = find(head, b",\"id\":\"").map(|i| {
        let rest = &head[i + 7..];
        &rest[..rest.iter().position(|&c| c == b'"').unwrap_or(rest.len())]
    });
    V1::Event {
        id,
        data: &text[at + 8..],
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let p = payload(7, 12, "g3", 10);
        let stamp = parse(p.as_bytes()).expect("parse");
        assert_eq!((stamp.step, stamp.seq), (7, 12));
        assert!(stamp.sent_ns <= now_ns());
        assert!(serde_json::from_str::<serde_json::Value>(&p).is_ok());
    }

    #[test]
    fn reads_v1_frames() {
        let p = payload(3, 4, "g1", 0);
        let frame = format!(r#"{{"type":"event","group":"g1","id":"1700-0","data":{p}}}"#);
        let V1::Event { id, data } = parse_v1(frame.as_bytes()) else {
            panic!("not an event: {frame}");
        };
        assert_eq!(id, Some(&b"1700-0"[..]));
        let stamp = parse(data).expect("payload");
        assert_eq!((stamp.step, stamp.seq), (3, 4));
        let live = format!(r#"{{"type":"event","group":"g1","data":{p}}}"#);
        assert!(matches!(
            parse_v1(live.as_bytes()),
            V1::Event { id: None, .. }
        ));
        let reset = r#"{"type":"reset","group":"g1","reason":"trimmed"}"#;
        assert_eq!(parse_v1(reset.as_bytes()), V1::Reset);
    }

    #[test]
    fn members_add_up() {
        let total: usize = (0..7).map(|k| members(100, 7, k)).sum();
        assert_eq!(total, 100);
    }
}
