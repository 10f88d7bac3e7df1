//! A connection for ordinary commands (PUBLISH, EVALSHA, XRANGE) that follows the deployment:
//! the one server, the current Sentinel master, or the node owning each key's slot.
//!
//! ```text
//! RedisBroker::commands() -> Commands (cached; a lost connection or a new master rebuilds it)
//! ```

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::Mutex;

use super::endpoint::Endpoint;
use crate::redis::COMMAND_TIMEOUT;

/// A command connection; cheap to clone (all variants are multiplexed).
#[derive(Clone)]
pub enum Commands {
    /// One server; reconnects by itself.
    Single(ConnectionManager),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
        }
    }
}

/// The cached [`Commands`] of one endpoint.
#[derive(Default)]
pub struct CommandConn {
    // An async mutex on purpose: callers arriving while a connection is being opened wait for
    // that one instead of each opening their own.
    cached: Mutex<Option<Commands>>,
}

impl CommandConn {
    /// The cached connection, or a new one.
    pub async fn get(&self, endpoint: &Endpoint) -> RedisResult<Commands> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            return Ok(c.clone());
        }
        let client = endpoint.client().await?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let conn = Commands::Single(ConnectionManager::new_with_config(client, config).await?);
        *cached = Some(conn.clone());
        Ok(conn)
    }
}
