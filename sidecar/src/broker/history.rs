//! Event history per group, so a client that reconnects gets what it missed (opt-in:
//! `--history-size`, `--history-ttl`).
//!
//! ```text
//! publish --EVAL publish.lua--> Redis: XADD <prefix>G + XSETID + PEXPIRE + PUBLISH "\x1e<id>\x1e<payload>"
//!                                           |                              |
//! resume (last_id=G:<id>) --EVAL read.lua---+                              +--> sidecars --> clients
//!      -> decide(): the events after <id>, or a reset when they cannot all be there
//! ```
//!
//! In Redis the history of group G is a Stream at key `<prefix>G` (the channel's own name), so
//! every replica serves the same history and it outlives sidecar restarts; `--broker memory`
//! keeps an in-process ring per group with the same semantics. A stream records what can no
//! longer be recovered in its `max-deleted-entry-id` (set by the publish script), which is what
//! tells "nothing missed" from "some trimmed away" exactly; a missing stream means expired or
//! lost (Redis restart, FLUSHALL).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelValue;
use redis::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::id::StreamId;
use crate::hub::Hub;

/// The script every publisher runs to publish with history (docs/protocol.md).
pub const PUBLISH_SCRIPT: &str = include_str!("publish.lua");
/// One atomic look at a group's stream.
pub const READ_SCRIPT: &str = include_str!("read.lua");

/// `--history-size` / `--history-ttl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Events kept per group (at least 1).
    pub size: usize,
    /// A group's history expires this long after its last event.
    pub ttl: Duration,
}

/// Why a client gets `{"type":"reset"}` for a group instead of what it missed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ResetReason {
    /// Events after the client's id were trimmed (more than `--history-size` since), or the
    /// stream was lost and made anew since.
    Trimmed,
    /// The group has no history: it expired (`--history-ttl`) or was lost with Redis.
    Expired,
    /// The id was never issued by this history (another Redis, or a bad client).
    Unknown,
    /// More events were missed than this sidecar reads back (`--history-size`).
    TooFar,
    /// This sidecar keeps no history.
    HistoryOff,
    /// The history could not be read (Redis unreachable).
    Unavailable,
    /// The sidecar's Redis subscription was lost and re-made, and this connection had no event
    /// id in the group to catch up from.
    Reconnected,
}

impl ResetReason {
    /// The `reason` of the reset frame.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::Trimmed => "trimmed",
            ResetReason::Expired => "expired",
            ResetReason::Unknown => "unknown",
            ResetReason::TooFar => "too_far",
            ResetReason::HistoryOff => "history_off",
            ResetReason::Unavailable => "unavailable",
            ResetReason::Reconnected => "reconnected",
        }
    }
}

/// What one read of a group's history saw.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub exists: bool,
    pub max_deleted: StreamId,
    pub last_generated: StreamId,
    /// After the asked id (or the newest, for id 0), oldest first.
    pub entries: Vec<(StreamId, Utf8Bytes)>,
}

/// What a resuming client gets for one group.
#[derive(Debug, PartialEq)]
pub enum Recovery {
    Events(Vec<(StreamId, Utf8Bytes)>),
    Reset(ResetReason),
}

/// How many entries to read for a resume from `last`: one more than can be delivered, so that
/// "too far behind" is seen rather than silently cut.
pub fn read_count(last: StreamId, size: usize) -> usize {
    if last == StreamId::ZERO {
        size
    } else {
        size + 1
    }
}

/// Decides, from one atomic snapshot, whether the events after `last` are all there.
pub fn decide(last: StreamId, snap: Snapshot, size: usize) -> Recovery {
    if last == StreamId::ZERO {
        // "Everything still in history": a late joiner has no state a gap could corrupt.
        return Recovery::Events(snap.entries);
    }
    if !snap.exists {
        return Recovery::Reset(ResetReason::Expired);
    }
    if snap.max_deleted > last {
        return Recovery::Reset(ResetReason::Trimmed);
    }
    if last > snap.last_generated {
        return Recovery::Reset(ResetReason::Unknown);
    }
    if snap.entries.len() > size {
        return Recovery::Reset(ResetReason::TooFar);
    }
    Recovery::Events(snap.entries)
}

