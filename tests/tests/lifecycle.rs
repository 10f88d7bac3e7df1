//! The real binary: bad configuration, and graceful shutdown on SIGTERM.

use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::{SidecarProcess, run_binary, ws_url};
use taskstream_tests::upstream::{App, http_get};
use taskstream_tests::ws::{connect, recv_close, recv_text};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

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

#[tokio::test]
async fn sigterm_closes_clients_with_1001_drains_requests_and_exits_0() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let mut sc = SidecarProcess::spawn(&[
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
    let admin = sc.admin;
    taskstream_tests::eventually("ready", || async move {
        (http_get(&format!("http://{admin}/readyz")).await.0 == 200).then_some(())
    })
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
