//! examples/django end to end, as its README runs it: `manage.py runserver` behind the sidecar
//! (`--auth forward --history-size 100`), a real `celery -A taskdemo worker` with Redis as the
//! broker. A user logs in through the real login form, starts a task from the page's endpoint,
//! and receives over `/ws/tasks/` (session cookie, `taskstream.v1`) every progress event the
//! worker publishes through the `taskstream` package with history; a late connection replays them.

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
const V1: (&str, &str) = ("Sec-WebSocket-Protocol", "taskstream.v1");

/// The example app's environment: its own SQLite file and Redis.
struct Example {
    db: PathBuf,
    redis_url: String,
}

impl Example {
    fn manage(&self, args: &[&str]) -> Command {
        let mut c = Command::new(venv_python());
        c.arg("manage.py").args(args);
        self.env(&mut c);
        c
    }

    fn env(&self, c: &mut Command) {
        c.current_dir(root().join("examples/django"))
            .env("DJANGO_DB", &self.db)
            .env("REDIS_URL", &self.redis_url)
            .env("TASK_STEP_SECONDS", "0.05")
            .env("DJANGO_SUPERUSER_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .kill_on_drop(true);
    }

    /// `celery -A taskdemo worker` (solo pool: one process, killed on drop).
    fn worker(&self) -> Child {
        let celery = venv_python().with_file_name("celery");
        let mut c = Command::new(celery);
        c.args([
            "-A",
            "taskdemo",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "WARNING",
        ]);
        self.env(&mut c);
        c.stdout(Stdio::null())
            .spawn()
            .expect("spawn celery -A taskdemo worker")
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

/// A child process (`runserver`, the Celery worker), killed on drop.
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
async fn django_app_with_a_celery_worker_gets_every_progress_event_through_the_sidecar() {
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

    let _worker = Runserver(app.worker());
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
    assert!(
        page.contains("/static/taskstream/client.js"),
        "the page loads the client"
    );
    let token = page
        .split("name=\"csrfmiddlewaretoken\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf token in the page")
        .to_owned();
    // The client module is served by Django's static files, and is clients/js/index.js.
    let (status, js) = http_get(&format!("{base}/static/taskstream/client.js")).await;
    assert_eq!(status, 200);
    assert_eq!(
        js,
        std::fs::read_to_string(root().join("clients/js/index.js")).unwrap()
    );

    // No session: the app's /ws-auth/ says 401, and so does the sidecar.
    assert_eq!(connect_with(&sc.ws_url(""), &[V1]).await.err(), Some(401));
    let mut ws = connect_with(&sc.ws_url(""), &[("cookie", &cookie_header), V1])
        .await
        .expect("the session cookie opens the socket");

    // Start the task as the page does; the Celery worker runs it.
    let (status, _, body) = http(
        Request::post(format!("{base}/tasks/start/"))
            .header("cookie", &cookie_header)
            .header("x-csrftoken", &token)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let task: serde_json::Value = serde_json::from_str(&body).unwrap();
    let task = task["task"]
        .as_str()
        .expect("the celery task id")
        .to_owned();

    let group = "user:1";
    let mut ids = Vec::new();
    let mut events = Vec::new();
    for _ in 0..5 {
        let frame = next_event(&mut ws).await;
        assert_eq!(
            (frame["type"].as_str(), frame["group"].as_str()),
            (Some("event"), Some(group))
        );
        ids.push(
            frame["id"]
                .as_str()
                .expect("published with history: an id")
                .to_owned(),
        );
        events.push(frame["data"].clone());
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
    let (_, _, page) = http(
        Request::get(format!("{base}/"))
            .header("cookie", &cookie_header)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert!(
        page.contains(&format!("{task}: done")),
        "notification listed"
    );

    // A page load (last_id=<group>:0) replays the whole task from history; resuming after the
    // second event gets exactly the rest.
    let mut late = connect_with(
        &sc.ws_url(&format!("last_id={group}:0")),
        &[("cookie", &cookie_header), V1],
    )
    .await
    .expect("late joiner");
    for id in &ids {
        let frame = next_event(&mut late).await;
        assert_eq!(frame["id"].as_str(), Some(id.as_str()));
    }
    let mut resumed = connect_with(
        &sc.ws_url(&format!("last_id={group}:{}", ids[1])),
        &[("cookie", &cookie_header), V1],
    )
    .await
    .expect("resume");
    for id in &ids[2..] {
        let frame = next_event(&mut resumed).await;
        assert_eq!(frame["id"].as_str(), Some(id.as_str()));
    }
    sc.stop().await;
}

/// The next frame that is not a `position` (the page's groups without a `last_id` get one first).
async fn next_event(ws: &mut taskstream_tests::ws::Client) -> serde_json::Value {
    loop {
        let frame: serde_json::Value = serde_json::from_str(&recv_text(ws).await).unwrap();
        if frame["type"] != "position" {
            return frame;
        }
    }
}
