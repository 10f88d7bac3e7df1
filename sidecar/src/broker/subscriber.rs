//! The subscription connection to one server (the URL's, or the master the sentinels name):
//! RESP3 with each message pushed into our bounded [`inbox`], or redis-rs's RESP2 `PubSub` for a
//! server without `HELLO`.
//!
//! ```text
//! RESP3: socket -> redis-rs reader -> push -> inbox (<= 32 MiB) -> Incoming::next -> loop -> hub
//! RESP2: socket -> redis-rs reader -> redis-rs's unbounded channel -> Incoming::next -> loop -> hub
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, RedisResult, Value};
use tracing::warn;

use super::error::LinkError;
use super::inbox::{self, Item};
use super::timeouts::COMMAND_TIMEOUT;

/// Connects to `client`'s server for subscribing: RESP3 (whatever the URL's `?protocol=`) unless
/// the server refused it once before (`resp2_only`, set here with a warning).
pub async fn connect(
    client: &redis::Client,
    resp2_only: &AtomicBool,
    server: &str,
) -> RedisResult<(Subscriber, Incoming)> {
    if !resp2_only.load(Ordering::Relaxed) {
        // The URL's own settings (TLS and its certificates, credentials, db), with RESP3.
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let resp3 = redis::Client::open(info.set_redis_settings(settings))?;
        let (tx, rx) = inbox::inbox(inbox::LIMIT);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_push_sender(pusher(tx));
        match resp3
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => return Ok((Subscriber::Push(conn), Incoming::Push(rx))),
            Err(e) if resp3_refused(&e) => {
                warn!(redis = %server, error = %e, "this Redis server does not speak RESP3 (no HELLO: Redis 5 or older, or a proxy); subscribing over RESP2, where events the sidecar has not handled yet queue in its memory without a bound. Upgrade to Redis 6 or later");
                resp2_only.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    let (sink, stream) = client.get_async_pubsub().await?.split();
    Ok((Subscriber::Queue(sink), Incoming::Queue(stream)))
}

/// Whether connecting failed because the server has no RESP3 (`HELLO` unknown: Redis 5, or a
/// proxy that does not pass it on).
fn resp3_refused(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::RESP3NotSupported
        || e.detail().is_some_and(|d| {
            let d = d.to_ascii_lowercase();
            d.contains("unknown command") && d.contains("hello")
        })
}

/// The RESP3 push handler, run by redis-rs's reader: messages into the inbox (never blocking),
/// and the news of a closed connection after them.
pub fn pusher(tx: inbox::Sender) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
    move |info: PushInfo| {
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some((channel, payload)) = channel_and_payload(info.data) {
                    tx.message(channel, payload);
                }
            }
            PushKind::Disconnection => tx.closed(),
            _ => {}
        }
        Ok(())
    }
}

/// A message push's `[channel, payload]`, taken without copying the payload.
pub fn channel_and_payload(data: Vec<Value>) -> Option<(String, Vec<u8>)> {
    let mut data = data.into_iter();
    match (data.next(), data.next()) {
        (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) => {
            let channel = String::from_utf8(channel)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            Some((channel, payload))
        }
        _ => None,
    }
}

/// Where SUBSCRIBE, UNSUBSCRIBE and PING go.
pub enum Subscriber {
    /// RESP3: one multiplexed connection; its messages go to the inbox.
    Push(MultiplexedConnection),
    /// RESP2: redis-rs's `PubSub`.
    Queue(PubSubSink),
}

impl Subscriber {
    pub async fn subscribe(&mut self, channels: Vec<String>) -> RedisResult<()> {
        match self {
            Self::Push(c) => c.subscribe(channels).await,
            Self::Queue(s) => s.subscribe(channels).await,
        }
    }

    pub async fn unsubscribe(&mut self, channels: Vec<String>) -> RedisResult<()> {
        match self {
            Self::Push(c) => c.unsubscribe(channels).await,
            Self::Queue(s) => s.unsubscribe(channels).await,
        }
    }

    /// In subscribe mode a RESP2 server answers PING with the array `["pong", ""]` and a RESP3
    /// server with `PONG`: any reply proves the peer alive, so it is read as a plain Value,
    /// never as a string.
    pub async fn ping(&mut self) -> RedisResult<Value> {
        match self {
            Self::Push(c) => redis::cmd("PING").query_async(c).await,
            Self::Queue(s) => s.ping().await,
        }
    }
}

/// What the connection hands to the subscription loop.
pub enum Incoming {
    /// RESP3: our bounded inbox.
    Push(inbox::Receiver),
    /// RESP2: redis-rs's queue.
    Queue(PubSubStream),
}

/// One thing for the loop to handle.
pub enum Next {
    Queued(redis::Msg),
    Pushed { channel: String, payload: Vec<u8> },
    Lost(LinkError),
}

impl From<Item> for Next {
    fn from(item: Item) -> Self {
        match item {
            Item::Message { channel, payload } => Next::Pushed { channel, payload },
            Item::Lost(why) => Next::Lost(why),
        }
    }
}

impl Incoming {
    /// What [`Incoming::next`] would return at once, if anything (RESP3's inbox only).
    pub fn try_next(&mut self) -> Option<Next> {
        match self {
            Self::Push(inbox) => inbox.try_next().map(Next::from),
            Self::Queue(_) => None,
        }
    }

    pub async fn next(&mut self) -> Next {
        match self {
            Self::Push(inbox) => Next::from(inbox.next().await),
            Self::Queue(stream) => match stream.next().await {
                Some(msg) => Next::Queued(msg),
                None => Next::Lost(LinkError::Closed),
            },
        }
    }
}
