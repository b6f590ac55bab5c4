//! Helpers shared by the integration tests: start an emulator on 127.0.0.1:0, a small HTTP
//! client over real loopback sockets (hyper), and WebSocket helpers (tokio-tungstenite).

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::{SinkExt, StreamExt};
use genesys_emulator::{ClientCredentials, Emulator, EmulatorConfig, EmulatorHandle};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use presence_frame::{EventTime, Notification, decode_notification};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A quiet emulator (no changes, no shift bursts) unless the test asks otherwise.
pub(crate) fn quiet() -> EmulatorConfig {
    EmulatorConfig::default()
        .users(100)
        .change_rate(0.0)
        .shift_change_every(Duration::ZERO)
}

pub(crate) async fn start(config: EmulatorConfig) -> EmulatorHandle {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
    Emulator::start(config, addr)
        .await
        .expect("emulator starts")
}

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request on a new connection.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let request = builder
        .body(Full::new(body.into()))
        .expect("request builds");
    let response = sender.send_request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub(crate) fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

pub(crate) fn basic(id: &str, secret: &str) -> (&'static str, String) {
    let raw = format!("{id}:{secret}");
    ("authorization", format!("Basic {}", base64(raw.as_bytes())))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) async fn get_token_reply(emu: &EmulatorHandle) -> Reply {
    request(
        emu.addr(),
        "POST",
        "/oauth/token",
        &[
            basic(emu.client_id(), emu.client_secret()),
            (
                "content-type",
                "application/x-www-form-urlencoded".to_owned(),
            ),
        ],
        "grant_type=client_credentials",
    )
    .await
}

pub(crate) async fn token(emu: &EmulatorHandle) -> String {
    let reply = get_token_reply(emu).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// A token of `client`, by Basic auth.
pub(crate) async fn token_of(emu: &EmulatorHandle, client: &ClientCredentials) -> String {
    let reply = request(
        emu.addr(),
        "POST",
        "/oauth/token",
        &[
            basic(client.id(), client.secret()),
            (
                "content-type",
                "application/x-www-form-urlencoded".to_owned(),
            ),
        ],
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(reply.status, 200, "{}: {:?}", client.id(), reply.body);
    reply.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

pub(crate) async fn api(emu: &EmulatorHandle, token: &str, method: &str, path: &str) -> Reply {
    request(emu.addr(), method, path, &[bearer(token)], Bytes::new()).await
}

pub(crate) async fn api_json(
    emu: &EmulatorHandle,
    token: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> Reply {
    request(
        emu.addr(),
        method,
        path,
        &[
            bearer(token),
            ("content-type", "application/json".to_owned()),
        ],
        body.to_string(),
    )
    .await
}

pub(crate) async fn admin(emu: &EmulatorHandle, method: &str, path: &str, body: &str) -> Reply {
    request(
        emu.addr(),
        method,
        path,
        &[("content-type", "application/json".to_owned())],
        body.to_owned(),
    )
    .await
}

/// Creates a channel: `(id, connectUri)`.
pub(crate) async fn create_channel(emu: &EmulatorHandle, token: &str) -> (String, String) {
    let reply = api(emu, token, "POST", "/api/v2/notifications/channels").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let json = reply.json();
    (
        json["id"].as_str().expect("id").to_owned(),
        json["connectUri"].as_str().expect("connectUri").to_owned(),
    )
}

pub(crate) fn topics(users: &[presence_frame::Guid]) -> Value {
    Value::Array(
        users
            .iter()
            .map(|u| serde_json::json!({ "id": format!("v2.users.{u}.presence") }))
            .collect(),
    )
}

pub(crate) async fn subscribe(
    emu: &EmulatorHandle,
    token: &str,
    channel: &str,
    users: &[presence_frame::Guid],
) -> Reply {
    api_json(
        emu,
        token,
        "POST",
        &format!("/api/v2/notifications/channels/{channel}/subscriptions"),
        &topics(users),
    )
    .await
}

pub(crate) async fn connect(uri: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(uri)
        .await
        .expect("websocket connects");
    ws
}

/// Tries to connect; the HTTP status of a refused upgrade.
pub(crate) async fn connect_status(uri: &str, token: Option<&str>) -> Result<Ws, u16> {
    let mut request = uri.into_client_request().expect("request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("unexpected connect error {other}"),
    }
}

/// What a socket did next.
#[derive(Debug)]
pub(crate) enum Recv {
    Text(String),
    Binary(Bytes),
    Close(Option<CloseFrame>),
    /// The stream failed (for example TCP closed without a close frame).
    Error(#[expect(dead_code, reason = "shown by Debug in failure messages")] String),
    /// The stream ended.
    Ended,
    Timeout,
}

pub(crate) async fn recv(ws: &mut Ws, within: Duration) -> Recv {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Err(_) => return Recv::Timeout,
            Ok(None) => return Recv::Ended,
            Ok(Some(Err(e))) => return Recv::Error(e.to_string()),
            Ok(Some(Ok(Message::Text(t)))) => return Recv::Text(t.to_string()),
            Ok(Some(Ok(Message::Binary(b)))) => return Recv::Binary(b),
            Ok(Some(Ok(Message::Close(frame)))) => return Recv::Close(frame),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// The next text message that is not a heartbeat, decoded.
pub(crate) async fn next_notification(
    ws: &mut Ws,
    within: Duration,
) -> Option<(String, Notification)> {
    loop {
        match recv(ws, within).await {
            Recv::Text(text) => {
                let decoded = decode_notification(text.as_bytes(), EventTime(0)).ok()?;
                if decoded == Notification::Heartbeat {
                    continue;
                }
                return Some((text, decoded));
            }
            _ => return None,
        }
    }
}

pub(crate) async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

/// Polls `check` (on real time) until it holds or `within` passes.
pub(crate) async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    check()
}

/// Waits (up to 5 s) until `n` of the emulator's channels have a socket connected.
pub(crate) async fn wait_connected(emu: &EmulatorHandle, n: usize) {
    assert!(
        eventually(Duration::from_secs(5), || emu
            .stats()
            .channels
            .iter()
            .filter(|c| c.connected)
            .count()
            == n)
        .await,
        "{n} channel(s) connected: {:?}",
        emu.stats().channels
    );
}
