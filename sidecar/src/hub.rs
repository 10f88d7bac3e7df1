//! The hub: which local clients are in which group, and fan-out of events to them.
//!
//! ```text
//!  broker link --publish(group, payload)--> [hub] --try_send--> bounded queue --> session
//!        ^                                    |
//!        +------ changed groups (per link) ---+--set_confirmed--> subscribers' queues woken
//! ```
//!
//! Fan-out never waits: each client has a bounded queue, and a client whose queue is full is
//! marked lagging (its session closes it with 1013) instead of growing memory or slowing others.
//! Each broker link listens ([`Hub::listen`]) for the groups that gained their first or lost
//! their last client ([`changes`]) and (un)subscribes only those; on a (re)connect it subscribes
//! all of [`Hub::wanted`]. A session waits for its groups' confirmation on its own queue's
//! notifier, woken only when one of its groups is confirmed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use std::sync::OnceLock;

use tokio::sync::{Notify, watch};

pub use self::changes::Changes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use self::beat::Beat;
use crate::broker::id::StreamId;
use crate::metrics::{DropReason, Metrics};

use self::members::Members;
use crate::protocol;

/// The broker's subscription link, as sessions see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Counts the subscriptions re-made after a loss.
    pub generation: u64,
    /// False from the loss until the subscriptions are back.
    pub up: bool,
}

/// One event as the hub fans it out, shared by every client of its group.
#[derive(Debug)]
pub struct Event {
    pub group: Box<str>,
    /// Set for events published with history.
    pub id: Option<StreamId>,
    /// What clients without the `taskstream.v1` subprotocol get, verbatim.
    pub payload: Utf8Bytes,
    /// The `taskstream.v1` frame, made once for all the clients that want it.
    v1: OnceLock<Utf8Bytes>,
}

impl Event {
    pub fn new(group: &str, id: Option<StreamId>, payload: Utf8Bytes) -> Arc<Self> {
        Arc::new(Self {
            group: group.into(),
            id,
            payload,
            v1: OnceLock::new(),
        })
    }

    /// `{"type":"event","group":..,"id":..,"data":..}`.
    pub fn v1_frame(&self) -> &Utf8Bytes {
        self.v1
            .get_or_init(|| protocol::event_frame(&self.group, self.id, &self.payload))
    }
}

/// Group -> local subscribers.
pub struct Hub {
    groups: RwLock<HashMap<Arc<str>, Group>>,
    /// The broker links, told which groups were created or removed.
    listeners: changes::Listeners,
    /// The sessions' beat ([`beat`]): pings, shutdown, and the broker's subscription link
    /// (down while a lost subscription is being re-made, and a new generation once it is;
    /// `taskstream.v1` sessions then catch up on what pub/sub dropped meanwhile, from history,
    /// or get a reset).
    beat: beat::Shards,
    next_id: AtomicU64,
    queue: usize,
    /// `--max-event-bytes`: larger events are dropped, so a client's write buffer stays bounded.
    max_event: usize,
    /// With the in-memory broker there is nothing to subscribe to: every group is live at once.
    auto_confirm: bool,
    metrics: Metrics,
}

struct Group {
    /// One member inline (most groups), a list from the second on.
    subscribers: Members<Queue>,
    /// The broker confirmed the subscription; events published from now on arrive.
    confirmed: bool,
}

/// One client's bounded event queue.
///
/// A `VecDeque` behind a mutex rather than a tokio mpsc channel: it allocates nothing until the
/// first event and gives memory back when drained, which keeps an idle connection about 1 KB
/// smaller (an mpsc channel allocates its first 32-slot block up front).
pub struct Queue {
    events: Mutex<VecDeque<Arc<Event>>>,
    capacity: usize,
    /// Woken on every push, and once when the queue overflows.
    ready: Notify,
    /// Set when the queue overflowed: the session closes the client with 1013. An atomic, not a
    /// CancellationToken: the hub reads it once per client per event.
    lagged: AtomicBool,
    /// The client's beat shard, chosen when it joined (kept here, in the padding after
    /// `lagged`, rather than an id in every idle session).
    shard: u8,
}

/// Queues at most this many slots' worth of memory once drained.
const KEEP_SLOTS: usize = 8;

impl Queue {
    fn new(capacity: usize, shard: u8) -> Self {
        Self {
            events: Mutex::new(VecDeque::new()),
            capacity,
            ready: Notify::new(),
            lagged: AtomicBool::new(false),
            shard,
        }
    }

