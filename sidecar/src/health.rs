//! Liveness and readiness state, shared by the admin server, the broker and shutdown.

use std::sync::atomic::{AtomicBool, Ordering};

/// `/readyz` is 200 only while the broker is connected and the sidecar is not shutting down.
#[derive(Debug, Default)]
pub struct Health {
    broker_up: AtomicBool,
    shutting_down: AtomicBool,
}

impl Health {
    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Release);
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
