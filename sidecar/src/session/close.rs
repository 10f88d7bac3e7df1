//! How a session ends: the close frame, bounded in time, for each reason.

use futures_util::SinkExt;

use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, info};

use super::{CLOSE_TIMEOUT, Peer, Session, Step};
use crate::metrics::CloseReason;

/// Why a live write ended the session.
pub(super) enum Ended {
    Lagged,
    Shutdown,
    WriteFailed(WsError),
}

impl Session {
    /// Closes the client for why a live write ended.
    pub(super) async fn end(&mut self, why: Ended) -> Step {
        let peer = self.peer;
        let (code, text, reason) = match why {
            Ended::WriteFailed(WsError::WriteBufferFull(_)) => {
                debug!(%peer, "client does not read; write buffer full");
                (
                    CloseCode::Policy,
                    "not reading: unsent data over the limit",
                    CloseReason::Unread,
                )
            }
            Ended::WriteFailed(e) => {
                debug!(%peer, error = %e, "write to client failed");
                return Err(CloseReason::Gone);
            }
            // The queue overflowed (or lagged while we wrote): events were dropped.
            Ended::Lagged => (
                CloseCode::Again,
                "too slow: events were dropped, reconnect",
                CloseReason::SlowClient,
            ),
            Ended::Shutdown if self.membership.queue.is_lagged() => (
                CloseCode::Again,
                "too slow: events were dropped, reconnect",
                CloseReason::SlowClient,
            ),
            Ended::Shutdown => (
                CloseCode::Away,
                "server shutting down, reconnect",
                CloseReason::Shutdown,
            ),
        };
        close(&mut self.ws, code, text).await;
        Err(reason)
    }
}

/// Ends the session when catching up failed: the client went away, or it did not take its
/// missed events within a ping interval.
pub(super) async fn caught_up_or_close<S>(
    sink: &mut S,
    outcome: Result<Result<(), WsError>, tokio::time::error::Elapsed>,
    peer: Peer,
) -> Step
where
    S: futures_util::Sink<Message> + Unpin,
{
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "client went away while catching up");
            close(sink, CloseCode::Away, "reconnect").await;
            Err(CloseReason::Gone)
        }
        Err(_) => {
            info!(%peer, "client did not take its missed events within a ping interval; closing");
            close(sink, CloseCode::Again, "too slow catching up, reconnect").await;
            Err(CloseReason::SlowClient)
        }
    }
}

/// Sends a close frame, bounded in time: a client that does not read must not hold us.
pub(super) async fn close<S>(sink: &mut S, code: CloseCode, reason: &'static str)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = sink.send(frame).await;
        let _ = sink.close().await;
    })
    .await;
}