    /// Never waits: a full queue marks the client lagging instead.
    fn push(&self, event: &Arc<Event>) -> bool {
        {
            let mut q = self.events.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= self.capacity {
                drop(q);
                if !self.lagged.swap(true, Ordering::AcqRel) {
                    self.ready.notify_one();
                }
                return false;
            }
            q.push_back(event.clone());
        }
        self.ready.notify_one();
        true
    }

    /// The next event, if one is queued.
    pub fn try_pop(&self) -> Option<Arc<Event>> {
        let mut q = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let event = q.pop_front();
        if q.is_empty() && q.capacity() > KEEP_SLOTS {
            q.shrink_to(KEEP_SLOTS);
        }
        event
    }

    /// Waits for the next event; `None` once the client lagged (the queue overflowed).
    pub async fn pop(&self) -> Option<Arc<Event>> {
        loop {
            if self.is_lagged() {
                return None;
            }
            if let Some(event) = self.try_pop() {
                return Some(event);
            }
            // notify_one stores a permit when nobody waits, so a push between the check above
            // and this await is not lost.
            self.ready.notified().await;
        }
    }

    /// Resolves once the client lagged (while the session is busy writing).
    pub async fn lagged(&self) {
        while !self.is_lagged() {
            self.ready.notified().await;
        }
    }