/// Parses the reply of [`READ_SCRIPT`].
pub fn parse_read_reply(v: Value) -> Result<Snapshot, String> {
    let bad = |what: &str| format!("history read: unexpected reply ({what})");
    let Value::Array(parts) = v else {
        return Err(bad("not an array"));
    };
    let [exists, maxdel, lastgen, entries]: [Value; 4] =
        parts.try_into().map_err(|_| bad("not 4 parts"))?;
    let exists = matches!(exists, Value::Int(1));
    let id = |v: &Value| -> Result<StreamId, String> {
        let s = redis::from_redis_value_ref::<String>(v).map_err(|e| bad(&e.to_string()))?;
        StreamId::parse(&s).ok_or_else(|| bad("id"))
    };
    let mut snap = Snapshot {
        exists,
        max_deleted: id(&maxdel)?,
        last_generated: id(&lastgen)?,
        entries: Vec::new(),
    };
    let Value::Array(entries) = entries else {
        return Err(bad("entries"));
    };
    for e in entries {
        let Value::Array(pair) = e else {
            return Err(bad("entry"));
        };
        let [eid, fields]: [Value; 2] = pair.try_into().map_err(|_| bad("entry pair"))?;
        let eid = id(&eid)?;
        let fields: Vec<Vec<u8>> =
            redis::from_redis_value(fields).map_err(|e| bad(&e.to_string()))?;
        // Field `d` holds the payload; a foreign entry without it is skipped.
        let Some(payload) = fields
            .chunks_exact(2)
            .find(|kv| kv[0] == b"d")
            .map(|kv| kv[1].clone())
        else {
            continue;
        };
        let Ok(text) = Utf8Bytes::try_from(bytes::Bytes::from(payload)) else {
            continue; // not UTF-8: cannot be a text frame (live copies are dropped likewise)
        };
        snap.entries.push((eid, text));
    }
    Ok(snap)
}

/// `--broker memory`: a ring per group, same semantics as the Redis stream.
pub struct MemoryHistory {
    config: HistoryConfig,
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    groups: HashMap<String, Ring>,
    /// Ids increase across groups and ring lifetimes, as Redis ids do.
    last_issued: StreamId,
    publishes: u64,
}

struct Ring {
    entries: VecDeque<(StreamId, Utf8Bytes)>,
    max_deleted: StreamId,
    last: StreamId,
    expires: Instant,
}

impl MemoryHistory {
    pub fn new(config: HistoryConfig) -> Self {
        Self {
            config,
            state: Mutex::new(MemoryState::default()),
        }
    }

    /// Stores `payload` and hands it to the hub under one lock, so a concurrent read sees it
    /// either in history or live, never neither and never both.
    pub fn publish(&self, hub: &Hub, group: &str, payload: Utf8Bytes) -> (StreamId, usize) {
        self.publish_at(unix_ms(), hub, group, payload)
    }

    /// [`Self::publish`] with the wall clock reading `now_ms` (ids are `<ms>-<seq>`, as Redis's).
    fn publish_at(
        &self,
        now_ms: u64,
        hub: &Hub,
        group: &str,
        payload: Utf8Bytes,
    ) -> (StreamId, usize) {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.publishes += 1;
        if st.publishes.is_multiple_of(1024) {
            st.groups.retain(|_, r| r.expires > now);
        }
        let id = st.last_issued.next_after(now_ms);
        st.last_issued = id;
        let ring = match st.groups.get_mut(group) {
            Some(r) if r.expires > now => r,
            _ => {
                st.groups.insert(
                    group.to_owned(),
                    Ring {
                        entries: VecDeque::new(),
                        // A new lifetime: every earlier id reads as lost.
                        max_deleted: id.predecessor(),
                        last: id,
                        expires: now,
                    },
                );
                st.groups.get_mut(group).expect("just inserted")
            }
        };
        ring.entries.push_back((id, payload.clone()));
        while ring.entries.len() > self.config.size {
            if let Some((old, _)) = ring.entries.pop_front() {
                ring.max_deleted = old;
            }
        }
        ring.last = id;
        ring.expires = now + self.config.ttl;
        let receivers = hub.publish_event(group, Some(id), payload);
        (id, receivers)
    }

    /// The same look at a group that [`READ_SCRIPT`] takes in Redis.
    pub fn snapshot(&self, group: &str, last: StreamId, count: usize) -> Snapshot {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(ring) = st.groups.get(group).filter(|r| r.expires > Instant::now()) else {
            return Snapshot::default();
        };
        let entries = if last == StreamId::ZERO {
            let skip = ring.entries.len().saturating_sub(count);
            ring.entries.iter().skip(skip).cloned().collect()
        } else {
            ring.entries
                .iter()
                .filter(|(id, _)| *id > last)
                .take(count)
                .cloned()
                .collect()
        };
        Snapshot {
            exists: true,
            max_deleted: ring.max_deleted,
            last_generated: ring.last,
            entries,
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
