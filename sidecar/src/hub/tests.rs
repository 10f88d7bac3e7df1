//! The hub's fan-out, membership, bounded queues, link state and confirmations.

use super::*;

fn hub(queue: usize) -> Arc<Hub> {
    Hub::new(queue, 1 << 20, true, Metrics::default())
}

#[tokio::test]
async fn delivers_only_to_members_in_order() {
    let hub = hub(8);
    let a = hub.join(vec!["g1".into()]);
    let b = hub.join(vec!["g1".into(), "g2".into()]);
    let c = hub.join(vec!["g3".into()]);
    assert_eq!(hub.publish("g1", &"one".into()), 2);
    assert_eq!(hub.publish("g2", &"two".into()), 1);
    assert_eq!(hub.publish("nobody", &"x".into()), 0);
    assert_eq!(a.queue.pop().await.unwrap().payload, "one");
    assert_eq!(b.queue.pop().await.unwrap().payload, "one");
    assert_eq!(b.queue.pop().await.unwrap().payload, "two");
    assert!(a.queue.try_pop().is_none());
    assert!(c.queue.try_pop().is_none());
}

#[tokio::test]
async fn a_link_hears_of_a_group_only_when_it_is_created_or_removed() {
    let hub = hub(8);
    let changes = hub.listen();
    let all = |_: &str| true;
    let a = hub.join(vec!["g".into(), "user:1".into()]);
    let b = hub.join(vec!["g".into()]);
    tokio::time::timeout(Duration::from_secs(1), changes.changed())
        .await
        .expect("the first join notifies the link");
    let mut got: Vec<String> = changes.take().into_iter().collect();
    got.sort();
    assert_eq!(
        got,
        ["g", "user:1"],
        "b joining an existing group told nothing"
    );
    let mut wanted = hub.wanted(all);
    wanted.sort();
    assert_eq!(wanted, ["g", "user:1"]);
    assert_eq!(hub.wanted(|g| g.starts_with("user:")), ["user:1"]);
    drop(a);
    assert_eq!(changes.take().into_iter().collect::<Vec<_>>(), ["user:1"]);
    assert_eq!(
        hub.partition(["g".to_string(), "user:1".to_string()]),
        (vec!["g".to_string()], vec!["user:1".to_string()])
    );
    drop(b);
    assert!(hub.wanted(all).is_empty());
    tokio::time::timeout(Duration::from_secs(1), changes.changed())
        .await
        .expect("leave of the last client notifies the link");
    assert_eq!(changes.take().into_iter().collect::<Vec<_>>(), ["g"]);
}

#[tokio::test]
async fn full_queue_marks_only_the_slow_client() {
    let hub = hub(2);
    let slow = hub.join(vec!["g".into()]);
    let fast = hub.join(vec!["g".into()]);
    for i in 0..5 {
        hub.publish("g", &format!("{i}").into());
        assert_eq!(fast.queue.pop().await.unwrap().payload, format!("{i}"));
    }
    assert!(slow.queue.is_lagged());
    assert!(!fast.queue.is_lagged());
    assert!(
        slow.queue.pop().await.is_none(),
        "a lagged queue yields no more events"
    );
    assert_eq!(slow.queue.len(), 2, "queue stays at its bound");
}

#[tokio::test]
async fn a_waiting_reader_is_woken_and_drained_queues_give_memory_back() {
    let hub = hub(64);
    let m = hub.join(vec!["g".into()]);
    let q = m.queue.clone();
    let reader = tokio::spawn(async move { q.pop().await });
    tokio::task::yield_now().await;
    hub.publish("g", &"wake".into());
    let got = tokio::time::timeout(Duration::from_secs(5), reader).await;
    assert_eq!(got.unwrap().unwrap().unwrap().payload, "wake");
    for i in 0..50 {
        hub.publish("g", &format!("{i}").into());
    }
    while m.queue.try_pop().is_some() {}
    assert!(m.queue.is_empty());
    let cap = m.queue.events.lock().unwrap().capacity();
    assert!(cap <= KEEP_SLOTS, "capacity {cap} kept after draining");
}

#[tokio::test]
async fn the_link_goes_down_on_loss_and_up_with_a_new_generation() {
    let hub = hub(4);
    let mut rx = hub.beat(0);
    assert_eq!(
        rx.borrow().link,
        Link {
            generation: 0,
            up: true
        }
    );
    hub.link_lost();
    rx.changed().await.unwrap();
    assert_eq!(
        rx.borrow().link,
        Link {
            generation: 0,
            up: false
        }
    );
    hub.link_lost(); // already down: no second notification
    assert!(!rx.has_changed().unwrap());
    hub.resubscribed();
    rx.changed().await.unwrap();
    assert_eq!(
        rx.borrow().link,
        Link {
            generation: 1,
            up: true
        }
    );
}

#[tokio::test]
async fn confirmation_gates_until_source_confirms() {
    let hub = Hub::new(4, 1 << 20, false, Metrics::default());
    let m = hub.join(vec!["a".into(), "b".into()]);
    assert!(!m.wait_confirmed(Duration::from_millis(20)).await);
    let h2 = hub.clone();
    let waiter = tokio::spawn(async move {
        let m2 = h2.join(vec!["a".into()]);
        m2.wait_confirmed(Duration::from_secs(5)).await
    });
    hub.set_confirmed(["a", "b"], true);
    assert!(m.wait_confirmed(Duration::from_secs(5)).await);
    assert!(waiter.await.unwrap());
}

#[tokio::test]
async fn a_waiting_handshake_is_woken_by_its_own_groups_confirmation() {
    let hub = Hub::new(4, 1 << 20, false, Metrics::default());
    let m = hub.join(vec!["a".into(), "b".into()]);
    let other = hub.join(vec!["c".into()]);
    let h2 = hub.clone();
    let confirmer = tokio::spawn(async move {
        // One at a time: the waiter must not be satisfied by the first alone, nor by c.
        h2.set_confirmed(["a"], true);
        tokio::task::yield_now().await;
        h2.set_confirmed(["c"], true);
        tokio::task::yield_now().await;
        h2.set_confirmed(["b"], true);
    });
    assert!(m.wait_confirmed(Duration::from_secs(5)).await);
    confirmer.await.unwrap();
    assert!(other.wait_confirmed(Duration::from_secs(5)).await);
    // Unconfirmed again (the link was lost), and the wait times out.
    hub.set_confirmed(["a"], false);
    assert!(!m.wait_confirmed(Duration::from_millis(20)).await);
    // The wake-ups left permits on the queue: a reader still gets events only when there are.
    assert!(m.queue.try_pop().is_none());
    hub.publish("a", &"x".into());
    assert_eq!(m.queue.pop().await.unwrap().payload, "x");
}
