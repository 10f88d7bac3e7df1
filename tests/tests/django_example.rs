//! examples/django end to end: the app migrated off Daphne runs under `manage.py runserver`
//! behind the sidecar (`--auth forward --redis-protocol channels`); a user logs in through the
//! real login form, opens `/ws/tasks/` with the session cookie, and receives the progress the
//! unchanged task sends with `group_send` from another process (as a Celery worker would).

use std::path::PathBuf;
use std::process::Stdio;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use serde_json::json;
use taskstream_tests::python::{root, venv_python};
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::Sidecar;
use taskstream_tests::upstream::http_get;
use taskstream_tests::ws::{connect_with, recv_text};
use taskstream_tests::{WAIT, eventually, free_port};
use tokio::process::{Child, Command};

const PASSWORD: &str = "correct-horse-battery-staple";

/// The example app's environment: its own SQLite file and Redis.
struct Example {
    db: PathBuf,
    redis_url: String,
}

impl Example {
    fn manage(&self, args: &[&str]) -> Command {
        let mut c = Command::new(venv_python());
        c.arg("manage.py")
            .args(args)
            .current_dir(root().join("examples/django"))
            .env("DJANGO_DB", &self.db)
            .env("REDIS_URL", &self.redis_url)
            .env("DJANGO_SUPERUSER_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs a management command to completion (bounded); returns its stdout.
    async fn run(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(WAIT * 3, self.manage(args).output())
            .await
            .unwrap_or_else(|_| panic!("manage.py {args:?} did not finish"))
            .expect("run manage.py");
        assert!(
            out.status.success(),
            "manage.py {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.db);
    }
}

/// `runserver` child, killed on drop.
struct Runserver(Child);

impl Drop for Runserver {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// A request through the sidecar, returning (status, Set-Cookie values, body).
async fn http(req: Request<Full<Bytes>>) -> (u16, Vec<String>, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("http answer within the wait")
        .expect("http request");
    let status = resp.status().as_u16();
    let cookies = resp
        .headers()
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .collect();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, cookies, String::from_utf8_lossy(&body).into_owned())
}

fn cookie(cookies: &[String], name: &str) -> String {
    cookies
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {cookies:?}"))
        .clone()
}

#[tokio::test]
async fn migrated_django_app_gets_live_progress_through_the_sidecar() {
    let redis = RedisServer::start().await;
    let port = free_port();
    let app = Example {
        db: std::env::temp_dir().join(format!("taskstream-example-{port}.sqlite3")),
        redis_url: redis.url(),
    };
    app.run(&["migrate", "--noinput"]).await;
    app.run(&[
        "createsuperuser",
        "--noinput",
        "--username",
        "alice",
        "--email",
        "alice@example.com",
    ])
    .await;
    let addr = format!("127.0.0.1:{port}");
    let _server = Runserver(
        app.manage(&["runserver", &addr, "--noreload"])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn runserver"),
    );
    eventually("runserver answers", || async {
        (http_get(&format!("http://{addr}/accounts/login/")).await.0 == 200).then_some(())
    })
    .await;

    let upstream = format!("http://{addr}");
    let sc = Sidecar::start(&[
        "--auth",
        "forward",
        "--upstream",
        &upstream,
        "--redis-url",
        &redis.url(),
        "--redis-protocol",
        "channels",
        "--user-group",
        "user_{sub}_tasks",
    ])
    .await;
    let base = format!("http://{}", sc.public);

    // Log in with the real form, through the sidecar's proxy: CSRF cookie + token, then POST.
    let (status, cookies, page) = http(
        Request::get(format!("{base}/accounts/login/"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let csrf_cookie = cookie(&cookies, "csrftoken");
    let token = page
        .split("name=\"csrfmiddlewaretoken\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf token in the login form");
    let form = format!("username=alice&password={PASSWORD}&csrfmiddlewaretoken={token}");
    let (status, cookies, _) = http(
        Request::post(format!("{base}/accounts/login/"))
            .header("cookie", &csrf_cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::from(form))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 302, "login redirects");
    let session = cookie(&cookies, "sessionid");
    let cookie_header = format!("{csrf_cookie}; {session}");
    let (status, _, page) = http(
        Request::get(format!("{base}/"))
            .header("cookie", &cookie_header)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("Tasks of alice") && page.contains("/ws/tasks/"));

    // No session: the app's /ws-auth/ says 401, and so does the sidecar.
    assert_eq!(connect_with(&sc.ws_url(""), &[]).await.err(), Some(401));
    let mut ws = connect_with(&sc.ws_url(""), &[("cookie", &cookie_header)])
        .await
        .expect("the session cookie opens the socket");

    // The unchanged task, in its own process.
    let task = app
        .run(&[
            "report_progress",
            "--user",
            "alice",
            "--steps",
            "4",
            "--task-id",
            "t1",
        ])
        .await;
    assert_eq!(task.trim(), "t1");
    for progress in [25, 50, 75, 100] {
        let frame: serde_json::Value = serde_json::from_str(&recv_text(&mut ws).await).unwrap();
        assert_eq!(frame, json!({"task": "t1", "progress": progress}));
    }
    let done: serde_json::Value = serde_json::from_str(&recv_text(&mut ws).await).unwrap();
    assert_eq!(done, json!({"task": "t1", "progress": 100, "done": true}));
    sc.stop().await;
}
