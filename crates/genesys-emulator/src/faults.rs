//! Fault injection: the [`Fault`]s a test or the chaos mode can switch on, and where they
//! land.
//!
//! Socket faults act on sockets connected when they are injected; API faults act on the next
//! API calls; see [`Fault`] for each one.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

use crate::config::{MAX_DURATION, MAX_OVERSIZED_BYTES};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::server::Shared;
use crate::socket::Control;
use crate::wire;
use crate::workload::stream;

/// Which sockets a socket fault hits.
///
/// In JSON (the admin API's `target` field) it is a string: absent or `"all"` for every
/// socket, `"relay"` for the relay sockets, or a channel id (`streaming-0-...`).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum FaultTarget {
    /// Every connected socket: notification channels and relay.
    #[default]
    All,
    /// The socket of one notification channel (or, for `no_longer_subscribed`, the channel
    /// itself, connected or not).
    Channel(String),
    /// Every relay socket.
    Relay,
}

impl From<String> for FaultTarget {
    fn from(text: String) -> FaultTarget {
        match text.as_str() {
            "" | "all" => FaultTarget::All,
            "relay" => FaultTarget::Relay,
            _ => FaultTarget::Channel(text),
        }
    }
}

impl From<FaultTarget> for String {
    fn from(target: FaultTarget) -> String {
        match target {
            FaultTarget::All => "all".to_owned(),
            FaultTarget::Relay => "relay".to_owned(),
            FaultTarget::Channel(id) => id,
        }
    }
}

/// Which endpoint a burst of 429s or 5xxs hits.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BurstScope {
    /// `/api/v2` calls.
    #[default]
    Api,
    /// `POST /oauth/token`.
    Login,
}

/// A fault to inject.
///
/// As JSON (`POST /emulator/faults`), the variant is the `fault` field in snake case and the
/// other fields are camel case, for example
/// `{"fault":"socket_closing","target":"streaming-0-1a2b","graceMs":5000}` or
/// `{"fault":"server_error_burst","count":3,"status":503}`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(
    tag = "fault",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum Fault {
    /// Close the TCP connection without a WebSocket close frame.
    DropSocket {
        /// Which sockets.
        #[serde(default)]
        target: FaultTarget,
    },
    /// Stop sending anything (events, heartbeats, pongs) and stop reading, keeping TCP open,
    /// until the socket is replaced by a new connection to its channel, the channel goes or
    /// the emulator stops. Events meanwhile are lost (counted).
    StallSocket {
        /// Which sockets.
        #[serde(default)]
        target: FaultTarget,
    },
    /// Send `v2.system.socket_closing`, then close the socket after the grace period. Channel
    /// sockets only.
    SocketClosing {
        /// Which sockets.
        #[serde(default)]
        target: FaultTarget,
        /// Milliseconds until the close; by default the configured
        /// [`socket_closing_grace`](crate::EmulatorConfig::socket_closing_grace).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_ms: Option<u64>,
    },
    /// Send a text message that is not JSON (on relay sockets: a binary message whose length
    /// is not a multiple of 16).
    Garbage {
        /// Which sockets.
        #[serde(default)]
        target: FaultTarget,
    },
    /// Send the first half of a real presence notification.
    TruncatedJson {
        /// Which sockets.
        #[serde(default)]
        target: FaultTarget,
    },
    /// Send one very large message: a padded `channel.metadata` JSON text on channel sockets,
    /// a binary message of invalid length on relay sockets.
    Oversized {
        /// Which sockets.
        #[serde(default)]
        target: FaultTarget,
        /// Size in bytes; by default the configured
        /// [`oversized_message_bytes`](crate::EmulatorConfig::oversized_message_bytes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<usize>,
    },
    /// The next `count` API calls (or token requests) get 429 with `Retry-After`.
    RateLimitBurst {
        /// How many calls.
        count: u32,
        /// API calls (default) or token requests.
        #[serde(default)]
        scope: BurstScope,
        /// The `Retry-After` seconds; by default 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
    },
    /// The next `count` API calls (or token requests) get a 5xx: 502 and 504 with an HTML
    /// body (as a gateway sends), 503 and others with a JSON body.
    ServerErrorBurst {
        /// How many calls.
        count: u32,
        /// API calls (default) or token requests.
        #[serde(default)]
        scope: BurstScope,
        /// The status, 500 to 599; by default 503.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
    },
    /// Every token issued so far expires now: API calls with it get 401 (and, when
    /// [`channels_close_with_token`](crate::EmulatorConfig::channels_close_with_token) is on,
    /// the channels it created close).
    ExpireTokens,
    /// Send a `no_longer_subscribed` system message (reason `another_channel_subscribed`) and
    /// remove the channel. With target `all`, every channel goes.
    NoLongerSubscribed {
        /// Which channels.
        #[serde(default)]
        target: FaultTarget,
    },
}

