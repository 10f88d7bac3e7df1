//! A session's end of the hub's beat ([`crate::hub::beat`]).

use tokio::sync::watch;

use crate::hub::Beat;

/// A session's end of its beat.
pub(super) struct Heart {
    pub(super) rx: watch::Receiver<Beat>,
    /// A beat came in while the session waited on something else (see [`Heart::shutdown`]).
    pub(super) pending: bool,
}

impl Heart {
    /// Resolves once the server shuts down. Any other beat meanwhile (a ping tick, the link)
    /// is noted as pending for the event loop, which acts on it once the wait is over.
    pub(super) async fn shutdown(&mut self) {
        loop {
            if self.rx.changed().await.is_err() {
                return; // the hub is gone, so is the server
            }
            self.pending = true;
            if self.rx.borrow().shutdown {
                return;
            }
        }
    }
}
