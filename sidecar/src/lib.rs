//! taskstream sidecar: terminates WebSockets on the task path, relays the events the app
//! publishes to Redis to the right clients, and proxies every other request to the app.
//!
//! ```text
//! browser --ws--> [server] --upgrade--> [session] <--bounded queue-- [hub] <-- [redis source] <-- Redis
//! browser --http-> [server] ---------> [proxy] ---------------------------------> app (localhost)
//! ```

// What other crates use (the binary, the cross-component tests, the operator's contract
// test): the configuration, the error type, `run` and the history publish script. The rest is
// the crate's own, so the compiler reports what nothing uses.
pub mod config;
pub mod error;

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod backoff;
pub(crate) mod broker;
pub(crate) mod channels;
pub(crate) mod duration;
pub(crate) mod health;
pub(crate) mod hub;
pub(crate) mod jwks;
pub(crate) mod memory;
pub(crate) mod metrics;
pub(crate) mod origin;
pub(crate) mod protocol;
pub(crate) mod proxy;
pub(crate) mod resume;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod stall;

pub use broker::history::PUBLISH_SCRIPT;
pub use broker::options::Topology;
// The reason labels of the metrics, for the test that checks the dashboards against them.
pub use broker::history::ResetReason;
pub use metrics::{CloseReason, DropReason, RejectReason};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::broker::endpoint::Endpoint;
use crate::broker::redis::RedisBroker;
use crate::config::{AuthConfig, BrokerConfig, Config, Protocol};
use crate::error::{ConfigError, Error, Result};
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::server::Shared;

/// Addresses the sidecar actually listens on (useful when configured with port 0).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

/// Runs the sidecar until `stop` resolves, then shuts down gracefully:
/// `/readyz` turns 503, listeners close, clients get close 1001, in-flight proxied requests
/// finish within `--shutdown-grace`. `on_bound` is told the bound addresses once listening.
pub async fn run(
    config: Config,
    stop: impl Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> Result<()> {
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let health = Arc::new(Health::new(config.ready_requires_broker));
    let hub = Hub::new(
        config.send_queue,
        config.max_event_bytes,
        matches!(config.broker, BrokerConfig::Memory),
        metrics.clone(),
    );
    let upstream = Upstream::new(config.upstream.clone(), metrics.clone());
    let auth = Authenticator::new(&config.auth, upstream.clone())?;
    // Not ready until the first key set is in; marked before any listener answers /readyz.
    let jwks_stop = CancellationToken::new();
    let jwks_task = auth.jwks().map(|jwks| {
        jwks.register(&mut registry);
        health.set_keys_pending(true);
        tokio::spawn(jwks.clone().run(health.clone(), jwks_stop.clone()))
    });
    if let BrokerConfig::Redis { connect, .. } = &config.broker
        && connect.tls.insecure()
    {
        warn!(
            "--redis-tls-insecure: the Redis server certificate is not verified; anyone on the network path can read and forge events. Use --redis-ca-file instead"
        );
    }
    if matches!(config.auth, AuthConfig::None) {
        warn!(
            "--auth none: any client may join any group it names; use only for local development"
        );
    }

    let (public, public_addr) = bind("--listen", config.listen).await?;
    let (admin_listener, admin_addr) = bind("--admin-listen", config.admin_listen).await?;
    let bound = Bound {
        public: public_addr,
        admin: admin_addr,
    };

    let broker_stop = CancellationToken::new();
    let broker_task = match &config.broker {
        BrokerConfig::Memory => {
            crate::broker::link::report(&health, &metrics, true);
            None
        }
        BrokerConfig::Redis {
            url,
            connect,
            channel_prefix,
            protocol: Protocol::Pubsub,
        } => {
            let endpoint = Endpoint::new(url, connect)
                .map_err(|e| ConfigError::new("--redis-url", format!("invalid: {e}")))?;
            let redis = Arc::new(RedisBroker::new(endpoint, channel_prefix.clone()));
            let task = tokio::spawn(redis.clone().run(
                hub.clone(),
                health.clone(),
                metrics.clone(),
                broker_stop.clone(),
            ));
            Some((Some(redis), task))
        }
        // Django Channels: `/publish` stays local (the app publishes with group_send).
        BrokerConfig::Redis {
            protocol: Protocol::Channels(channels),
            ..
        } => {
            let task = channels::spawn(
                channels.clone(),
                hub.clone(),
                health.clone(),
                metrics.clone(),
                broker_stop.clone(),
            )?;
            Some((None, task))
        }
    };
    let broker = Arc::new(match &broker_task {
        Some((Some(redis), _)) => Broker::redis(redis.clone(), config.history, metrics.clone()),
        _ => Broker::memory(hub.clone(), config.history, metrics.clone()),
    });

    let admin_stop = CancellationToken::new();
    let admin = Arc::new(Admin {
        health: health.clone(),
        registry,
        broker: broker.clone(),
        max_event_bytes: config.max_event_bytes,
        publish_allow_remote: config.publish_allow_remote,
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin, admin_stop.clone()));

    let metrics = Arc::new(metrics);
    let sessions = Arc::new(session::Context {
        broker: broker.clone(),
        metrics: metrics.clone(),
        ping_interval: config.ping_interval,
        slots: Arc::new(Semaphore::new(config.max_connections)),
    });
    let shared = Arc::new(Shared {
        sessions,
        config,
        hub,
        broker,
        auth,
        upstream,
        metrics,
        health: health.clone(),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
    });
    info!(public = %bound.public, admin = %bound.admin, upstream = %shared.config.upstream, ws_path = %shared.config.ws_path, "taskstream sidecar listening");
    on_bound(bound);

    // The sessions' pings and shutdown: one clock for all of them (see hub::beat).
    tokio::spawn(hub::beat::run(
        shared.hub.clone(),
        shared.config.ping_interval,
        shared.shutdown.clone(),
    ));
    let server = tokio::spawn(server::serve(public, shared.clone()));
    stop.await;

    info!(grace = ?shared.config.shutdown_grace, "shutting down: readyz 503, closing clients with 1001, draining requests");
    health.set_shutting_down();
    shared.shutdown.cancel();
    let _ = server.await;
    shared.tasks.close();
    if tokio::time::timeout(shared.config.shutdown_grace, shared.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            left = shared.tasks.len(),
            "shutdown grace ran out; dropping remaining connections"
        );
    }
    broker_stop.cancel();
    if let Some((_, task)) = broker_task {
        let _ = task.await;
    }
    jwks_stop.cancel();
    if let Some(task) = jwks_task {
        let _ = task.await;
    }
    admin_stop.cancel();
    let _ = admin_task.await;
    info!("sidecar stopped");
    Ok(())
}

/// Binds `addr` (the value of `flag`) and returns the listener with its actual address.
async fn bind(flag: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let err = |source| Error::Bind {
        what: flag,
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
    })
}
