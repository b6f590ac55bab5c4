//! The binary relay source: one WebSocket of 16-byte frames, the bearer token in a header.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use genesys_auth::GenesysClient;
use presence_frame::{Frame, GroupMask, PresenceEvent};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_util::sync::CancellationToken;

use crate::backoff::full_jitter;
use crate::channel::connect;
use crate::config::SyncConfig;
use crate::decode::{Decoder, UserMasks};
use crate::error::{Error, Result, SessionError};
use crate::sink::PresenceSink;
use crate::stats::{ChannelSlot, ChannelState, ReconnectCause, SyncStatus, bump};

/// Reads presence from a binary relay: connects to `url` with `Authorization: Bearer` (never
/// a token in the URL, where it would leak into logs), decodes batched frames, applies the
/// group filter, and reconnects with the same backoff policy as the Genesys sync.
///
/// The bearer token is a Genesys token, so the URL must be `wss://`; plain `ws://` is taken
/// only for loopback hosts (`127.0.0.0/8`, `::1`, `localhost`), as for a relay on the same
/// machine. A URL with userinfo (`user:password@host`) is refused. The URL's query is used to
/// connect but never shown: logs, errors and [`SyncStatus`] carry
/// [`display_url`](RelaySource::display_url), the URL without its query and fragment.
///
/// Uses from [`SyncConfig`]: `allowed` (frames carry the group bits 0 to 7),
/// `max_message_bytes`, `max_socket_message_bytes`, `idle_before_ping`, `pong_timeout`, `connect_timeout`, `backoff`,
/// `healthy_after`.
pub struct RelaySource {
    url: String,
    display: String,
    client: GenesysClient,
    config: SyncConfig,
    sink: Arc<dyn PresenceSink>,
    status: SyncStatus,
}

impl RelaySource {
    /// A relay source; the token comes from `client`. The URL is checked as
    /// [`check_url`](RelaySource::check_url) does.
    pub fn new(
        url: &str,
        client: GenesysClient,
        config: SyncConfig,
        sink: impl PresenceSink,
    ) -> Result<RelaySource> {
        config.validate()?;
        let display = RelaySource::check_url(url)?;
        let status = SyncStatus::default();
        *status.channels.lock() = vec![ChannelSlot {
            channel_id: Some(display.clone()),
            ..ChannelSlot::new(0)
        }];
        Ok(RelaySource {
            url: url.to_owned(),
            display,
            client,
            config,
            sink: Arc::new(sink),
            status,
        })
    }

    /// Checks a relay URL without building a source (for configuration checks at start) and
    /// returns the form that may be shown: scheme, host, port and path, without the query.
    ///
    /// Refused, with [`Error::Config`] for option `relay-url` (whose reason never repeats the
    /// query or userinfo): anything but `ws://` or `wss://`; `ws://` to a host that is not
    /// loopback; userinfo; a token in the query.
    ///
    /// ```
    /// use presence_sync::RelaySource;
    ///
    /// assert_eq!(
    ///     RelaySource::check_url("wss://relay.example.com/frames?tenant=7").unwrap(),
    ///     "wss://relay.example.com/frames"
    /// );
    /// assert!(RelaySource::check_url("ws://127.0.0.1:9000/frames").is_ok());
    /// assert!(RelaySource::check_url("ws://relay.example.com/frames").is_err());
    /// assert!(RelaySource::check_url("wss://me:pw@relay.example.com/").is_err());
    /// ```
    pub fn check_url(url: &str) -> Result<String> {
        let bad = |reason: String| Error::Config {
            option: "relay-url",
            reason,
        };
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|_| bad("is not a valid ws:// or wss:// URL".into()))?;
        let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
        let authority = uri
            .authority()
            .ok_or_else(|| bad("has no host; expected wss://host[:port]/path".into()))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "must not carry a user name or password (user:password@host); the bearer token is sent in the Authorization header".into(),
            ));
        }
        let host = authority.host();
        let port = authority
            .port()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let display = format!("{scheme}://{host}{port}{}", uri.path());
        match scheme.as_str() {
            "wss" => {}
            "ws" if is_loopback(host) => {}
            "ws" => {
                return Err(bad(format!(
                    "{display}: plain ws:// would send the Genesys token unencrypted; use wss:// (ws:// is taken only for loopback hosts)"
                )));
            }
            _ => {
                return Err(bad(format!(
                    "{display} must start with wss:// (or ws:// to a loopback host)"
                )));
            }
        }
        if uri
            .query()
            .is_some_and(|q| q.contains("access_token=") || q.contains("token="))
        {
            return Err(bad(format!(
                "{display}: must not carry a token; the bearer token is sent in the Authorization header"
            )));
        }
        Ok(display)
    }

    /// The relay URL as it may be shown (logs, status, dashboards): without its query.
    pub fn display_url(&self) -> &str {
        &self.display
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
        // A relay has nothing to subscribe or release (the join drops the frames of users not
        // owned): every change of ownership is followed as soon as it is told.
        self.status.followed_ownership(u64::MAX);
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
                self.display
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

    /// Connects; errors never carry the URL (tungstenite's errors do not).
    async fn open(&self) -> std::result::Result<crate::channel::Ws, SessionError> {
        let token = self.client.token().await?;
        let mut request = self.url.as_str().into_client_request()?;
        let bearer =
            HeaderValue::from_str(&token.bearer()).map_err(|_| SessionError::TokenNotAHeader)?;
        request.headers_mut().insert("Authorization", bearer);
        let connected = connect(request, &self.config).await;
        if let Err(SessionError::Refused { status: 401 }) = connected {
            // The relay no longer takes this token: get a new one next time.
            self.client.invalidate(&token).await;
        }
        connected
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
                            decoder.socket_error(&e, context);
                            return Some(ReconnectCause::Closed);
                        }
                    }
                    last_message = Instant::now();
                    ping_sent = None;
                    if !frames.is_empty() {
                        self.sink.publish_frames(&frames);
                        frames.clear();
                    }
                    decoder.deliver(&*self.sink, &mut batch);
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

/// Whether a URL host is this machine: `localhost`, `127.0.0.0/8`, `::1` (also as an
/// IPv4-mapped address).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(std::net::IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.255.0.9",
            "[::1]",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "localhost.example.com",
            "128.0.0.1",
            "10.0.0.1",
            "[::2]",
            "example.com",
            "0.0.0.0",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
