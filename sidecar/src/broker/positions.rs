//! Positions at connect: the newest stored event id of each group of a connection, read in one
//! round trip, so that a `taskstream.v1` client learns where it stands in groups it named no
//! `last_id` for (`crate::resume::read_positions`).
//!
//! ```text
//! handshake (subscribed, before the 101) --> Broker::positions([G1, G2, ...])
//!     memory:          the ring's newest id per group, each under the ring's lock
//!     single/Sentinel: EVALSHA positions.lua KEYS=<prefix>G1 <prefix>G2 ...   (one call)
//!     Cluster:         one EVALSHA per slot, all sent at once (pipelined per node): one round trip
//!                  --> [id or 0 per group]
//! ```
//!
//! Each group's read is atomic with its publishes (the script runs whole; the ring publishes
//! under its lock), so an event is either at or before the id read or published after it.

use std::sync::LazyLock;

use futures_util::future::try_join_all;
use redis::cluster_routing::Slot;

use super::commands::Commands;
use super::id::StreamId;
use super::redis::RedisBroker;

/// The script that reads the newest id of each group (docs/protocol.md).
pub const POSITIONS_SCRIPT: &str = include_str!("positions.lua");

/// Sent once per connection and then run by its SHA.
static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(POSITIONS_SCRIPT));

/// Reads the newest stored id of each of `groups` from Redis in one round trip (per Cluster
/// node).
pub async fn read(redis: &RedisBroker, groups: &[&str]) -> Result<Vec<StreamId>, String> {
    let failed = |e: redis::RedisError| format!("redis {}: read positions: {e}", redis.display);
    let keys: Vec<String> = groups.iter().map(|g| redis.wire.channel(g)).collect();
    let mut conn = redis.commands().await.map_err(failed)?;
    let ids: Vec<String> = match &conn {
        Commands::Cluster(cluster) => {
            // A script's keys must share a slot: one call per slot, all in flight at once, so
            // each node is written to back to back and answers in one round trip.
            // (A connection has few groups: a linear search beats a map.)
            let mut slots: Vec<(Slot, Vec<usize>)> = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                let slot = Slot::for_key(key);
                match slots.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, idx)) => idx.push(i),
                    None => slots.push((slot, vec![i])),
                }
            }
            let calls = slots.iter().map(|(_, idx)| {
                let mut conn = cluster.clone();
                let mut call = SCRIPT.prepare_invoke();
                for &i in idx {
                    call.key(&keys[i]);
                }
                async move { call.invoke_async::<Vec<String>>(&mut conn).await }
            });
            let answers = try_join_all(calls).await.map_err(failed)?;
            let mut ids = vec![String::new(); keys.len()];
            for ((_, idx), answer) in slots.iter().zip(answers) {
                if answer.len() != idx.len() {
                    return Err(format!(
                        "redis {}: read positions: {} ids for {} groups",
                        redis.display,
                        answer.len(),
                        idx.len()
                    ));
                }
                for (&i, id) in idx.iter().zip(answer) {
                    ids[i] = id;
                }
            }
            ids
        }
        _ => {
            let mut call = SCRIPT.prepare_invoke();
            for key in &keys {
                call.key(key);
            }
            call.invoke_async(&mut conn).await.map_err(failed)?
        }
    };
    if ids.len() != groups.len() {
        return Err(format!(
            "redis {}: read positions: {} ids for {} groups",
            redis.display,
            ids.len(),
            groups.len()
        ));
    }
    ids.iter()
        .map(|id| match id.as_str() {
            "0" => Ok(StreamId::ZERO),
            id => StreamId::parse(id).ok_or_else(|| {
                format!(
                    "redis {}: read positions: {id:?} is not a stream id",
                    redis.display
                )
            }),
        })
        .collect()
}
