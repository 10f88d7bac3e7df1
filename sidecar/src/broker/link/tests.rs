//! The driver's own behaviour, over a scripted link (no Redis here: every real link is exercised
//! against real servers by the cross-component tests): retry until connected, join, report up,
//! report down and catch up after a loss, leave on shutdown.

use std::sync::Mutex;

use tokio::sync::mpsc;

use super::*;

#[derive(Default)]
struct Seen {
    connects: usize,
    joined: Vec<String>,
    /// Each join and leave call, in order: `+g` / `-g`, one string per call.
    calls: Vec<String>,
    closed: bool,
}

/// Fails its first `failures` connects; a message on `lose` loses the live connection.
struct Scripted {
    failures: usize,
    lose: mpsc::UnboundedReceiver<()>,
    seen: Arc<Mutex<Seen>>,
}

impl Link for Scripted {
    type Conn = ();
    type Event = Option<()>;

    const KIND: &'static str = "scripted";
    const JOINED: &'static str = "joined";
    const DROPS_WHILE_DOWN: bool = true;
    const KEEP_ALIVE: Option<Duration> = None;

    fn display(&self) -> &str {
        "scripted://"
    }

    async fn connect(&mut self) -> Result<(), LinkError> {
        let mut seen = self.seen.lock().unwrap();
        seen.connects += 1;
        if seen.connects <= self.failures {
            return Err(LinkError::Closed);
        }
        Ok(())
    }

    async fn join(&mut self, _: &mut (), groups: &[String]) -> Result<(), LinkError> {
        let mut seen = self.seen.lock().unwrap();
        seen.joined.extend_from_slice(groups);
        let mut sorted = groups.to_vec();
        sorted.sort();
        seen.calls.push(format!("+{}", sorted.join(",")));
        Ok(())
    }

    async fn leave(&mut self, _: &mut (), groups: &[String]) -> Result<(), LinkError> {
        let mut sorted = groups.to_vec();
        sorted.sort();
        self.seen
            .lock()
            .unwrap()
            .calls
            .push(format!("-{}", sorted.join(",")));
        Ok(())
    }

    async fn next(&mut self, _: &mut ()) -> Option<()> {
        self.lose.recv().await
    }

    async fn handle(
        &mut self,
        _: &mut (),
        _: &BTreeSet<String>,
        event: Option<()>,
    ) -> Result<(), LinkError> {
        match event {
            Some(()) => Err(LinkError::Closed),
            None => std::future::pending().await,
        }
    }

    async fn close(&mut self, _: (), _: &BTreeSet<String>) {
        self.seen.lock().unwrap().closed = true;
    }
}

#[tokio::test(start_paused = true)]
async fn retries_until_connected_then_reports_loss_and_catch_up_in_one_place() {
    let metrics = Metrics::default();
    let cx = Context {
        hub: Hub::new(8, 1 << 20, false, metrics.clone()),
        health: Arc::new(Health::new(true)),
        metrics: metrics.clone(),
    };
    let member = cx.hub.join(vec!["g".into()]);
    let mut link_state = cx.hub.beat(0);
    let (lose, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let link = Scripted {
        failures: 2,
        lose: rx,
        seen: seen.clone(),
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(drive(link, cx.clone(), stop.clone()));

    // Two failed connects, backed off, then joined and confirmed.
    assert!(member.wait_confirmed(Duration::from_secs(30)).await);
    assert_eq!(seen.lock().unwrap().connects, 3);
    assert_eq!(seen.lock().unwrap().joined, ["g"]);
    assert!(cx.health.broker_up());
    assert_eq!(metrics.broker_up.get(), 1);
    assert_eq!(
        metrics.redis_reconnects.get(),
        0,
        "a first connect is no reconnect"
    );

    // Lost: down everywhere, then back with a new generation (sessions catch up from history).
    lose.send(()).unwrap();
    link_state.changed().await.unwrap();
    assert!(!link_state.borrow_and_update().link.up);
    link_state.changed().await.unwrap();
    let back = link_state.borrow_and_update().link;
    assert_eq!((back.generation, back.up), (1, true));
    assert!(cx.health.broker_up());
    assert_eq!(metrics.broker_up.get(), 1);
    assert_eq!(metrics.redis_reconnects.get(), 1);
    assert_eq!(seen.lock().unwrap().joined, ["g", "g"], "joined again");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the driver stops on shutdown")
        .unwrap();
    assert!(seen.lock().unwrap().closed, "the link was closed");
    assert!(!cx.health.broker_up());
    assert_eq!(metrics.broker_up.get(), 0);
}

/// Waits until the link made `n` join/leave calls, and returns them.
async fn calls(seen: &Mutex<Seen>, n: usize) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let calls = seen.lock().unwrap().calls.clone();
            if calls.len() >= n {
                return calls;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the link made fewer than {n} calls: {:?}",
            seen.lock().unwrap().calls
        )
    })
}

