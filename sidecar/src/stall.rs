//! A client socket that remembers whether our writes to it are stalled.
//!
//! ```text
//! session --frames--> tungstenite (bounded write buffer) --> [Stall] --> TCP --> browser
//!                                                              |
//!                                       poll_write Pending -> stalled = true
//!                                       poll_write Ready   -> stalled = false
//! ```
//!
//! tungstenite answers every client ping with a pong on its own. A client that sends pings and
//! never reads would make those pongs pile up; the write buffer is bounded, so tungstenite then
//! keeps only the newest pong, and the session uses [`Stall::is_stalled`] to count what the client
//! is owed and close it once that passes a bound, instead of serving it forever. The flag lives
//! in the socket itself (the session reads it through the WebSocket's `get_ref`): no shared
//! allocation per client.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wraps a client's byte stream and remembers whether the last write to it could not go out
/// (its receive window is full).
pub struct Stall<S> {
    inner: S,
    stalled: bool,
}

impl<S> Stall<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            stalled: false,
        }
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stall<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stall<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.stalled = r.is_pending();
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.stalled = r.is_pending();
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_full_peer_marks_the_stream_stalled_and_progress_clears_it() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Stall::new(a);
        a.write_all(&[0; 64]).await.unwrap();
        assert!(!a.is_stalled());
        // The pipe is full: the next write cannot complete.
        assert!(a.write(&[1; 8]).now_or_never().is_none());
        assert!(a.is_stalled());
        // The peer reads: writing goes through again.
        let mut sink = vec![0; 64];
        tokio::io::AsyncReadExt::read_exact(&mut b, &mut sink)
            .await
            .unwrap();
        a.write_all(&[2; 8]).await.unwrap();
        assert!(!a.is_stalled());
    }
}
