//! Everything that is not the WebSocket path goes to the app untouched.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use taskstream_tests::redis_server::RedisServer;
use taskstream_tests::sidecar::{Sidecar, SidecarProcess, metric_value, ws_url};
use taskstream_tests::upstream::{App, client, http_get, request, send};
use taskstream_tests::ws::{connect, recv_text, send_text};
use taskstream_tests::{WAIT, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn sidecar(redis: &RedisServer, upstream: &str) -> Sidecar {
    Sidecar::start(&[
        "--auth",
        "none",
        "--redis-url",
        &redis.url(),
        "--upstream",
        upstream,
    ])
    .await
}

#[tokio::test]
async fn methods_headers_and_bodies_reach_the_app() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app.url()).await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let mut req = request(
            method,
            &format!("http://{}/echo/path?q=1&x=%20y", sc.public),
            format!("body of {method}"),
        );
        req.headers_mut()
            .insert("x-custom", "kept".parse().unwrap());
        req.headers_mut()
            .insert("cookie", "sessionid=abc".parse().unwrap());
        let (status, body) = send(req).await;
        assert_eq!(status, 200, "{method}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["method"], method);
        assert_eq!(v["uri"], "/echo/path?q=1&x=%20y");
        assert_eq!(v["body"], format!("body of {method}"));
        let h = &v["headers"];
        assert_eq!(h["x-custom"], "kept");
        assert_eq!(h["cookie"], "sessionid=abc");
        assert_eq!(
            h["host"],
            sc.public.to_string(),
            "Host is the client's, as the app expects"
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], sc.public.to_string());
    }
    sc.stop().await;
}

#[tokio::test]
async fn status_codes_and_response_headers_pass_through() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app.url()).await;
    for code in [200u16, 201, 204, 301, 404, 418, 500, 503] {
        let (status, _) = send(request(
            "GET",
            &format!("http://{}/status/{code}", sc.public),
            "",
        ))
        .await;
        assert_eq!(status, code);
    }
    let resp = client()
        .request(request("GET", &format!("http://{}/echo", sc.public), ""))
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-app"], "echo");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        sc.metric("taskstream_proxied_requests_total{class=\"4xx\"}")
            .await,
        2.0
    );
    sc.stop().await;
}

#[tokio::test]
async fn bodies_stream_both_ways_without_buffering() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app.url()).await;
    // The app echoes the request body as it arrives; we read each chunk back before sending
    // the next, which only works if neither direction waits for the whole body.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(1);
    let body = StreamBody::new(tokio_stream_from(rx)).boxed_unsync();
    let req = Request::post(format!("http://{}/stream", sc.public))
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(WAIT, async {
        tx.send(Ok(Frame::data(Bytes::from_static(b"chunk-1"))))
            .await
            .unwrap();
        client().request(req).await.unwrap()
    })
    .await
    .expect("response head arrives before the request body ends");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    for i in 1..=3 {
        if i > 1 {
            tx.send(Ok(Frame::data(Bytes::from(format!("chunk-{i}")))))
                .await
                .unwrap();
        }
        let mut chunk = Vec::new();
        while chunk.len() < format!("chunk-{i}").len() {
            let frame = tokio::time::timeout(WAIT, body.frame())
                .await
                .expect("echoed chunk arrives while the request is still open")
                .expect("body open")
                .expect("frame");
            if let Ok(data) = frame.into_data() {
                chunk.extend_from_slice(&data);
            }
        }
        got.push(String::from_utf8(chunk).unwrap());
    }
    assert_eq!(got, ["chunk-1", "chunk-2", "chunk-3"]);
    drop(tx);
    sc.stop().await;
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn connections_to_the_app_are_pooled_and_kept_alive() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app.url()).await;
    // Ten sequential requests from ten separate client connections: the sidecar reuses one
    // kept-alive connection to the app instead of opening one per request.
    for i in 0..10 {
        let (status, _) = send(request(
            "GET",
            &format!("http://{}/echo/{i}", sc.public),
            "",
        ))
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        app.connections(),
        1,
        "one pooled connection served every request"
    );
    sc.stop().await;
}

#[tokio::test]
async fn app_down_gives_502_with_a_short_body() {
    let redis = RedisServer::start().await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let sc = sidecar(&redis, &closed).await;
    let (status, body) = send(request(
        "GET",
        &format!("http://{}/anything", sc.public),
        "",
    ))
    .await;
    assert_eq!(status, 502);
    assert!(body.contains("not reachable") && body.len() < 200, "{body}");
    assert_eq!(
        sc.metric("taskstream_proxied_requests_total{class=\"error\"}")
            .await,
        1.0
    );
    // The sidecar's own WebSocket path does not depend on the app.
    let mut ws = connect(&sc.ws_url("groups=g")).await;
    redis.publish("taskstream:g", "still relays").await;
    assert_eq!(recv_text(&mut ws).await, "still relays");
    sc.stop().await;
}

