//! The subscription connection to one server (the URL's, or the master the sentinels name):
//! RESP3 with each message handed on from redis-rs's reader, or redis-rs's RESP2 `PubSub` for a
//! server without `HELLO`.
//!
//! ```text
//! RESP3: socket -> redis-rs reader -> on_message(channel, payload) -> hub        (no queue)
//!        a sidecar that falls behind leaves the bytes in its socket: Redis's
//!        `client-output-buffer-limit pubsub` bounds them (past it Redis drops the connection)
//! RESP2: socket -> redis-rs reader -> unbounded channel -> Incoming::next -> loop -> hub
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::Notify;
use tracing::warn;

use crate::redis::COMMAND_TIMEOUT;

/// Called with each message's channel and payload, in the order Redis sent them.
pub type OnMessage = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

/// Connects to `client`'s server for subscribing: RESP3 (whatever the URL's `?protocol=`) unless
/// the server refused it once before (`resp2_only`, set here with a warning).
pub async fn connect(
    client: &redis::Client,
    resp2_only: &AtomicBool,
    server: &str,
    on_message: OnMessage,
) -> RedisResult<(Subscriber, Incoming)> {
    if !resp2_only.load(Ordering::Relaxed) {
        // The URL's own settings (TLS and its certificates, credentials, db), with RESP3.
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let resp3 = redis::Client::open(info.set_redis_settings(settings))?;
        let closed = Arc::new(Notify::new());
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_push_sender(pusher(on_message, closed.clone()));
        match resp3
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => return Ok((Subscriber::Push(conn), Incoming::Push(closed))),
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

/// Whether connecting failed because the server has no RESP3 (`HELLO` unknown).
fn resp3_refused(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::RESP3NotSupported
        || e.detail().is_some_and(|d| {
            let d = d.to_ascii_lowercase();
            d.contains("unknown command") && d.contains("hello")
        })
}

/// The RESP3 push handler: runs in redis-rs's reader, so each message is handed on before the
/// next is read; a closed connection wakes the loop.
fn pusher(
    on_message: OnMessage,
    closed: Arc<Notify>,
) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
    move |info: PushInfo| {
        match (info.kind, info.data.as_slice()) {
            (PushKind::Message, [Value::BulkString(channel), Value::BulkString(payload)]) => {
                on_message(&String::from_utf8_lossy(channel), payload);
            }
            // A permit is stored when the loop is not waiting yet.
            (PushKind::Disconnection, _) => closed.notify_one(),
            _ => {}
        }
        Ok(())
    }
}

/// Where SUBSCRIBE, UNSUBSCRIBE and PING go.
pub enum Subscriber {
    /// RESP3: one multiplexed connection; its messages go to [`OnMessage`].
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
    /// RESP3: only the news that the connection closed (the messages went to [`OnMessage`]).
    Push(Arc<Notify>),
    /// RESP2: the queued messages.
    Queue(PubSubStream),
}

impl Incoming {
    /// The next message to hand on; `None` once the connection closed.
    pub async fn next(&mut self) -> Option<redis::Msg> {
        match self {
            Self::Push(closed) => {
                closed.notified().await;
                None
            }
            Self::Queue(stream) => stream.next().await,
        }
    }
}
