//! channels_redis message bytes -> the text frame a browser receives.
//!
//! ```text
//! raw = <random prefix (12 bytes, core layer only)> <Fernet token if keys are set> | <msgpack map>
//!        strip prefix -> decrypt (any key, TTL) -> msgpack map -> check `type` -> JSON text
//! ```
//!
//! The layout is channels_redis `BaseMessageSerializer.serialize`: the prefix is added *after*
//! encryption, and each key is turned into a Fernet key as `urlsafe_b64encode(sha256(key))`.
//!
//! msgpack -> JSON (documented in the README): nil/bool/int/str/array/map map directly;
//! floats map to numbers, except NaN and ±infinity, which become `null`; `bin` becomes a
//! standard (padded) base64 string; a `str` with invalid UTF-8 is decoded lossily (U+FFFD);
//! map keys that are not strings become the JSON text of the key (`1` -> `"1"`, `true` ->
//! `"true"`, `nil` -> `"null"`, bin -> base64), a repeated key keeps its last value (as a
//! Python dict does); ext values (including msgpack timestamps) become `null`.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use fernet::Fernet;
use rmpv::Value;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::settings::{MessageMode, Secret};
use crate::metrics::DropReason;

/// Internal key channels_redis adds to say which local channels a message is for.
const ASGI_CHANNEL: &str = "__asgi_channel__";

/// A decoded channels message.
#[derive(Debug)]
pub struct Decoded {
    /// `__asgi_channel__`: the receiving channel names (core layer); empty when absent.
    pub channels: Vec<String>,
    /// The text frame for browsers.
    pub payload: Utf8Bytes,
}

/// Why a message could not be turned into a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(
        "no Fernet key decrypts it (wrong or missing --channels-symmetric-encryption-keys, or older than its TTL)"
    )]
    Undecryptable,
    #[error("shorter than the {0}-byte random prefix")]
    Short(usize),
    #[error("not msgpack: {0}")]
    NotMsgpack(String),
    #[error("not a msgpack map")]
    NotAMap,
    #[error("no string `type` (not a channels message)")]
    NoType,
    #[error("no `data` field (use --channels-message full to send whole messages)")]
    NoData,
}

impl DecodeError {
    /// The `taskstream_events_dropped_total` reason.
    pub fn reason(&self) -> DropReason {
        match self {
            DecodeError::Undecryptable => DropReason::Undecryptable,
            _ => DropReason::Malformed,
        }
    }
}

/// Decoder for one layer configuration.
pub struct Codec {
    fernets: Vec<Fernet>,
    mode: MessageMode,
}

impl Codec {
    pub fn new(keys: &[Secret], mode: MessageMode) -> Self {
        let fernets = keys.iter().map(|k| fernet_for(&k.0)).collect();
        Self { fernets, mode }
    }

    /// Decodes one stored/published message. `prefix` is the random prefix length (12 for the
    /// core layer, 0 for pub/sub); `ttl_secs` bounds the Fernet token's age (core layer).
    pub fn decode(
        &self,
        raw: &[u8],
        prefix: usize,
        ttl_secs: Option<u64>,
    ) -> Result<Decoded, DecodeError> {
        let body = raw.get(prefix..).ok_or(DecodeError::Short(prefix))?;
        let plain;
        let body = if self.fernets.is_empty() {
            body
        } else {
            let token = std::str::from_utf8(body).map_err(|_| DecodeError::Undecryptable)?;
            plain = self
                .fernets
                .iter()
                .find_map(|f| {
                    match ttl_secs {
                        Some(ttl) => f.decrypt_with_ttl(token, ttl),
                        None => f.decrypt(token),
                    }
                    .ok()
                })
                .ok_or(DecodeError::Undecryptable)?;
            &plain[..]
        };
        let mut rest = body;
        let value = rmpv::decode::read_value(&mut rest)
            .map_err(|e| DecodeError::NotMsgpack(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::NotMsgpack(format!(
                "{} bytes after the value",
                rest.len()
            )));
        }
        let Value::Map(entries) = value else {
            return Err(DecodeError::NotAMap);
        };
        let field = |name: &str| {
            entries
                .iter()
                .rev()
                .find(|(k, _)| k.as_str() == Some(name))
                .map(|(_, v)| v)
        };
        if !field("type").is_some_and(Value::is_str) {
            return Err(DecodeError::NoType);
        }
        let channels = match field(ASGI_CHANNEL) {
            Some(Value::String(s)) => s.as_str().map(str::to_owned).into_iter().collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let mut json = String::with_capacity(body.len() * 2);
        match self.mode {
            MessageMode::Data => write_json(field("data").ok_or(DecodeError::NoData)?, &mut json),
            MessageMode::Full => {
                let kept = entries
                    .iter()
                    .filter(|(k, _)| !k.as_str().is_some_and(|k| k.starts_with("__asgi_")));
                write_object(kept, &mut json);
            }
        }
        Ok(Decoded {
            channels,
            payload: Utf8Bytes::from(json),
        })
    }
}

/// channels_redis `make_fernet`: the Fernet key is `urlsafe_b64encode(sha256(key))`.
fn fernet_for(key: &str) -> Fernet {
    let formatted = URL_SAFE.encode(Sha256::digest(key.as_bytes()));
    // A 32-byte digest always makes a valid Fernet key.
    Fernet::new(&formatted).expect("a sha256 digest is a valid 32-byte Fernet key")
}

/// The msgpack -> JSON rule (see the module header), written in the map's own key order (as
/// Python's `json.dumps` of the dict would be).
pub fn write_json(v: &Value, out: &mut String) {
    use std::fmt::Write;
    match v {
        Value::Nil | Value::Ext(..) => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => {
                let _ = write!(out, "{u}");
            }
            (None, Some(s)) => {
                let _ = write!(out, "{s}");
            }
            (None, None) => out.push_str("null"),
        },
        Value::F32(f) => write_float(f64::from(*f), out),
        Value::F64(f) => write_float(*f, out),
        Value::String(_) | Value::Binary(_) => write_str(&text_of(v), out),
        Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Value::Map(m) => write_object(m.iter(), out),
    }
}

