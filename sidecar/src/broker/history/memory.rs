//! `--broker memory`: history kept in the process, a ring per group with the same semantics as
//! the Redis stream (ids `<ms>-<seq>` increasing across groups and ring lifetimes, trimming to
//! `--history-size`, expiry `--history-ttl` after the last event).
//!
//! ```text
//! publish(group, payload, live) --one lock--> ring.push(id) + live(id, payload) (to the hub)
//! snapshot(group, last, count)  --same lock--> Snapshot --> model::decide
//! ```
//!
//! The ring knows nothing of the hub: the caller passes what hands an event to live clients,
//! and the ring runs it under its lock.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::model::{HistoryConfig, Snapshot};
use crate::broker::id::StreamId;

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

    /// Stores `payload` and hands it to `live` (the hub) under one lock, so a concurrent read
    /// sees it either in history or live, never neither and never both. Returns its id and
    /// what `live` returned.
    pub fn publish<R>(
        &self,
        group: &str,
        payload: Utf8Bytes,
        live: impl FnOnce(StreamId, Utf8Bytes) -> R,
    ) -> (StreamId, R) {
        self.publish_at(unix_ms(), group, payload, live)
    }

    /// [`Self::publish`] with the wall clock reading `now_ms` (ids are `<ms>-<seq>`, as Redis's).
    pub(super) fn publish_at<R>(
        &self,
        now_ms: u64,
        group: &str,
        payload: Utf8Bytes,
        live: impl FnOnce(StreamId, Utf8Bytes) -> R,
    ) -> (StreamId, R) {
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
        (id, live(id, payload))
    }

    /// The same look at a group that [`super::READ_SCRIPT`] takes in Redis.
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
