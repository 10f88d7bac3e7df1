//! Local mode, as a newcomer sees it: the demo app behind the sidecar (memory broker, forward
//! auth), driven in real headless Chromium. Saves `tests/artifacts/demo*.png`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use taskstream_tests::browser::Browser;
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

#[tokio::test]
async fn progress_reaches_100_in_the_browser_and_survives_a_sidecar_restart() {
    let public = loopback(free_port());
    let admin = loopback(free_port());
    let (app, upstream) = start_demo_app(admin, &["--step-ms", "40", "--fail-every", "3"]).await;
    let sidecar_args = [
        "--broker",
        "memory",
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
            "document.getElementById('conn').dataset.state === 'connected'",
        )
        .await;

    browser.click("#start").await;
    browser
        .wait_for(
            "task 1 done at 100%",
            "(() => { const t = document.querySelector('.task[data-task=\"1\"]');
                      return t && t.dataset.state === 'done' && t.dataset.progress === '100'
                        && t.querySelector('.state').textContent.startsWith('done'); })()",
        )
        .await;
    browser.screenshot(&artifact("demo-done.png")).await;

    // Restart the sidecar on the same ports: the page sees the close, reconnects by itself.
    sidecar.terminate();
    assert!(sidecar.wait_exit().await.success());
    browser
        .wait_for(
            "the page noticing the restart",
            "document.getElementById('conn').dataset.state === 'reconnecting'",
        )
        .await;
    let _sidecar = SidecarProcess::spawn_on(public, admin, &sidecar_args).await;
    browser
        .wait_for(
            "the page reconnected",
            "document.getElementById('conn').dataset.state === 'connected'",
        )
        .await;
    browser.click("#start").await;
    browser
        .wait_for(
            "task 2 done after the restart",
            "(() => { const t = document.querySelector('.task[data-task=\"2\"]');
                      return t && t.dataset.state === 'done' && t.dataset.progress === '100'; })()",
        )
        .await;
    // Every third task fails part-way; the page shows it as failed, not done.
    browser.click("#start").await;
    browser
        .wait_for(
            "task 3 shown as failed",
            "(() => { const t = document.querySelector('.task[data-task=\"3\"]');
                      return t && t.dataset.state === 'failed'
                        && t.querySelector('.state').textContent.startsWith('failed'); })()",
        )
        .await;
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
