//! Redis Sentinel: the master of `--redis-sentinel-master` is whatever the sentinels say it is
//! now. Asked (redis-rs `SentinelClient`, which also checks the node's `ROLE`) on every
//! (re)connect of the source and the publisher; a watcher subscribed to `+switch-master` on one
//! sentinel tells them at once when a failover has picked a new one.
//!
//! ```text
//!  sentinels --SENTINEL MASTERS--> master() -> (host, port) -> redis::Client (URL password/db, TLS)
//!      |                                           |
//!      +-- +switch-master --> watcher -------------+--> current (watch) --> source reconnects,
//!                                                                          publisher reconnects
//! ```

use futures_util::StreamExt;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult, TlsMode};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::timeouts::{COMMAND_TIMEOUT, PING_EVERY};
use super::tls::Tls;
use crate::backoff::Backoff;

/// Host and port of a master.
pub type Addr = (String, u16);

/// Host and port a client connects to.
pub fn addr_of(client: &redis::Client) -> Option<Addr> {
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
        _ => None,
    }
}

/// The sentinels of one master set.
pub struct Sentinel {
    // Async mutex: `SentinelClient` asks with `&mut self` (it caches sentinel connections); one
    // lookup at a time is what we want anyway.
    client: Mutex<SentinelClient>,
    /// Clients of each sentinel, for the `+switch-master` watcher.
    sentinels: Vec<(String, redis::Client)>,
    master_name: String,
    /// `--redis-url` parsed: password, db, protocol and scheme of the master (its host unused).
    base: ConnectionInfo,
    tls: Tls,
    /// The master last found or announced; the source and the publisher follow it.
    current: watch::Sender<Option<Addr>>,
}

impl Sentinel {
    pub fn new(
        url: &str,
        sentinels: &[(String, u16)],
        master_name: &str,
        password: Option<&str>,
        tls: &Tls,
    ) -> RedisResult<Self> {
        let base = url.into_connection_info()?;
        let secure = matches!(base.addr(), ConnectionAddr::TcpTls { .. });
        let settings = base.redis_settings();
        // The sentinels speak TLS when the master does (as in the common Helm charts).
        let addr = |host: &str, port: u16| {
            if secure {
                ConnectionAddr::TcpTls {
                    host: host.to_owned(),
                    port,
                    insecure: tls.insecure(),
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.to_owned(), port)
            }
        };
        let mut builder = SentinelClientBuilder::new(
            sentinels.iter().map(|(h, p)| addr(h, *p)),
            master_name,
            SentinelServerType::Master,
        )?
        .set_client_to_redis_db(settings.db())
        .set_client_to_redis_protocol(settings.protocol());
        if let Some(user) = settings.username() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(pw) = settings.password() {
            builder = builder.set_client_to_redis_password(pw);
        }
        if let Some(pw) = password {
            builder = builder.set_client_to_sentinel_password(pw);
        }
        if secure {
            super::tls::install_crypto_provider();
            let mode = if tls.insecure() {
                TlsMode::Insecure
            } else {
                TlsMode::Secure
            };
            builder = builder
                .set_client_to_redis_tls_mode(mode)
                .set_client_to_sentinel_tls_mode(mode);
            if let Some(certs) = tls.certificates() {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        let sentinel_clients = sentinels
            .iter()
            .map(|(h, p)| {
                let mut info = addr(h, *p).into_connection_info()?;
                if let Some(pw) = password {
                    info = info
                        .set_redis_settings(redis::RedisConnectionInfo::default().set_password(pw));
                }
                Ok((format!("{h}:{p}"), tls.client(info)?))
            })
            .collect::<RedisResult<Vec<_>>>()?;
        Ok(Self {
            client: Mutex::new(builder.build()?),
            sentinels: sentinel_clients,
            master_name: master_name.to_owned(),
            base,
            tls: tls.clone(),
            current: watch::channel(None).0,
        })
    }

    /// Asks the sentinels for the master now and returns a client for it.
    pub async fn master(&self) -> RedisResult<redis::Client> {
        let found = {
            let mut client = self.client.lock().await;
            tokio::time::timeout(COMMAND_TIMEOUT, client.async_get_client())
                .await
                .map_err(|_| {
                    redis::RedisError::from((redis::ErrorKind::Io, "sentinel: no answer within 5s"))
                })??
        };
        let addr = addr_of(&found).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "sentinel named a master that is not host:port",
            ))
        })?;
        self.set_current(addr.clone(), "asked the sentinels");
        self.client_for(&addr)
    }

    /// A client for the master at `addr` with the URL's settings and the TLS flags (built here
    /// rather than taken from redis-rs, so a client certificate applies in every TLS mode).
    fn client_for(&self, (host, port): &Addr) -> RedisResult<redis::Client> {
        let addr = match self.base.addr() {
            ConnectionAddr::TcpTls { .. } => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.clone(), *port),
        };
        self.tls.client(self.base.clone().set_addr(addr))
    }

    /// The master last found or announced.
    pub fn current(&self) -> Option<Addr> {
        self.current.borrow().clone()
    }

    /// Changes of [`Sentinel::current`].
    pub fn subscribe(&self) -> watch::Receiver<Option<Addr>> {
        self.current.subscribe()
    }

    fn set_current(&self, addr: Addr, how: &str) {
        let changed = self.current.send_if_modified(|cur| {
            if cur.as_ref() == Some(&addr) {
                false
            } else {
                *cur = Some(addr.clone());
                true
            }
        });
        if changed {
            info!(master = %format!("{}:{}", addr.0, addr.1), name = %self.master_name, "sentinel: master is {}:{} ({how})", addr.0, addr.1);
        }
    }

    /// Listens for `+switch-master` of our master set on one sentinel at a time (the next one
    /// when it fails) until `shutdown`.
    pub async fn watch(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut i = 0;
        loop {
            let (name, client) = &self.sentinels[i % self.sentinels.len()];
            i += 1;
            match self.listen(client, &shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(sentinel = %name, error = %e, "sentinel watcher: connection failed; trying the next sentinel")
                }
            }
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    async fn listen(
        &self,
        client: &redis::Client,
        shutdown: &CancellationToken,
    ) -> RedisResult<()> {
        let mut pubsub = tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| timeout_error())??;
        pubsub.subscribe("+switch-master").await?;
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "connection closed")));
                    };
                    // "<name> <old-ip> <old-port> <new-ip> <new-port>"
                    let text: String = msg.get_payload().unwrap_or_default();
                    let parts: Vec<&str> = text.split_whitespace().collect();
                    if let [name, _, _, ip, port] = parts[..]
                        && name == self.master_name
                        && let Ok(port) = port.parse()
                    {
                        self.set_current((ip.to_owned(), port), "+switch-master");
                    }
                }
                _ = ping.tick() => {
                    tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>())
                        .await
                        .map_err(|_| timeout_error())??;
                }
            }
        }
    }
}

fn timeout_error() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "no answer within 5s"))
}