/// The kind of a [`Fault`], without its parameters (for chaos mode and statistics).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FaultKind {
    /// [`Fault::DropSocket`].
    DropSocket,
    /// [`Fault::StallSocket`].
    StallSocket,
    /// [`Fault::SocketClosing`].
    SocketClosing,
    /// [`Fault::Garbage`].
    Garbage,
    /// [`Fault::TruncatedJson`].
    TruncatedJson,
    /// [`Fault::Oversized`].
    Oversized,
    /// [`Fault::RateLimitBurst`].
    RateLimitBurst,
    /// [`Fault::ServerErrorBurst`].
    ServerErrorBurst,
    /// [`Fault::ExpireTokens`].
    ExpireTokens,
    /// [`Fault::NoLongerSubscribed`].
    NoLongerSubscribed,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::DropSocket,
        FaultKind::StallSocket,
        FaultKind::SocketClosing,
        FaultKind::Garbage,
        FaultKind::TruncatedJson,
        FaultKind::Oversized,
        FaultKind::RateLimitBurst,
        FaultKind::ServerErrorBurst,
        FaultKind::ExpireTokens,
        FaultKind::NoLongerSubscribed,
    ];

    /// The snake-case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::DropSocket => "drop_socket",
            FaultKind::StallSocket => "stall_socket",
            FaultKind::SocketClosing => "socket_closing",
            FaultKind::Garbage => "garbage",
            FaultKind::TruncatedJson => "truncated_json",
            FaultKind::Oversized => "oversized",
            FaultKind::RateLimitBurst => "rate_limit_burst",
            FaultKind::ServerErrorBurst => "server_error_burst",
            FaultKind::ExpireTokens => "expire_tokens",
            FaultKind::NoLongerSubscribed => "no_longer_subscribed",
        }
    }
}

