//! The sessions' beat: when to ping, the broker's link, and shutdown, in one watch per shard.
//!
//! ```text
//! clock task: one tick per interval/SHARDS --> shard k: tick += 1 --+
//! Hub::link_lost / Hub::resubscribed --------> every shard: link ---+--> watch<Beat> x SHARDS
//! shutdown token cancelled ------------------> every shard: down ---+        |
//!                                                 session (shard = its join order % SHARDS)
//! ```
//!
//! One timer for all clients instead of a boxed timer entry per client, and one watch receiver
//! per session instead of a timer, a shutdown waiter and a link receiver: an idle session is
//! about 300 bytes smaller. Shard k ticks at k/SHARDS of the interval, so the pings of many
//! clients are spread over it rather than sent all at once. The link is written into every
//! shard by the hub itself, synchronously, before the broker hands the hub any event of a re-made
//! subscription: a session sees the new generation before the events that follow it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Hub, Link};

/// Watches the sessions are spread over.
pub const SHARDS: usize = 16;

/// What a session's shard says now; a session acts on what differs from what it saw last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    /// Counts the shard's ping ticks: one per ping interval.
    pub tick: u64,
    /// The broker's subscription link.
    pub link: Link,
    /// The server is shutting down: close with 1001.
    pub shutdown: bool,
}

/// The shards' senders, owned by the hub.
pub(super) struct Shards(Box<[watch::Sender<Beat>]>);

impl Shards {
    pub(super) fn new() -> Self {
        let first = Beat {
            tick: 0,
            link: Link {
                generation: 0,
                up: true,
            },
            shutdown: false,
        };
        Self((0..SHARDS).map(|_| watch::channel(first).0).collect())
    }

    /// The shard of the session with this id.
    pub(super) fn subscribe(&self, id: u64) -> watch::Receiver<Beat> {
        self.0[id as usize % SHARDS].subscribe()
    }

    /// Changes every shard; each notifies its sessions only if `f` says it changed something.
    pub(super) fn each(&self, f: impl Fn(&mut Beat) -> bool) {
        for shard in &self.0 {
            shard.send_if_modified(&f);
        }
    }

    fn tick(&self, shard: usize) {
        self.0[shard % SHARDS].send_modify(|b| b.tick += 1);
    }
}

/// Ticks the shards in turn, `interval / SHARDS` apart, until `shutdown`; then tells every
/// session to close. Runs for the life of the server.
pub async fn run(hub: Arc<Hub>, interval: Duration, shutdown: CancellationToken) {
    let step = (interval / SHARDS as u32).max(Duration::from_millis(1));
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = timer.tick() => {
                hub.beat.tick(next);
                next = next.wrapping_add(1);
            }
        }
    }
    hub.beat.each(|b| !std::mem::replace(&mut b.shutdown, true));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[tokio::test(start_paused = true)]
    async fn every_shard_ticks_once_per_interval_and_all_learn_of_shutdown() {
        let hub = Hub::new(4, 1 << 20, true, Metrics::default());
        let mut rx: Vec<_> = (0..SHARDS as u64).map(|id| hub.beat(id)).collect();
        let stop = CancellationToken::new();
        let clock = tokio::spawn(run(hub.clone(), Duration::from_secs(16), stop.clone()));
        // After one interval (and a bit), every shard ticked exactly once.
        tokio::time::sleep(Duration::from_millis(16_500)).await;
        for (k, r) in rx.iter_mut().enumerate() {
            assert!(r.has_changed().unwrap(), "shard {k} did not tick");
            assert_eq!(r.borrow_and_update().tick, 1, "shard {k}");
        }
        stop.cancel();
        clock.await.unwrap();
        for r in &mut rx {
            r.changed().await.unwrap();
            assert!(r.borrow().shutdown);
        }
        // A session that joins after shutdown sees it at once.
        assert!(hub.beat(99).borrow().shutdown);
    }

    #[tokio::test(start_paused = true)]
    async fn shards_tick_in_turn_spread_over_the_interval() {
        let hub = Hub::new(4, 1 << 20, true, Metrics::default());
        let mut first = hub.beat(0);
        let mut second = hub.beat(1);
        let stop = CancellationToken::new();
        let _clock = tokio::spawn(run(hub.clone(), Duration::from_secs(16), stop.clone()));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(first.borrow_and_update().tick, 1);
        assert_eq!(
            second.borrow_and_update().tick,
            0,
            "shard 1 ticks 1 s after shard 0"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(second.borrow_and_update().tick, 1);
        stop.cancel();
    }
}
