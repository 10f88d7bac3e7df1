//! Where a `taskstream.v1` client stands in each of its groups, and the two moments it is
//! caught up from history: when it connects with `last_id`s, and when the sidecar's own Redis
//! subscription was lost and re-made (pub/sub dropped whatever was published meanwhile).
//! Groups it names no `last_id` for get a position at connect instead (the newest stored id).
//!
//! ```text
//! connect (last_id) / resubscribed --> Broker::recover(group, position) --> events | reset --> client
//!                                          | last id sent = the group's floor
//! handshake (no last_id), before the 101 --> Broker::positions(groups) --> Placed
//!   session start --> {"type":"position"} per group  | the id read = the group's last id and floor
//! hub queue --live event--> admit(): id <= floor? drop (already sent from history) : send
//! ```
//!
//! The subscription is always live before history is read, so an event is either in what the
//! read returns or arrives live afterwards; the floor drops the live copies of the former. After
//! a lost subscription, sessions (with history) hold their live events from the loss until the
//! catch-up, so nothing published after the new subscription overtakes what it recovers.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::warn;

use crate::broker::Broker;
use crate::broker::history::{Recovery, ResetReason};
use crate::broker::id::StreamId;
use crate::hub::Event;
use crate::metrics::Metrics;
use crate::protocol;

/// Per group: the last id sent (to catch up from), and the floor under which live copies are
/// duplicates. One small slot per group the client has heard of, in one allocation (sized to
/// the groups as they come: a client has few), so that a `taskstream.v1` client holding its
/// positions costs about one slot per group while idle.
#[derive(Debug, Default)]
pub struct Positions {
    /// Exact size, one slot per group: a `Vec`'s capacity word would sit in every idle
    /// session.
    slots: Box<[Slot]>,
}

#[derive(Debug)]
struct Slot {
    group: Box<str>,
    last: Option<StreamId>,
    /// Live events at or before it were sent from history; cleared at the first one after.
    floor: Option<StreamId>,
}

impl Positions {
    /// Whether a live event goes out (false: already sent from history); records its id.
    pub fn admit(&mut self, ev: &Event) -> bool {
        let Some(id) = ev.id else {
            return true;
        };
        let slot = self.slot(&ev.group);
        if let Some(floor) = slot.floor {
            if id <= floor {
                return false;
            }
            // Past the seam: the group's live ids only grow from here.
            slot.floor = None;
        }
        slot.last = Some(id);
        true
    }

    fn sent_up_to(&mut self, group: &str, id: StreamId) {
        let slot = self.slot(group);
        slot.last = Some(id);
        slot.floor = Some(id);
    }

    fn forget(&mut self, group: &str) {
        if self.slots.iter().any(|s| &*s.group == group) {
            let mut slots = std::mem::take(&mut self.slots).into_vec();
            slots.retain(|s| &*s.group != group);
            self.slots = slots.into_boxed_slice();
        }
    }

    fn last(&self, group: &str) -> Option<StreamId> {
        self.slots
            .iter()
            .find(|s| &*s.group == group)
            .and_then(|s| s.last)
    }

