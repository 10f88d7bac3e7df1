//! JWT verification keys from an identity provider's JWKS endpoint (`--jwt-jwks-url`).
//!
//! ```text
//!                      +-- start: fetch, retry 1 s..60 s until a first good set (/readyz waits)
//! [run task] ----------+-- then: refetch after Cache-Control max-age, clamped to [1 min, 1 day]
//!     |                     (5 min without the header); errors retry 1 s..60 s
//!     v
//! gate (tokio Mutex: one fetch at a time) --> fetcher --HTTPS--> IdP
//!     |                                          |
//!     |      good set: swap it in   <------------+  bad answer (error, >1 MiB, not JSON,
//!     v                                             no usable key): keep the last good set,
//! current: RwLock<Arc<KeySet>> <-- handshake: kid -> key   count it, warn
//!                                     | unknown kid: refetch through the gate, at most once
//!                                     |   per 10 s for all requests together, then look again
//! ```
//!
//! The read lock is held only to clone an `Arc`, never across an `.await`; the gate is a tokio
//! Mutex because holding it across the fetch is the point: requests with an unknown `kid`
//! that arrive during a fetch wait for it and then see its result instead of fetching again.

mod fetch;
mod keys;
#[cfg(test)]
mod tests;

use std::error::Error as StdError;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use jsonwebtoken::Algorithm;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::pki_types::CertificateDer;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use fetch::{Fetch, HttpsFetcher};
#[cfg(test)]
use fetch::{Fetched, MAX_BODY, max_age};
pub use keys::{KeySet, ParseError, VerifyKey, parse};

use crate::error::ConfigError;
use crate::health::Health;

/// An unknown `kid` refetches the set at most this often (all requests together).
pub const UNKNOWN_KID_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Bounds of the refresh interval a `Cache-Control: max-age` may ask for.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// Refresh interval when the server sends no `max-age`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5 * 60);
/// Retry delays after a failed fetch: 1 s doubling to 60 s.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// `--jwt-jwks-url` and `--jwt-jwks-ca-file`, validated.
#[derive(Clone, Debug)]
pub struct JwksConfig {
    pub url: Uri,
    /// CA certificates to trust instead of the system roots.
    pub roots: Option<Vec<CertificateDer<'static>>>,
}

/// Why a fetch did not give a new set. The last good set keeps serving either way.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("GET {url}: {}", chain(source.as_ref()))]
    Request {
        url: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    #[error("GET {url}: no complete answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("GET {url}: answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("GET {url}: body larger than {limit} bytes, refused")]
    TooLarge { url: String, limit: usize },
    #[error("GET {url}: {source}")]
    Refused {
        url: String,
        #[source]
        source: ParseError,
    },
}

impl JwksError {
    /// `result` label of `taskstream_jwks_refresh_total`: `error` (the server could not be
    /// asked) or `refused` (it answered something that is not a usable key set).
    pub fn result_label(&self) -> &'static str {
        match self {
            JwksError::Request { .. } | JwksError::Timeout { .. } | JwksError::Status { .. } => {
                "error"
            }
            JwksError::TooLarge { .. } | JwksError::Refused { .. } => "refused",
        }
    }
}

/// An error and its causes on one line (hyper's own message is only "client error (Connect)").
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Why a token found no key; becomes the handshake's answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyMiss {
    #[error("signing keys not loaded yet, try again later")]
    NotLoaded,
    #[error("token malformed or not accepted")]
    Malformed,
    #[error("token has no kid header: the key is chosen by kid")]
    NoKid,
    #[error("token kid is not in the identity provider's key set")]
    UnknownKid,
    #[error("token algorithm does not match its key")]
    AlgorithmMismatch,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabel {
    result: &'static str,
    trigger: &'static str,
}

/// Metrics of the key source, cheap to clone.
#[derive(Clone, Default)]
pub struct JwksMetrics {
    refreshes: Family<RefreshLabel, Counter>,
    keys: Gauge,
    last_success: Gauge,
}

/// What started a fetch (`trigger` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Start,
    Schedule,
    UnknownKid,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Schedule => "schedule",
            Trigger::UnknownKid => "unknown_kid",
        }
    }
}

struct Gate {
    /// The last refetch an unknown `kid` caused (scheduled fetches do not count: a new key
    /// published just after one must not wait for the next).
    last_unknown_kid: Option<Instant>,
    /// When the background task fetches next.
    next_due: Instant,
    retry: Duration,
    /// The body of the set in use: skipped keys are reported again only when it changes.
    last_body: Option<Bytes>,
}

/// The key source: the set in use, and the one way to replace it.
pub struct Jwks {
    url: String,
    fetcher: Box<dyn Fetch>,
    current: RwLock<Option<Arc<KeySet>>>,
    gate: tokio::sync::Mutex<Gate>,
    metrics: JwksMetrics,
}

impl Jwks {
    /// The HTTPS source for `config`; nothing is fetched until [`Jwks::run`].
    pub fn new(config: &JwksConfig) -> Result<Self, ConfigError> {
        let fetcher = HttpsFetcher::new(config.url.clone(), config.roots.as_deref())?;
        Ok(Self::with_fetcher(
            config.url.to_string(),
            Box::new(fetcher),
        ))
    }

    pub fn with_fetcher(url: String, fetcher: Box<dyn Fetch>) -> Self {
        Self {
            url,
            fetcher,
            current: RwLock::new(None),
            gate: tokio::sync::Mutex::new(Gate {
                last_unknown_kid: None,
                next_due: Instant::now(),
                retry: RETRY_MIN,
                last_body: None,
            }),
            metrics: JwksMetrics::default(),
        }
    }