impl Fault {
    /// The fault's kind.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::DropSocket { .. } => FaultKind::DropSocket,
            Fault::StallSocket { .. } => FaultKind::StallSocket,
            Fault::SocketClosing { .. } => FaultKind::SocketClosing,
            Fault::Garbage { .. } => FaultKind::Garbage,
            Fault::TruncatedJson { .. } => FaultKind::TruncatedJson,
            Fault::Oversized { .. } => FaultKind::Oversized,
            Fault::RateLimitBurst { .. } => FaultKind::RateLimitBurst,
            Fault::ServerErrorBurst { .. } => FaultKind::ServerErrorBurst,
            Fault::ExpireTokens => FaultKind::ExpireTokens,
            Fault::NoLongerSubscribed { .. } => FaultKind::NoLongerSubscribed,
        }
    }

    /// The socket target, for socket and channel faults.
    pub fn target(&self) -> Option<&FaultTarget> {
        match self {
            Fault::DropSocket { target }
            | Fault::StallSocket { target }
            | Fault::SocketClosing { target, .. }
            | Fault::Garbage { target }
            | Fault::TruncatedJson { target }
            | Fault::Oversized { target, .. }
            | Fault::NoLongerSubscribed { target } => Some(target),
            _ => None,
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            Fault::ServerErrorBurst {
                status: Some(status),
                ..
            } if !(500..=599).contains(status) => Err(Error::InvalidFault {
                reason: format!("server error status must be 500 to 599, got {status}"),
            }),
            Fault::Oversized {
                bytes: Some(bytes), ..
            } if *bytes == 0 || *bytes > MAX_OVERSIZED_BYTES => Err(Error::InvalidFault {
                reason: format!("oversized message must be 1 to {MAX_OVERSIZED_BYTES} bytes"),
            }),
            Fault::SocketClosing {
                grace_ms: Some(ms), ..
            } if Duration::from_millis(*ms) > MAX_DURATION => Err(Error::InvalidFault {
                reason: "socket_closing grace must be at most one year".to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

/// Random fault injection ("chaos mode"), for convergence tests.
///
/// Faults arrive as a Poisson process at `faults_per_minute`, each of a kind drawn uniformly
/// from `kinds`; socket faults hit one connected socket chosen at random (none when nothing
/// is connected). Chaos draws from its own seeded stream. In JSON (`POST /emulator/chaos`):
/// `{"faultsPerMinute":6.0,"kinds":["drop_socket","garbage"]}`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChaosConfig {
    /// Mean number of faults per minute, at most 6,000; 0 turns chaos off. By default, 0.
    pub faults_per_minute: f64,
    /// The kinds to draw from. By default, every kind.
    #[serde(default = "all_kinds")]
    pub kinds: Vec<FaultKind>,
}

fn all_kinds() -> Vec<FaultKind> {
    FaultKind::ALL.to_vec()
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            faults_per_minute: 0.0,
            kinds: all_kinds(),
        }
    }
}

impl ChaosConfig {
    /// Chaos at `faults_per_minute` drawing from every kind.
    pub fn new(faults_per_minute: f64) -> ChaosConfig {
        ChaosConfig {
            faults_per_minute,
            ..ChaosConfig::default()
        }
    }

    /// Only these kinds.
    pub fn kinds(mut self, kinds: impl IntoIterator<Item = FaultKind>) -> ChaosConfig {
        self.kinds = kinds.into_iter().collect();
        self
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=6_000.0).contains(&self.faults_per_minute) {
            return Err(Error::InvalidConfig {
                field: "chaos",
                reason: "faults_per_minute must be between 0 and 6,000".to_owned(),
            });
        }
        if self.faults_per_minute > 0.0 && self.kinds.is_empty() {
            return Err(Error::InvalidConfig {
                field: "chaos",
                reason: "kinds must not be empty when chaos is on".to_owned(),
            });
        }
        Ok(())
    }
}

/// One burst of API faults.
#[derive(Debug, Clone, Copy)]
enum Burst {
    RateLimited { retry_after_secs: u64 },
    ServerError { status: u16 },
}

/// API faults waiting for the next calls: bursts in the order they were injected.
#[derive(Debug, Default)]
pub(crate) struct ApiFaults {
    bursts: std::collections::VecDeque<(Burst, u32)>,
}

impl ApiFaults {
    fn push(&mut self, burst: Burst, count: u32) {
        if count > 0 {
            self.bursts.push_back((burst, count));
        }
    }

    /// The response for the next API call, and the kind of fault it is, if a burst is on.
    pub(crate) fn take(&mut self) -> Option<(FaultKind, Response)> {
        let (burst, left) = self.bursts.front_mut()?;
        let burst = *burst;
        *left -= 1;
        if *left == 0 {
            self.bursts.pop_front();
        }
        Some(match burst {
            Burst::RateLimited { retry_after_secs } => (
                FaultKind::RateLimitBurst,
                wire::too_many_requests(retry_after_secs),
            ),
            Burst::ServerError { status } => (FaultKind::ServerErrorBurst, server_error(status)),
        })
    }
}

