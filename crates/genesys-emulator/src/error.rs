//! The one error type of this crate.

use std::net::SocketAddr;

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong starting or steering an emulator.
///
/// Requests from clients never produce an `Error`: they get an HTTP or WebSocket answer, as
/// the real service would give.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range ([`EmulatorConfig::validate`](crate::EmulatorConfig::validate)).
    /// Fatal for [`Emulator::start`](crate::Emulator::start): nothing was started.
    #[error("invalid emulator configuration: {field} {reason}")]
    InvalidConfig {
        /// The offending setting (the setter's name).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The listening socket could not be bound (address in use, no permission, ...). Fatal for
    /// [`Emulator::start`](crate::Emulator::start).
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The bound address of the listener could not be read. Fatal for
    /// [`Emulator::start_on`](crate::Emulator::start_on).
    #[error("cannot read the listener's local address")]
    LocalAddr {
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A fault was aimed at a channel that does not exist (never did, expired, or was
    /// replaced). Nothing was injected.
    #[error("no notification channel {id:?}")]
    UnknownChannel {
        /// The channel id given.
        id: String,
    },
    /// A fault's parameters are out of range (for example a server-error status that is not
    /// 5xx). Nothing was injected.
    #[error("invalid fault: {reason}")]
    InvalidFault {
        /// What is wrong with it.
        reason: String,
    },
}
