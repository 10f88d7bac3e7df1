//! Where a `taskstream.v1` client stands in each of its groups, and the two moments it is
//! caught up from history: when it connects with `last_id`s, and when the sidecar's own Redis
//! subscription was lost and re-made (pub/sub dropped whatever was published meanwhile).
//!
//! ```text
//! connect (last_id) / resubscribed --> Broker::recover(group, position) --> events | reset --> client
//!                                          | last id sent = the group's floor
//! hub queue --live event--> admit(): id <= floor? drop (already sent from history) : send
//! ```
//!
//! The subscription is always live before history is read, so an event is either in what the
//! read returns or arrives live afterwards; the floor drops the live copies of the former. After
//! a lost subscription, sessions (with history) hold their live events from the loss until the
//! catch-up, so nothing published after the new subscription overtakes what it recovers.

use futures_util::{Sink, SinkExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::broker::Broker;
use crate::broker::history::{Recovery, ResetReason};
use crate::broker::id::StreamId;
use crate::hub::Event;
use crate::metrics::Metrics;
use crate::protocol;

/// Per group: the last id sent (to catch up from), and the floor under which live copies are
/// duplicates. Small vectors: a client has few groups.
#[derive(Debug, Default)]
pub struct Positions {
    last: Vec<(Box<str>, StreamId)>,
    floors: Vec<(Box<str>, StreamId)>,
}

impl Positions {
    /// Whether a live event goes out (false: already sent from history); records its id.
    pub fn admit(&mut self, ev: &Event) -> bool {
        let Some(id) = ev.id else {
            return true;
        };
        if let Some(i) = self.floors.iter().position(|(g, _)| *g == ev.group) {
            if id <= self.floors[i].1 {
                return false;
            }
            // Past the seam: the group's live ids only grow from here.
            self.floors.swap_remove(i);
        }
        set(&mut self.last, &ev.group, id);
        true
    }

    fn sent_up_to(&mut self, group: &str, id: StreamId) {
        set(&mut self.last, group, id);
        set(&mut self.floors, group, id);
    }

    fn forget(&mut self, group: &str) {
        self.last.retain(|(g, _)| &**g != group);
        self.floors.retain(|(g, _)| &**g != group);
    }

    fn last(&self, group: &str) -> Option<StreamId> {
        self.last
            .iter()
            .find(|(g, _)| &**g == group)
            .map(|(_, id)| *id)
    }
}

fn set(v: &mut Vec<(Box<str>, StreamId)>, group: &str, id: StreamId) {
    match v.iter_mut().find(|(g, _)| &**g == group) {
        Some(slot) => slot.1 = id,
        None => v.push((group.into(), id)),
    }
}

/// Sends each resumed group's missed events, or a reset; `confirmed` says whether the
/// subscription was live before the read (else events after it could be lost: reset).
pub async fn resume<S>(
    sink: &mut S,
    broker: &Broker,
    metrics: &Metrics,
    resume: Vec<(String, StreamId)>,
    confirmed: bool,
    positions: &mut Positions,
) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    for (group, last) in resume {
        let recovery = if confirmed {
            broker.recover(&group, last).await
        } else {
            metrics.history_reset(ResetReason::Unavailable);
            Recovery::Reset(ResetReason::Unavailable)
        };
        send(sink, &group, last, recovery, positions).await?;
    }
    sink.flush().await
}

/// After the broker re-made a lost subscription: each group is caught up from the last id the
/// client got, or reset when there is none to start from (or no history).
pub async fn catch_up<S>(
    sink: &mut S,
    broker: &Broker,
    metrics: &Metrics,
    groups: &[String],
    positions: &mut Positions,
) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    for group in groups {
        let recovery = match (broker.history(), positions.last(group)) {
            (Some(_), Some(last)) => broker.recover(group, last).await,
            (Some(_), None) => {
                metrics.history_reset(ResetReason::Reconnected);
                Recovery::Reset(ResetReason::Reconnected)
            }
            (None, _) => {
                metrics.history_reset(ResetReason::HistoryOff);
                Recovery::Reset(ResetReason::HistoryOff)
            }
        };
        let from = positions.last(group).unwrap_or(StreamId::ZERO);
        send(sink, group, from, recovery, positions).await?;
    }
    sink.flush().await
}

async fn send<S>(
    sink: &mut S,
    group: &str,
    from: StreamId,
    recovery: Recovery,
    positions: &mut Positions,
) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    match recovery {
        Recovery::Events(events) => {
            let mut upto = from;
            for (id, payload) in events {
                sink.feed(Message::Text(protocol::event_frame(
                    group,
                    Some(id),
                    &payload,
                )))
                .await?;
                upto = id;
            }
            positions.sent_up_to(group, upto);
        }
        Recovery::Reset(reason) => {
            positions.forget(group);
            sink.feed(Message::Text(protocol::reset_frame(group, reason)))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(group: &str, id: Option<&str>) -> std::sync::Arc<Event> {
        Event::new(group, id.and_then(StreamId::parse), "x".into())
    }

    #[test]
    fn live_copies_at_or_below_the_floor_are_dropped_once_past_it_all_pass() {
        let mut p = Positions::default();
        p.sent_up_to("g", StreamId::parse("10-0").unwrap());
        assert!(!p.admit(&ev("g", Some("9-0"))));
        assert!(!p.admit(&ev("g", Some("10-0"))));
        assert!(
            p.admit(&ev("h", Some("1-0"))),
            "other groups are not held back"
        );
        assert!(p.admit(&ev("g", None)), "live-only events always pass");
        assert!(p.admit(&ev("g", Some("11-0"))));
        assert_eq!(p.last("g"), StreamId::parse("11-0"));
        p.forget("g");
        assert_eq!(p.last("g"), None);
        assert_eq!(p.last("h"), StreamId::parse("1-0"));
    }
}
