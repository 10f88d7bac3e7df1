//! A session's end of the hub's beat ([`crate::hub::beat`]).

use tokio::sync::watch;

use crate::hub::Beat;

/// A session's end of its beat.
pub(super) struct Heart {
    pub(super) rx: watch::Receiver<Beat>,
}

impl Heart {
    /// The beat's tick now (its low 32 bits), whether or not the session has acted on it.
    pub(super) fn now_tick(&self) -> u32 {
        self.rx.borrow().tick as u32
    }

    /// Resolves once the server shuts down. Any other beat meanwhile (a ping tick, the link)
    /// is noted in `pending` for the event loop, which acts on it once the wait is over.
    pub(super) async fn shutdown(&mut self, pending: &mut bool) {
        loop {
            if self.rx.changed().await.is_err() {
                return; // the hub is gone, so is the server
            }
            *pending = true;
            if self.rx.borrow().shutdown {
                return;
            }
        }
    }
}
