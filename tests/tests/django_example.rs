//! examples/django end to end, as its README runs it (its own `.venv-example/`, made from its
//! requirements.txt plus ./clients/python): `manage.py runserver` behind the sidecar
//! (`--auth forward --history-size 100`), a real `celery -A taskdemo worker` with Redis as the
//! broker, a user logged in through the real login form starting a task from the page's
//! endpoint, and `/ws/tasks/` (session cookie, `taskstream.v1`).
//!
//! - The default settings: the task publishes through the `taskstream` package with history;
//!   every progress event arrives, and a late connection replays them.
//! - `TASKSTREAM_CHANNEL_LAYER=history`: the task's unchanged Channels `group_send` goes through
//!   `taskstream.channels.TaskStreamChannelLayer`; a sidecar restart mid-task loses nothing and
//!   delivers nothing twice.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use taskstream_tests::example::{Example, get_page, login, start_task};
use taskstream_tests::python::root;
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::Sidecar;
use taskstream_tests::upstream::http_get;
use taskstream_tests::ws::{Client, connect_with, recv_text};
use taskstream_tests::{eventually, free_port};

const V1: (&str, &str) = ("Sec-WebSocket-Protocol", "taskstream.v1");

/// The next frame past any `position` (a page's groups without a `last_id` get one first),
/// which must be an event of `group` with an id; returns (id, data).
async fn event(ws: &mut Client, group: &str) -> (String, Value) {
    let frame = loop {
        let frame: Value = serde_json::from_str(&recv_text(ws).await).expect("a JSON frame");
        if frame["type"] != "position" {
            break frame;
        }
    };
    assert_eq!(
        (frame["type"].as_str(), frame["group"].as_str()),
        (Some("event"), Some(group)),
        "{frame}"
    );
    let id = frame["id"]
        .as_str()
        .unwrap_or_else(|| panic!("published with history, so an id: {frame}"))
        .to_owned();
    (id, frame["data"].clone())
}

#[tokio::test]
async fn django_app_with_a_celery_worker_gets_every_progress_event_through_the_sidecar() {
    let redis = RedisServer::start().await;
    let port = free_port();
    let app = Example::new(&redis.url(), port, &[]);
    let addr = format!("127.0.0.1:{port}");
    let _server = app.serve(&addr).await;
    let _worker = app.worker();
    let upstream = format!("http://{addr}");
    let sc = Sidecar::start(&[
        "--auth",
        "forward",
        "--upstream",
        &upstream,
        "--redis-url",
        &redis.url(),
        "--history-size",
        "100",
    ])
    .await;
    let base = format!("http://{}", sc.public);

    let session = login(&base).await;
    assert!(session.page.contains("Tasks of alice") && session.page.contains("/ws/tasks/"));
    assert!(
        session.page.contains("/static/taskstream/client.js"),
        "the page loads the client"
    );
    // The client module is served by Django's static files, and is clients/js/index.js.
    let (status, js) = http_get(&format!("{base}/static/taskstream/client.js")).await;
    assert_eq!(status, 200);
    assert_eq!(
        js,
        std::fs::read_to_string(root().join("clients/js/index.js")).unwrap()
    );

    // No session: the app's /ws-auth/ says 401, and so does the sidecar.
    assert_eq!(connect_with(&sc.ws_url(""), &[V1]).await.err(), Some(401));
    let mut ws = connect_with(&sc.ws_url(""), &[("cookie", &session.cookie), V1])
        .await
        .expect("the session cookie opens the socket");

    // Start the task as the page does; the Celery worker runs it.
    let task = start_task(&base, &session).await;
    let group = "user:1";
    let mut ids = Vec::new();
    let mut events = Vec::new();
    for _ in 0..5 {
        let (id, data) = event(&mut ws, group).await;
        ids.push(id);
        events.push(data);
    }
    let step = |p: u32, n: u32| json!({"type": "progress", "task": task, "percent": p, "state": "running", "message": format!("step {n} of 5")});
    assert_eq!(
        events,
        vec![
            step(20, 1),
            step(40, 2),
            step(60, 3),
            step(80, 4),
            json!({"type": "progress", "task": task, "percent": 100, "state": "done", "message": null}),
        ]
    );
    // The row was committed before "done" left: the page shows it.
    let (_, page) = get_page(&base, &session.cookie).await;
    assert!(
        page.contains(&format!("{task}: done")),
        "notification listed"
    );

    // A page load (last_id=<group>:0) replays the whole task from history; resuming after the
    // second event gets exactly the rest.
    let mut late = connect_with(
        &sc.ws_url(&format!("last_id={group}:0")),
        &[("cookie", &session.cookie), V1],
    )
    .await
    .expect("late joiner");
    for id in &ids {
        assert_eq!(&event(&mut late, group).await.0, id);
    }
    let mut resumed = connect_with(
        &sc.ws_url(&format!("last_id={group}:{}", ids[1])),
        &[("cookie", &session.cookie), V1],
    )
    .await
    .expect("resume");
    for id in &ids[2..] {
        assert_eq!(&event(&mut resumed, group).await.0, id);
    }
    sc.stop().await;
}

