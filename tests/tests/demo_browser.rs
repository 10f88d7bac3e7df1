//! The demo page (its browser client is clients/js) behind the sidecar with history and forward
//! auth, driven in real headless Chromium: a sidecar restart mid-task loses no event, a reload
//! rebuilds every bar from history. Saves `tests/artifacts/demo*.png`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use taskstream_tests::browser::Browser;
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::SidecarProcess;
use taskstream_tests::upstream::{request, send};
use taskstream_tests::{free_port, loopback};
use tokio::task::JoinHandle;

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("artifacts")
        .join(name)
}

/// Starts the demo app in-process, publishing to the sidecar admin address `admin`; returns the
/// app's task and its URL (the sidecar's `--upstream`).
async fn start_demo_app(admin: SocketAddr, extra: &[&str]) -> (JoinHandle<()>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let publish_url = format!("http://{admin}");
    let mut argv = vec!["taskstream-demo", "--publish-url", &publish_url];
    argv.extend_from_slice(extra);
    let args = taskstream_demo::Args::try_parse_from(argv).unwrap();
    let app = tokio::spawn(taskstream_demo::serve(listener, args));
    (app, format!("http://{addr}"))
}

/// The ids of the events the app published for `task`, from its `GET /api/tasks/<task>`.
async fn published_ids(app: &str, task: u32) -> Vec<serde_json::Value> {
    let (status, body) =
        taskstream_tests::upstream::http_get(&format!("{app}/api/tasks/{task}")).await;
    assert_eq!(status, 200, "GET /api/tasks/{task}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].clone())
        .collect()
}

/// The ids the page received for `task`, in order.
async fn received_ids(browser: &mut Browser, task: u32) -> Vec<serde_json::Value> {
    let v = browser
        .eval(&format!("JSON.stringify(window.received[{task}] || [])"))
        .await;
    serde_json::from_str(v.as_str().expect("a string")).expect("json")
}

#[tokio::test]
async fn progress_reaches_100_in_the_browser_and_survives_a_sidecar_restart_mid_task() {
    // As in production: the app's tasks publish to Redis with history (the script), and the
    // page (clients/js) resumes with last_id; a sidecar restart mid-task loses no event.
    let redis = RedisServer::start().await;
    let public = loopback(free_port());
    let admin = loopback(free_port());
    let redis_url = redis.url();
    let (app, upstream) = start_demo_app(
        admin,
        &[
            "--step-ms",
            "250",
            "--fail-every",
            "2",
            "--redis-url",
            &redis_url,
        ],
    )
    .await;
    let sidecar_args = [
        "--redis-url",
        &redis_url,
        "--history-size",
        "100",
        "--auth",
        "forward",
        "--upstream",
        &upstream,
    ];
    let mut sidecar = SidecarProcess::spawn_on(public, admin, &sidecar_args).await;

    let mut browser = Browser::launch().await;
    browser.navigate(&format!("http://{public}/")).await;
    browser
        .wait_for(
            "the live connection",
            "document.getElementById('conn').dataset.state === 'live'",
        )
        .await;

    browser.click("#start").await;
    browser
        .wait_for(
            "task 1 under way",
            "(() => { const t = document.querySelector('.task[data-task=\"1\"]');
                      return t && t.dataset.state === 'running' && Number(t.dataset.progress) > 0; })()",
        )
        .await;
    // Restart the sidecar on the same ports mid-task: the page sees the close and resumes.
    let before = published_ids(&upstream, 1).await.len();
    sidecar.terminate();
    assert!(sidecar.wait_exit().await.success());
    browser
        .wait_for(
            "the page noticing the restart",
            "document.getElementById('conn').dataset.state === 'reconnecting'",
        )
        .await;
    // Events published while no sidecar runs wait in Redis.
    let app_url = upstream.clone();
    taskstream_tests::eventually("an event published during the restart", || {
        let app_url = app_url.clone();
        async move { (published_ids(&app_url, 1).await.len() > before).then_some(()) }
    })
    .await;
    let _sidecar = SidecarProcess::spawn_on(public, admin, &sidecar_args).await;
    browser
        .wait_for(
            "task 1 done at 100% after the restart",
            "(() => { const t = document.querySelector('.task[data-task=\"1\"]');
                      return t && t.dataset.state === 'done' && t.dataset.progress === '100'
                        && t.querySelector('.state').textContent.startsWith('done'); })()",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('conn').dataset.state")
            .await,
        "live"
    );
    // Every event of task 1, exactly once, in order: what the app published is what the page got.
    let published = published_ids(&upstream, 1).await;
    assert!(published.iter().all(|id| id.is_string()), "{published:?}");
    assert_eq!(received_ids(&mut browser, 1).await, published);
    assert_eq!(
        browser
            .eval("document.getElementById('note').textContent")
            .await,
        ""
    );
    browser.screenshot(&artifact("demo-done.png")).await;

    // Every second task fails part-way; the page shows it as failed, not done.
    browser.click("#start").await;
    browser
        .wait_for(
            "task 2 shown as failed",
            "(() => { const t = document.querySelector('.task[data-task=\"2\"]');
                      return t && t.dataset.state === 'failed'
                        && t.querySelector('.state').textContent.startsWith('failed'); })()",
        )
        .await;
    // A reload rebuilds every bar from the group's history, with no app-side state.
    browser.navigate(&format!("http://{public}/")).await;
    browser
        .wait_for(
            "both tasks back after a reload",
            "(() => { const a = document.querySelector('.task[data-task=\"1\"]');
                      const b = document.querySelector('.task[data-task=\"2\"]');
                      return a && a.dataset.state === 'done' && b && b.dataset.state === 'failed'; })()",
        )
        .await;
    assert_eq!(received_ids(&mut browser, 1).await, published);
    browser
        .screenshot(&artifact("demo-after-restart.png"))
        .await;
    app.abort();
}

#[tokio::test]
async fn publish_api_is_on_the_admin_port_only() {
    let public = loopback(free_port());
    let admin = loopback(free_port());
    let (app, upstream) = start_demo_app(admin, &[]).await;
    let _sc = SidecarProcess::spawn_on(
        public,
        admin,
        &[
            "--broker",
            "memory",
            "--auth",
            "none",
            "--upstream",
            &upstream,
        ],
    )
    .await;

    let mut ws =
        taskstream_tests::ws::connect(&taskstream_tests::sidecar::ws_url(public, "groups=g")).await;
    // Through the public port, /publish/ is just an app path: the app says 404, nothing is sent.
    let (status, _) = send(request(
        "POST",
        &format!("http://{public}/publish/g"),
        "via public",
    ))
    .await;
    assert_eq!(status, 404);
    let (status, body) = send(request(
        "POST",
        &format!("http://{admin}/publish/g"),
        "via admin",
    ))
    .await;
    assert_eq!((status, body.trim()), (200, r#"{"receivers":1}"#));
    assert_eq!(taskstream_tests::ws::recv_text(&mut ws).await, "via admin");
    // Bad input: not UTF-8, wrong method, no group.
    let (status, _) = send(request(
        "POST",
        &format!("http://{admin}/publish/g"),
        vec![0xffu8, 0xfe],
    ))
    .await;
    assert_eq!(status, 400);
    let (status, _) = send(request("GET", &format!("http://{admin}/publish/g"), "")).await;
    assert_eq!(status, 405);
    let (status, _) = send(request("POST", &format!("http://{admin}/publish/"), "x")).await;
    assert_eq!(status, 400);
    app.abort();
}
