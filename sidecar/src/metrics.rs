//! Prometheus metrics of the sidecar (`taskstream_` prefix), served on the admin port.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::broker::history::model::ResetReason;
use prometheus_client::registry::Registry;

/// Why a WebSocket handshake was refused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum RejectReason {
    Unauthorized,
    Forbidden,
    Origin,
    BadRequest,
    Limit,
    AuthUnavailable,
    ShuttingDown,
}

/// Why an event did not reach a client.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum DropReason {
    /// The payload was not UTF-8 and cannot be a text frame.
    NonUtf8,
    /// The client's send queue was full; the client is closed with 1013.
    SlowClient,
    /// A Django Channels message that is not msgpack, not a map, or lacks `type`/`data`.
    Malformed,
    /// A Django Channels message no `--channels-symmetric-encryption-keys` key decrypts.
    Undecryptable,
    /// Larger than `--max-event-bytes`.
    TooLarge,
}

/// Why a client connection ended, as seen by the sidecar.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum CloseReason {
    /// The client closed, or its connection ended.
    Client,
    /// Its event queue overflowed (1013).
    SlowClient,
    /// Silent for two ping intervals, or a ping could not be sent in time.
    Timeout,
    /// A frame or message above `--max-message-bytes` (1009).
    TooBig,
    /// A WebSocket protocol violation (1002).
    Protocol,
    /// A text frame that is not UTF-8 (1007).
    InvalidUtf8,
    /// It did not read what we had to write (pongs, close) past the bound (1008).
    Unread,
    /// A write to it failed (connection reset).
    Gone,
    /// The sidecar shut down (1001).
    Shutdown,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabel {
    pub reason: RejectReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    pub reason: DropReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    pub reason: CloseReason,
}

/// What a history read was for.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ReadKind {
    /// Events a resuming client missed (`last_id`, or a lost subscription's catch-up).
    Resume,
    /// Positions at connect (groups without a `last_id`).
    Positions,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabel {
    pub read: ReadKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResetLabel {
    pub reason: ResetReason,
}

/// Seconds per history read: 0.25 ms to 2 s.
#[derive(Clone)]
pub struct ReadSeconds(Histogram);

impl Default for ReadSeconds {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(0.00025, 2.0, 14)))
    }
}

impl ReadSeconds {
    pub fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }
}

/// Seconds from an event's publish (its history id, stamped by Redis) to its queueing to the
/// group's local clients: 1 ms to ~8 s. Events published without history carry no time.
#[derive(Clone)]
pub struct DeliverySeconds(Histogram);

impl Default for DeliverySeconds {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(0.001, 2.0, 14)))
    }
}

impl DeliverySeconds {
    /// Observes the delivery of an event published at `published_ms` (Unix milliseconds, from
    /// Redis's clock). A clock behind Redis's counts as 0, never as negative.
    pub fn observe_since(&self, published_ms: u64) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.0
            .observe(now_ms.saturating_sub(published_ms) as f64 / 1000.0);
    }
}

/// Seconds until the app's response headers, per proxied request: 1 ms to ~33 s.
#[derive(Clone)]
pub struct ProxySeconds(Histogram);

impl Default for ProxySeconds {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(0.001, 2.0, 16)))
    }
}

impl ProxySeconds {
    pub fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: &'static str,
}

/// All metrics, cheap to clone (each is an `Arc` inside).
#[derive(Clone, Default)]
pub struct Metrics {
    pub connections: Gauge,
    pub connections_rejected: Family<RejectLabel, Counter>,
    pub connections_closed: Family<CloseLabel, Counter>,
    pub events_received: Counter,
    pub events_delivered: Counter,
    pub events_dropped: Family<DropLabel, Counter>,
    pub groups_subscribed: Gauge,
    pub broker_up: Gauge,
    pub redis_reconnects: Counter,
    pub proxied_requests: Family<ClassLabel, Counter>,
    pub history_recovered: Counter,
    pub history_resets: Family<ResetLabel, Counter>,
    pub history_read_seconds: ReadSeconds,
    pub history_reads: Family<ReadLabel, Counter>,
    pub history_read_requests: Family<ReadLabel, Counter>,
    pub delivery_seconds: DeliverySeconds,
    pub proxy_response_seconds: ProxySeconds,
}

