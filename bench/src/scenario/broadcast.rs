//! Broadcast: one event to one group of N members; the time until the last client has it
//! (publish to last delivery), repeated, median reported.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use super::{Ctx, Target, median, r3, wait_until};
use crate::clients::STEPS;
use crate::procs::Kind;
use crate::publish::{self, Schedule};

pub async fn run(ctx: &Ctx, kind: Kind, conns: usize, repeats: usize) -> Result<Value> {
    let target = Target::start(ctx, kind).await?;
    let (fleet, opened) = target.fleet(ctx, conns, 1).await;
    let stats = fleet.stats.clone();
    let mut last_ms = Vec::new();
    let mut incomplete = 0;
    for r in 0..repeats.min(STEPS - 1) {
        let step = r + 1;
        let schedule = Schedule {
            step,
            rate: 1.0,
            duration: Duration::from_secs(1),
            groups: 1,
            pad: 40,
            workers: 1,
        };
        publish::run(&target.sink, &schedule).await?;
        let hist = &stats.steps[step].hist;
        if !wait_until(Duration::from_secs(5), || {
            hist.count() >= opened.open as u64
        })
        .await
        {
            incomplete += 1;
        }
        last_ms.push(hist.max() as f64 / 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.stop().await;
    Ok(json!({
        "conns": conns,
        "open": opened.open,
        "incomplete": incomplete,
        "last_client_ms_median": r3(median(last_ms.clone())),
        "last_client_ms": last_ms,
    }))
}
