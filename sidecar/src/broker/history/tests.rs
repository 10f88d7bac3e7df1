//! The resume decision on every kind of snapshot, and the memory ring against it.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::*;
use crate::broker::id::StreamId;
use crate::hub::Hub;
use crate::metrics::Metrics;

fn id(s: &str) -> StreamId {
    StreamId::parse(s).unwrap()
}

fn snap(exists: bool, maxdel: &str, lastgen: &str, ids: &[&str]) -> Snapshot {
    Snapshot {
        exists,
        max_deleted: id(maxdel),
        last_generated: id(lastgen),
        entries: ids.iter().map(|i| (id(i), Utf8Bytes::from(*i))).collect(),
    }
}

fn ids(r: &Recovery) -> Vec<String> {
    match r {
        Recovery::Events(e) => e.iter().map(|(i, _)| i.to_string()).collect(),
        Recovery::Reset(r) => vec![format!("reset:{}", r.as_str())],
    }
}

#[test]
fn resume_delivers_exactly_what_follows_or_resets() {
    // Nothing trimmed after 10-0: the two newer events.
    let r = decide(id("10-0"), snap(true, "9-5", "12-0", &["11-0", "12-0"]), 5);
    assert_eq!(ids(&r), ["11-0", "12-0"]);
    // The client's own last event was trimmed, nothing after it: still complete.
    let r = decide(id("10-0"), snap(true, "10-0", "12-0", &["11-0", "12-0"]), 5);
    assert_eq!(ids(&r), ["11-0", "12-0"]);
    // Something after 10-0 was trimmed.
    let r = decide(id("10-0"), snap(true, "10-1", "12-0", &["11-0", "12-0"]), 5);
    assert_eq!(ids(&r), ["reset:trimmed"]);
    // Gone (TTL, FLUSHALL, restart).
    let r = decide(id("10-0"), snap(false, "0-0", "0-0", &[]), 5);
    assert_eq!(ids(&r), ["reset:expired"]);
    // An id from the future of this history.
    let r = decide(id("13-0"), snap(true, "0-0", "12-0", &[]), 5);
    assert_eq!(ids(&r), ["reset:unknown"]);
    // Up to date.
    let r = decide(id("12-0"), snap(true, "0-0", "12-0", &[]), 5);
    assert_eq!(ids(&r), Vec::<String>::new());
    // More missed than this sidecar reads back (it read size + 1).
    let r = decide(
        id("1-0"),
        snap(true, "0-0", "12-0", &["2-0", "3-0", "4-0"]),
        2,
    );
    assert_eq!(ids(&r), ["reset:too_far"]);
    // Late joiner: whatever is there, never a reset.
    let r = decide(StreamId::ZERO, snap(false, "0-0", "0-0", &[]), 5);
    assert_eq!(ids(&r), Vec::<String>::new());
    assert_eq!(read_count(StreamId::ZERO, 5), 5);
    assert_eq!(read_count(id("1-0"), 5), 6);
}

