//! Shared harness for cross-component tests: real processes and servers on free loopback ports,
//! cleaned up on drop even when a test fails.
//!
//! - [`redis_server::RedisServer`]: a `redis-server` child process that can be killed and restarted.
//! - [`sidecar`]: the sidecar, in-process (from the library) or as the real binary.
//! - [`upstream::App`]: a real HTTP app (echo, status codes, streaming, forward auth, WebSocket echo).
//! - [`ws`]: WebSocket client helpers with bounded waits.
//! - [`python`]: the project's `.venv` and a Django Channels `group_send` driver.
//! - [`example`]: examples/django (its venv, runserver, a Celery worker, a session login).
//! - [`browser`]: headless Chromium over the DevTools protocol.

pub mod browser;
pub mod example;
pub mod python;
pub mod redis_server;
pub mod sidecar;
pub mod upstream;
pub mod ws;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// The ports [`free_port`] hands out: below the kernel's ephemeral range (32768-60999 by default,
/// `net.ipv4.ip_local_port_range`), so no outgoing connection is ever given one as its local
/// port. A test that stops a server and starts it again on the same port (a sidecar restart
/// with a browser retrying against it) cannot find the port taken meanwhile, e.g. by a
/// client's reconnect that the kernel connected to itself. `+ 10000` (a Redis Cluster node's bus
/// port) stays below the ephemeral range too, and is never handed out.
const PORTS: std::ops::Range<u16> = 15000..22768;

/// A free loopback port, distinct from every other one this process was given, that will not be
/// taken by an outgoing connection while its server is down (see [`PORTS`]).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Spread over the range by process id, so test binaries run one after another (or a stray
    // process from an earlier run) do not start from the same port.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(PORTS.end - PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let bindable = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = PORTS.start + offset as u16;
        if bindable(port) && bindable(port + 10000) {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS:?} (with its +10000 bus port free too)")
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
