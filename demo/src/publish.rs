//! How the demo's tasks publish: through the sidecar's admin `POST /publish/<group>` (local mode,
//! no Redis), or straight to Redis with the publish-with-history script (docs/protocol.md), the
//! way an app's workers do in production. Either way the event's id comes back.
//!
//! ```text
//! task loop --event--> Publisher::Admin --POST /publish/<group>--> sidecar (memory broker)
//!                  \-> Publisher::Redis --EVAL publish.lua------> Redis --> every sidecar
//! ```
//!
//! With Redis the events outlive a sidecar restart: published while it is down, they wait in the
//! group's history and the page resumes them with `last_id`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::warn;

/// The sidecar's script, byte for byte (the only supported way to write history).
const PUBLISH_LUA: &str = include_str!("../../sidecar/src/broker/publish.lua");
const TIMEOUT: Duration = Duration::from_secs(2);

type Body = UnsyncBoxBody<Bytes, Infallible>;

pub enum Publisher {
    Admin {
        url: String,
        client: Client<HttpConnector, Body>,
    },
    Redis {
        conn: redis::aio::ConnectionManager,
        script: redis::Script,
        prefix: String,
        size: u64,
        ttl_ms: u64,
    },
}

impl Publisher {
    pub fn admin(url: &str) -> Self {
        Self::Admin {
            url: url.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Connects to Redis (retrying in the background when it is away).
    pub async fn redis(url: &str, size: u64, ttl: Duration) -> Result<Self, redis::RedisError> {
        let conn = redis::Client::open(url)?.get_connection_manager().await?;
        Ok(Self::Redis {
            conn,
            script: redis::Script::new(PUBLISH_LUA),
            prefix: "taskstream:".into(),
            size,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Publishes `event` to `group`; returns its id (None: live only, or the publish failed,
    /// which is logged).
    pub async fn publish(&self, group: &str, event: &serde_json::Value) -> Option<String> {
        let payload = event.to_string();
        match self {
            Self::Admin { url, client } => {
                let url = format!("{url}/publish/{group}");
                let req = Request::post(&url)
                    .body(Full::new(Bytes::from(payload)).boxed_unsync())
                    .ok()?;
                let resp = match tokio::time::timeout(TIMEOUT, client.request(req)).await {
                    Ok(Ok(resp)) if resp.status().is_success() => resp,
                    Ok(Ok(resp)) => {
                        warn!(%url, status = %resp.status(), "publish refused");
                        return None;
                    }
                    Ok(Err(e)) => {
                        warn!(%url, error = %e, "publish failed (is the sidecar running?); the event is lost");
                        return None;
                    }
                    Err(_) => {
                        warn!(%url, "publish timed out; the event is lost");
                        return None;
                    }
                };
                let body = resp.into_body().collect().await.ok()?.to_bytes();
                let answer: serde_json::Value = serde_json::from_slice(&body).ok()?;
                answer["id"].as_str().map(str::to_owned)
            }
            Self::Redis {
                conn,
                script,
                prefix,
                size,
                ttl_ms,
            } => {
                let mut conn = conn.clone();
                let mut invocation = script.key(format!("{prefix}{group}"));
                invocation.arg(payload).arg(*size).arg(*ttl_ms);
                let call = invocation.invoke_async::<String>(&mut conn);
                match tokio::time::timeout(TIMEOUT, call).await {
                    Ok(Ok(id)) => Some(id),
                    Ok(Err(e)) => {
                        warn!(error = %e, "publish to redis failed; the event is lost");
                        None
                    }
                    Err(_) => {
                        warn!("publish to redis timed out; the event is lost");
                        None
                    }
                }
            }
        }
    }
}
