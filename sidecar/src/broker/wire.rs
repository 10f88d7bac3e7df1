//! How groups map to Redis channels and payloads to text frames (the [`Wire`]), and the plain
//! wire: `PUBLISH <prefix><group> <payload>`, relayed verbatim, where an event published with
//! history carries its id in an envelope that is stripped here.
//!
//! ```text
//! hub's changed groups --serves()--> groups of this link --channel()--> SUBSCRIBE <channel>
//! Redis message (channel, payload) --group()--> group --event()--> (id?, text frame) --> hub
//!                                   "\x1e<id>\x1e<payload>" -> (Some(id), payload)
//! ```
//!
//! The Django Channels pub/sub layer brings its own wire (`crate::channels::pubsub`).

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::warn;

use super::id::StreamId;
use crate::hub::Hub;
use crate::metrics::{DropReason, Metrics};

/// Maps groups to Redis channels and payloads to text frames.
pub trait Wire: Send + Sync + 'static {
    /// The Redis channel of `group`.
    fn channel(&self, group: &str) -> String;
    /// The group of a Redis channel this wire subscribed to.
    fn group<'a>(&self, channel: &'a str) -> Option<&'a str>;
    /// Whether this connection serves `group` (sharding); the others are left to other shards.
    fn serves(&self, _group: &str) -> bool {
        true
    }
    /// The frame for a payload of `group`, or `None` when it was dropped (counted and logged).
    fn frame(&self, group: &str, payload: &[u8], metrics: &Metrics) -> Option<Utf8Bytes>;
    /// The event (its history id, if it has one, and its frame) for a payload of `group`.
    fn event(
        &self,
        group: &str,
        payload: &[u8],
        metrics: &Metrics,
    ) -> Option<(Option<StreamId>, Utf8Bytes)> {
        self.frame(group, payload, metrics).map(|f| (None, f))
    }
}

/// One message of `channel` to the hub, when it is a group's and decodes.
pub fn deliver(wire: &dyn Wire, hub: &Hub, metrics: &Metrics, channel: &str, payload: &[u8]) {
    let Some(group) = wire.group(channel) else {
        return;
    };
    if let Some((id, frame)) = wire.event(group, payload, metrics) {
        hub.publish_event(group, id, frame);
    }
}

/// Plain pub/sub: `PUBLISH <prefix><group> <UTF-8 payload>`, relayed verbatim; an event
/// published with history arrives as `\x1e<id>\x1e<payload>` (docs/protocol.md).
pub struct Plain {
    pub prefix: String,
}

/// Splits the history envelope `\x1e<id>\x1e<payload>`; `None` for a plain payload.
fn split_envelope(payload: &[u8]) -> Option<(StreamId, &[u8])> {
    let rest = payload.strip_prefix(&[0x1e])?;
    let end = rest.iter().position(|b| *b == 0x1e)?;
    let id = StreamId::parse(std::str::from_utf8(&rest[..end]).ok()?)?;
    Some((id, &rest[end + 1..]))
}

impl Wire for Plain {
    fn channel(&self, group: &str) -> String {
        format!("{}{}", self.prefix, group)
    }

    fn group<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.prefix.as_str())
    }

    fn frame(&self, group: &str, payload: &[u8], metrics: &Metrics) -> Option<Utf8Bytes> {
        match Utf8Bytes::try_from(bytes::Bytes::copy_from_slice(payload)) {
            Ok(text) => Some(text),
            Err(_) => {
                metrics.events_received.inc();
                metrics.dropped(DropReason::NonUtf8);
                warn!(
                    group,
                    bytes = payload.len(),
                    "dropped an event whose payload is not UTF-8; publish JSON or other text"
                );
                None
            }
        }
    }

    fn event(
        &self,
        group: &str,
        payload: &[u8],
        metrics: &Metrics,
    ) -> Option<(Option<StreamId>, Utf8Bytes)> {
        match split_envelope(payload) {
            Some((id, inner)) => self.frame(group, inner, metrics).map(|f| (Some(id), f)),
            None => self.frame(group, payload, metrics).map(|f| (None, f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_envelope_is_split_and_plain_payloads_pass() {
        let (id, inner) = split_envelope(b"\x1e1700000000000-2\x1e{\"p\":1}").unwrap();
        assert_eq!(id.to_string(), "1700000000000-2");
        assert_eq!(inner, b"{\"p\":1}");
        assert!(split_envelope(b"{\"p\":1}").is_none());
        assert!(split_envelope(b"\x1enot-an-id\x1ex").is_none());
        assert!(split_envelope(b"\x1e5-0").is_none());
        let plain = Plain {
            prefix: "p:".into(),
        };
        let m = Metrics::default();
        assert_eq!(
            plain.event("g", b"\x1e5-0\x1ehello", &m),
            Some((StreamId::parse("5-0"), "hello".into()))
        );
        assert_eq!(plain.event("g", b"hello", &m), Some((None, "hello".into())));
    }
}
