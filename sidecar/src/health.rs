//! Liveness and readiness state, shared by the admin server, the broker and shutdown.
//!
//! `/readyz` says whether the pod can serve: listening and not shutting down. The broker's state
//! is reported apart (`/readyz/broker`, `taskstream_broker_up`), so a Redis outage does not take
//! the app's plain HTTP out of the Service; `--ready-requires-broker` ties the two together again.
//! With `--jwt-jwks-url`, `/readyz` also waits for the first good key set: without it no client
//! could connect.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    broker_up: AtomicBool,
    broker_ever_up: AtomicBool,
    shutting_down: AtomicBool,
    /// JWT keys are expected from a JWKS and none has arrived yet.
    keys_pending: AtomicBool,
    /// `--ready-requires-broker`: `/readyz` also needs the broker connected.
    requires_broker: bool,
}

impl Health {
    pub fn new(requires_broker: bool) -> Self {
        Self {
            requires_broker,
            ..Self::default()
        }
    }

    pub fn set_broker_up(&self, up: bool) {
        if up {
            self.broker_ever_up.store(true, Ordering::Release);
        }
        self.broker_up.store(up, Ordering::Release);
    }

    /// The broker is known to be down: it was connected once and the connection is lost now.
    /// (At start-up it is not known yet: the first connection is usually a moment away.)
    pub fn broker_lost(&self) -> bool {
        self.broker_ever_up.load(Ordering::Acquire) && !self.broker_up()
    }

    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Acquire)
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// `true` before the first JWKS fetch, `false` once a good key set is in.
    pub fn set_keys_pending(&self, pending: bool) {
        self.keys_pending.store(pending, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        !self.shutting_down()
            && !self.keys_pending.load(Ordering::Acquire)
            && (!self.requires_broker || self.broker_up())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_without_broker_by_default() {
        let h = Health::new(false);
        assert!(h.ready(), "serving does not wait for Redis");
        h.set_broker_up(true);
        h.set_broker_up(false);
        assert!(h.ready(), "a Redis outage keeps the pod ready");
        h.set_shutting_down();
        assert!(!h.ready());
    }

    #[test]
    fn ready_waits_for_the_first_key_set() {
        let h = Health::new(false);
        h.set_keys_pending(true);
        assert!(!h.ready());
        h.set_keys_pending(false);
        assert!(h.ready());
    }

    #[test]
    fn broker_is_lost_only_after_it_was_up() {
        let h = Health::new(true);
        assert!(!h.ready());
        assert!(!h.broker_lost(), "not known down at start-up");
        h.set_broker_up(true);
        assert!(h.ready());
        h.set_broker_up(false);
        assert!(h.broker_lost());
        h.set_broker_up(true);
        assert!(!h.broker_lost());
        h.set_shutting_down();
        assert!(!h.ready());
    }
}
