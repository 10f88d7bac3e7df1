//! Real headless Chromium driven over the DevTools protocol (a WebSocket), for the demo test.
//! Installed by scripts/install-test-deps.sh (Debian's `chromium`).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::upstream::http_get;
use crate::ws::Client;
use crate::{WAIT, eventually};

pub struct Browser {
    child: tokio::process::Child,
    cdp: Client,
    next_id: u64,
    profile: PathBuf,
}

impl Browser {
    /// Starts headless Chromium with a fresh profile and attaches to its first page.
    pub async fn launch() -> Self {
        let profile = std::env::temp_dir().join(format!(
            "taskstream-chromium-{}-{}",
            std::process::id(),
            crate::free_port()
        ));
        std::fs::create_dir_all(&profile).expect("create chromium profile dir");
        let child = tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1000,700",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn chromium: run scripts/install-test-deps.sh first");
        let port_file = profile.join("DevToolsActivePort");
        let port: u16 = eventually("chromium DevToolsActivePort", || {
            let f = port_file.clone();
            async move {
                let text = std::fs::read_to_string(f).ok()?;
                text.lines().next()?.trim().parse().ok()
            }
        })
        .await;
        let ws_url = eventually("a chromium page target", || async move {
            let (status, body) = http_get(&format!("http://127.0.0.1:{port}/json/list")).await;
            if status != 200 {
                return None;
            }
            let targets: Vec<Value> = serde_json::from_str(&body).ok()?;
            targets
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
        })
        .await;
        let cdp = crate::ws::connect(&ws_url).await;
        let mut b = Self {
            child,
            cdp,
            next_id: 1,
            profile,
        };
        b.call("Page.enable", json!({})).await;
        b.call("Runtime.enable", json!({})).await;
        b
    }

    /// Sends a DevTools command and returns its result, skipping events.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.cdp
            .send(Message::Text(msg.into()))
            .await
            .expect("send to chromium");
        loop {
            let v = self.next_message(&format!("answer to {method}")).await;
            if v["id"] == id {
                if let Some(err) = v.get("error") {
                    panic!("chromium {method}: {err}");
                }
                return v["result"].clone();
            }
        }
    }

    async fn next_message(&mut self, what: &str) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.cdp.next())
                .await
                .unwrap_or_else(|_| panic!("chromium sent no {what} within {WAIT:?}"))
                .expect("chromium connection open")
                .expect("chromium websocket");
            if let Message::Text(t) = msg {
                return serde_json::from_str(&t).expect("chromium sends JSON");
            }
        }
    }

    /// Opens `url` and waits for its load event.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        loop {
            let v = self.next_message("Page.loadEventFired").await;
            if v["method"] == "Page.loadEventFired" {
                return;
            }
        }
    }

    /// Evaluates `expr` in the page (awaiting promises) and returns its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page script failed: {expr}\n{ex}");
        }
        r["result"]["value"].clone()
    }

    /// Waits (in the page, bounded) until the JS expression `cond` is truthy.
    pub async fn wait_for(&mut self, what: &str, cond: &str) {
        let ms = WAIT.as_millis();
        let script = format!(
            "new Promise((resolve, reject) => {{
                const t0 = Date.now();
                const tick = () => {{
                    let ok = false;
                    try {{ ok = !!({cond}); }} catch (e) {{}}
                    if (ok) return resolve(true);
                    if (Date.now() - t0 > {ms}) return resolve(false);
                    requestAnimationFrame(tick);
                }};
                tick();
            }})"
        );
        let ok = self.eval(&script).await;
        assert_eq!(ok, Value::Bool(true), "page never showed: {what} ({cond})");
    }

    /// Clicks the centre of the element matching `selector` with real mouse events.
    pub async fn click(&mut self, selector: &str) {
        let rect = self
            .eval(&format!(
                "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect();
                   return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()"
            ))
            .await;
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": rect["x"], "y": rect["y"], "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Saves a PNG screenshot of the page to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let data = r["data"].as_str().expect("screenshot data");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create artifacts dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
