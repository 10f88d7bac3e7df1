//! WebSocket client helpers; every wait is bounded.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::WAIT;

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects to `url` with extra `headers`; `Err(status)` when the handshake is refused.
pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
    let mut req = url.into_client_request().expect("ws url");
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            v.parse().expect("header value"),
        );
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await {
        Err(_) => panic!("websocket handshake to {url} did not finish within {WAIT:?}"),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(Error::Http(resp))) => Err(resp.status().as_u16()),
        Ok(Err(e)) => panic!("websocket connect to {url}: {e}"),
    }
}

pub async fn connect(url: &str) -> Client {
    connect_with(url, &[])
        .await
        .unwrap_or_else(|s| panic!("handshake to {url} refused with {s}"))
}

/// The next text frame (pings are answered by the library while reading).
pub async fn recv_text(ws: &mut Client) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message within the wait")
            .expect("connection open")
            .expect("no websocket error");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the server closes; returns the close code (None if the socket just ended).
pub async fn recv_close(ws: &mut Client) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close within the wait")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

pub async fn send_text(ws: &mut Client, text: &str) {
    ws.send(Message::Text(text.into()))
        .await
        .expect("send text");
}
