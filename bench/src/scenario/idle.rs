//! Idle: resident memory of the server per held connection (RSS delta / N), no traffic.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use super::{Ctx, Target, r3};
use crate::procs::Kind;
use crate::procstat;

/// Clients per group, as in the fan-out scenario.
const PER_GROUP: usize = 10;
/// Time for the server's allocator and the kernel's counters to settle.
const SETTLE: Duration = Duration::from_millis(1500);

/// `history_size` > 0: the sidecar runs with `--history-size` (the baseline has no history).
pub async fn run(ctx: &Ctx, kind: Kind, conns: usize, history_size: usize) -> Result<Value> {
    let flags = match history_size {
        0 => Vec::new(),
        h => vec!["--history-size".to_owned(), h.to_string()],
    };
    let target = Target::start_with(ctx, kind, flags).await?;
    tokio::time::sleep(SETTLE / 3).await;
    let before = target.server.usage();
    let own_before = procstat::own();
    let (fleet, opened) = target.fleet(ctx, conns, (conns / PER_GROUP).max(1)).await;
    tokio::time::sleep(SETTLE).await;
    let after = target.server.usage();
    let own_after = procstat::own();
    let n = opened.open.max(1) as f64;
    let per_conn = after.rss.saturating_sub(before.rss) as f64 / n;
    fleet.stop().await;
    Ok(json!({
        "conns": conns,
        "sidecar_history_size": history_size,
        "open": opened.open,
        "failures": opened.failures,
        "connect_secs": r3(opened.secs),
        "rss_before_bytes": before.rss,
        "rss_after_bytes": after.rss,
        "bytes_per_conn": per_conn.round(),
        "tool_bytes_per_conn": (own_after.rss.saturating_sub(own_before.rss) as f64 / n).round(),
        "server_cpu_secs_connecting": r3(after.cpu.saturating_sub(before.cpu).as_secs_f64()),
    }))
}