#[tokio::test]
async fn websocket_upgrades_on_other_paths_are_passed_to_the_app() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app.url()).await;
    let url = ws_url(sc.public, "").replace("/ws/tasks/", "/ws-echo/");
    let mut ws = connect(&url).await;
    for msg in ["hello app", "second"] {
        send_text(&mut ws, msg).await;
        assert_eq!(recv_text(&mut ws).await, msg);
    }
    sc.stop().await;
}

#[tokio::test]
async fn plain_http_on_the_ws_path_is_told_to_upgrade() {
    let redis = RedisServer::start().await;
    let app = App::start().await;
    let sc = sidecar(&redis, &app.url()).await;
    let (status, body) = send(request(
        "GET",
        &format!("http://{}/ws/tasks/", sc.public),
        "",
    ))
    .await;
    assert_eq!(status, 426);
    assert!(body.contains("WebSocket"), "{body}");
    sc.stop().await;
}

/// Writes `raw` on a fresh connection (then closes our write half if `half_close`) and returns
/// the status of the answer, or `None` when the sidecar closed without one.
async fn raw_request(addr: SocketAddr, raw: &[u8], half_close: bool) -> Option<u16> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(raw).await.expect("write request");
        if half_close {
            s.shutdown().await.expect("shutdown write half");
        }
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        // Up to the end of the status line, or EOF/reset.
        while !head.windows(2).any(|w| w == b"\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let line = String::from_utf8_lossy(&head).into_owned();
        line.split(' ').nth(1).and_then(|c| c.parse().ok())
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("raw exchange within the wait")
}

async fn proxied_metric(admin: SocketAddr, class: &str) -> f64 {
    let metrics = http_get(&format!("http://{admin}/metrics")).await.1;
    metric_value(
        &metrics,
        &format!("taskstream_proxied_requests_total{{class=\"{class}\"}}"),
    )
}

#[tokio::test]
async fn a_broken_client_body_is_a_400_and_not_blamed_on_the_app() {
    let app = App::start().await;
    let sc = SidecarProcess::spawn_captured(
        &[
            "--auth",
            "none",
            "--broker",
            "memory",
            "--upstream",
            &app.url(),
        ],
        &[],
    )
    .await;
    // A chunk size that is not hex.
    let bad_chunk =
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    assert_eq!(raw_request(sc.public, bad_chunk, false).await, Some(400));
    // An upload the client gives up on: 3 of 100 bytes, then it closes. The answer may not
    // reach it; what matters is how the sidecar counts and logs it.
    let aborted = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc";
    let status = raw_request(sc.public, aborted, true).await;
    assert!(matches!(status, None | Some(400)), "{status:?}");
    let admin = sc.admin;
    taskstream_tests::eventually("both counted as client errors", || async move {
        (proxied_metric(admin, "client_error").await == 2.0).then_some(())
    })
    .await;
    assert_eq!(proxied_metric(admin, "error").await, 0.0);

    // A stopped app is still the app's failure: 502, class="error", and the warning. (No
    // request succeeded, so no pooled connection to the app outlives it.)
    drop(app);
    let ok_chunks =
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(raw_request(sc.public, ok_chunks, false).await, Some(502));
    assert_eq!(proxied_metric(admin, "error").await, 1.0);
    assert_eq!(proxied_metric(admin, "client_error").await, 2.0);
    let logs = taskstream_tests::eventually("the 502 warning on stderr", || async {
        let logs = sc.stderr();
        logs.contains("app did not answer").then_some(logs)
    })
    .await;
    assert_eq!(
        logs.matches("app did not answer").count(),
        1,
        "only the stopped app is blamed: {logs}"
    );
}

#[tokio::test]
async fn http_1_1_without_host_is_refused_with_400_on_every_path() {
    let app = App::start().await;
    let sc = Sidecar::start(&[
        "--auth",
        "none",
        "--broker",
        "memory",
        "--upstream",
        &app.url(),
    ])
    .await;
    let ws_head = |host: &str| {
        format!(
            "GET /ws/tasks/?groups=g HTTP/1.1\r\n{host}Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let (ws_no_host, ws_host) = (ws_head(""), ws_head("Host: a\r\n"));
    let cases: [(&[u8], Option<u16>); 6] = [
        (b"GET /echo HTTP/1.1\r\n\r\n", Some(400)),
        (
            b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            Some(400),
        ),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n", Some(200)),
        // HTTP/1.0 predates Host: still proxied.
        (b"GET /echo HTTP/1.0\r\n\r\n", Some(200)),
        (ws_no_host.as_bytes(), Some(400)),
        (ws_host.as_bytes(), Some(101)),
    ];
    for (raw, want) in cases {
        assert_eq!(
            raw_request(sc.public, raw, false).await,
            want,
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(
        sc.metric("taskstream_connections_rejected_total{reason=\"BadRequest\"}")
            .await,
        1.0
    );
    sc.stop().await;
}
