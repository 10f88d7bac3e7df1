//! History in Redis: the two scripts every publisher and every sidecar run, and the parser of
//! the read script's reply into a [`Snapshot`].
//!
//! ```text
//! publish --EVAL publish.lua--> XADD <prefix>G + XSETID + PEXPIRE + PUBLISH "\x1e<id>\x1e<payload>"
//! resume  --EVAL read.lua-----> [exists, max-deleted-entry-id, last-generated-id, entries]
//!                                  --parse_read_reply()--> Snapshot --> model::decide
//! ```

use redis::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::model::Snapshot;
use crate::broker::error::LinkError;
use crate::broker::id::StreamId;

/// The script every publisher runs to publish with history (docs/protocol.md).
pub const PUBLISH_SCRIPT: &str = include_str!("../publish.lua");
/// One atomic look at a group's stream.
pub const READ_SCRIPT: &str = include_str!("../read.lua");

/// Parses the reply of [`READ_SCRIPT`].
pub fn parse_read_reply(v: Value) -> Result<Snapshot, LinkError> {
    let bad = |detail: &str| LinkError::Reply {
        what: "history read",
        detail: detail.to_owned(),
    };
    let Value::Array(parts) = v else {
        return Err(bad("not an array"));
    };
    let [exists, maxdel, lastgen, entries]: [Value; 4] =
        parts.try_into().map_err(|_| bad("not 4 parts"))?;
    let exists = matches!(exists, Value::Int(1));
    let id = |v: &Value| -> Result<StreamId, LinkError> {
        let s = redis::from_redis_value_ref::<String>(v).map_err(|e| bad(&e.to_string()))?;
        StreamId::parse(&s).ok_or_else(|| bad("id"))
    };
    let mut snap = Snapshot {
        exists,
        max_deleted: id(&maxdel)?,
        last_generated: id(&lastgen)?,
        entries: Vec::new(),
    };
    let Value::Array(entries) = entries else {
        return Err(bad("entries"));
    };
    for e in entries {
        let Value::Array(pair) = e else {
            return Err(bad("entry"));
        };
        let [eid, fields]: [Value; 2] = pair.try_into().map_err(|_| bad("entry pair"))?;
        let eid = id(&eid)?;
        let fields: Vec<Vec<u8>> =
            redis::from_redis_value(fields).map_err(|e| bad(&e.to_string()))?;
        // Field `d` holds the payload; a foreign entry without it is skipped.
        let Some(payload) = fields
            .chunks_exact(2)
            .find(|kv| kv[0] == b"d")
            .map(|kv| kv[1].clone())
        else {
            continue;
        };
        let Ok(text) = Utf8Bytes::try_from(bytes::Bytes::from(payload)) else {
            continue; // not UTF-8: cannot be a text frame (live copies are dropped likewise)
        };
        snap.entries.push((eid, text));
    }
    Ok(snap)
}
