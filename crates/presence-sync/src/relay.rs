//! The binary relay source: one WebSocket of 16-byte frames, the bearer token in a header.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use genesys_auth::GenesysClient;
use presence_frame::{Frame, GroupMask, PresenceEvent};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use crate::backoff::full_jitter;
use crate::channel::connect;
use crate::config::SyncConfig;
use crate::decode::{Decoder, UserMasks};
use crate::error::{Error, Result};
use crate::sink::PresenceSink;
use crate::stats::{ChannelSlot, ChannelState, ReconnectCause, SyncStatus, bump};

/// Reads presence from a binary relay: connects to `url` with `Authorization: Bearer` (never
/// a token in the URL, where it would leak into logs), decodes batched frames, applies the
/// group filter, and reconnects with the same backoff policy as the Genesys sync.
///
/// Uses from [`SyncConfig`]: `allowed` (frames carry the group bits 0 to 7), `max_message_bytes`, `idle_before_ping`,
/// `pong_timeout`, `connect_timeout`, `backoff`, `healthy_after`.
pub struct RelaySource {
    url: String,
    client: GenesysClient,
    config: SyncConfig,
    sink: Arc<dyn PresenceSink>,
    status: SyncStatus,
}

impl RelaySource {
    /// A relay source; the token comes from `client`.
    pub fn new(
        url: &str,
        client: GenesysClient,
        config: SyncConfig,
        sink: impl PresenceSink,
    ) -> Result<RelaySource> {
        config.validate()?;
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(Error::Config {
                option: "relay-url",
                reason: format!("{url:?} must start with ws:// or wss://"),
            });
        }
        if url.contains("access_token=") || url.contains("token=") {
            return Err(Error::Config {
                option: "relay-url",
                reason:
                    "must not carry a token; the bearer token is sent in the Authorization header"
                        .into(),
            });
        }
        let status = SyncStatus::default();
        *status.channels.lock() = vec![ChannelSlot {
            channel_id: Some(url.to_owned()),
            state: ChannelState::Setup,
            users: 0,
            reconnects: 0,
            last_message: None,
        }];
        Ok(RelaySource {
            url: url.to_owned(),
            client,
            config,
            sink: Arc::new(sink),
            status,
        })
    }

    /// A live view of counters and the connection state (one "channel").
    pub fn status(&self) -> SyncStatus {
        self.status.clone()
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let decoder = Decoder::new(
            Arc::clone(&self.status.stats),
            Arc::new(UserMasks::new(Default::default(), GroupMask::NONE)),
            self.config.allowed,
            self.config.max_message_bytes,
        );
        self.status
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut attempt = 0u32;
        let mut connected_once = false;
        loop {
            if attempt > 0 {
                self.status.set_state(0, ChannelState::Backoff);
                let wait = full_jitter(self.config.backoff_base, self.config.backoff_cap, attempt);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = sleep(wait) => {}
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            self.status.set_state(0, ChannelState::Connecting);
            let ws = match self.open().await {
                Ok(ws) => ws,
                Err(why) => {
                    log::warn!("relay: connecting failed: {why}");
                    self.status.stats.reconnect(ReconnectCause::ConnectFailed);
                    attempt = attempt.saturating_add(1);
                    continue;
                }
            };
            log::info!(
                "relay: {} to {}",
                if connected_once {
                    "reconnected"
                } else {
                    "connected"
                },
                self.url
            );
            connected_once = true;
            self.status.set_state(0, ChannelState::Streaming);
            let started = Instant::now();
            let cause = match self.stream(ws, &decoder, &shutdown).await {
                None => break,
                Some(cause) => cause,
            };
            if started.elapsed() >= self.config.healthy_after {
                attempt = 0;
            }
            attempt = attempt.saturating_add(1);
            self.status.stats.reconnect(cause);
            self.status.update(0, |s| s.reconnects += 1);
            log::warn!(
                "relay: lost the connection ({}); reconnecting",
                cause.as_str()
            );
        }
        self.status.set_state(0, ChannelState::Stopped);
        self.status
            .ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn open(&self) -> std::result::Result<crate::channel::Ws, String> {
        let token = self.client.token().await.map_err(|e| e.to_string())?;
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let bearer = HeaderValue::from_str(&token.bearer())
            .map_err(|_| "token is not a valid header value".to_string())?;
        request.headers_mut().insert("Authorization", bearer);
        match connect(request, &self.config).await {
            Err(why) if why == "HTTP 401" => {
                // The relay no longer takes this token: get a new one next time.
                self.client.invalidate(&token).await;
                Err(why)
            }
            other => other,
        }
    }

    /// Reads until the connection ends (`Some(cause)`) or shutdown (`None`).
    async fn stream(
        &self,
        mut ws: crate::channel::Ws,
        decoder: &Decoder,
        shutdown: &CancellationToken,
    ) -> Option<ReconnectCause> {
        let mut last_message = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut batch: Vec<PresenceEvent> = Vec::new();
        let mut frames: Vec<Frame> = Vec::with_capacity(4096);
        let context = "relay";
        loop {
            let watchdog_at = match ping_sent {
                Some(at) => at + self.config.pong_timeout,
                None => last_message + self.config.idle_before_ping,
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
                    return None;
                }
                message = ws.next() => {
                    match message {
                        Some(Ok(Message::Binary(bytes))) => { decoder.relay_binary(&bytes, context, &mut frames, &mut batch); }
                        Some(Ok(Message::Text(text))) => { decoder.text(text.as_str(), context, &mut batch); }
                        Some(Ok(Message::Close(_))) | None => return Some(ReconnectCause::Closed),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            log::info!("relay: socket error: {e}");
                            return Some(ReconnectCause::Closed);
                        }
                    }
                    last_message = Instant::now();
                    ping_sent = None;
                    if !frames.is_empty() {
                        self.sink.publish_frames(&frames);
                        frames.clear();
                    }
                    if !batch.is_empty() {
                        self.sink.publish(&mut batch);
                        batch.clear();
                    }
                }
                _ = sleep_until(watchdog_at) => {
                    if ping_sent.is_some() {
                        return Some(ReconnectCause::HeartbeatTimeout);
                    }
                    bump(&self.status.stats.pings);
                    ping_sent = Some(Instant::now());
                    let _ = timeout(self.config.pong_timeout, ws.send(Message::Ping(Default::default()))).await;
                }
            }
        }
    }
}
