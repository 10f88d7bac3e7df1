//! Reconnect storm: N clients are dropped at once by killing the server, which is started again
//! on the same ports at once; clients come back after a random delay up to the jitter. Reported:
//! time from the kill until every client is connected again, and until every client has
//! received an event on its new connection (probes to every group every 100 ms once all are in).

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use super::{Ctx, r3};
use crate::clients::{Fleet, Plan, STEPS, now_ns};
use crate::procs::{Feed, Kind, Server};
use crate::publish::{self, Schedule, Sink};

pub async fn run(
    ctx: &Ctx,
    kind: Kind,
    conns: usize,
    groups: usize,
    jitter: Duration,
) -> Result<Value> {
    let mut server = Server::start(kind, &ctx.bins, Feed::Admin, None).await?;
    let (fleet, opened) = Fleet::open(Plan {
        kind,
        server: server.public,
        conns,
        groups,
        concurrency: ctx.concurrency,
        reconnect_jitter: Some(jitter),
        deadline: ctx.deadline,
    })
    .await;
    let stats = fleet.stats.clone();
    let t0 = now_ns();
    stats.epoch.fetch_add(1, Ordering::Relaxed);
    server.restart().await?;
    let restarted_ms = (now_ns() - t0) as f64 / 1e6;
    let bound = tokio::time::Instant::now() + Duration::from_secs(60).min(ctx.deadline);
    let mut connected_ms = None;
    let mut receiving = false;
    let mut probes = 0usize;
    let sink = Sink::Admin(server.admin);
    while tokio::time::Instant::now() < bound {
        let open = stats.open.load(Ordering::Relaxed);
        if connected_ms.is_none() && open >= opened.open {
            connected_ms = Some((now_ns() - t0) as f64 / 1e6);
        }
        if connected_ms.is_some() {
            if stats.receiving_again.load(Ordering::Relaxed) >= opened.open {
                receiving = true;
                break;
            }
            probes += 1;
            let schedule = Schedule {
                step: (probes % (STEPS - 1)) + 1,
                rate: groups as f64 * 20.0,
                duration: Duration::from_millis(50),
                groups,
                pad: 0,
                workers: 4,
            };
            publish::run(&sink, &schedule).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let back_ms = receiving.then(|| (stats.last_back_ns.load(Ordering::Relaxed) - t0) as f64 / 1e6);
    let failures = stats.failures.load(Ordering::Relaxed);
    fleet.stop().await;
    Ok(json!({
        "conns": conns,
        "open_before": opened.open,
        "jitter_ms": jitter.as_millis() as u64,
        "restart_ms": r3(restarted_ms),
        "all_connected_ms": connected_ms.map(r3),
        "all_receiving_ms": back_ms.map(r3),
        "failed_attempts": failures,
        "probe_rounds": probes,
    }))
}