#[tokio::test(start_paused = true)]
async fn memory_ring_trims_expires_and_hands_events_to_the_hub() {
    let hub = Hub::new(64, 1 << 20, true, Metrics::default());
    let member = hub.join(vec!["g".into()]);
    let h = MemoryHistory::new(HistoryConfig {
        size: 3,
        ttl: Duration::from_secs(60),
    });
    let mut issued = Vec::new();
    for n in 0..5 {
        // All in one millisecond of the wall clock: ids 1000-0 .. 1000-4.
        let (i, receivers) = h.publish_at(1000, "g", format!("e{n}").into(), |id, p| {
            hub.publish_event("g", Some(id), p)
        });
        assert_eq!(receivers, 1);
        issued.push(i);
    }
    assert!(issued.windows(2).all(|w| w[0] < w[1]), "ids increase");
    // Live copies carry their ids.
    for i in &issued {
        let ev = member.queue.try_pop().expect("live event");
        assert_eq!(ev.id, Some(*i));
    }
    let all = h.snapshot("g", StreamId::ZERO, 3);
    assert_eq!(all.entries.len(), 3, "trimmed to --history-size");
    assert_eq!(all.max_deleted, issued[1]);
    // Resuming from the newest trimmed event is complete; from before it is not.
    let from = |last| decide(last, h.snapshot("g", last, read_count(last, 3)), 3);
    assert_eq!(from(issued[1]), Recovery::Events(all.entries.clone()));
    assert_eq!(from(issued[0]), Recovery::Reset(ResetReason::Trimmed));
    // Expiry: a minute after the last event the history is gone.
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(from(issued[4]), Recovery::Reset(ResetReason::Expired));
    // A new lifetime: ids from the old one read as lost, never as "nothing missed"...
    // (still in the same millisecond: 1000-5, right after the old lifetime's last id)
    let (fresh, _) = h.publish_at(1000, "g", "new".into(), |id, p| {
        hub.publish_event("g", Some(id), p)
    });
    assert_eq!(fresh, id("1000-5"));
    assert_eq!(from(issued[3]), Recovery::Reset(ResetReason::Trimmed));
    // ...except the very last one, which nothing followed (its id is the fresh one's predecessor).
    assert_eq!(ids(&from(issued[4])), vec![fresh.to_string()]);
    assert_eq!(ids(&from(fresh)), Vec::<String>::new());
    // A lifetime starting a millisecond later: the gap could have held expired events, so even
    // the old lifetime's last id reads as lost.
    tokio::time::advance(Duration::from_secs(61)).await;
    let (later, _) = h.publish_at(1001, "g", "later".into(), |id, p| {
        hub.publish_event("g", Some(id), p)
    });
    assert_eq!(later, id("1001-0"));
    assert_eq!(from(fresh), Recovery::Reset(ResetReason::Trimmed));
    assert_eq!(ids(&from(later)), Vec::<String>::new());
}

#[test]
fn a_shared_read_gives_each_client_what_its_own_read_would_or_nothing_when_cut_short() {
    let shared = snap(true, "1-0", "5-0", &["3-0", "4-0", "5-0"]);
    let view_ids = |from: &str, count, last: &str| {
        view(&shared, id(from), count, id(last)).map(|s| {
            assert!(s.exists);
            assert_eq!((s.max_deleted, s.last_generated), (id("1-0"), id("5-0")));
            s.entries
                .iter()
                .map(|(i, _)| i.to_string())
                .collect::<Vec<_>>()
        })
    };
    // Read to the end (fewer than `count`): every client filters its own tail.
    assert_eq!(view_ids("2-0", 6, "2-0").unwrap(), ["3-0", "4-0", "5-0"]);
    assert_eq!(view_ids("2-0", 6, "3-0").unwrap(), ["4-0", "5-0"]);
    assert_eq!(view_ids("2-0", 6, "5-0").unwrap(), Vec::<String>::new());
    // Cut short at `count`: the reader itself sees it (and decides `too_far`); a client past
    // an entry of it would see a shorter window than its own read: it reads alone.
    assert_eq!(view_ids("2-0", 3, "2-0").unwrap(), ["3-0", "4-0", "5-0"]);
    assert_eq!(view_ids("2-0", 3, "3-0"), None);
    // ... unless no entry was at or before its id (the same window).
    assert_eq!(view_ids("2-0", 3, "2-5").unwrap(), ["3-0", "4-0", "5-0"]);
    // The decision on a view is the decision on the client's own snapshot.
    let own = |last: &str| decide(id(last), view(&shared, id("2-0"), 6, id(last)).unwrap(), 5);
    assert_eq!(ids(&own("3-0")), ["4-0", "5-0"]);
    let r = decide(
        id("0-5"),
        view(&shared, id("0-5"), 6, id("0-5")).unwrap(),
        5,
    );
    assert_eq!(ids(&r), ["reset:trimmed"]);
    let gone = snap(false, "0-0", "0-0", &[]);
    let r = decide(id("2-0"), view(&gone, id("1-0"), 6, id("2-0")).unwrap(), 5);
    assert_eq!(ids(&r), ["reset:expired"]);
}
