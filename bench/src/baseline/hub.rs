//! Group -> members, and one small queue per member.
//!
//! ```text
//! redis push / admin POST --publish(group, text)--> [hub] --push--> Queue (<= QUEUE events) --> session
//! ```
//!
//! The floor of a fan-out hub: a queue is a `VecDeque` that allocates on the first event and
//! gives its slots back once drained, so an idle member costs the `Arc<Queue>` and one pointer
//! per group. (tokio's bounded mpsc allocates a first block of 32 slots per channel at creation,
//! over 1 KiB per idle client.) A full queue marks the member lagging and its session closes it,
//! as the sidecar does: memory never grows with a slow client.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Notify, OnceCell};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Events queued per client (the sidecar's `--send-queue` default).
pub const QUEUE: usize = 256;
/// Slots a drained queue keeps: one burst's worth, not the peak.
const KEEP_SLOTS: usize = 8;

/// One client's pending events.
#[derive(Default)]
pub struct Queue {
    events: Mutex<VecDeque<Utf8Bytes>>,
    ready: Notify,
    lagged: AtomicBool,
}

impl Queue {
    fn push(&self, text: &Utf8Bytes) -> bool {
        let mut q = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= QUEUE {
            drop(q);
            if !self.lagged.swap(true, Ordering::AcqRel) {
                self.ready.notify_one();
            }
            return false;
        }
        q.push_back(text.clone());
        drop(q);
        self.ready.notify_one();
        true
    }

    pub fn try_pop(&self) -> Option<Utf8Bytes> {
        let mut q = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let text = q.pop_front();
        if q.is_empty() && q.capacity() > KEEP_SLOTS {
            q.shrink_to(KEEP_SLOTS);
        }
        text
    }

    /// The next event; `None` once the queue overflowed (the client is too slow).
    pub async fn pop(&self) -> Option<Utf8Bytes> {
        loop {
            if self.lagged.load(Ordering::Acquire) {
                return None;
            }
            if let Some(text) = self.try_pop() {
                return Some(text);
            }
            self.ready.notified().await;
        }
    }
}

/// A group's members, and whether its Redis subscription is confirmed.
struct Group {
    members: Vec<Arc<Queue>>,
    /// Set once `SUBSCRIBE` was answered; later members of the same group wait on it too.
    subscribed: Arc<OnceCell<()>>,
}

/// Which clients are in which group.
#[derive(Default)]
pub struct Hub {
    groups: RwLock<HashMap<Box<str>, Group>>,
}

impl Hub {
    /// Adds `queue` to each of `groups`; returns, per group, the cell its subscription
    /// confirmation lives in (the caller subscribes what is not confirmed yet).
    pub fn join(&self, groups: &[Box<str>], queue: &Arc<Queue>) -> Vec<Arc<OnceCell<()>>> {
        let mut map = self.groups.write().unwrap_or_else(|e| e.into_inner());
        groups
            .iter()
            .map(|g| {
                let group = map.entry(g.clone()).or_insert_with(|| Group {
                    members: Vec::new(),
                    subscribed: Arc::default(),
                });
                group.members.push(queue.clone());
                group.subscribed.clone()
            })
            .collect()
    }

    /// Removes `queue` from `groups`; an emptied group is forgotten. Its Redis subscription is
    /// kept: messages for a group without members are dropped here, and a later member's
    /// `SUBSCRIBE` is idempotent, so no `UNSUBSCRIBE` can race a new member's subscription.
    pub fn leave(&self, groups: &[Box<str>], queue: &Arc<Queue>) {
        let mut map = self.groups.write().unwrap_or_else(|e| e.into_inner());
        for g in groups {
            if let Some(group) = map.get_mut(g) {
                group.members.retain(|q| !Arc::ptr_eq(q, queue));
                if group.members.is_empty() {
                    map.remove(g);
                }
            }
        }
    }

    /// Queues `text` for every member of `group`; returns how many took it.
    pub fn publish(&self, group: &str, text: &Utf8Bytes) -> usize {
        let map = self.groups.read().unwrap_or_else(|e| e.into_inner());
        map.get(group)
            .map_or(0, |g| g.members.iter().filter(|q| q.push(text)).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fans_out_and_forgets_empty_groups() {
        let hub = Hub::default();
        let (a, b) = (Arc::new(Queue::default()), Arc::new(Queue::default()));
        let groups: Vec<Box<str>> = vec!["g1".into(), "user:a".into()];
        hub.join(&groups, &a);
        hub.join(&groups[..1], &b);
        assert_eq!(hub.publish("g1", &Utf8Bytes::from_static("x")), 2);
        assert_eq!(hub.publish("user:a", &Utf8Bytes::from_static("y")), 1);
        assert_eq!(a.pop().await.as_deref(), Some("x"));
        assert_eq!(a.pop().await.as_deref(), Some("y"));
        assert_eq!(b.try_pop().as_deref(), Some("x"));
        hub.leave(&groups, &a);
        assert_eq!(hub.publish("user:a", &Utf8Bytes::from_static("z")), 0);
        assert_eq!(hub.publish("g1", &Utf8Bytes::from_static("z")), 1);
    }

    #[tokio::test]
    async fn a_full_queue_marks_the_client_lagging() {
        let hub = Hub::default();
        let q = Arc::new(Queue::default());
        hub.join(&["g".into()], &q);
        for _ in 0..QUEUE {
            assert_eq!(hub.publish("g", &Utf8Bytes::from_static("e")), 1);
        }
        assert_eq!(hub.publish("g", &Utf8Bytes::from_static("e")), 0);
        assert_eq!(q.pop().await, None, "a lagging client gets no more events");
    }
}