    /// Registers `taskstream_jwks_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("taskstream");
        r.register(
            "jwks_refresh",
            "JWKS fetches, by result (ok, error: not reachable or not 2xx, refused: over 1 MiB, not a JWK Set or no usable key) and trigger (start, schedule, unknown_kid)",
            self.metrics.refreshes.clone(),
        );
        r.register(
            "jwks_keys",
            "Usable verification keys in the JWKS set in use",
            self.metrics.keys.clone(),
        );
        r.register(
            "jwks_last_success_timestamp_seconds",
            "Unix time of the last JWKS fetch that gave a usable set",
            self.metrics.last_success.clone(),
        );
    }

    /// Whether a first good set has arrived.
    pub fn loaded(&self) -> bool {
        self.snapshot().is_some()
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lookup(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.snapshot()?.get(kid)
    }

    /// The key a token names by `kid`, and the algorithm to verify it with (the token's own,
    /// once it is known to fit the key). An unknown `kid` refetches the set (rate-limited).
    pub async fn key_for(&self, token: &str) -> Result<(Arc<VerifyKey>, Algorithm), KeyMiss> {
        // A header that is not JSON, or names `none` or an unknown algorithm, fails here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| KeyMiss::Malformed)?;
        let kid = header.kid.ok_or(KeyMiss::NoKid)?;
        let key = self.key(&kid).await?;
        if !key.algorithms.contains(&header.alg) {
            return Err(KeyMiss::AlgorithmMismatch);
        }
        Ok((key, header.alg))
    }

    /// The key with `kid`; when it is not in the set, one refetch (shared, at most one per
    /// [`UNKNOWN_KID_MIN_INTERVAL`]) and a second look.
    pub async fn key(&self, kid: &str) -> Result<Arc<VerifyKey>, KeyMiss> {
        if let Some(key) = self.lookup(kid) {
            return Ok(key);
        }
        if !self.loaded() {
            // The run task is already fetching and retrying.
            return Err(KeyMiss::NotLoaded);
        }
        {
            let mut gate = self.gate.lock().await;
            let recent = gate
                .last_unknown_kid
                .is_some_and(|t| t.elapsed() < UNKNOWN_KID_MIN_INTERVAL);
            // Looked up again: the fetch this request waited for may have brought the key.
            if !recent && self.lookup(kid).is_none() {
                debug!(kid, "unknown JWT kid: refetching the JWKS");
                gate.last_unknown_kid = Some(Instant::now());
                self.refresh(&mut gate, Trigger::UnknownKid).await;
            }
        }
        self.lookup(kid).ok_or(KeyMiss::UnknownKid)
    }

    /// Fetches until a first good set, then keeps it fresh, until `stop`. `/readyz` answers 503
    /// until the first set is in (the caller marks the keys pending before serving).
    pub async fn run(self: Arc<Self>, health: Arc<Health>, stop: CancellationToken) {
        loop {
            let due = self.gate.lock().await.next_due;
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
            }
            let mut gate = self.gate.lock().await;
            if Instant::now() < gate.next_due {
                continue; // an unknown-kid fetch came in between and moved the deadline
            }
            let trigger = if self.loaded() {
                Trigger::Schedule
            } else {
                Trigger::Start
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                ok = self.refresh(&mut gate, trigger) => if ok { health.set_keys_pending(false) },
            }
        }
    }

    /// One fetch; swaps the set in when it is good. Returns whether it was.
    async fn refresh(&self, gate: &mut Gate, trigger: Trigger) -> bool {
        let started = Instant::now();
        let outcome = match self.fetcher.fetch().await {
            Ok(fetched) => match parse(&fetched.body) {
                Ok((set, skipped)) => Ok((set, skipped, fetched)),
                Err(source) => Err(JwksError::Refused {
                    url: self.url.clone(),
                    source,
                }),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok((set, skipped, fetched)) => {
                let every = refresh_after(fetched.max_age);
                if gate.last_body.as_ref() != Some(&fetched.body) {
                    for s in &skipped {
                        let kid = s.kid.as_deref().unwrap_or("<none>");
                        if s.other_use {
                            debug!(url = %self.url, kid, "JWKS key not used: {}", s.why);
                        } else {
                            warn!(url = %self.url, kid, "JWKS key refused: {}", s.why);
                        }
                    }
                    info!(url = %self.url, kids = ?set.kids(), refresh_every = ?every, trigger = trigger.label(), "JWKS key set loaded");
                    gate.last_body = Some(fetched.body);
                }
                self.metrics.keys.set(set.len() as i64);
                self.metrics.last_success.set(unix_now());
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(set));
                self.count("ok", trigger);
                gate.next_due = started + every;
                gate.retry = RETRY_MIN;
                true
            }
            Err(e) => {
                if self.loaded() {
                    warn!(trigger = trigger.label(), retry_in = ?gate.retry, "JWKS refresh failed, keeping the last good key set: {e}");
                } else {
                    warn!(trigger = trigger.label(), retry_in = ?gate.retry, "JWKS fetch failed; no key set yet, so JWT clients get 503 and /readyz stays 503: {e}");
                }
                self.count(e.result_label(), trigger);
                gate.next_due = started + gate.retry;
                gate.retry = (gate.retry * 2).min(RETRY_MAX);
                false
            }
        }
    }

    fn count(&self, result: &'static str, trigger: Trigger) {
        self.metrics
            .refreshes
            .get_or_create(&RefreshLabel {
                result,
                trigger: trigger.label(),
            })
            .inc();
    }
}

/// The refresh interval for a `max-age`: clamped to [1 min, 1 day], 5 min without one.
pub fn refresh_after(max_age: Option<Duration>) -> Duration {
    max_age
        .unwrap_or(DEFAULT_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
