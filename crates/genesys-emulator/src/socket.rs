//! The WebSockets: `GET /channels/{id}` (a notification channel's socket: events,
//! heartbeats, ping/pong, faults) and `GET /relay` (the binary frame relay).
//!
//! The upgrade is done here rather than by axum so that the emulator and its tests share
//! one tungstenite with the rest of the workspace.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use presence_frame::{FRAME_LEN, Frame};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, Interval};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::auth;
use crate::channel_table::{ChannelCounters, Connection};
use crate::control::Control;
use crate::fault::{FaultKind, FaultTarget, Landed};
use crate::inject;
use crate::state::Shared;
use crate::wire::{self, ApiError};
use crate::workload::UserPresence;

/// Largest message accepted from a client (they only send pings).
const MAX_INCOMING: usize = 64 * 1024;

/// Most queued messages written before one flush.
const WRITE_BATCH: usize = 512;

/// How long a closing handshake may take before the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Checks a WebSocket upgrade request; the `Sec-WebSocket-Accept` value and the upgrade
/// future, or the error response.
fn accept(request: &mut Request) -> Result<(HeaderValue, OnUpgrade), ApiError> {
    let headers = request.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(ApiError::bad_request("A WebSocket upgrade is required"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade.required",
            "Sec-WebSocket-Version 13 is required",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(ApiError::bad_request("Sec-WebSocket-Key is missing"));
    };
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| ApiError::bad_request("Bad Sec-WebSocket-Key"))?;
    let on_upgrade = request
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or_else(|| ApiError::bad_request("This connection cannot be upgraded"))?;
    Ok((accept, on_upgrade))
}

fn switching_protocols(accept: HeaderValue) -> Response {
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers: &mut HeaderMap = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

async fn upgrade(on_upgrade: OnUpgrade) -> Option<Socket> {
    let upgraded = on_upgrade.await.ok()?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_INCOMING))
        .max_frame_size(Some(MAX_INCOMING));
    Some(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await)
}

/// The channels that pass the text a client sends: only `{"message":"ping"}` means anything.
fn is_ping(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(|m| m == "ping")
        })
        .unwrap_or(false)
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn deadline(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How a socket's task ends.
enum End {
    /// With a close frame.
    Close(CloseCode, &'static str),
    /// Without one (TCP just closes).
    Drop,
}

async fn finish(mut socket: Socket, end: End) {
    if let End::Close(code, reason) = end {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(Some(frame))).await;
    }
}

/// `GET /channels/{id}`: 404 unless the channel exists (or, with
/// [`socket_404_message`](crate::EmulatorConfig::socket_404_message), a socket that says
/// `{"result":"404",...}` and closes); a second connection takes delivery over from the
/// first, which writes what was queued for it and closes.
pub(crate) async fn channel_socket(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    mut request: Request,
) -> Response {
    let now = Instant::now();
    if shared.channels.lock().live(&id, now).is_none() {
        if shared.config.socket_404_message {
            return gone_channel_socket(&shared, &id, &mut request);
        }
        return wire::not_found(format!("Channel {id} not found"));
    }
    let (accept_key, on_upgrade) = match accept(&mut request) {
        Ok(ok) => ok,
        Err(error) => return error.into_response(),
    };
    let conn_id = shared.next_conn_id();
    let (events_tx, events) = mpsc::channel(shared.config.socket_queue);
    let (control_tx, control) = mpsc::unbounded_channel();
    let stalled = Arc::new(AtomicBool::new(false));
    let registered = {
        let mut table = shared.channels.lock();
        table.live_mut(&id, now).map(|channel| {
            let old = channel.connection.replace(Connection {
                conn_id,
                events: events_tx,
                control: control_tx.clone(),
                stalled: stalled.clone(),
            });
            if let Some(old) = old {
                let _ = old.control.send(Control::Kick);
            }
            (channel.id.clone(), channel.counters.clone())
        })
    };
    let Some((id, counters)) = registered else {
        return wire::not_found(format!("Channel {id} not found"));
    };
    for fault in shared.take_startup_faults(|t| {
        matches!(t, FaultTarget::All) || *t == FaultTarget::Channel(id.to_string())
    }) {
        if let Some(message) = inject::socket_control(&shared, &fault, false, None) {
            let _ = control_tx.send(message);
        }
    }
    log::debug!("socket {conn_id} connected to channel {id}");
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        let mut session = ChannelSession {
            shared: shared.clone(),
            events,
            control,
            stalled,
            counters,
        };
        match upgrade(on_upgrade).await {
            Some(socket) => {
                let (socket, end) = session.run(socket).await;
                finish(socket, end).await;
            }
            None => log::debug!("upgrade of socket {conn_id} failed"),
        }
        session.account_lost();
        shared.channels.lock().disconnect(&id, conn_id);
        log::debug!("socket {conn_id} of channel {id} ended");
    });
    switching_protocols(accept_key)
}

