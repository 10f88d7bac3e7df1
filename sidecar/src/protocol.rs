//! The `taskstream.v1` client protocol (docs/protocol.md): JSON frames with ids, `last_id`
//! resume parameters and `reset` frames. Clients that do not ask for it get payloads verbatim.
//!
//! ```text
//! event (payload, id) --> {"type":"event","group":G,"id":ID,"data":<payload as JSON, else string>}
//! no history to cover a gap --> {"type":"reset","group":G,"reason":R}
//! connect, no last_id for G --> {"type":"position","group":G,"id":ID}   (ID "0": none stored)
//! ```

use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::broker::history::model::ResetReason;
use crate::broker::id::StreamId;

/// The WebSocket subprotocol of this protocol.
pub const SUBPROTOCOL: &str = "taskstream.v1";

/// Whether the client offered [`SUBPROTOCOL`] in `Sec-WebSocket-Protocol`.
pub fn offered(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

/// The event frame. The payload goes in as it is when it is JSON (no re-encoding), else as a
/// JSON string.
pub fn event_frame(group: &str, id: Option<StreamId>, payload: &str) -> Utf8Bytes {
    let group = serde_json::to_string(group).unwrap_or_default();
    let data = match serde_json::from_str::<&RawValue>(payload) {
        Ok(raw) => raw.get().to_owned(),
        Err(_) => serde_json::to_string(payload).unwrap_or_default(),
    };
    let frame = match id {
        Some(id) => format!(r#"{{"type":"event","group":{group},"id":"{id}","data":{data}}}"#),
        None => format!(r#"{{"type":"event","group":{group},"data":{data}}}"#),
    };
    frame.into()
}

/// The reset frame: the client must refetch `group`'s state.
pub fn reset_frame(group: &str, reason: ResetReason) -> Utf8Bytes {
    serde_json::json!({"type": "reset", "group": group, "reason": reason.as_str()})
        .to_string()
        .into()
}

/// The position frame: where the client stands in `group` at connect (the newest stored id,
/// `"0"` when none); every later event of the group reaches it, none at or before.
pub fn position_frame(group: &str, id: StreamId) -> Utf8Bytes {
    let id = if id == StreamId::ZERO {
        "0".to_owned()
    } else {
        id.to_string()
    };
    serde_json::json!({"type": "position", "group": group, "id": id})
        .to_string()
        .into()
}

/// Parses one `last_id` value, `<group>:<id>`, split at the last `:`.
pub fn parse_last_id(value: &str) -> Result<(String, StreamId), String> {
    let Some((group, id)) = value.rsplit_once(':') else {
        return Err(format!(
            "last_id {:?} is not <group>:<id>",
            value.chars().take(60).collect::<String>()
        ));
    };
    if group.is_empty() {
        return Err("last_id has an empty group; use <group>:<id>".into());
    }
    let id = StreamId::parse(id).ok_or_else(|| {
        format!(
            "last_id of group {:?}: {:?} is not an event id such as 1700000000000-0 (or 0 for everything in history)",
            group.chars().take(60).collect::<String>(),
            id.chars().take(40).collect::<String>()
        )
    })?;
    Ok((group.to_owned(), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_payloads_are_embedded_and_others_quoted() {
        let id = StreamId::parse("5-1");
        let f = event_frame("user:1", id, r#"{"progress": 40}"#);
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["group"], "user:1");
        assert_eq!(v["id"], "5-1");
        assert_eq!(v["data"]["progress"], 40);
        let f = event_frame("g\"x", None, "plain \"text\"");
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["data"], "plain \"text\"");
        assert_eq!(v["group"], "g\"x");
        assert!(v.get("id").is_none(), "live-only events carry no id");
        let r: serde_json::Value =
            serde_json::from_str(&reset_frame("g", ResetReason::TooFar)).unwrap();
        assert_eq!(
            r,
            serde_json::json!({"type":"reset","group":"g","reason":"too_far"})
        );
    }

    #[test]
    fn position_frames_name_the_group_and_id_and_zero_for_none() {
        let f: serde_json::Value =
            serde_json::from_str(&position_frame("user:1", StreamId::parse("7-2").unwrap()))
                .unwrap();
        assert_eq!(
            f,
            serde_json::json!({"type":"position","group":"user:1","id":"7-2"})
        );
        let f: serde_json::Value =
            serde_json::from_str(&position_frame("g", StreamId::ZERO)).unwrap();
        assert_eq!(f["id"], "0");
    }

    #[test]
    fn last_id_splits_at_the_last_colon() {
        assert_eq!(
            parse_last_id("user:42:1700000000000-3").unwrap(),
            (
                "user:42".to_string(),
                StreamId::parse("1700000000000-3").unwrap()
            )
        );
        assert_eq!(parse_last_id("g:0").unwrap().1, StreamId::ZERO);
        for bad in ["nocolon", ":5-0", "g:", "g:abc", "g:1-x"] {
            assert!(parse_last_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subprotocol_is_found_in_a_list() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "chat, taskstream.v1".parse().unwrap(),
        );
        assert!(offered(&h));
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "chat".parse().unwrap(),
        );
        assert!(!offered(&h));
    }
}
