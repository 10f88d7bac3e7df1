//! Gives the operating system back the memory a burst of connections left free.
//!
//! A WebSocket handshake needs tens of KB for a moment (hyper's buffers, the request, the
//! upgrade) and a few hundred bytes for as long as the client stays. After a burst of
//! handshakes (a deploy, a reconnect storm), glibc's allocator keeps the freed pages between
//! the ones the sessions still use: the process stays resident at the burst's peak (about 2 MB
//! for 64 handshakes in flight, 400 B per connection at 5k). The same happens when thousands of
//! clients leave at once. `malloc_trim(0)` hands those pages back.
//!
//! ```text
//! connection or session ends --churned()--> [sync_channel(1)] --> thread "taskstream-trim":
//!     waits for the first churn, then until none came for QUIET, then trims once
//! ```
//!
//! The trim runs on its own thread because it walks and locks every arena (about 0.2 ms at 19k
//! clients, more with a larger heap): no runtime worker stalls, and while a burst goes on nothing is trimmed. Signals
//! are dropped when one is already waiting, so the channel holds at most one and costs a
//! `try_send` per ended connection. Elsewhere than glibc (musl, macOS) the allocator returns
//! memory itself or has no such call, and nothing runs.

use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use tracing::debug;

/// How long connections must have stopped ending before the trim: a burst is over.
const QUIET: Duration = Duration::from_secs(1);

/// Tells the trimmer that a connection or session ended. Starts it on first use.
pub fn churned() {
    static TRIMMER: OnceLock<Option<SyncSender<()>>> = OnceLock::new();
    let tx = TRIMMER.get_or_init(|| {
        if !SUPPORTED {
            return None;
        }
        let (tx, rx) = sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("taskstream-trim".into())
            .stack_size(64 * 1024)
            .spawn(move || after_bursts(&rx, QUIET, release));
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                debug!(error = %e, "could not start the allocator's trim thread; freed memory stays with the allocator");
                None
            }
        }
    });
    if let Some(tx) = tx {
        // Full: a signal already waits, which says the same.
        let _ = tx.try_send(());
    }
}

/// Calls `trim` once after each burst of signals on `rx`: when none came for `quiet`. Returns
/// when every sender is gone.
fn after_bursts(rx: &Receiver<()>, quiet: Duration, mut trim: impl FnMut() -> bool) {
    while rx.recv().is_ok() {
        loop {
            match rx.recv_timeout(quiet) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let began = Instant::now();
        let released = trim();
        debug!(
            released,
            took_us = began.elapsed().as_micros() as u64,
            "gave the allocator's free pages back after a burst of connections"
        );
    }
}

const SUPPORTED: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// `malloc_trim(0)`: every arena's free pages back to the system. True if any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release() -> bool {
    // SAFETY: malloc_trim takes no pointer and touches only glibc's own free lists, under the
    // arenas' locks; any thread may call it at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;
    use std::time::Duration;

    use super::*;

    /// Signals close together make one trim, after the last of them; the next burst another.
    #[test]
    fn one_trim_per_burst_after_the_quiet() {
        let quiet = Duration::from_millis(200);
        let (tx, rx) = sync_channel(1);
        let (trimmed_tx, trimmed) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            after_bursts(&rx, quiet, || {
                trimmed_tx.send(Instant::now()).unwrap();
                true
            })
        });
        let mut last = Instant::now();
        for _ in 0..10 {
            tx.send(()).unwrap();
            last = Instant::now();
            std::thread::sleep(quiet / 10);
        }
        let at = trimmed.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(at >= last + quiet, "trimmed during the burst");
        assert!(
            trimmed.recv_timeout(quiet * 2).is_err(),
            "a burst made more than one trim"
        );
        tx.send(()).unwrap();
        trimmed.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(tx);
        worker.join().unwrap();
    }

    /// Pages freed between live allocations come back to the system.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_pages_between_live_allocations_are_released() {
        // 8 MB in 4 KB blocks (below the mmap threshold, so from the heap), each followed by
        // a small block that stays: freeing the large ones leaves holes glibc keeps.
        let mut large = Vec::new();
        let mut small = Vec::new();
        for i in 0..2048u32 {
            large.push(vec![i as u8; 4096]);
            small.push(Box::new(i));
        }
        drop(large);
        assert!(
            release(),
            "malloc_trim released nothing after 8 MB was freed"
        );
        assert_eq!(
            small.iter().map(|b| **b as u64).sum::<u64>(),
            2047 * 2048 / 2
        );
    }
}
