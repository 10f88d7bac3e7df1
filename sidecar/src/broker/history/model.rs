//! History's pure model: what is kept ([`HistoryConfig`]), what one read of a group saw
//! ([`Snapshot`]), and what a resuming client gets ([`Recovery`]: the events it missed, or a
//! reset with its [`ResetReason`]), decided by [`decide`]. No Redis, no clock, no hub: the Redis
//! reply parser ([`super::reply`]) and the memory ring ([`super::memory`]) both produce a
//! [`Snapshot`], and the same decision serves both.
//!
//! ```text
//! resume from <id> --read_count()--> read (Redis read.lua | memory ring) --> Snapshot
//!                  --decide(<id>, Snapshot, size)--> Recovery::Events | Recovery::Reset(reason)
//! ```

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::broker::id::StreamId;

/// `--history-size` / `--history-ttl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Events kept per group (at least 1).
    pub size: usize,
    /// A group's history expires this long after its last event.
    pub ttl: Duration,
}

/// Why a client gets `{"type":"reset"}` for a group instead of what it missed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ResetReason {
    /// Events after the client's id were trimmed (more than `--history-size` since), or the
    /// stream was lost and made anew since.
    Trimmed,
    /// The group has no history: it expired (`--history-ttl`) or was lost with Redis.
    Expired,
    /// The id was never issued by this history (another Redis, or a bad client).
    Unknown,
    /// More events were missed than this sidecar reads back (`--history-size`).
    TooFar,
    /// This sidecar keeps no history.
    HistoryOff,
    /// The history could not be read (Redis unreachable).
    Unavailable,
    /// The sidecar's Redis subscription was lost and re-made, and this connection had no event
    /// id in the group to catch up from.
    Reconnected,
}

impl ResetReason {
    /// The `reason` of the reset frame.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::Trimmed => "trimmed",
            ResetReason::Expired => "expired",
            ResetReason::Unknown => "unknown",
            ResetReason::TooFar => "too_far",
            ResetReason::HistoryOff => "history_off",
            ResetReason::Unavailable => "unavailable",
            ResetReason::Reconnected => "reconnected",
        }
    }
}

/// What one read of a group's history saw.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub exists: bool,
    pub max_deleted: StreamId,
    pub last_generated: StreamId,
    /// After the asked id (or the newest, for id 0), oldest first.
    pub entries: Vec<(StreamId, Utf8Bytes)>,
}

/// What a resuming client gets for one group.
#[derive(Debug, PartialEq)]
pub enum Recovery {
    Events(Vec<(StreamId, Utf8Bytes)>),
    Reset(ResetReason),
}

/// How many entries to read for a resume from `last`: one more than can be delivered, so that
/// "too far behind" is seen rather than silently cut.
pub fn read_count(last: StreamId, size: usize) -> usize {
    if last == StreamId::ZERO {
        size
    } else {
        size + 1
    }
}

/// Decides, from one atomic snapshot, whether the events after `last` are all there.
pub fn decide(last: StreamId, snap: Snapshot, size: usize) -> Recovery {
    if last == StreamId::ZERO {
        // "Everything still in history": a late joiner has no state a gap could corrupt.
        return Recovery::Events(snap.entries);
    }
    if !snap.exists {
        return Recovery::Reset(ResetReason::Expired);
    }
    if snap.max_deleted > last {
        return Recovery::Reset(ResetReason::Trimmed);
    }
    if last > snap.last_generated {
        return Recovery::Reset(ResetReason::Unknown);
    }
    if snap.entries.len() > size {
        return Recovery::Reset(ResetReason::TooFar);
    }
    Recovery::Events(snap.entries)
}

/// One client's part of a snapshot read for several clients of a group: read after `from` (the
/// smallest of their ids, never [`StreamId::ZERO`] unless all were) with at most `count`
/// entries, seen by a client resuming after `last >= from`. `None` when the read was cut short
/// (`count` entries) and dropped entries at or before `last`: the client's own read would reach
/// further, so it reads on its own. Otherwise exactly what its own read would have returned
/// then (the same atomic look; the entries after `last`).
pub fn view(snap: &Snapshot, from: StreamId, count: usize, last: StreamId) -> Option<Snapshot> {
    let skip = if last == from {
        0
    } else {
        snap.entries.partition_point(|(id, _)| *id <= last)
    };
    if skip > 0 && snap.entries.len() >= count {
        return None;
    }
    Some(Snapshot {
        exists: snap.exists,
        max_deleted: snap.max_deleted,
        last_generated: snap.last_generated,
        entries: snap.entries[skip..].to_vec(),
    })
}
