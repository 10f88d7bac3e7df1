//! Shared harness for cross-component tests: real processes and servers on free loopback ports,
//! cleaned up on drop even when a test fails.
//!
//! - [`redis_server::RedisServer`]: a `redis-server` child process that can be killed and restarted.
//! - [`sidecar`]: the sidecar, in-process (from the library) or as the real binary.
//! - [`upstream::App`]: a real HTTP app (echo, status codes, streaming, forward auth, WebSocket echo).
//! - [`ws`]: WebSocket client helpers with bounded waits.
//! - [`python`]: the project's `.venv` and a Django Channels `group_send` driver.
//! - [`browser`]: headless Chromium over the DevTools protocol.

pub mod browser;
pub mod python;
pub mod redis_server;
pub mod sidecar;
pub mod upstream;
pub mod ws;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// A currently free loopback port (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port on 127.0.0.1")
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `f` until it returns `Some`, every 20 ms, failing after [`WAIT`]. For state that offers
/// no event to await (another process's state, e.g. Redis `PUBSUB CHANNELS`).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