#[tokio::test]
async fn after_connecting_only_the_groups_that_changed_are_joined_or_left() {
    let metrics = Metrics::default();
    let cx = Context {
        hub: Hub::new(8, 1 << 20, false, metrics.clone()),
        health: Arc::new(Health::new(true)),
        metrics,
    };
    let first = cx.hub.join(vec!["a".into(), "b".into()]);
    let (_lose, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let link = Scripted {
        failures: 0,
        lose: rx,
        seen: seen.clone(),
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(drive(link, cx.clone(), stop.clone()));
    assert!(first.wait_confirmed(Duration::from_secs(5)).await);
    assert_eq!(
        calls(&seen, 1).await,
        ["+a,b"],
        "all wanted groups on connect"
    );

    // A second client in a, and one new group: only c is joined.
    let second = cx.hub.join(vec!["a".into(), "c".into()]);
    assert!(second.wait_confirmed(Duration::from_secs(5)).await);
    assert_eq!(calls(&seen, 2).await[1], "+c");

    // a keeps a client: only c is left.
    drop(second);
    assert_eq!(calls(&seen, 3).await[2], "-c");

    // a and b removed, and b made again before the link looked (this test's runtime has one
    // thread: the link runs only when the test awaits): b stays joined, nothing to
    // (un)subscribe, but its new hub entry needs the confirmation back.
    drop(first);
    let third = cx.hub.join(vec!["b".into()]);
    assert!(third.wait_confirmed(Duration::from_secs(5)).await);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the driver stops on shutdown")
        .unwrap();
    let calls = seen.lock().unwrap().calls.clone();
    // a left once its last client went; b never left nor joined again.
    assert!(calls[3..].iter().all(|c| !c.contains('b')), "{calls:?}");
    assert!(calls[3..].contains(&"-a".to_string()), "{calls:?}");
}

/// A link whose events wait in a channel: counts how they were taken.
struct Burst {
    events: mpsc::UnboundedReceiver<u32>,
    /// (events from `next`, through the driver's `select!`; from `try_next`; handled in order)
    taken: Arc<Mutex<(usize, usize, Vec<u32>)>>,
}

impl Link for Burst {
    type Conn = ();
    type Event = Option<u32>;

    const KIND: &'static str = "burst";
    const JOINED: &'static str = "joined";
    const DROPS_WHILE_DOWN: bool = false;
    const KEEP_ALIVE: Option<Duration> = None;

    fn display(&self) -> &str {
        "burst://"
    }

    async fn connect(&mut self) -> Result<(), LinkError> {
        Ok(())
    }

    async fn join(&mut self, _: &mut (), _: &[String]) -> Result<(), LinkError> {
        Ok(())
    }

    async fn leave(&mut self, _: &mut (), _: &[String]) -> Result<(), LinkError> {
        Ok(())
    }

    async fn next(&mut self, _: &mut ()) -> Option<u32> {
        let event = self.events.recv().await;
        self.taken.lock().unwrap().0 += 1;
        event
    }

    fn try_next(&mut self, _: &mut ()) -> Option<Option<u32>> {
        let event = self.events.try_recv().ok()?;
        self.taken.lock().unwrap().1 += 1;
        Some(Some(event))
    }

    async fn handle(
        &mut self,
        _: &mut (),
        _: &BTreeSet<String>,
        event: Option<u32>,
    ) -> Result<(), LinkError> {
        match event {
            Some(n) => {
                self.taken.lock().unwrap().2.push(n);
                Ok(())
            }
            None => std::future::pending().await,
        }
    }
}

/// Events that wait already are handled in runs: one through the `select!`, then up to
/// [`DRAIN`] more, in order, before the driver looks at its other branches again.
#[tokio::test]
async fn waiting_events_are_handled_in_bounded_runs_in_order() {
    let metrics = Metrics::default();
    let cx = Context {
        hub: Hub::new(8, 1 << 20, false, metrics.clone()),
        health: Arc::new(Health::new(true)),
        metrics,
    };
    let (tx, events) = mpsc::unbounded_channel();
    let taken = Arc::new(Mutex::new((0, 0, Vec::new())));
    let link = Burst {
        events,
        taken: taken.clone(),
    };
    // This test's runtime has one thread: all 100 wait before the driver first runs.
    for n in 0..100 {
        tx.send(n).unwrap();
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(drive(link, cx, stop.clone()));
    tokio::time::timeout(Duration::from_secs(5), async {
        while taken.lock().unwrap().2.len() < 100 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every event handled");
    let (selected, drained, order) = taken.lock().unwrap().clone();
    assert_eq!(order, (0..100).collect::<Vec<_>>());
    let runs = 100usize.div_ceil(DRAIN + 1);
    assert_eq!((selected, drained), (runs, 100 - runs));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the driver stops on shutdown")
        .unwrap();
}