/// Writes map entries as a JSON object; a repeated key keeps its last value, in the position of
/// its first appearance (as a Python dict does).
fn write_object<'a>(entries: impl Iterator<Item = &'a (Value, Value)>, out: &mut String) {
    let entries: Vec<(String, &Value)> = entries.map(|(k, v)| (key_string(k), v)).collect();
    let mut last: HashMap<&str, &Value> = HashMap::with_capacity(entries.len());
    for (k, v) in &entries {
        last.insert(k.as_str(), v);
    }
    out.push('{');
    let mut first = true;
    for (k, _) in &entries {
        // Written once, at its first position, with its last value.
        let Some(v) = last.remove(k.as_str()) else {
            continue;
        };
        if !first {
            out.push(',');
        }
        first = false;
        write_str(k, out);
        out.push(':');
        write_json(v, out);
    }
    out.push('}');
}

fn write_float(f: f64, out: &mut String) {
    match serde_json::Number::from_f64(f) {
        Some(n) => out.push_str(&n.to_string()),
        None => out.push_str("null"),
    }
}

fn write_str(s: &str, out: &mut String) {
    // serde_json's string escaping; it cannot fail for a &str.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// A `str` (lossy if not UTF-8) or a `bin` (base64) as text.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => match s.as_str() {
            Some(s) => s.to_owned(),
            None => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        },
        Value::Binary(b) => STANDARD.encode(b),
        _ => String::new(),
    }
}

/// A map key as a JSON object key: strings as they are, other keys as their JSON text.
fn key_string(k: &Value) -> String {
    match k {
        Value::String(_) | Value::Binary(_) => text_of(k),
        other => {
            let mut s = String::new();
            write_json(other, &mut s);
            s
        }
    }
}