    fn slot(&mut self, group: &str) -> &mut Slot {
        let i = match self.slots.iter().position(|s| &*s.group == group) {
            Some(i) => i,
            None => {
                // Grow by one: the default doubling would leave room for groups never joined.
                let mut slots = std::mem::take(&mut self.slots).into_vec();
                slots.reserve_exact(1);
                slots.push(Slot {
                    group: group.into(),
                    last: None,
                    floor: None,
                });
                self.slots = slots.into_boxed_slice();
                self.slots.len() - 1
            }
        };
        &mut self.slots[i]
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

/// What the handshake read for the groups a `taskstream.v1` client named no `last_id` for.
#[derive(Debug, Default)]
pub enum Placed {
    /// Not a `taskstream.v1` connection with history on, or every group resumed.
    #[default]
    Nothing,
    /// The id of each group's newest stored event ([`StreamId::ZERO`]: none).
    At(Vec<(String, StreamId)>),
    /// The subscription was not confirmed (Redis down) or the read failed: later events could
    /// be missing, so each group gets a reset (`unavailable`), as a resume would.
    Unavailable(Vec<String>),
}

/// Positions at connect, read during the handshake: after the subscription is confirmed and
/// before the 101, so that every event published after the handshake has an id after the
/// position (read after the 101, the events in between would fall at or before it, and be
/// lost to a client that only then learns where it stands). One round trip for all groups.
pub async fn read_positions(
    broker: &Broker,
    v1: bool,
    groups: &[Arc<str>],
    resumed: &[(String, StreamId)],
    confirmed: bool,
    timeout: Duration,
) -> Placed {
    if !v1 || broker.history().is_none() {
        return Placed::Nothing; // no ids to stand on: a resume says `history_off`
    }
    let unplaced: Vec<&str> = groups
        .iter()
        .map(|g| &**g)
        .filter(|g| !resumed.iter().any(|(r, _)| r == g))
        .collect();
    if unplaced.is_empty() {
        return Placed::Nothing;
    }
    if confirmed {
        match tokio::time::timeout(timeout, broker.positions(&unplaced)).await {
            Ok(Ok(ids)) => {
                return Placed::At(unplaced.iter().map(|g| g.to_string()).zip(ids).collect());
            }
            Ok(Err(e)) => {
                warn!(groups = unplaced.len(), error = %e, "no positions at connect; the client gets a reset for those groups and refetches their state");
            }
            Err(_) => {
                warn!(
                    groups = unplaced.len(),
                    ?timeout,
                    "positions at connect timed out; the client gets a reset for those groups and refetches their state"
                );
            }
        }
    }
    // Unconfirmed: Redis is known down (or slow to subscribe); not logged per connection.
    Placed::Unavailable(unplaced.iter().map(|g| g.to_string()).collect())
}

/// Sends what [`read_positions`] found, before any live event: a `position` frame per group,
/// whose id becomes the group's last id and floor (live copies at or before it are dropped, and
/// a lost subscription is caught up from it), or a reset per group.
pub async fn place<S>(
    sink: &mut S,
    metrics: &Metrics,
    placed: Placed,
    positions: &mut Positions,
) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    match placed {
        Placed::Nothing => return Ok(()),
        Placed::At(at) => {
            for (group, id) in at {
                positions.sent_up_to(&group, id);
                sink.feed(Message::Text(protocol::position_frame(&group, id)))
                    .await?;
            }
        }
        Placed::Unavailable(groups) => {
            for group in groups {
                metrics.history_reset(ResetReason::Unavailable);
                let reset = Recovery::Reset(ResetReason::Unavailable);
                send(sink, &group, StreamId::ZERO, reset, positions).await?;
            }
        }
    }
    sink.flush().await
}

/// After the broker re-made a lost subscription: each group is caught up from the last id the
/// client got, or reset when there is none to start from (or no history).
pub async fn catch_up<S>(
    sink: &mut S,
    broker: &Broker,
    metrics: &Metrics,
    groups: &[Arc<str>],
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
    use bytes::Bytes;

    use super::*;
    use crate::broker::history::HistoryConfig;
    use crate::hub::Hub;

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

    /// Positions read from a memory broker (history on unless `history` is `None`) for a
    /// client of `groups` that resumed `resumed`; returns the frames sent and the positions.
    async fn placed(
        history: Option<HistoryConfig>,
        publish: &[(&str, &str)],
        groups: &[&str],
        resumed: &[(String, StreamId)],
        confirmed: bool,
    ) -> (Vec<serde_json::Value>, Positions, Vec<StreamId>) {
        let metrics = Metrics::default();
        let hub = Hub::new(64, 1 << 20, true, metrics.clone());
        let broker = Broker::memory(hub.clone(), history, metrics.clone());
        let mut ids = Vec::new();
        for (g, payload) in publish {
            let p = broker.publish(g, Bytes::from(payload.to_string())).await;
            ids.extend(p.expect("memory publish").id);
        }
        let groups: Vec<Arc<str>> = groups.iter().map(|&g| g.into()).collect();
        let mut sink = Vec::<Message>::new().sink_map_err(|e: std::convert::Infallible| match e {});
        let mut positions = Positions::default();
        let wait = std::time::Duration::from_secs(5);
        let placed = read_positions(&broker, true, &groups, resumed, confirmed, wait).await;
        place(&mut sink, &metrics, placed, &mut positions)
            .await
            .expect("place");
        let frames = sink
            .into_inner()
            .into_iter()
            .map(|m| serde_json::from_str(m.to_text().expect("text")).expect("JSON frame"))
            .collect();
        (frames, positions, ids)
    }

    const HISTORY: Option<HistoryConfig> = Some(HistoryConfig {
        size: 10,
        ttl: std::time::Duration::from_secs(60),
    });

    #[tokio::test]
    async fn each_group_without_a_last_id_gets_its_newest_id_or_zero_and_live_copies_at_or_before_it_are_dropped()
     {
        let (frames, mut p, ids) = placed(
            HISTORY,
            &[("old", "1"), ("old", "2")],
            &["old", "new", "resumed"],
            &[("resumed".into(), StreamId::ZERO)],
            true,
        )
        .await;
        let newest = ids[1];
        assert_eq!(
            frames,
            vec![
                serde_json::json!({"type":"position","group":"old","id":newest.to_string()}),
                serde_json::json!({"type":"position","group":"new","id":"0"}),
            ],
            "one frame per group without a last_id, none for the resumed one"
        );
        assert!(
            !p.admit(&ev("old", Some(&ids[0].to_string()))),
            "before the position"
        );
        assert!(
            !p.admit(&ev("old", Some(&newest.to_string()))),
            "at the position"
        );
        let after = StreamId {
            ms: newest.ms,
            seq: newest.seq + 1,
        };
        assert!(p.admit(&ev("old", Some(&after.to_string()))), "after it");
        assert!(p.admit(&ev("new", Some("1-0"))), "after 0: everything");
        assert_eq!(
            p.last("old"),
            Some(after),
            "a lost subscription catches up from here"
        );
        assert_eq!(
            p.last("resumed"),
            None,
            "resumed groups are resume's business"
        );
    }

    #[tokio::test]
    async fn history_off_sends_no_positions() {
        let (frames, p, _) = placed(None, &[("g", "1")], &["g", "h"], &[], true).await;
        assert!(frames.is_empty(), "{frames:?}");
        assert_eq!(p.last("g"), None);
    }

    #[tokio::test]
    async fn an_unconfirmed_subscription_gets_resets_instead_of_positions() {
        let (frames, p, _) = placed(HISTORY, &[("g", "1")], &["g"], &[], false).await;
        assert_eq!(
            frames,
            vec![serde_json::json!({"type":"reset","group":"g","reason":"unavailable"})]
        );
        assert_eq!(p.last("g"), None);
    }
}
