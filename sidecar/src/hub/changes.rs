//! Which groups gained their first or lost their last local client, for the broker links that
//! subscribe to them: each link keeps its own set of changed names and reconciles only those,
//! so a join costs the link O(its groups), not O(every group in the hub).
//!
//! ```text
//! Hub::join / leave --group created / removed--> Listeners::tell --insert name, notify--> Changes (one per link)
//!                                                                                       |
//! link driver <--take(): the changed names; the hub says which are wanted now-------------+
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

/// One link's changed groups since it last took them.
#[derive(Default)]
pub struct Changes {
    /// A set, so a group created and removed a thousand times between two looks is one entry:
    /// at most as many names as the hub has ever had at once between two looks.
    groups: Mutex<HashSet<String>>,
    ready: Notify,
}

impl Changes {
    /// Resolves once a group changed since the last [`Changes::take`] (a permit is kept when
    /// nobody waits, so a change during the link's Redis round trip is not missed).
    pub async fn changed(&self) {
        self.ready.notified().await
    }

    /// The groups that changed since the last call; the hub says which of them are wanted now.
    pub fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.groups.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn add<'a>(&self, groups: impl Iterator<Item = &'a str>) {
        {
            let mut set = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            for g in groups {
                if !set.contains(g) {
                    set.insert(g.to_owned());
                }
            }
        }
        self.ready.notify_one();
    }
}

/// The links listening to one hub. Weak: a link that ended stops collecting names.
#[derive(Default)]
pub struct Listeners(Mutex<Vec<Weak<Changes>>>);

impl Listeners {
    pub fn listen(&self) -> Arc<Changes> {
        let changes = Arc::new(Changes::default());
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&changes));
        changes
    }

    /// Tells every listener that `groups` were created or removed. Called after the hub's map
    /// changed, so a listener that takes the names and then asks the hub sees the change.
    pub fn tell(&self, groups: &[&str]) {
        if groups.is_empty() {
            return;
        }
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for changes in all.iter().filter_map(Weak::upgrade) {
            changes.add(groups.iter().copied());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn every_listener_gets_each_name_once_until_it_takes_them() {
        let listeners = Listeners::default();
        let (a, b) = (listeners.listen(), listeners.listen());
        listeners.tell(&["g1", "g2"]);
        listeners.tell(&["g1"]);
        tokio::time::timeout(Duration::from_secs(1), a.changed())
            .await
            .expect("a change wakes the listener, even told before it waited");
        let mut got: Vec<String> = a.take().into_iter().collect();
        got.sort();
        assert_eq!(got, ["g1", "g2"]);
        assert!(a.take().is_empty(), "taken names are gone");
        assert_eq!(b.take().len(), 2, "each listener has its own set");
    }

    #[test]
    fn an_ended_listener_stops_collecting() {
        let listeners = Listeners::default();
        let gone = listeners.listen();
        let weak = Arc::downgrade(&gone);
        drop(gone);
        listeners.tell(&["g"]);
        assert!(weak.upgrade().is_none());
        let _live = listeners.listen();
        assert_eq!(
            listeners.0.lock().unwrap().len(),
            1,
            "the ended one is pruned"
        );
    }
}