#[tokio::test]
async fn unchanged_group_send_through_the_history_layer_survives_a_sidecar_restart_mid_task() {
    const STEPS: u32 = 30;
    let redis = RedisServer::start().await;
    let port = free_port();
    let steps = STEPS.to_string();
    let app = Example::new(
        &redis.url(),
        port,
        &[
            ("TASKSTREAM_CHANNEL_LAYER", "history"),
            ("TASK_STEPS", &steps),
            // 3 s in all: the task outlives the restart, so the resume meets live events too.
            ("TASK_STEP_SECONDS", "0.1"),
        ],
    );
    let addr = format!("127.0.0.1:{port}");
    let _server = app.serve(&addr).await;
    let _worker = app.worker();
    let upstream = format!("http://{addr}");
    let redis_url = redis.url();
    let flags = [
        "--auth",
        "forward",
        "--upstream",
        &upstream,
        "--redis-url",
        &redis_url,
        "--history-size",
        "100",
        // Channels group names: the layer's settings switch the app's USER_GROUP to this.
        "--user-group",
        "user_{sub}_tasks",
    ];
    let sc = Sidecar::start(&flags).await;
    let base = format!("http://{}", sc.public);
    let session = login(&base).await;
    let group = "user_1_tasks";
    assert!(
        session.page.contains(&format!("\"{group}\"")),
        "the page names the group"
    );
    // As the page opens it: from the start of the group's history.
    let mut ws = connect_with(
        &sc.ws_url(&format!("last_id={group}:0")),
        &[("cookie", &session.cookie), V1],
    )
    .await
    .expect("the session cookie opens the socket");
    let task = start_task(&base, &session).await;

    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(event(&mut ws, group).await);
    }
    // The sidecar restarts (a rollout) while the worker keeps sending.
    sc.stop().await;
    drop(ws);
    let stream = format!("taskstream:{group}");
    let mut conn = redis.conn().await.expect("redis connection");
    let published_while_down = got.len() + 2;
    eventually("events published while the sidecar is down", || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move {
            let len: usize = redis::cmd("XLEN")
                .arg(&stream)
                .query_async(&mut conn)
                .await
                .ok()?;
            (len >= published_while_down).then_some(())
        }
    })
    .await;
    let sc = Sidecar::start(&flags).await;
    let last = got.last().expect("three events").0.clone();
    let mut ws = connect_with(
        &sc.ws_url(&format!("last_id={group}:{last}")),
        &[("cookie", &session.cookie), V1],
    )
    .await
    .expect("reconnect to the restarted sidecar");
    let stored_at_resume: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert!(
        stored_at_resume < STEPS as usize,
        "the task still runs after the resume ({stored_at_resume} of {STEPS} sent)"
    );
    while got.len() < STEPS as usize {
        got.push(event(&mut ws, group).await);
    }

    // Every step exactly once, in order: what the task sent, nothing lost, nothing twice.
    let want: Vec<Value> = (1..STEPS)
        .map(|step| {
            json!({"type": "progress", "task": task, "percent": step * 100 / STEPS,
                   "state": "running", "message": format!("step {step} of {STEPS}")})
        })
        .chain([
            json!({"type": "progress", "task": task, "percent": 100, "state": "done", "message": null}),
        ])
        .collect();
    let (ids, data): (Vec<String>, Vec<Value>) = got.into_iter().unzip();
    assert_eq!(data, want);
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "no id twice: {ids:?}"
    );
    // The ids are the stream's: every stored event was delivered, in order.
    let stored: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    assert_eq!(
        stored.into_iter().map(|(id, _)| id).collect::<Vec<_>>(),
        ids
    );
    sc.stop().await;
}
