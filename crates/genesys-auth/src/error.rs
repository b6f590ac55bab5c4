//! The one error type of this crate.

use std::time::Duration;

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to Genesys Cloud. No variant ever holds a secret or a
/// token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid configuration; fatal at start.
    #[error("invalid {option}: {reason}")]
    Config {
        /// The option at fault, as the user knows it (`region`, `api-url`, ...).
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The token endpoint refused the credentials (fatal until the configuration changes), or
    /// answered with something other than a token.
    #[error("token request failed with HTTP {status}: {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Token {
        /// The HTTP status.
        status: u16,
        /// Genesys's `error` field (`invalid_client`, ...), or a summary of the body.
        error: String,
        /// Genesys's `error_description` (or `description`), when given.
        description: Option<String>,
    },
    /// An API call answered with an error status (after retries, where the status allows them).
    #[error("{method} {path} failed with HTTP {status}{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Api {
        /// The HTTP method.
        method: &'static str,
        /// The path called, without the query.
        path: String,
        /// The HTTP status.
        status: u16,
        /// Genesys's error `code`, when the body had one.
        code: Option<String>,
        /// Genesys's error `message`, or a summary of a non-JSON body.
        message: String,
    },
    /// Still rate limited (429) or failing (5xx) after every allowed attempt.
    #[error("{method} {path}: gave up after {attempts} attempts; last: {last}")]
    RetriesExhausted {
        /// The HTTP method.
        method: &'static str,
        /// The path called, without the query.
        path: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Box<Error>,
    },
    /// The network failed (connect, TLS, timeout, broken connection).
    #[error("{method} {path}: {source}")]
    Transport {
        /// The HTTP method.
        method: &'static str,
        /// The path called, without the query.
        path: String,
        /// The transport error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// A successful response whose body is not what the API documents. Transient: a body
    /// cut short or garbled on its way (a proxy, a gateway) may be right the next time.
    #[error("{method} {path}: unexpected response body: {source}")]
    Decode {
        /// The HTTP method.
        method: &'static str,
        /// The path called, without the query.
        path: String,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A `Retry-After` longer than the configured cap; the caller decides whether to wait.
    #[error("rate limited with Retry-After {retry_after:?}, longer than the cap of {cap:?}")]
    RetryAfterTooLong {
        /// What the server asked for.
        retry_after: Duration,
        /// The configured cap.
        cap: Duration,
    },
    /// An absolute URL (such as a page's `nextUri`) whose scheme, host or port is not the API
    /// base's: it is not followed, so the bearer token is never sent there. Not transient.
    #[error(
        "refusing to send the API token to {origin}: only URLs on the API's own origin {api_origin} are followed"
    )]
    ForeignUrl {
        /// Scheme, host and port of the URL refused (never its path, query or userinfo).
        origin: String,
        /// Scheme, host and port of the API base.
        api_origin: String,
    },
    /// The blocking HTTP worker thread was lost (the runtime is shutting down).
    #[error("HTTP worker stopped: {0}")]
    Worker(String),
}

impl Error {
    /// The HTTP status carried by this error, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Token { status, .. } | Error::Api { status, .. } => Some(*status),
            Error::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    /// Whether trying again later may succeed (network trouble, 429, 5xx, a malformed body).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. }
            | Error::Decode { .. }
            | Error::RetriesExhausted { .. }
            | Error::RetryAfterTooLong { .. } => true,
            Error::Api { status, .. } | Error::Token { status, .. } => {
                *status == 429 || *status >= 500
            }
            _ => false,
        }
    }
}
