//! How long the broker waits for Redis, defined once for every connection it makes (the
//! subscription links, the command connection, the sentinels, the cluster nodes, the Channels
//! shards).
//!
//! ```text
//! connect / command --COMMAND_TIMEOUT--> answer, or the link is lost (reconnect)
//! live link --PING every PING_EVERY--> a peer that vanished without closing the socket is found
//! idempotent read --fails--> retried() after 50, 200, 500 ms (the command connection is re-made)
//! ```

use std::time::Duration;

/// Longest wait for a connection or a command's answer.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A PING this often finds a peer that vanished without closing the socket.
pub const PING_EVERY: Duration = Duration::from_secs(5);

/// Runs an idempotent Redis read, retried briefly (50, 200, 500 ms) while the command
/// connection is being re-made (e.g. just after a Redis restart), before giving up.
pub(crate) async fn retried<T, E, F, Fut>(mut read: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = read().await;
    for pause_ms in [50, 200, 500] {
        if attempt.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
        attempt = read().await;
    }
    attempt
}
