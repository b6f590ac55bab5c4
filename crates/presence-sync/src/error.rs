//! The one error type of this crate.

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
