//! Event history per group, so a client that reconnects gets what it missed (opt-in:
//! `--history-size`, `--history-ttl`).
//!
//! ```text
//! publish --EVAL publish.lua--> Redis: XADD <prefix>G + XSETID + PEXPIRE + PUBLISH "\x1e<id>\x1e<payload>"
//!                                           |                              |
//! resume (last_id=G:<id>) --EVAL read.lua---+                              +--> sidecars --> clients
//!      -> decide(): the events after <id>, or a reset when they cannot all be there
//! ```
//!
//! In Redis the history of group G is a Stream at key `<prefix>G` (the channel's own name), so
//! every replica serves the same history and it outlives sidecar restarts; `--broker memory`
//! keeps an in-process ring per group with the same semantics. A stream records what can no
//! longer be recovered in its `max-deleted-entry-id` (set by the publish script), which is what
//! tells "nothing missed" from "some trimmed away" exactly; a missing stream means expired or
//! lost (Redis restart, FLUSHALL).
//!
//! - [`model`]: the pure types and the resume decision (no Redis, no hub).
//! - [`reply`]: the scripts and the parser of the read script's reply.
//! - [`memory`]: the in-process ring of `--broker memory`.

pub mod memory;
pub mod model;
pub mod reply;

pub use memory::MemoryHistory;
pub use model::{HistoryConfig, Recovery, ResetReason, Snapshot, decide, read_count, view};
pub use reply::{PUBLISH_SCRIPT, READ_SCRIPT, parse_read_reply};

#[cfg(test)]
mod tests;
