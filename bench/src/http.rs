//! A minimal HTTP/1.1 client over one kept-alive loopback connection (hyper's `conn` API): the
//! publisher and the proxy load use it so no pool or DNS sits in the measured path.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Bound on any single request of the tool.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One kept-alive HTTP/1.1 connection.
pub struct Conn {
    addr: SocketAddr,
    tx: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("http handshake {addr}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { addr, tx })
    }

    /// Sends one request and reads the whole answer; returns status and body.
    pub async fn send(&mut self, method: Method, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.addr.to_string())
            .body(Full::new(body))?;
        let call = async {
            self.tx.ready().await?;
            let resp = self.tx.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .with_context(|| format!("{} {path}: no answer", self.addr))?
    }
}

/// One-shot `GET`.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, Bytes)> {
    Conn::open(addr)
        .await?
        .send(Method::GET, path, Bytes::new())
        .await
}