/// A socket to a channel that does not exist, answered the way some clients report seeing:
/// upgraded, then a message without `topicName`, `{"result":"404","message":...}`, then a
/// close.
fn gone_channel_socket(shared: &Arc<Shared>, id: &str, request: &mut Request) -> Response {
    let (accept_key, on_upgrade) = match accept(request) {
        Ok(ok) => ok,
        Err(error) => return error.into_response(),
    };
    let message = wire::channel_not_found(id);
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        if let Some(mut socket) = upgrade(on_upgrade).await {
            let _ = socket.send(Message::text(message)).await;
            finish(socket, End::Close(CloseCode::Normal, "channel not found")).await;
        }
    });
    switching_protocols(accept_key)
}

struct ChannelSession {
    shared: Arc<Shared>,
    events: mpsc::Receiver<Utf8Bytes>,
    control: mpsc::UnboundedReceiver<Control>,
    stalled: Arc<AtomicBool>,
    counters: Arc<ChannelCounters>,
}

impl ChannelSession {
    fn lose(&self, n: u64) {
        self.counters.lost.fetch_add(n, Ordering::Relaxed);
        self.shared
            .counters
            .events_lost
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Counts events still queued when the socket ends as lost.
    fn account_lost(&mut self) {
        self.events.close();
        let mut n = 0;
        while self.events.try_recv().is_ok() {
            n += 1;
        }
        self.lose(n);
    }

    async fn run(&mut self, mut socket: Socket) -> (Socket, End) {
        let shared = self.shared.clone();
        let period = shared.config.heartbeat_interval;
        let mut heartbeat =
            (!period.is_zero()).then(|| tokio::time::interval_at(Instant::now() + period, period));
        let mut closing_at: Option<Instant> = None;
        loop {
            if self.stalled.load(Ordering::Relaxed) {
                // Stalled: say nothing, read nothing; only leave when told or at shutdown.
                tokio::select! {
                    _ = shared.cancel.cancelled() => return (socket, End::Drop),
                    control = self.control.recv() => match control {
                        // A stalled socket acts on nothing but its end.
                        Some(Control::Stall | Control::Send { .. } | Control::SocketClosing { .. }) => {}
                        Some(Control::Drop) => {
                            shared.count_hit(FaultKind::DropSocket, Landed::ChannelSocket, 1);
                            return (socket, End::Drop);
                        }
                        _ => return (socket, End::Drop),
                    },
                    Some(_) = self.events.recv() => self.lose(1),
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = shared.cancel.cancelled() => {
                    return (socket, End::Close(CloseCode::Away, "emulator shutting down"));
                }
                control = self.control.recv() => match control {
                    None => return (socket, End::Close(CloseCode::Normal, "channel closed")),
                    Some(Control::Close { reason }) => {
                        return (socket, End::Close(CloseCode::Normal, reason));
                    }
                    Some(Control::Kick) => {
                        // Delivery moved to the new socket when it connected; what was queued
                        // here before that is still this socket's to send.
                        if !self.write_queued(&mut socket).await {
                            return (socket, End::Drop);
                        }
                        return (socket, End::Close(CloseCode::Normal, "another socket connected to this channel"));
                    }
                    Some(Control::Gone { message }) => {
                        let _ = socket.send(Message::text(message)).await;
                        return (socket, End::Close(CloseCode::Normal, "no longer subscribed"));
                    }
                    Some(Control::Drop) => {
                        shared.count_hit(FaultKind::DropSocket, Landed::ChannelSocket, 1);
                        return (socket, End::Drop);
                    }
                    Some(Control::Stall) => {
                        self.stalled.store(true, Ordering::Relaxed);
                        shared.count_hit(FaultKind::StallSocket, Landed::ChannelSocket, 1);
                    }
                    Some(Control::SocketClosing { kind, grace, message }) => {
                        if socket.send(Message::text(message)).await.is_err() {
                            return (socket, End::Drop);
                        }
                        shared.count_hit(kind, Landed::ChannelSocket, 1);
                        closing_at = Some(Instant::now() + grace);
                    }
                    Some(Control::Send { kind, message }) => {
                        if socket.send(message).await.is_err() {
                            return (socket, End::Drop);
                        }
                        shared.count_hit(kind, Landed::ChannelSocket, 1);
                    }
                },
                _ = deadline(closing_at) => {
                    return (socket, End::Close(CloseCode::Away, "maintenance"));
                }
                incoming = socket.next() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if is_ping(&text) && socket.send(Message::text(wire::PONG)).await.is_err() {
                            return (socket, End::Drop);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return (socket, End::Drop),
                },
                _ = tick(&mut heartbeat) => {
                    if socket.send(Message::text(wire::HEARTBEAT)).await.is_err() {
                        return (socket, End::Drop);
                    }
                    shared.counters.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                }
                Some(first) = self.events.recv() => {
                    if !self.write_batch(&mut socket, first).await {
                        return (socket, End::Drop);
                    }
                }
            }
        }
    }

    /// Writes everything queued, in batches.
    async fn write_queued(&mut self, socket: &mut Socket) -> bool {
        while let Ok(first) = self.events.try_recv() {
            if !self.write_batch(socket, first).await {
                return false;
            }
        }
        true
    }

    /// Writes `first` and whatever else is queued (up to a batch), then flushes.
    async fn write_batch(&mut self, socket: &mut Socket, first: Utf8Bytes) -> bool {
        let mut pending = Some(first);
        let mut written = 0u64;
        while let Some(text) = pending.take() {
            if socket.feed(Message::Text(text)).await.is_err() {
                self.lose(1);
                return false;
            }
            written += 1;
            if written < WRITE_BATCH as u64 {
                pending = self.events.try_recv().ok();
            }
        }
        let ok = socket.flush().await.is_ok();
        self.counters
            .delivered
            .fetch_add(written, Ordering::Relaxed);
        self.shared
            .counters
            .events_delivered
            .fetch_add(written, Ordering::Relaxed);
        ok
    }
}

/// `GET /relay`: the workload as binary frames. Needs `Authorization: Bearer` (401 on the
/// upgrade without a valid token). Relay user id = the user's index.
pub(crate) async fn relay_socket(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
) -> Response {
    let Some(token) = auth::bearer(request.headers()) else {
        return auth::missing_token();
    };
    let checked = shared.tokens.lock().check(token, Instant::now());
    if let Err(error) = checked {
        return error.into_response();
    }
    let (accept_key, on_upgrade) = match accept(&mut request) {
        Ok(ok) => ok,
        Err(error) => return error.into_response(),
    };
    let conn_id = shared.next_conn_id();
    let (control_tx, control) = mpsc::unbounded_channel();
    // Subscribe before taking the snapshot, so no change falls between them.
    let frames = shared.relay_tx.subscribe();
    let snapshot = if shared.config.relay_snapshot {
        relay_snapshot(&shared)
    } else {
        Vec::new()
    };
    shared
        .relay_conns
        .lock()
        .insert(conn_id, control_tx.clone());
    for fault in shared.take_startup_faults(|t| matches!(t, FaultTarget::All | FaultTarget::Relay))
    {
        if let Some(message) = inject::socket_control(&shared, &fault, true, None) {
            let _ = control_tx.send(message);
        }
    }
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        if let Some(socket) = upgrade(on_upgrade).await {
            let mut session = RelaySession {
                shared: shared.clone(),
                frames,
                control,
                stalled: false,
            };
            let (socket, end) = session.run(socket, snapshot).await;
            finish(socket, end).await;
        }
        shared.relay_conns.lock().remove(&conn_id);
        log::debug!("relay socket {conn_id} ended");
    });
    switching_protocols(accept_key)
}

