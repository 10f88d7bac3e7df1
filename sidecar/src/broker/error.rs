//! What failed on a connection to Redis, typed and with its cause kept: connecting, a command
//! (subscribe, ping, a script, a Channels pipeline), no answer in time, a closed socket, a
//! subscription that fell behind, a Sentinel failover.
//!
//! ```text
//! redis-rs error | timeout | closed | inbox full --> LinkError --> link driver: log it (with the
//!                                                                  redacted server and a TLS hint),
//!                                                                  report down, reconnect
//! ```

use std::future::Future;
use std::time::Duration;

use super::tls;

/// A failure on a link to Redis (or of one command on the command connection).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Opening the connection failed: DNS, refused, TLS, AUTH, a sentinel without an answer.
    #[error("connect: {source}")]
    Connect {
        #[source]
        source: redis::RedisError,
    },
    /// A command failed; `what` names it (and its groups or channel).
    #[error("{what}: {source}")]
    Command {
        what: String,
        #[source]
        source: redis::RedisError,
    },
    /// A connect or a command got no answer in time.
    #[error("{what}: no answer within {}s", after.as_secs())]
    Timeout { what: String, after: Duration },
    /// An answer of a shape the broker does not know (a foreign script of the same name?).
    #[error("{what}: unexpected reply ({detail})")]
    Reply { what: &'static str, detail: String },
    /// The server closed the connection.
    #[error("connection closed")]
    Closed,
    /// More received events waited for the hub than the inbox holds.
    #[error(
        "the sidecar fell more than {limit_mib} MiB of events behind Redis (more arrive than it \
         can hand to its clients: add replicas or CPU); dropping the subscription, clients with \
         history catch up"
    )]
    FellBehind { limit_mib: usize },
    /// A Sentinel failover named a new master: the link moves to it.
    #[error("the sentinels named a new master")]
    MasterMoved,
    /// One server of several (a Django Channels shard) failed.
    #[error("{server}: {source}")]
    Shard {
        server: String,
        #[source]
        source: Box<LinkError>,
    },
}

impl LinkError {
    /// What to check when connecting failed on TLS (the CA, the client certificate...).
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            LinkError::Connect { source } => tls::hint(source),
            LinkError::Shard { source, .. } => source.hint(),
            _ => None,
        }
    }

    /// This failure, on the Channels shard `server` (redacted).
    pub fn on(self, server: &str) -> Self {
        LinkError::Shard {
            server: server.to_owned(),
            source: Box::new(self),
        }
    }
}

/// Runs a Redis command future, bounded by `after`; `what` names it in the error.
pub async fn within<T>(
    after: Duration,
    what: impl FnOnce() -> String,
    command: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(after, command).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(LinkError::Command {
            what: what(),
            source,
        }),
        Err(_) => Err(LinkError::Timeout {
            what: what(),
            after,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_command_error_keeps_its_cause_and_a_silent_server_times_out() {
        let refused = redis::RedisError::from((redis::ErrorKind::Io, "connection refused"));
        let e = within(Duration::from_secs(5), || "ping".into(), async {
            Err::<(), _>(refused)
        })
        .await
        .unwrap_err();
        assert!(matches!(&e, LinkError::Command { what, .. } if what == "ping"));
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
        let e = within(
            Duration::from_secs(5),
            || "subscribe 2 groups".into(),
            std::future::pending::<redis::RedisResult<()>>(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "subscribe 2 groups: no answer within 5s");
        let shard = LinkError::Closed.on("redis://h:1");
        assert_eq!(shard.to_string(), "redis://h:1: connection closed");
        let cause = std::error::Error::source(&shard).map(ToString::to_string);
        assert_eq!(
            cause.as_deref(),
            Some("connection closed"),
            "the cause is kept"
        );
    }
}
