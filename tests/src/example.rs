//! examples/django as its README runs it, for tests/tests/django_example.rs: `manage.py` and
//! `celery -A taskdemo worker` from `.venv-example/` (made from the example's own
//! requirements), a session login through the real login form, and starting a task as the page
//! does. Every process is killed on drop.

use std::path::PathBuf;
use std::process::Stdio;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use tokio::process::{Child, Command};

use crate::WAIT;
use crate::python::{example_python, root};

/// The superuser's password (user `alice`, pk 1).
pub const PASSWORD: &str = "correct-horse-battery-staple";

/// The example app's environment: its own SQLite file, Redis, and extra settings.
pub struct Example {
    db: PathBuf,
    redis_url: String,
    env: Vec<(String, String)>,
}

impl Example {
    /// The app on `redis_url` with a fresh database named after `port`; `env` adds settings
    /// (`TASKSTREAM_CHANNEL_LAYER`, `TASK_STEPS`...).
    pub fn new(redis_url: &str, port: u16, env: &[(&str, &str)]) -> Self {
        Self {
            db: std::env::temp_dir().join(format!("taskstream-example-{port}.sqlite3")),
            redis_url: redis_url.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// `python manage.py <args>` in examples/django.
    pub fn manage(&self, args: &[&str]) -> Command {
        let mut c = Command::new(example_python());
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
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
    }

    /// `celery -A taskdemo worker` (solo pool: one process, killed on drop).
    pub fn worker(&self) -> Killed {
        let celery = example_python().with_file_name("celery");
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
        Killed(
            c.stdout(Stdio::null())
                .spawn()
                .expect("spawn celery -A taskdemo worker"),
        )
    }

    /// Runs a management command to completion (bounded); returns its stdout.
    pub async fn run(&self, args: &[&str]) -> String {
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

    /// `migrate`, the superuser `alice`, and `runserver` on `addr` once it answers.
    pub async fn serve(&self, addr: &str) -> Killed {
        self.run(&["migrate", "--noinput"]).await;
        self.run(&[
            "createsuperuser",
            "--noinput",
            "--username",
            "alice",
            "--email",
            "alice@example.com",
        ])
        .await;
        let server = Killed(
            self.manage(&["runserver", addr, "--noreload"])
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn runserver"),
        );
        crate::eventually("runserver answers", || async {
            (crate::upstream::http_get(&format!("http://{addr}/accounts/login/"))
                .await
                .0
                == 200)
                .then_some(())
        })
        .await;
        server
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.db);
    }
}

/// A child process (`runserver`, the Celery worker), killed on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// A request through the sidecar, returning (status, Set-Cookie values, body).
pub async fn http(req: Request<Full<Bytes>>) -> (u16, Vec<String>, String) {
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

/// The value of the first `csrfmiddlewaretoken` input of `page`.
pub fn csrf_token(page: &str) -> String {
    page.split("name=\"csrfmiddlewaretoken\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf token in the page")
        .to_owned()
}

/// A logged-in browser session.
pub struct Session {
    /// The `Cookie` header: CSRF cookie and session id.
    pub cookie: String,
    /// The task page, as rendered for the session.
    pub page: String,
}

/// Logs `alice` in through the real form at `base` (the sidecar, which proxies the app): CSRF
/// cookie and token, then the POST; returns the session and its task page.
pub async fn login(base: &str) -> Session {
    let (status, cookies, page) = http(
        Request::get(format!("{base}/accounts/login/"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let csrf_cookie = cookie(&cookies, "csrftoken");
    let form = format!(
        "username=alice&password={PASSWORD}&csrfmiddlewaretoken={}",
        csrf_token(&page)
    );
    let (status, cookies, _) = http(
        Request::post(format!("{base}/accounts/login/"))
            .header("cookie", &csrf_cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::from(form))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 302, "login redirects");
    let session = format!("{csrf_cookie}; {}", cookie(&cookies, "sessionid"));
    let (status, page) = get_page(base, &session).await;
    assert_eq!(status, 200);
    Session {
        cookie: session,
        page,
    }
}

/// `GET /` for the session.
pub async fn get_page(base: &str, cookie: &str) -> (u16, String) {
    let (status, _, page) = http(
        Request::get(format!("{base}/"))
            .header("cookie", cookie)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    (status, page)
}

/// Starts a task as the page's button does; returns the Celery task id.
pub async fn start_task(base: &str, session: &Session) -> String {
    let (status, _, body) = http(
        Request::post(format!("{base}/tasks/start/"))
            .header("cookie", &session.cookie)
            .header("x-csrftoken", csrf_token(&session.page))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let task: serde_json::Value = serde_json::from_str(&body).expect("a JSON answer");
    task["task"]
        .as_str()
        .expect("the celery task id")
        .to_owned()
}