/// `v` as JSON text (the rule above); the tests' view of [`write_json`].
#[cfg(test)]
pub fn to_json(v: &Value) -> String {
    let mut s = String::new();
    write_json(v, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // channels_redis 4.3.0 MsgPackSerializer(random_prefix_length=12).serialize({"type":
    // "task.progress", "data": {...}, "__asgi_channel__": ["specific.abc!g1"]}).
    const CORE: &str = "612b2c6c73162e219174904283a474797065ad7461736b2e70726f6772657373a46461746188a47461736ba27431a870726f677265737328a26f6bc3a166cb3ff8000000000000a36e616ecb7ff8000000000000a162c40200ffa16ec0a16c9201a178b05f5f617367695f6368616e6e656c5f5f91af73706563696669632e616263216731";
    // Same serializer, no prefix, symmetric_encryption_keys=["s3cret", "other"], {"type":
    // "task.progress", "data": {"n": 1}}.
    const ENCRYPTED: &str = "67414141414142724279505367366a7a622d6649556d686b4e4c526c71467371735036392d47664a6b424d33745a7746565133714b445342665175324b72774375384d613161754d62503442756a6a656e4b346d57714a5f517a65426578334d695f75504e574651386243456766644f59784c6d7072773d";

    #[test]
    fn decodes_what_channels_redis_serializes() {
        let d = Codec::new(&[], MessageMode::Data)
            .decode(&hex(CORE), 12, Some(70))
            .unwrap();
        assert_eq!(d.channels, vec!["specific.abc!g1".to_string()]);
        assert_eq!(
            d.payload.as_str(),
            r#"{"task":"t1","progress":40,"ok":true,"f":1.5,"nan":null,"b":"AP8=","n":null,"l":[1,"x"]}"#
        );
        let full = Codec::new(&[], MessageMode::Full)
            .decode(&hex(CORE), 12, None)
            .unwrap();
        assert!(
            full.payload
                .as_str()
                .starts_with(r#"{"type":"task.progress","data":{"task":"t1","progress":40,"#),
            "{}",
            full.payload.as_str()
        );
        assert!(
            !full.payload.as_str().contains(ASGI_CHANNEL),
            "internal keys are removed"
        );
    }

    #[test]
    fn decrypts_with_any_of_the_keys_and_refuses_others() {
        let keys = |ks: &[&str]| ks.iter().map(|k| Secret(k.to_string())).collect::<Vec<_>>();
        for ks in [&["s3cret"][..], &["nope", "s3cret"]] {
            let d = Codec::new(&keys(ks), MessageMode::Data)
                .decode(&hex(ENCRYPTED), 0, None)
                .unwrap();
            assert_eq!(d.payload.as_str(), r#"{"n":1}"#);
        }
        let wrong = Codec::new(&keys(&["wrong"]), MessageMode::Data);
        assert_eq!(
            wrong.decode(&hex(ENCRYPTED), 0, None).unwrap_err(),
            DecodeError::Undecryptable
        );
        // A plain message is refused when keys are configured (channels_redis does the same).
        assert_eq!(
            wrong.decode(&hex(CORE), 12, None).unwrap_err().reason(),
            DropReason::Undecryptable
        );
        // The token was made long ago: a TTL refuses it.
        assert_eq!(
            Codec::new(&keys(&["s3cret"]), MessageMode::Data)
                .decode(&hex(ENCRYPTED), 0, Some(70))
                .unwrap_err(),
            DecodeError::Undecryptable
        );
    }

    #[test]
    fn malformed_messages_are_refused_not_panicked_on() {
        let c = Codec::new(&[], MessageMode::Data);
        let pack = |v: Value| {
            let mut b = Vec::new();
            rmpv::encode::write_value(&mut b, &v).unwrap();
            b
        };
        let map = |kv: Vec<(&str, Value)>| {
            Value::Map(kv.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
        };
        assert_eq!(
            c.decode(b"short", 12, None).unwrap_err(),
            DecodeError::Short(12)
        );
        assert!(matches!(
            c.decode(b"\x92\x01", 0, None).unwrap_err(),
            DecodeError::NotMsgpack(_)
        ));
        assert_eq!(
            c.decode(&pack(Value::from("x")), 0, None).unwrap_err(),
            DecodeError::NotAMap
        );
        assert_eq!(
            c.decode(&pack(map(vec![("data", Value::from(1))])), 0, None)
                .unwrap_err(),
            DecodeError::NoType
        );
        assert_eq!(
            c.decode(
                &pack(map(vec![
                    ("type", Value::from(3)),
                    ("data", Value::from(1))
                ])),
                0,
                None
            )
            .unwrap_err(),
            DecodeError::NoType
        );
        assert_eq!(
            c.decode(&pack(map(vec![("type", Value::from("t"))])), 0, None)
                .unwrap_err(),
            DecodeError::NoData
        );
        let mut trailing = pack(map(vec![("type", Value::from("t")), ("data", Value::Nil)]));
        trailing.push(0);
        assert!(matches!(
            c.decode(&trailing, 0, None).unwrap_err(),
            DecodeError::NotMsgpack(_)
        ));
        assert_eq!(DecodeError::NoType.reason(), DropReason::Malformed);
    }

    #[test]
    fn json_rule_for_values_without_a_json_form() {
        // msgpack.packb({1: "int key", "k": {2.5: "f"}})
        let v = rmpv::decode::read_value(
            &mut &hex("8201a7696e74206b6579a16b81cb4004000000000000a166")[..],
        )
        .unwrap();
        assert_eq!(to_json(&v), r#"{"1":"int key","k":{"2.5":"f"}}"#);
        assert_eq!(to_json(&Value::F64(f64::INFINITY)), "null");
        assert_eq!(to_json(&Value::F32(f32::NAN)), "null");
        assert_eq!(to_json(&Value::Ext(-1, vec![0; 4])), "null");
        assert_eq!(
            to_json(&Value::Map(vec![
                (Value::from("a"), Value::from(1)),
                (Value::from("b"), Value::from(2)),
                (Value::from("a"), Value::from(3)),
            ])),
            r#"{"a":3,"b":2}"#
        );
        assert_eq!(
            to_json(&rmpv::decode::read_value(&mut &[0xa2_u8, b'a', 0xff][..]).unwrap()),
            "\"a\u{FFFD}\""
        );
        assert_eq!(to_json(&Value::from("q\"\n")), r#""q\"\n""#);
        assert_eq!(
            to_json(&Value::Map(vec![
                (Value::Nil, Value::from(1)),
                (Value::Boolean(true), Value::from(2)),
                (Value::Binary(vec![1]), Value::from(3)),
            ])),
            r#"{"null":1,"true":2,"AQ==":3}"#
        );
        assert_eq!(to_json(&Value::from(u64::MAX)), u64::MAX.to_string());
        assert_eq!(to_json(&Value::from(-5)), "-5");
    }
}