fn server_error(status: u16) -> Response {
    use axum::response::IntoResponse;
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match status {
        502 | 504 => {
            let reason = code.canonical_reason().unwrap_or("Error");
            let html = format!(
                "<html><head><title>{status} {reason}</title></head><body><center><h1>{status} {reason}</h1></center></body></html>\n"
            );
            (code, axum::response::Html(html)).into_response()
        }
        _ => wire::api_error(
            code,
            "service.unavailable",
            "The service is temporarily unavailable",
        ),
    }
}

/// Where one application of a fault landed (a field of [`crate::FaultHits`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Landed {
    ChannelSocket,
    RelaySocket,
    Channel,
    Token,
    ApiCall,
    TokenRequest,
}

impl Shared {
    /// Injects `fault`; returns how many sockets it was sent to, channels it removed or
    /// tokens it expired, or for a burst how many calls will get it.
    ///
    /// The statistics count it as requested now, and as injected only where it lands: a
    /// socket fault when a socket acts on it, a burst when a call is answered with it.
    pub(crate) fn inject(&self, fault: &Fault) -> Result<usize> {
        fault.validate()?;
        self.count_requested(fault.kind());
        let applied = match fault {
            Fault::RateLimitBurst {
                count,
                scope,
                retry_after_secs,
            } => {
                let retry_after_secs = retry_after_secs.unwrap_or(1);
                self.bursts(*scope)
                    .lock()
                    .push(Burst::RateLimited { retry_after_secs }, *count);
                *count as usize
            }
            Fault::ServerErrorBurst {
                count,
                scope,
                status,
            } => {
                let status = status.unwrap_or(503);
                self.bursts(*scope)
                    .lock()
                    .push(Burst::ServerError { status }, *count);
                *count as usize
            }
            Fault::ExpireTokens => {
                let expired = self.expire_all_tokens();
                self.count_hit(FaultKind::ExpireTokens, Landed::Token, expired as u64);
                expired
            }
            Fault::NoLongerSubscribed { target } => {
                let removed = self.remove_channels(target)?;
                self.count_hit(
                    FaultKind::NoLongerSubscribed,
                    Landed::Channel,
                    removed as u64,
                );
                removed
            }
            socket_fault => {
                let target = socket_fault.target().cloned().unwrap_or_default();
                let mut sent = 0;
                for socket in self.connected_sockets(&target)? {
                    if let Some(message) =
                        self.socket_control(socket_fault, socket.is_relay, socket.user)
                        && socket.control.send(message).is_ok()
                    {
                        sent += 1;
                    }
                }
                sent
            }
        };
        log::info!("fault {} injected ({applied} hit)", fault.kind().as_str());
        Ok(applied)
    }

    fn bursts(&self, scope: BurstScope) -> &parking_lot::Mutex<ApiFaults> {
        match scope {
            BurstScope::Login => &self.login_faults,
            _ => &self.api_faults,
        }
    }