impl Metrics {
    /// Registers every metric under the `taskstream` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("taskstream");
        r.register(
            "connections",
            "WebSocket clients connected now",
            self.connections.clone(),
        );
        r.register(
            "connections_rejected",
            "WebSocket handshakes refused, by reason",
            self.connections_rejected.clone(),
        );
        r.register(
            "connections_closed",
            "WebSocket connections ended, by reason",
            self.connections_closed.clone(),
        );
        r.register(
            "events_received",
            "Events received from the broker",
            self.events_received.clone(),
        );
        r.register(
            "events_delivered",
            "Events queued to a client (one per client)",
            self.events_delivered.clone(),
        );
        r.register(
            "events_dropped",
            "Events not delivered, by reason",
            self.events_dropped.clone(),
        );
        r.register(
            "groups_subscribed",
            "Groups with at least one local client",
            self.groups_subscribed.clone(),
        );
        r.register(
            "broker_up",
            "1 while the broker connection is up",
            self.broker_up.clone(),
        );
        r.register(
            "redis_reconnects",
            "Redis connections re-established",
            self.redis_reconnects.clone(),
        );
        r.register(
            "proxied_requests",
            "Requests proxied to the app, by status class (1xx..5xx; error: the app did not answer; client_error: the client's request body broke)",
            self.proxied_requests.clone(),
        );
        r.register(
            "history_recovered_events",
            "Events a resuming client got from history",
            self.history_recovered.clone(),
        );
        r.register(
            "history_resets",
            "Resets sent instead of history (the client refetches the group), by reason",
            self.history_resets.clone(),
        );
        r.register(
            "history_read_seconds",
            "Time of one history read for a resuming client",
            self.history_read_seconds.0.clone(),
        );
        r.register(
            "history_reads",
            "History reads sent to Redis (script calls), by what they were for",
            self.history_reads.clone(),
        );
        r.register(
            "history_read_requests",
            "Clients' requests those reads answered (more than the reads: reads were shared), by what they were for",
            self.history_read_requests.clone(),
        );
        r.register(
            "delivery_seconds",
            "Time from an event's publish (its history id, Redis's clock) to its queueing to the local clients; events published with history only",
            self.delivery_seconds.0.clone(),
        );
        r.register(
            "proxy_response_seconds",
            "Time until the app's response headers, per request the app answered",
            self.proxy_response_seconds.0.clone(),
        );
    }

    /// One history read (or one batch of `reads` calls) that answered `requests` clients.
    pub fn history_read(
        &self,
        read: ReadKind,
        reads: usize,
        requests: usize,
        took: std::time::Duration,
    ) {
        let label = ReadLabel { read };
        self.history_reads
            .get_or_create(&label)
            .inc_by(reads as u64);
        self.history_read_requests
            .get_or_create(&label)
            .inc_by(requests as u64);
        self.history_read_seconds.observe(took.as_secs_f64());
    }

    pub fn history_reset(&self, reason: ResetReason) {
        self.history_resets
            .get_or_create(&ResetLabel { reason })
            .inc();
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.connections_rejected
            .get_or_create(&RejectLabel { reason })
            .inc();
    }

    pub fn closed(&self, reason: CloseReason) {
        self.connections_closed
            .get_or_create(&CloseLabel { reason })
            .inc();
    }

    pub fn dropped(&self, reason: DropReason) {
        self.events_dropped
            .get_or_create(&DropLabel { reason })
            .inc();
    }

    pub fn proxied(&self, status: Option<u16>) {
        let class = match status {
            Some(100..=199) => "1xx",
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(_) => "5xx",
            None => "error",
        };
        self.proxied_requests
            .get_or_create(&ClassLabel { class })
            .inc();
    }

    /// A request that never reached the app whole because the client's body broke.
    pub fn proxied_client_error(&self) {
        self.proxied_requests
            .get_or_create(&ClassLabel {
                class: "client_error",
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(metrics: &Metrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        out
    }

    #[test]
    fn delivery_time_counts_from_the_publish_and_never_below_zero() {
        let metrics = Metrics::default();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        // Published 3 s ago by Redis's clock; and one "from the future" (Redis's clock ahead).
        metrics.delivery_seconds.observe_since(now_ms - 3000);
        metrics.delivery_seconds.observe_since(now_ms + 60_000);
        let out = encode(&metrics);
        assert!(
            out.contains(r#"taskstream_delivery_seconds_bucket{le="0.001"} 1"#),
            "a clock behind Redis's counts as 0: {out}"
        );
        assert!(
            out.contains(r#"taskstream_delivery_seconds_bucket{le="2.048"} 1"#)
                && out.contains(r#"taskstream_delivery_seconds_bucket{le="4.096"} 2"#),
            "3 s lands between 2.048 and 4.096: {out}"
        );
        assert!(out.contains("taskstream_delivery_seconds_count 2"), "{out}");
    }

    #[test]
    fn proxy_response_time_is_a_histogram_of_seconds() {
        let metrics = Metrics::default();
        metrics.proxy_response_seconds.observe(0.0015);
        let out = encode(&metrics);
        assert!(
            out.contains(r#"taskstream_proxy_response_seconds_bucket{le="0.001"} 0"#)
                && out.contains(r#"taskstream_proxy_response_seconds_bucket{le="0.002"} 1"#),
            "{out}"
        );
    }
}
