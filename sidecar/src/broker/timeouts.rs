//! How long the broker waits for Redis, defined once for every connection it makes (the
//! subscription links, the command connection, the sentinels, the cluster nodes, the Channels
//! shards).
//!
//! ```text
//! connect / command --COMMAND_TIMEOUT--> answer, or the link is lost (reconnect)
//! live link --PING every PING_EVERY--> a peer that vanished without closing the socket is found
//! ```

use std::time::Duration;

/// Longest wait for a connection or a command's answer.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A PING this often finds a peer that vanished without closing the socket.
pub const PING_EVERY: Duration = Duration::from_secs(5);
