//! Redis reads shared between the clients of a resume storm: thousands of clients back at
//! once ask the same questions, so concurrent questions go to Redis once ([`super::coalesce`]).
//!
//! ```text
//! resume G after <id> --+                                        +--> view(<id>) per client
//! resume G after <id'> -+--> history[G]: one read.lua after min --+    (its own tail, or its own
//! resume G after <id''>-+    (those pending when it starts)       |     read when cut short)
//!                                                                 +--> Arc<Read> shared
//! positions [A, B] -----+
//! positions [C] --------+--> positions: one positions.lua per <= 512 distinct groups,
//! positions [A, D] -----+    every call of the batch in flight at once --> each its own ids
//! ```
//!
//! A batch is what was pending when its read started, so every read is after each of its
//! requests' subscriptions: nothing published in between is missed. Resumes from id 0 (the
//! newest events) and from a real id read differently, so they are batched apart. On a Redis
//! Cluster the positions of a batch would span slots (a script's keys must share one), so
//! there each connection keeps its own call (`Broker::positions`); history reads are one key
//! each and are shared everywhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use tokio::sync::{Semaphore, oneshot};

use super::coalesce::{Coalesce, Waiter};
use super::history::{self, HistoryConfig, Snapshot};
use super::id::StreamId;
use super::positions;
use super::redis::RedisBroker;
use super::timeouts::retried;
use crate::metrics::{Metrics, ReadKind};

/// Groups per positions script call: a storm's batch runs as several calls side by side, so
/// no single call keeps Redis busy for long.
const POSITIONS_PER_CALL: usize = 512;

/// What a read answers once the read limit is closed (the sidecar is shutting down).
pub const READS_CLOSED: &str = "history reads are closed (shutting down)";

/// One history read shared by the clients of a group that were waiting when it started.
pub struct Read {
    pub snapshot: Snapshot,
    /// Read after this id (the smallest of the batch) ...
    pub from: StreamId,
    /// ... at most this many entries.
    pub count: usize,
}

/// `(group, from id 0)`: resumes from 0 read the newest events, the others those after an id.
type HistoryKey = (Box<str>, bool);
type HistoryAnswer = Result<Arc<Read>, String>;
type PositionsAnswer = Result<Vec<StreamId>, String>;

/// The shared reads of one Redis broker with history on.
pub struct SharedReads {
    history: Arc<Coalesce<HistoryKey, StreamId, HistoryAnswer>>,
    /// `None` on a Cluster (see the module header).
    positions: Option<Arc<Coalesce<(), Vec<String>, PositionsAnswer>>>,
}

impl SharedReads {
    pub fn new(
        redis: Arc<RedisBroker>,
        config: HistoryConfig,
        permits: Arc<Semaphore>,
        metrics: Metrics,
    ) -> Self {
        let history = {
            let (redis, permits, metrics) = (redis.clone(), permits.clone(), metrics.clone());
            Coalesce::new(Box::new(move |(group, _), batch| {
                let (redis, permits, metrics) = (redis.clone(), permits.clone(), metrics.clone());
                Box::pin(read_history(redis, permits, metrics, config, group, batch))
            }))
        };
        let positions = (!redis.is_cluster()).then(|| {
            Coalesce::new(Box::new(move |(), batch| {
                let (redis, permits, metrics) = (redis.clone(), permits.clone(), metrics.clone());
                Box::pin(read_positions(redis, permits, metrics, batch))
            }))
        });
        Self { history, positions }
    }

    /// The next shared read of `group` for a client resuming after `last`.
    pub fn history(&self, group: &str, last: StreamId) -> oneshot::Receiver<HistoryAnswer> {
        self.history
            .request((group.into(), last == StreamId::ZERO), last)
    }

    /// The next positions batch, with `groups` in it; `None` where positions are not batched.
    pub fn positions(&self, groups: &[&str]) -> Option<oneshot::Receiver<PositionsAnswer>> {
        let positions = self.positions.as_ref()?;
        Some(positions.request((), groups.iter().map(|g| g.to_string()).collect()))
    }
}

async fn read_history(
    redis: Arc<RedisBroker>,
    permits: Arc<Semaphore>,
    metrics: Metrics,
    config: HistoryConfig,
    group: Box<str>,
    batch: Vec<Waiter<StreamId, HistoryAnswer>>,
) {
    let from = batch
        .iter()
        .map(|(last, _)| *last)
        .min()
        .unwrap_or_default();
    let count = history::read_count(from, config.size);
    let answer = match permits.acquire().await {
        Ok(_permit) => {
            let started = Instant::now();
            let read = retried(|| redis.read_history(&group, from, count)).await;
            metrics.history_read(ReadKind::Resume, 1, batch.len(), started.elapsed());
            read.map(|snapshot| {
                Arc::new(Read {
                    snapshot,
                    from,
                    count,
                })
            })
            .map_err(|e| e.to_string())
        }
        Err(_) => Err(READS_CLOSED.into()),
    };
    for (_, reply) in batch {
        let _ = reply.send(answer.clone()); // a client that went away needs no answer
    }
}

async fn read_positions(
    redis: Arc<RedisBroker>,
    permits: Arc<Semaphore>,
    metrics: Metrics,
    batch: Vec<Waiter<Vec<String>, PositionsAnswer>>,
) {
    // Each distinct group once, whoever asked for it.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<&str> = Vec::new();
    for (asked, _) in &batch {
        for g in asked {
            index.entry(g.as_str()).or_insert_with(|| {
                groups.push(g.as_str());
                groups.len() - 1
            });
        }
    }
    let started = Instant::now();
    let calls = groups.chunks(POSITIONS_PER_CALL).map(|chunk| {
        let (redis, permits) = (&redis, &permits);
        async move {
            let _permit = permits
                .acquire()
                .await
                .map_err(|_| READS_CLOSED.to_string())?;
            retried(|| positions::read(redis, chunk)).await
        }
    });
    let answers = join_all(calls).await;
    metrics.history_read(
        ReadKind::Positions,
        answers.len(),
        batch.len(),
        started.elapsed(),
    );
    // A failed call fails only the requests with a group in it.
    let mut ids: Vec<Option<StreamId>> = vec![None; groups.len()];
    let mut failed = String::new();
    for (call, answer) in answers.into_iter().enumerate() {
        match answer {
            Ok(chunk) => {
                for (slot, id) in ids[call * POSITIONS_PER_CALL..].iter_mut().zip(chunk) {
                    *slot = Some(id);
                }
            }
            Err(e) => failed = e,
        }
    }
    let answer_for = |asked: &[String]| {
        asked
            .iter()
            .map(|g| ids[index[g.as_str()]])
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| failed.clone())
    };
    let answers: Vec<PositionsAnswer> = batch.iter().map(|(asked, _)| answer_for(asked)).collect();
    for ((_, reply), answer) in batch.into_iter().zip(answers) {
        let _ = reply.send(answer); // a client that went away needs no answer
    }
}
