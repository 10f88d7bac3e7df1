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

    fn wake(&self) -> Wake {
        Wake::Hub
    }

    fn wanted(&self, hub: &Hub) -> BTreeSet<String> {
        hub.wanted().into_iter().collect()
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
        self.seen.lock().unwrap().joined.extend_from_slice(groups);
        Ok(())
    }

    async fn leave(&mut self, _: &mut (), _: &[String]) -> Result<(), LinkError> {
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
