//! Received messages waiting for the hub. redis-rs's reader hands each message here (cheap,
//! never blocking), and the subscription loop delivers them at its own pace, yielding to the
//! sessions that write to clients. At most [`LIMIT`] bytes wait: past that the loop drops the
//! connection, and after the resubscribe `taskstream.v1` sessions catch up from history. A
//! sidecar that cannot keep up with Redis never grows without bound, and its clients are not
//! closed as slow because the sidecar itself fell behind.
//!
//! ```text
//! redis-rs reader --message(channel, payload)--> [queue, <= LIMIT bytes] --next()--> loop -> hub
//!                 --closed()-------------------> Lost(LinkError::Closed)
//!                 past LIMIT ------------------> Lost(LinkError::FellBehind), later messages dropped
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::error::LinkError;

/// How many bytes of received events may wait for the hub (Redis's own default hard limit for
/// a pub/sub client's output buffer).
pub const LIMIT: usize = 32 << 20;

/// Counted per message besides its bytes: the queue node and the two buffers' headers.
const OVERHEAD: usize = 64;

/// What the loop gets next.
#[derive(Debug)]
pub enum Item {
    Message {
        channel: String,
        payload: Vec<u8>,
    },
    /// The subscription is gone (closed, or fell behind): reconnect.
    Lost(LinkError),
}

enum Entry {
    Message {
        channel: String,
        payload: Vec<u8>,
        counted: usize,
    },
    Lost(LinkError),
}

/// A queue holding at most `limit` bytes of messages.
pub fn inbox(limit: usize) -> (Sender, Receiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let sender = Sender {
        tx,
        queued: queued.clone(),
        full: Arc::new(AtomicBool::new(false)),
        limit,
    };
    (sender, Receiver { rx, queued })
}

/// The reader's end: never blocks.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::UnboundedSender<Entry>,
    queued: Arc<AtomicUsize>,
    /// Past the limit once: everything after is dropped (the loop is reconnecting).
    full: Arc<AtomicBool>,
    limit: usize,
}

impl Sender {
    pub fn message(&self, channel: String, payload: Vec<u8>) {
        if self.full.load(Ordering::Relaxed) {
            return;
        }
        let counted = channel.len() + payload.len() + OVERHEAD;
        if self.queued.fetch_add(counted, Ordering::AcqRel) + counted > self.limit {
            self.full.store(true, Ordering::Relaxed);
            let _ = self.tx.send(Entry::Lost(LinkError::FellBehind {
                limit_mib: self.limit >> 20,
            }));
            return;
        }
        let _ = self.tx.send(Entry::Message {
            channel,
            payload,
            counted,
        });
    }

    /// The connection closed: the loop sees it after the messages before it.
    pub fn closed(&self) {
        let _ = self.tx.send(Entry::Lost(LinkError::Closed));
    }
}

/// The loop's end.
pub struct Receiver {
    rx: mpsc::UnboundedReceiver<Entry>,
    queued: Arc<AtomicUsize>,
}

impl Receiver {
    pub async fn next(&mut self) -> Item {
        let entry = self.rx.recv().await;
        self.item(entry)
    }

    /// The next item if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<Item> {
        match self.rx.try_recv() {
            Ok(entry) => Some(self.item(Some(entry))),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(self.item(None)),
        }
    }

    fn item(&self, entry: Option<Entry>) -> Item {
        match entry {
            Some(Entry::Message {
                channel,
                payload,
                counted,
            }) => {
                self.queued.fetch_sub(counted, Ordering::AcqRel);
                Item::Message { channel, payload }
            }
            Some(Entry::Lost(why)) => Item::Lost(why),
            // Every sender is gone with the connection.
            None => Item::Lost(LinkError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message `channel`, `payload`, or a panic naming what came instead.
    fn assert_msg(item: Item, channel: &str, payload: &[u8]) {
        match item {
            Item::Message {
                channel: c,
                payload: p,
            } => {
                assert_eq!((c.as_str(), p.as_slice()), (channel, payload));
            }
            other => panic!("expected a message on {channel}, got {other:?}"),
        }
    }

    fn assert_closed(item: Item) {
        assert!(
            matches!(item, Item::Lost(LinkError::Closed)),
            "expected Lost(Closed), got {item:?}"
        );
    }

    #[tokio::test]
    async fn messages_come_out_in_order_and_free_their_bytes() {
        // Room for two 100-byte messages at a time, not three.
        let (tx, mut rx) = inbox(2 * (100 + 1 + OVERHEAD));
        for round in 0..10u8 {
            tx.message("a".into(), vec![round; 100]);
            tx.message("b".into(), vec![round; 100]);
            assert_msg(rx.next().await, "a", &[round; 100]);
            assert_msg(rx.next().await, "b", &[round; 100]);
        }
    }

    #[tokio::test]
    async fn past_the_limit_the_loop_is_told_and_later_messages_are_dropped() {
        let (tx, mut rx) = inbox(2 * (100 + 1 + OVERHEAD));
        tx.message("a".into(), vec![1; 100]);
        tx.message("a".into(), vec![2; 100]);
        tx.message("a".into(), vec![3; 100]);
        // Room again, but the connection is being dropped: nothing more is queued.
        assert_msg(rx.next().await, "a", &[1; 100]);
        tx.message("a".into(), vec![4; 1]);
        assert_msg(rx.next().await, "a", &[2; 100]);
        match rx.next().await {
            Item::Lost(LinkError::FellBehind { limit_mib }) => assert_eq!(limit_mib, 0),
            other => panic!("expected Lost(FellBehind), got {other:?}"),
        }
        drop(tx);
        assert_closed(rx.next().await);
    }

    #[tokio::test]
    async fn try_next_takes_what_waits_and_frees_its_bytes() {
        let (tx, mut rx) = inbox(2 * (100 + 1 + OVERHEAD));
        assert!(rx.try_next().is_none(), "nothing waits yet");
        for round in 0..10u8 {
            tx.message("a".into(), vec![round; 100]);
            tx.message("b".into(), vec![round; 100]);
            assert_msg(rx.try_next().expect("a waits"), "a", &[round; 100]);
            assert_msg(rx.try_next().expect("b waits"), "b", &[round; 100]);
            assert!(rx.try_next().is_none());
        }
        drop(tx);
        assert_closed(rx.try_next().expect("the end is an item"));
    }

    #[tokio::test]
    async fn a_close_comes_after_the_messages_before_it() {
        let (tx, mut rx) = inbox(LIMIT);
        tx.message("a".into(), b"x".to_vec());
        tx.closed();
        assert_msg(rx.next().await, "a", b"x");
        assert_closed(rx.next().await);
    }
}
