//! The real binary: bad configuration, and graceful shutdown on SIGTERM.

use std::time::Duration;

use futures_util::StreamExt;
use taskstream_tests::WAIT;
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::{SidecarProcess, run_binary, ws_url};
use taskstream_tests::upstream::{App, http_get};
use taskstream_tests::ws::{connect, recv_close, recv_text};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

/// (flags, environment, the flag the error must name)
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_config_exits_non_zero_naming_the_flag() {
    let cases: &[Case] = &[
        (&["--broker", "memory"], &[], "--auth"),
        (&["--auth", "none"], &[], "--redis-url"),
        (
            &["--auth", "jwt", "--broker", "memory"],
            &[],
            "--jwt-secret",
        ),
        (
            &[
                "--auth",
                "none",
                "--broker",
                "memory",
                "--upstream",
                "not a url",
            ],
            &[],
            "--upstream",
        ),
        (
            &[
                "--auth", "none", "--broker", "memory", "--listen", "nowhere",
            ],
            &[],
            "--listen",
        ),
        (
            &["--auth", "none", "--broker", "memory"],
            &[("TASKSTREAM_PING_INTERVAL", "often")],
            "--ping-interval",
        ),
        (
            &["--auth", "none", "--broker", "memory"],
            &[("TASKSTREAM_MAX_CONNECTIONS", "0")],
            "--max-connections",
        ),
        (
            &[
                "--auth",
                "jwt",
                "--broker",
                "memory",
                "--jwt-public-key-file",
                "/nonexistent/key.pem",
            ],
            &[],
            "--jwt-public-key-file",
        ),
    ];
    for (args, env, flag) in cases {
        let (code, stderr) = run_binary(args, env);
        assert!(
            matches!(code, Some(c) if c != 0),
            "{args:?} exited {code:?}"
        );
        assert!(
            stderr.contains(flag),
            "{args:?}: stderr does not name {flag}: {stderr}"
        );
    }
}

#[test]
fn secrets_are_not_echoed_in_config_errors() {
    let (code, stderr) = run_binary(
        &[
            "--auth",
            "jwt",
            "--broker",
            "memory",
            "--jwt-secret",
            "tooshort-SECRET",
        ],
        &[],
    );
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--jwt-secret"), "{stderr}");
    assert!(
        !stderr.contains("tooshort-SECRET"),
        "secret leaked: {stderr}"
    );
}

/// The real binary with `flags`, once its `/readyz` answers 200.
async fn spawn_ready(flags: &[&str]) -> SidecarProcess {
    let sc = SidecarProcess::spawn(flags).await;
    let admin = sc.admin;
    taskstream_tests::eventually("ready", || async move {
        (http_get(&format!("http://{admin}/readyz")).await.0 == 200).then_some(())
    })
    .await;
    sc
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_drains_requests_and_exits_0() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let mut sc = spawn_ready(&[
        "--auth",
        "none",
        "--redis-url",
        &redis.url(),
        "--upstream",
        &app.url(),
        "--shutdown-grace",
        "5s",
    ])
    .await;
    let mut a = connect(&ws_url(sc.public, "groups=g")).await;
    let mut b = connect(&ws_url(sc.public, "groups=h")).await;
    redis.publish("taskstream:g", "before").await;
    assert_eq!(recv_text(&mut a).await, "before");

    // A proxied request in flight when SIGTERM arrives still gets its answer.
    let slow_url = format!("http://{}/slow?ms=700", sc.public);
    let slow = tokio::spawn(async move { http_get(&slow_url).await });
    taskstream_tests::eventually("the slow request reached the app", || async {
        (app.slow_started() == 1).then_some(())
    })
    .await;
    sc.terminate();
    assert_eq!(recv_close(&mut a).await, Some(CloseCode::Away));
    assert_eq!(recv_close(&mut b).await, Some(CloseCode::Away));
    let (status, body) = slow.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "slow done"));
    let exit = sc.wait_exit().await;
    assert!(exit.success(), "exit status {exit:?}");
}

/// A client whose events never stop still gets the sidecar's pings and, on SIGTERM, its 1001:
/// the session looks at its beat on every turn, not only when its queue runs dry. Every event
/// published until the close arrives once and in order.
#[tokio::test]
async fn pings_and_shutdown_reach_a_client_whose_events_never_stop() {
    let redis = RedisServer::start().await;
    let mut sc = spawn_ready(&[
        "--auth",
        "none",
        "--redis-url",
        &redis.url(),
        "--ping-interval",
        "300ms",
        "--send-queue",
        "65536",
    ])
    .await;
    // The handshake answers once the subscription is confirmed: event 0 is the first one.
    let mut ws = connect(&ws_url(sc.public, "groups=g")).await;

    // 100 events every 10 ms, each burst one pipeline, from now until the test ends: the
    // client's queue is refilled while its session is still writing.
    let stop = CancellationToken::new();
    let mut conn = redis.conn().await.expect("connect to redis");
    let publishing = stop.clone();
    let publisher = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(10));
        let mut n = 0u64;
        while !publishing.is_cancelled() {
            every.tick().await;
            let mut burst = redis::pipe();
            for _ in 0..100 {
                burst.cmd("PUBLISH").arg("taskstream:g").arg(n).ignore();
                n += 1;
            }
            burst.query_async::<()>(&mut conn).await.expect("PUBLISH");
        }
        n
    });

    let mut next = 0u64;
    let on_event = |next: &mut u64, text: &str| {
        let n: u64 = text.parse().expect("an event number");
        assert_eq!(n, *next, "events lost, repeated or out of order");
        *next += 1;
    };
    // Three pings, each after events: the beat is heard while the events flow.
    let mut pings = 0;
    let mut since_ping = 0;
    while pings < 3 {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within the wait")
            .expect("connection open")
            .expect("no websocket error")
        {
            Message::Text(t) => {
                on_event(&mut next, &t);
                since_ping += 1;
            }
            Message::Ping(_) if since_ping > 0 => {
                pings += 1;
                since_ping = 0;
            }
            Message::Ping(_) => {}
            other => panic!("expected events and pings, got {other:?}"),
        }
    }
    let before_close = next;
    sc.terminate();
    let code = loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the close within the wait")
            .expect("connection open")
            .expect("no websocket error")
        {
            Message::Text(t) => on_event(&mut next, &t),
            Message::Close(frame) => break frame.map(|f| f.code),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected events then a close, got {other:?}"),
        }
    };
    assert_eq!(code, Some(CloseCode::Away));
    stop.cancel();
    let published = publisher.await.expect("publisher");
    assert!(
        next >= before_close && published >= next && next > 100,
        "got {next} of {published} events, {before_close} before SIGTERM"
    );
    assert!(sc.wait_exit().await.success());
}

#[tokio::test]
async fn text_logs_have_no_colour_escapes_when_stderr_is_not_a_terminal() {
    let sc = SidecarProcess::spawn_captured(&["--auth", "none", "--broker", "memory"], &[]).await;
    // The start-up warning about --auth none and the listening line are both info or above.
    let logs = taskstream_tests::eventually("the listening line on stderr", || async {
        let logs = sc.stderr();
        logs.contains("taskstream sidecar listening")
            .then_some(logs)
    })
    .await;
    assert!(logs.contains("--auth none"), "{logs}");
    assert!(
        !logs.contains("\x1b["),
        "ANSI escapes in piped logs: {logs:?}"
    );
}
