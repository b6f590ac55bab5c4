//! The crate's error ([`Error`], what stops a sync for good) and, inside the crate, why one
//! attempt to set up or open a socket failed ([`SessionError`], logged and retried).

use std::time::Duration;

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What stops a sync for good. Everything transient (a dropped socket, a 5xx, a 429) is
/// retried inside and never surfaces here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid configuration; fatal at start.
    #[error("invalid {option}: {reason}")]
    Config {
        /// The option at fault.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// More users than the channel limits allow.
    #[error(
        "{users} users need {needed} notification channels of {per_channel} topics, more than the {max} this OAuth client can use (one of its channels is kept free for rollovers); watch fewer users (--groups) or split them across OAuth clients"
    )]
    TooManyChannels {
        /// Users to watch.
        users: usize,
        /// Channels needed.
        needed: usize,
        /// Topics per channel.
        per_channel: usize,
        /// Channels allowed.
        max: usize,
    },
    /// Genesys refused us in a way retrying cannot fix (bad credentials, missing permission).
    #[error("Genesys Cloud refused the request: {0}")]
    Refused(#[source] genesys_auth::Error),
}

/// Why one attempt to set up a channel or open a socket failed. Never fatal and never leaves
/// the crate: the session or relay logs it (its text names no URL, query or token) and tries
/// again with backoff. The variant decides how: after [`Gone`](SessionError::Gone) the
/// channel is replaced by a new one, after anything else it is kept for the next attempt.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The WebSocket handshake was answered 404: the channel no longer exists (it expired, or
    /// was replaced under the channel limit). A new channel is needed.
    #[error("HTTP 404")]
    Gone,
    /// The WebSocket handshake was answered with another status than 101 or 404 (from a
    /// relay, 401 means it no longer takes the token).
    #[error("HTTP {status}")]
    Refused {
        /// The HTTP status of the answer.
        status: u16,
    },
    /// The connection failed before an answer (DNS, TCP, TLS, a broken handshake), or the
    /// URL could not be made into a request.
    #[error("{source}")]
    Transport {
        /// What tungstenite reported.
        #[from]
        source: tokio_tungstenite::tungstenite::Error,
    },
    /// No answer to the handshake within the connect timeout.
    #[error("no answer within {after:?}")]
    Timeout {
        /// The connect timeout.
        after: Duration,
    },
    /// A Genesys API call failed: the token, creating or subscribing the channel, or checking
    /// that it still exists (retried inside `genesys-auth` first, where that helps).
    #[error("{source}")]
    Api {
        /// What the API client reported.
        #[from]
        source: genesys_auth::Error,
    },
    /// The token could not be put in an `Authorization` header (it holds bytes a header
    /// cannot). The token itself is never shown.
    #[error("token is not a valid header value")]
    TokenNotAHeader,
    /// No rollover slot could be taken because their semaphore was closed. Nothing closes it
    /// while the sync runs; an error rather than a panic all the same.
    #[error("{source}")]
    NoRolloverSlot {
        /// The semaphore's error.
        #[from]
        source: tokio::sync::AcquireError,
    },
}

impl SessionError {
    /// How a failed attempt is counted: a vanished channel, or a failed connect.
    pub(crate) fn reconnect_cause(&self) -> crate::stats::ReconnectCause {
        match self {
            SessionError::Gone => crate::stats::ReconnectCause::ChannelGone,
            _ => crate::stats::ReconnectCause::ConnectFailed,
        }
    }
}
