//! The publisher: events at a fixed rate, spread round-robin over the groups, each stamped with
//! its step, its group's sequence number and its send time (see [`crate::clients::payload`]);
//! it counts what each group was sent, so loss is exact (see [`crate::seen`]).
//!
//! Events go to the admin `POST /publish/<group>` (sidecar `--broker memory` and the baseline)
//! or to Redis `PUBLISH taskstream:<group>` (sidecar `--broker redis`). Several workers, each
//! with its own connection, share the schedule so one round trip never caps the rate.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::Method;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clients::{group_name, payload};
use crate::http::Conn;

/// Where events are sent.
#[derive(Clone, Debug)]
pub enum Sink {
    Admin(SocketAddr),
    Redis(String),
    /// Redis with history: the sidecar's publish script (`EVAL`, docs/protocol.md), which
    /// stores the event in the group's stream and publishes it with its id.
    RedisHistory {
        url: String,
        size: usize,
        ttl_ms: u64,
    },
}

/// The one supported way to publish with history.
const PUBLISH_SCRIPT: &str = include_str!("../../sidecar/src/broker/publish.lua");

/// One paced burst of events.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub step: usize,
    /// Events per second (not deliveries).
    pub rate: f64,
    pub duration: Duration,
    /// Events go to groups `first_group..first_group+groups`, round-robin.
    pub groups: usize,
    pub pad: usize,
    pub workers: usize,
}

/// What the publisher managed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Published {
    pub events: u64,
    pub errors: u64,
    /// `PUBLISH` answered 0 receivers: the sidecar was not subscribed to the group right then
    /// (Redis only; points at the sidecar's subscription, not at a client).
    pub unheard: u64,
    pub secs: f64,
    /// Events published without error, per group index.
    #[serde(skip)]
    pub per_group: Vec<u64>,
}

impl Published {
    /// Deliveries the clients should see: each group's events times its members.
    pub fn expected(&self, members: impl Fn(usize) -> usize) -> u64 {
        self.per_group
            .iter()
            .enumerate()
            .map(|(k, &n)| n * members(k) as u64)
            .sum()
    }
}

/// Runs `schedule` to completion (bounded by its duration plus a grace for the last answers).
pub async fn run(sink: &Sink, schedule: &Schedule) -> Result<Published> {
    let total = (schedule.rate * schedule.duration.as_secs_f64())
        .round()
        .max(1.0) as u64;
    let workers = schedule.workers.max(1) as u64;
    let start = Instant::now();
    let mut set = JoinSet::new();
    let redis = match sink {
        Sink::Redis(url) | Sink::RedisHistory { url, .. } => Some(
            redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await
                .context("publisher: connect to redis")?,
        ),
        Sink::Admin(_) => None,
    };
    let script = redis::Script::new(PUBLISH_SCRIPT);
    for w in 0..workers {
        let sink = sink.clone();
        let s = schedule.clone();
        let mut redis = redis.clone();
        let script = script.clone();
        let history = match &sink {
            Sink::RedisHistory { size, ttl_ms, .. } => Some((*size, *ttl_ms)),
            _ => None,
        };
        set.spawn(async move {
            let mut admin = match &sink {
                Sink::Admin(addr) => Conn::open(*addr).await.ok(),
                Sink::Redis(_) | Sink::RedisHistory { .. } => None,
            };
            let groups = s.groups.max(1);
            let mut out = Published {
                per_group: vec![0; groups],
                ..Published::default()
            };
            let mut i = w;
            while i < total {
                let due = start + Duration::from_secs_f64(i as f64 / s.rate);
                tokio::time::sleep_until(due).await;
                let k = (i as usize) % groups;
                let group = group_name(k);
                let body = payload(s.step, i / groups as u64, &group, s.pad);
                let ok = match (&mut admin, &mut redis) {
                    (Some(c), _) => c
                        .send(
                            Method::POST,
                            &format!("/publish/{group}"),
                            Bytes::from(body),
                        )
                        .await
                        .is_ok_and(|(st, _)| st == 200),
                    (None, Some(r)) if history.is_some() => {
                        let (size, ttl_ms) = history.unwrap_or_default();
                        script
                            .key(format!("taskstream:{group}"))
                            .arg(body)
                            .arg(size)
                            .arg(ttl_ms)
                            .invoke_async::<String>(r)
                            .await
                            .is_ok()
                    }
                    (None, Some(r)) => match redis::cmd("PUBLISH")
                        .arg(format!("taskstream:{group}"))
                        .arg(body)
                        .query_async::<i64>(r)
                        .await
                    {
                        Ok(receivers) => {
                            out.unheard += u64::from(receivers == 0);
                            true
                        }
                        Err(_) => false,
                    },
                    (None, None) => false,
                };
                if ok {
                    out.events += 1;
                    out.per_group[k] += 1;
                } else {
                    out.errors += 1;
                }
                i += workers;
            }
            out
        });
    }
    let mut sum = Published {
        per_group: vec![0; schedule.groups.max(1)],
        ..Published::default()
    };
    let bound = schedule.duration + Duration::from_secs(15);
    let _ = tokio::time::timeout(bound, async {
        while let Some(r) = set.join_next().await {
            if let Ok(p) = r {
                sum.events += p.events;
                sum.errors += p.errors;
                sum.unheard += p.unheard;
                for (total, n) in sum.per_group.iter_mut().zip(&p.per_group) {
                    *total += n;
                }
            }
        }
    })
    .await;
    set.abort_all();
    sum.secs = start.elapsed().as_secs_f64();
    Ok(sum)
}
