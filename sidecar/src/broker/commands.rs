//! A connection for ordinary commands (PUBLISH, EVALSHA, XRANGE) that follows the deployment:
//! the one server, the current Sentinel master, or the node owning each key's slot.
//!
//! ```text
//! RedisBroker::commands() -> CommandConn::get -> cached Commands
//!                               | the Sentinel master moved, or the last command lost the
//!                               | connection (CommandConn::failed): connect again
//! ```

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::Mutex;

use super::endpoint::Endpoint;
use super::sentinel::{Addr, addr_of};
use super::timeouts::COMMAND_TIMEOUT;

/// A command connection; cheap to clone (every variant is multiplexed).
#[derive(Clone)]
pub enum Commands {
    /// One server; reconnects by itself.
    Single(ConnectionManager),
    /// The Sentinel master it was opened to; replaced when the master moves.
    Master(MultiplexedConnection),
    /// A Redis Cluster: each command goes to the node owning its key's (or channel's) slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Master(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
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
            Commands::Master(c) => c.req_packed_commands(cmd, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Master(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

struct Cached {
    /// The Sentinel master it goes to (`None` otherwise).
    master: Option<Addr>,
    conn: Commands,
}

/// The cached [`Commands`] of one endpoint.
#[derive(Default)]
pub struct CommandConn {
    // An async mutex on purpose: callers arriving while a connection is being opened wait for
    // that one instead of each opening their own.
    cached: Mutex<Option<Cached>>,
}

impl CommandConn {
    /// The cached connection, or a new one when there is none or the master moved.
    pub async fn get(&self, endpoint: &Endpoint) -> RedisResult<Commands> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.master == endpoint.current_master()
        {
            return Ok(c.conn.clone());
        }
        if let Some(cluster) = endpoint.cluster() {
            let conn = Commands::Cluster(cluster.commands()?.get_async_connection().await?);
            *cached = Some(Cached {
                master: None,
                conn: conn.clone(),
            });
            return Ok(conn);
        }
        let client = endpoint.client().await?;
        let (master, conn) = if endpoint.follows_master() {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(COMMAND_TIMEOUT))
                .set_response_timeout(Some(COMMAND_TIMEOUT));
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            (addr_of(&client), Commands::Master(conn))
        } else {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(COMMAND_TIMEOUT))
                .set_response_timeout(Some(COMMAND_TIMEOUT));
            let conn = ConnectionManager::new_with_config(client, config).await?;
            (None, Commands::Single(conn))
        };
        *cached = Some(Cached {
            master,
            conn: conn.clone(),
        });
        Ok(conn)
    }

    /// Tells the cache that a command failed with `error`; returns whether the connection was
    /// dropped for it (so one retry on a fresh connection makes sense).
    pub async fn failed(&self, error: &RedisError) -> bool {
        let stale = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            // A demoted master (Sentinel) answers writes with READONLY.
            || error.code() == Some("READONLY");
        if stale {
            *self.cached.lock().await = None;
        }
        stale
    }
}
