//! Liveness and readiness state, shared by the admin server, the broker and shutdown.

use std::sync::atomic::{AtomicBool, Ordering};

/// `/readyz` is 200 only while the broker is connected and the sidecar is not shutting down.
#[derive(Debug, Default)]
pub struct Health {
    broker_up: AtomicBool,
    broker_ever_up: AtomicBool,
    shutting_down: AtomicBool,
}

impl Health {
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

    pub fn ready(&self) -> bool {
        self.broker_up() && !self.shutting_down()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_is_lost_only_after_it_was_up() {
        let h = Health::default();
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
