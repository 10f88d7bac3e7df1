//! Error types of the sidecar: one enum for run-time failures, one for bad configuration.

use std::net::SocketAddr;

/// A flag with a bad value; the message names the flag so the operator can fix it.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(flag: &'static str, message: impl Into<String>) -> Self {
        Self {
            flag,
            message: message.into(),
        }
    }
}

/// Run-time errors that end `run()`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error("bind {what} {addr}: {source} (is another process using the port?)")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("install signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
