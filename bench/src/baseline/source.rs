//! Events from Redis, like the sidecar's Redis path: one subscription connection, a channel per
//! group (`taskstream:<group>`), subscribed when a group gets its first member.
//!
//! ```text
//! PUBLISH taskstream:<g> --> redis-rs reader --push (RESP3)--> hub.publish(g) --> queues
//!                                            \-PubSub stream (RESP2, server without HELLO)-/
//! ```
//!
//! RESP3 pushes are fanned out in redis-rs's reader itself: no inbox, no task between. An event
//! published with history (`\x1e<id>\x1e<payload>`) is relayed without its id, as the sidecar
//! does for clients without `taskstream.v1`. No reconnect: a lost connection ends the process,
//! so a bench run fails loudly instead of losing events quietly.

use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::hub::Hub;

/// The sidecar's default `--channel-prefix`.
pub const CHANNEL_PREFIX: &str = "taskstream:";

/// Where `SUBSCRIBE` goes.
#[derive(Clone)]
pub enum Source {
    /// RESP3: messages arrive as pushes on this connection.
    Push(MultiplexedConnection),
    /// RESP2: redis-rs's `PubSub` (its stream is read by a task of ours).
    Queue(PubSubSink),
}

impl Source {
    /// Connects to `url` (RESP3, or RESP2 if the server has no `HELLO`) and relays every
    /// message into `hub`.
    pub async fn connect(url: &str, hub: Arc<Hub>) -> Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("redis url {url}"))?;
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let resp3 = redis::Client::open(info.set_redis_settings(settings))?;
        let to_hub = hub.clone();
        let config = AsyncConnectionConfig::new().set_push_sender(move |push: PushInfo| {
            match push.kind {
                PushKind::Message => relay(&to_hub, push.data),
                PushKind::Disconnection => lost(),
                _ => {}
            }
            Ok::<(), ()>(())
        });
        match resp3
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => return Ok(Self::Push(conn)),
            Err(e) if e.kind() == redis::ErrorKind::RESP3NotSupported || is_no_hello(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("redis {url}: connect")),
        }
        let (sink, mut stream) = client
            .get_async_pubsub()
            .await
            .with_context(|| format!("redis {url}: connect (RESP2)"))?
            .split();
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let channel = Value::BulkString(msg.get_channel_name().as_bytes().to_vec());
                let payload = Value::BulkString(msg.get_payload_bytes().to_vec());
                relay(&hub, vec![channel, payload]);
            }
            lost();
        });
        Ok(Self::Queue(sink))
    }

    /// `SUBSCRIBE taskstream:<group>`, answered.
    pub async fn subscribe(&self, group: &str) -> redis::RedisResult<()> {
        let channel = format!("{CHANNEL_PREFIX}{group}");
        match self.clone() {
            Self::Push(mut c) => c.subscribe(channel).await,
            Self::Queue(mut s) => s.subscribe(channel).await,
        }
    }
}

fn is_no_hello(e: &redis::RedisError) -> bool {
    e.detail().is_some_and(|d| {
        let d = d.to_ascii_lowercase();
        d.contains("unknown command") && d.contains("hello")
    })
}

fn lost() {
    eprintln!("taskstream-bench-baseline: the redis subscription connection was lost; exiting");
    std::process::exit(1);
}

/// A message's `[channel, payload]` into the hub, the payload not copied.
fn relay(hub: &Hub, data: Vec<Value>) {
    let mut data = data.into_iter();
    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
        (data.next(), data.next())
    else {
        return;
    };
    let Some(group) = channel.strip_prefix(CHANNEL_PREFIX.as_bytes()) else {
        return;
    };
    let Ok(group) = std::str::from_utf8(group) else {
        return;
    };
    let mut payload = Bytes::from(payload);
    if let Some(start) = payload_start(&payload) {
        payload = payload.slice(start..);
    }
    if let Ok(text) = Utf8Bytes::try_from(payload) {
        hub.publish(group, &text);
    }
}

/// Where the payload starts in the history envelope `\x1e<id>\x1e<payload>`.
fn payload_start(payload: &[u8]) -> Option<usize> {
    let rest = payload.strip_prefix(&[0x1e])?;
    rest.iter().position(|b| *b == 0x1e).map(|i| i + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_history_envelope() {
        let p = b"\x1e1700-0\x1e{\"a\":1}";
        assert_eq!(&p[payload_start(p).expect("envelope")..], b"{\"a\":1}");
        assert_eq!(payload_start(b"{\"a\":1}"), None);
    }
}