struct RelaySession {
    shared: Arc<Shared>,
    frames: broadcast::Receiver<Bytes>,
    control: mpsc::UnboundedReceiver<Control>,
    stalled: bool,
}

impl RelaySession {
    fn sent(&self, message: &Bytes) {
        let counters = &self.shared.counters;
        counters.relay_messages_sent.fetch_add(1, Ordering::Relaxed);
        counters
            .relay_frames_sent
            .fetch_add((message.len() / FRAME_LEN) as u64, Ordering::Relaxed);
    }

    fn lost(&self, messages: u64) {
        self.shared
            .counters
            .relay_messages_lost
            .fetch_add(messages, Ordering::Relaxed);
    }

    async fn run(&mut self, mut socket: Socket, snapshot: Vec<Bytes>) -> (Socket, End) {
        let shared = self.shared.clone();
        for message in snapshot {
            if socket.feed(Message::Binary(message.clone())).await.is_err() {
                return (socket, End::Drop);
            }
            self.sent(&message);
        }
        if socket.flush().await.is_err() {
            return (socket, End::Drop);
        }
        loop {
            if self.stalled {
                tokio::select! {
                    _ = shared.cancel.cancelled() => return (socket, End::Drop),
                    control = self.control.recv() => match control {
                        // A stalled socket acts on nothing but its end.
                        Some(Control::Stall | Control::Send { .. } | Control::SocketClosing { .. }) => {}
                        Some(Control::Drop) => {
                            shared.count_hit(FaultKind::DropSocket, Landed::RelaySocket, 1);
                            return (socket, End::Drop);
                        }
                        _ => return (socket, End::Drop),
                    },
                    received = self.frames.recv() => match received {
                        Ok(_) => self.lost(1),
                        Err(broadcast::error::RecvError::Lagged(n)) => self.lost(n),
                        Err(broadcast::error::RecvError::Closed) => return (socket, End::Drop),
                    },
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = shared.cancel.cancelled() => {
                    return (socket, End::Close(CloseCode::Away, "emulator shutting down"));
                }
                control = self.control.recv() => match control {
                    None | Some(Control::Close { .. }) | Some(Control::Kick) | Some(Control::Gone { .. }) => {
                        return (socket, End::Close(CloseCode::Normal, "closed"));
                    }
                    Some(Control::Drop) => {
                        shared.count_hit(FaultKind::DropSocket, Landed::RelaySocket, 1);
                        return (socket, End::Drop);
                    }
                    Some(Control::Stall) => {
                        self.stalled = true;
                        shared.count_hit(FaultKind::StallSocket, Landed::RelaySocket, 1);
                    }
                    // A relay has no maintenance warning (never sent to relay sockets).
                    Some(Control::SocketClosing { .. }) => {}
                    Some(Control::Send { kind, message }) => {
                        if socket.send(message).await.is_err() {
                            return (socket, End::Drop);
                        }
                        shared.count_hit(kind, Landed::RelaySocket, 1);
                    }
                },
                incoming = socket.next() => match incoming {
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return (socket, End::Drop),
                },
                received = self.frames.recv() => match received {
                    Ok(message) => {
                        if !self.write_batch(&mut socket, message).await {
                            return (socket, End::Drop);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => self.lost(n),
                    Err(broadcast::error::RecvError::Closed) => {
                        return (socket, End::Close(CloseCode::Away, "emulator shutting down"));
                    }
                },
            }
        }
    }

    async fn write_batch(&mut self, socket: &mut Socket, first: Bytes) -> bool {
        let mut pending = Some(first);
        let mut written = 0;
        while let Some(message) = pending.take() {
            if socket.feed(Message::Binary(message.clone())).await.is_err() {
                return false;
            }
            self.sent(&message);
            written += 1;
            if written < WRITE_BATCH {
                pending = match self.frames.try_recv() {
                    Ok(next) => Some(next),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        self.lost(n);
                        None
                    }
                    Err(_) => None,
                };
            }
        }
        socket.flush().await.is_ok()
    }
}

/// Every active user's current state as relay messages.
fn relay_snapshot(shared: &Shared) -> Vec<Bytes> {
    let per_message = shared.config.relay_frames_per_message;
    let active = shared.org.read().active().to_vec();
    let presence = shared.presence.read();
    active
        .chunks(per_message)
        .map(|users| {
            let mut buf = Vec::with_capacity(users.len() * FRAME_LEN);
            for &user in users {
                if let Some(p) = presence.get(user as usize) {
                    relay_frame(shared, user, p).encode_into(&mut buf);
                }
            }
            Bytes::from(buf)
        })
        .collect()
}

/// The relay frame of a user's presence.
pub(crate) fn relay_frame(shared: &Shared, user: u32, p: &UserPresence) -> Frame {
    Frame {
        time_ms: p.modified_ms,
        user_id: user,
        status: p.status,
        location: shared
            .world
            .users
            .get(user as usize)
            .map_or(presence_frame::Location::UNKNOWN, |u| u.location),
        groups: (shared.org.read().groups(user) & 0xff) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_are_recognised() {
        assert!(is_ping(r#"{"message":"ping"}"#));
        assert!(is_ping(r#" { "message" : "ping" } "#));
        assert!(!is_ping(r#"{"message":"pong"}"#));
        assert!(!is_ping("ping"));
    }
}