    /// The control message that carries a socket fault to one socket.
    pub(crate) fn socket_control(
        &self,
        fault: &Fault,
        is_relay: bool,
        user: Option<u32>,
    ) -> Option<Control> {
        Some(match fault {
            Fault::DropSocket { .. } => Control::Drop,
            Fault::StallSocket { .. } => Control::Stall,
            Fault::SocketClosing { grace_ms, .. } if !is_relay => {
                let grace = grace_ms
                    .map(Duration::from_millis)
                    .unwrap_or(self.config.socket_closing_grace);
                Control::SocketClosing {
                    grace,
                    message: wire::socket_closing(self.random_guid()),
                }
            }
            Fault::Garbage { .. } if is_relay => Control::Send {
                kind: FaultKind::Garbage,
                message: Message::Binary(vec![0xA5; 17].into()),
            },
            Fault::Garbage { .. } => Control::Send {
                kind: FaultKind::Garbage,
                message: Message::text(
                    "<html><body>502 Bad Gateway</body></html> \u{fffd} not json",
                ),
            },
            Fault::TruncatedJson { .. } => {
                let full = self.sample_notification(user.unwrap_or(0));
                let mut cut = full.len() / 2;
                while !full.is_char_boundary(cut) {
                    cut -= 1;
                }
                Control::Send {
                    kind: FaultKind::TruncatedJson,
                    message: Message::text(&full[..cut]),
                }
            }
            Fault::Oversized { bytes, .. } => {
                let bytes = bytes.unwrap_or(self.config.oversized_message_bytes);
                if is_relay {
                    // Never a whole number of frames, so it cannot be mistaken for data.
                    let len = if bytes % 16 == 0 { bytes + 1 } else { bytes };
                    Control::Send {
                        kind: FaultKind::Oversized,
                        message: Message::Binary(vec![0xA5; len].into()),
                    }
                } else {
                    Control::Send {
                        kind: FaultKind::Oversized,
                        message: Message::text(wire::oversized(bytes)),
                    }
                }
            }
            _ => return None,
        })
    }

    /// A presence notification of the user's current state.
    fn sample_notification(&self, user: u32) -> String {
        let presence = self.presence.read().get(user as usize).copied();
        match presence {
            Some(p) => wire::presence_notification(
                &self.world,
                user,
                &p,
                self.config.notification_spelling,
                self.config.notification_modified_date,
                self.random_guid(),
            ),
            None => wire::HEARTBEAT.to_owned(),
        }
    }

    fn count_requested(&self, kind: FaultKind) {
        *self
            .counters
            .faults_requested
            .lock()
            .entry(kind.as_str())
            .or_insert(0) += 1;
    }

    /// Counts `n` applications of a fault of `kind` where it `landed`; none when `n` is 0, so
    /// a kind shows in the statistics only once it hit something.
    pub(crate) fn count_hit(&self, kind: FaultKind, landed: Landed, n: u64) {
        if n == 0 {
            return;
        }
        let mut hits = self.counters.fault_hits.lock();
        let hits = hits.entry(kind.as_str()).or_default();
        let field = match landed {
            Landed::ChannelSocket => &mut hits.channel_sockets,
            Landed::RelaySocket => &mut hits.relay_sockets,
            Landed::Channel => &mut hits.channels,
            Landed::Token => &mut hits.tokens,
            Landed::ApiCall => &mut hits.api_calls,
            Landed::TokenRequest => &mut hits.token_requests,
        };
        *field += n;
    }
}

