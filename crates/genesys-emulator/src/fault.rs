//! The faults a test or the chaos mode can switch on, as plain data: [`Fault`], its
//! [`FaultKind`] and [`FaultTarget`], [`BurstScope`], [`ChaosConfig`], and where an
//! application of one landed ([`FaultHits`]). Applying them is `inject.rs`'s work, drawing
//! them at random `chaos.rs`'s.
//!
//! Socket faults act on sockets connected when they are injected; API faults act on the next
//! API calls; see [`Fault`] for each one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::{MAX_DURATION, MAX_OVERSIZED_BYTES};

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
    /// A maintenance wave: `v2.system.socket_closing` to every connected channel socket at
    /// once (as Genesys may do to every channel of a client), each closed after the grace.
    /// Relay sockets get nothing.
    MaintenanceWave {
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
    /// [`Fault::MaintenanceWave`].
    MaintenanceWave,
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
    pub const ALL: [FaultKind; 11] = [
        FaultKind::DropSocket,
        FaultKind::StallSocket,
        FaultKind::SocketClosing,
        FaultKind::MaintenanceWave,
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
            FaultKind::MaintenanceWave => "maintenance_wave",
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
            Fault::MaintenanceWave { .. } => FaultKind::MaintenanceWave,
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
            }
            | Fault::MaintenanceWave { grace_ms: Some(ms) }
                if Duration::from_millis(*ms) > MAX_DURATION =>
            {
                Err(Error::InvalidFault {
                    reason: "socket_closing grace must be at most one year".to_owned(),
                })
            }
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

/// Where one application of a fault landed (a field of [`FaultHits`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Landed {
    ChannelSocket,
    RelaySocket,
    Channel,
    Token,
    ApiCall,
    TokenRequest,
}

/// Where the faults of one kind landed, in [`Stats::fault_hits`]: each field counts
/// applications, never requests.
///
/// JSON: `{"channelSockets":2,"relaySockets":0,"channels":0,"tokens":0,"apiCalls":0,
/// "tokenRequests":0}`.
///
/// [`Stats::fault_hits`]: crate::Stats::fault_hits
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultHits {
    /// Channel sockets that acted on a socket fault: dropped, stalled (a socket already
    /// stalled is not counted again), warned of closing, or sent the bad message.
    pub channel_sockets: u64,
    /// Relay sockets that acted on a socket fault, as for `channel_sockets`.
    pub relay_sockets: u64,
    /// Channels removed (`no_longer_subscribed`).
    pub channels: u64,
    /// Live tokens expired (`expire_tokens`); the emulator does not know which client holds
    /// a token, only that it was issued to a client.
    pub tokens: u64,
    /// `/api/v2` calls answered by a burst (429 or 5xx).
    pub api_calls: u64,
    /// Token requests (`POST /oauth/token`) answered by a burst.
    pub token_requests: u64,
}

impl FaultHits {
    /// Every application, wherever it landed.
    pub fn total(&self) -> u64 {
        self.channel_sockets
            + self.relay_sockets
            + self.channels
            + self.tokens
            + self.api_calls
            + self.token_requests
    }

    /// Applications that reach a client of notification channels: everything but relay
    /// sockets.
    pub fn on_channel_clients(&self) -> u64 {
        self.total() - self.relay_sockets
    }

    /// Applications that reach a relay client: relay sockets, tokens and token requests (a
    /// relay client calls no `/api/v2` endpoint and has no channel).
    pub fn on_relay_clients(&self) -> u64 {
        self.relay_sockets + self.tokens + self.token_requests
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
            (
                r#"{"fault":"maintenance_wave","graceMs":250}"#,
                Fault::MaintenanceWave {
                    grace_ms: Some(250),
                },
            ),
            (
                r#"{"fault":"maintenance_wave"}"#,
                Fault::MaintenanceWave { grace_ms: None },
            ),
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
}
