//! Capped exponential backoff with jitter, shared by every reconnecting loop (the Redis pub/sub
//! source and the Channels core layer), so they all retry the same way.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

const MIN: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(5);

/// Retry delays of 100 ms doubling to 5 s, each slept with jitter in [d/2, d].
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: MIN }
    }
}

impl Backoff {
    /// The delay the next [`Backoff::wait`] sleeps (before jitter), for logs.
    pub fn current(&self) -> Duration {
        self.next
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.next = MIN;
    }

    /// Sleeps the jittered delay, then doubles it (capped). `false` when `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let d = jitter(self.next);
        self.next = (self.next * 2).min(MAX);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// Full jitter in [d/2, d].
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms / 2 + fastrand::u64(0..=ms / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j <= Duration::from_millis(1000));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn doubles_to_the_cap_and_resets() {
        let stop = CancellationToken::new();
        let mut b = Backoff::default();
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(b.current());
            assert!(b.wait(&stop).await);
        }
        assert_eq!(seen[..4], [MIN, MIN * 2, MIN * 4, MIN * 8]);
        assert_eq!(b.current(), MAX);
        b.reset();
        assert_eq!(b.current(), MIN);
        stop.cancel();
        assert!(!b.wait(&stop).await, "shutdown ends the wait");
    }
}