    pub fn is_lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client's place in the hub; leaving the hub happens on drop.
pub struct Membership {
    hub: Arc<Hub>,
    /// The hub's own keys (shared with every client of the group), in an exact-size slice: a
    /// `Vec`'s capacity word would sit in every idle session.
    groups: Box<[Arc<str>]>,
    /// Events for this client, in publish order.
    pub queue: Arc<Queue>,
}

impl Hub {
    pub fn new(queue: usize, max_event: usize, auto_confirm: bool, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            max_event,
            groups: RwLock::new(HashMap::new()),
            listeners: changes::Listeners::default(),
            beat: beat::Shards::new(),
            next_id: AtomicU64::new(1),
            queue,
            auto_confirm,
            metrics,
        })
    }

    /// Adds a client to `groups` (deduplicated by the caller).
    pub fn join(self: &Arc<Self>, groups: Vec<String>) -> Membership {
        // Clients take the beat's shards in turn.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue::new(self.queue, (id % beat::SHARDS as u64) as u8));
        // The client's names are the map's keys: one allocation per group, however many
        // clients it has.
        let mut names: Vec<Arc<str>> = Vec::with_capacity(groups.len());
        let mut added: Vec<usize> = Vec::new();
        {
            let mut map = self.groups.write().unwrap_or_else(|e| e.into_inner());
            for g in groups {
                if let Some(name) = map.get_key_value(g.as_str()).map(|(k, _)| k.clone()) {
                    if let Some(entry) = map.get_mut(&*name) {
                        entry.subscribers.add(queue.clone());
                    }
                    names.push(name);
                    continue;
                }
                let name: Arc<str> = g.into();
                map.insert(
                    name.clone(),
                    Group {
                        subscribers: Members::One(queue.clone()),
                        confirmed: self.auto_confirm,
                    },
                );
                added.push(names.len());
                names.push(name);
            }
            self.metrics.groups_subscribed.set(map.len() as i64);
        }
        let created: Vec<&str> = added.iter().map(|&i| &*names[i]).collect();
        self.listeners.tell(&created);
        Membership {
            hub: self.clone(),
            groups: names.into_boxed_slice(),
            queue,
        }
    }

    fn leave(&self, queue: &Arc<Queue>, groups: &[Arc<str>]) {
        let mut removed: Vec<&str> = Vec::new();
        {
            let mut map = self.groups.write().unwrap_or_else(|e| e.into_inner());
            for g in groups {
                if let Some(entry) = map.get_mut(&**g)
                    && !entry.subscribers.remove(queue)
                {
                    map.remove(&**g);
                    removed.push(g);
                }
            }
            self.metrics.groups_subscribed.set(map.len() as i64);
        }
        self.listeners.tell(&removed);
    }

    /// Queues `payload` (live only, no id) to every local client of `group`; returns how many
    /// got it.
    pub fn publish(&self, group: &str, payload: &Utf8Bytes) -> usize {
        self.publish_event(group, None, payload.clone())
    }

    /// Queues an event to every local client of `group`; returns how many got it.
    pub fn publish_event(&self, group: &str, id: Option<StreamId>, payload: Utf8Bytes) -> usize {
        self.metrics.events_received.inc();
        if payload.len() > self.max_event {
            self.metrics.dropped(DropReason::TooLarge);
            tracing::warn!(
                group,
                bytes = payload.len(),
                limit = self.max_event,
                "dropped an event larger than --max-event-bytes; publish less, or raise the limit"
            );
            return 0;
        }
        let map = self.groups.read().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = map.get(group) else {
            return 0;
        };
        let event = Event::new(group, id, payload);
        let mut delivered = 0;
        for queue in entry.subscribers.iter() {
            if queue.is_lagged() {
                continue;
            }
            if queue.push(&event) {
                delivered += 1;
            } else {
                self.metrics.dropped(DropReason::SlowClient);
            }
        }
        self.metrics.events_delivered.inc_by(delivered as u64);
        if let Some(id) = id.filter(|_| delivered > 0) {
            self.metrics.delivery_seconds.observe_since(id.ms);
        }
        delivered
    }

    /// The groups of `keep` that have at least one local client (a link's full set, on
    /// connect; in no particular order).
    pub fn wanted(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let map = self.groups.read().unwrap_or_else(|e| e.into_inner());
        map.keys()
            .filter(|g| keep(g))
            .map(|g| g.to_string())
            .collect()
    }

    /// From now on, the groups created or removed are told to the returned [`Changes`] (one per
    /// broker link; it stops collecting once dropped).
    pub fn listen(&self) -> Arc<Changes> {
        self.listeners.listen()
    }

    /// Splits `groups` into those with local clients now and those without.
    pub fn partition(
        &self,
        groups: impl IntoIterator<Item = String>,
    ) -> (Vec<String>, Vec<String>) {
        let map = self.groups.read().unwrap_or_else(|e| e.into_inner());
        groups
            .into_iter()
            .partition(|g| map.contains_key(g.as_str()))
    }

    /// Marks the broker subscription of `groups` as live (or not, after a disconnect). Going
    /// live wakes the clients of the groups that were not, so a handshake waiting in
    /// [`Membership::wait_confirmed`] looks again; nobody else is woken.
    pub fn set_confirmed<'a>(&self, groups: impl IntoIterator<Item = &'a str>, live: bool) {
        let mut map = self.groups.write().unwrap_or_else(|e| e.into_inner());
        for g in groups {
            let Some(entry) = map.get_mut(g) else {
                continue;
            };
            if live && !entry.confirmed {
                for queue in entry.subscribers.iter() {
                    // The sessions' queue readers look at the queue before they wait, so this
                    // extra wake-up costs them nothing.
                    queue.ready.notify_one();
                }
            }
            entry.confirmed = live;
        }
    }

    /// The broker lost its subscription connection: pub/sub drops what is published until
    /// [`Hub::resubscribed`].
    pub fn link_lost(&self) {
        self.beat.each(|b| std::mem::replace(&mut b.link.up, false));
    }

    /// The broker re-made its subscriptions after losing them: events may have been missed.
    /// Every session's beat has the new generation before this returns, so before any event
    /// of the new subscription reaches the hub.
    pub fn resubscribed(&self) {
        self.beat.each(|b| {
            b.link.generation += 1;
            b.link.up = true;
            true
        });
    }

    /// The beat of the session with this id (its pings, the link, shutdown).
    pub fn beat(&self, id: u64) -> watch::Receiver<Beat> {
        self.beat.subscribe(id)
    }

    fn all_confirmed(&self, groups: &[Arc<str>]) -> bool {
        let map = self.groups.read().unwrap_or_else(|e| e.into_inner());
        groups
            .iter()
            .all(|g| map.get(&**g).is_some_and(|entry| entry.confirmed))
    }
}

impl Membership {
    /// This client's beat: its shard of the pings, the broker's link and shutdown.
    pub fn beat(&self) -> watch::Receiver<Beat> {
        self.hub.beat(u64::from(self.queue.shard))
    }

    /// Waits until the broker has confirmed every group of this client, so that every event
    /// published after the handshake is delivered. Gives up after `timeout` (e.g. Redis down):
    /// the client is still admitted, and the source subscribes when it can.
    pub async fn wait_confirmed(&self, timeout: Duration) -> bool {
        let confirmed = async {
            // A confirmation between the check and the wait leaves a permit: not missed.
            while !self.hub.all_confirmed(&self.groups) {
                self.queue.ready.notified().await;
            }
        };
        tokio::time::timeout(timeout, confirmed).await.is_ok()
    }

    pub fn groups(&self) -> &[Arc<str>] {
        &self.groups
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(&self.queue, &self.groups);
    }
}

pub mod beat;
mod changes;
mod members;
#[cfg(test)]
mod tests;