/// Runs chaos mode until cancelled, re-reading its config whenever it changes.
pub(crate) async fn run_chaos(shared: Arc<Shared>) {
    let mut rng = Rng::new(shared.config.seed, stream::CHAOS);
    loop {
        let chaos = shared.chaos.lock().clone();
        let changed = shared.chaos_changed.notified();
        if chaos.faults_per_minute <= 0.0 || chaos.kinds.is_empty() {
            tokio::select! {
                _ = shared.cancel.cancelled() => return,
                _ = changed => continue,
            }
        }
        // Exponential gap between faults: a Poisson process.
        let mean = 60.0 / chaos.faults_per_minute;
        let gap = -mean * (1.0 - rng.next_f64()).ln();
        let gap = Duration::from_secs_f64(gap.min(86_400.0));
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = changed => continue,
            _ = tokio::time::sleep(gap) => {}
        }
        let kind = chaos.kinds[rng.below(chaos.kinds.len() as u64) as usize];
        let channel = shared.random_connected_channel(&mut rng);
        let target = || match &channel {
            Some(id) => FaultTarget::Channel(id.clone()),
            None => FaultTarget::Relay,
        };
        let fault = match kind {
            FaultKind::DropSocket => Fault::DropSocket { target: target() },
            FaultKind::StallSocket => Fault::StallSocket { target: target() },
            FaultKind::SocketClosing => Fault::SocketClosing {
                target: target(),
                grace_ms: None,
            },
            FaultKind::Garbage => Fault::Garbage { target: target() },
            FaultKind::TruncatedJson => Fault::TruncatedJson { target: target() },
            FaultKind::Oversized => Fault::Oversized {
                target: target(),
                bytes: None,
            },
            FaultKind::RateLimitBurst => Fault::RateLimitBurst {
                count: 1 + rng.below(5) as u32,
                scope: BurstScope::Api,
                retry_after_secs: Some(1 + rng.below(3)),
            },
            FaultKind::ServerErrorBurst => Fault::ServerErrorBurst {
                count: 1 + rng.below(3) as u32,
                scope: BurstScope::Api,
                status: Some([502, 503, 504][rng.below(3) as usize]),
            },
            FaultKind::ExpireTokens => Fault::ExpireTokens,
            FaultKind::NoLongerSubscribed => match &channel {
                Some(id) => Fault::NoLongerSubscribed {
                    target: FaultTarget::Channel(id.clone()),
                },
                None => continue,
            },
        };
        if let Err(error) = shared.inject(&fault) {
            log::debug!("chaos fault {} not injected: {error}", kind.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_json_round_trips() {
        let cases = [
            (
                r#"{"fault":"drop_socket"}"#,
                Fault::DropSocket {
                    target: FaultTarget::All,
                },
            ),
            (
                r#"{"fault":"socket_closing","target":"streaming-0-ab","graceMs":5}"#,
                Fault::SocketClosing {
                    target: FaultTarget::Channel("streaming-0-ab".to_owned()),
                    grace_ms: Some(5),
                },
            ),
            (
                r#"{"fault":"garbage","target":"relay"}"#,
                Fault::Garbage {
                    target: FaultTarget::Relay,
                },
            ),
            (
                r#"{"fault":"rate_limit_burst","count":3,"retryAfterSecs":2}"#,
                Fault::RateLimitBurst {
                    count: 3,
                    scope: BurstScope::Api,
                    retry_after_secs: Some(2),
                },
            ),
            (
                r#"{"fault":"server_error_burst","count":1,"scope":"login"}"#,
                Fault::ServerErrorBurst {
                    count: 1,
                    scope: BurstScope::Login,
                    status: None,
                },
            ),
            (r#"{"fault":"expire_tokens"}"#, Fault::ExpireTokens),
        ];
        for (json, want) in cases {
            let got: Fault = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(got, want);
            let back = serde_json::to_string(&got).unwrap_or_default();
            assert_eq!(serde_json::from_str::<Fault>(&back).ok(), Some(want));
        }
        assert!(serde_json::from_str::<Fault>(r#"{"fault":"nonsense"}"#).is_err());
    }

    #[test]
    fn fault_validation() {
        let bad = Fault::ServerErrorBurst {
            count: 1,
            scope: BurstScope::Api,
            status: Some(404),
        };
        assert!(bad.validate().is_err());
        assert!(ChaosConfig::new(-1.0).validate().is_err());
        assert!(ChaosConfig::new(1.0).kinds([]).validate().is_err());
        assert!(ChaosConfig::default().validate().is_ok());
    }

    #[test]
    fn api_bursts_count_down() {
        let mut api = ApiFaults::default();
        assert!(api.take().is_none());
        api.push(
            Burst::RateLimited {
                retry_after_secs: 4,
            },
            2,
        );
        api.push(Burst::ServerError { status: 502 }, 1);
        api.push(Burst::ServerError { status: 503 }, 0);
        let taken: Vec<(FaultKind, u16)> = std::iter::from_fn(|| api.take())
            .map(|(kind, r)| (kind, r.status().as_u16()))
            .collect();
        assert_eq!(
            taken,
            [
                (FaultKind::RateLimitBurst, 429),
                (FaultKind::RateLimitBurst, 429),
                (FaultKind::ServerErrorBurst, 502)
            ]
        );
    }
}
