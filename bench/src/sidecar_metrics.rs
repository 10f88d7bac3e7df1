//! The sidecar's own counters, read from its admin `GET /metrics` (Prometheus text): whether the
//! Redis subscription was re-made and whether the sidecar dropped events, so a loss can be told
//! apart from a slow load tool.

use std::net::SocketAddr;

use serde::Serialize;

use crate::http::get;

/// The counters a run reports (totals since the sidecar started).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// `taskstream_redis_reconnects_total`: Redis subscriptions re-made after a loss.
    pub redis_reconnects: u64,
    /// `taskstream_events_dropped_total`, every reason (slow client, too large, ...).
    pub events_dropped: u64,
    /// `taskstream_connections_closed_total{reason="SlowClient"}`: clients closed with 1013.
    pub slow_client_closes: u64,
    /// `taskstream_history_recovered_events_total`: events resuming clients got from history.
    pub history_recovered: u64,
    /// `taskstream_history_resets_total`, every reason.
    pub history_resets: u64,
}

impl Counters {
    /// What changed since `before`.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            redis_reconnects: self
                .redis_reconnects
                .saturating_sub(before.redis_reconnects),
            events_dropped: self.events_dropped.saturating_sub(before.events_dropped),
            slow_client_closes: self
                .slow_client_closes
                .saturating_sub(before.slow_client_closes),
            history_recovered: self
                .history_recovered
                .saturating_sub(before.history_recovered),
            history_resets: self.history_resets.saturating_sub(before.history_resets),
        }
    }
}

/// Reads the counters; `None` if the server has no such endpoint (the baseline) or is gone.
pub async fn read(admin: SocketAddr) -> Option<Counters> {
    let (status, body) = get(admin, "/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    Some(parse(&String::from_utf8_lossy(&body)))
}

/// Sums the samples of the counters above in a Prometheus text exposition.
pub fn parse(text: &str) -> Counters {
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let value = value as u64;
        let name = series.split('{').next().unwrap_or(series);
        match name {
            "taskstream_redis_reconnects_total" => c.redis_reconnects += value,
            "taskstream_events_dropped_total" => c.events_dropped += value,
            "taskstream_history_recovered_events_total" => c.history_recovered += value,
            "taskstream_history_resets_total" => c.history_resets += value,
            "taskstream_connections_closed_total" if series.contains("reason=\"SlowClient\"") => {
                c.slow_client_closes += value
            }
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_counters() {
        let text = "# HELP x\n\
            taskstream_redis_reconnects_total 2\n\
            taskstream_events_dropped_total{reason=\"SlowClient\"} 5\n\
            taskstream_events_dropped_total{reason=\"TooLarge\"} 1\n\
            taskstream_connections_closed_total{reason=\"SlowClient\"} 3\n\
            taskstream_connections_closed_total{reason=\"Client\"} 9\n\
            taskstream_history_recovered_events_total 40\n\
            taskstream_history_resets_total{reason=\"Trimmed\"} 1\n\
            # EOF\n";
        assert_eq!(
            parse(text),
            Counters {
                redis_reconnects: 2,
                events_dropped: 6,
                slow_client_closes: 3,
                history_recovered: 40,
                history_resets: 1,
            }
        );
    }
}
