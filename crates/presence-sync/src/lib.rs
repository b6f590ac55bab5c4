//! The Genesys Cloud side of presence-bridge at runtime: discover users, subscribe to their
//! presence on notification channels, stream the WebSockets, and keep the picture right
//! through every fault. Also the binary relay source.
//!
//! A short tour:
//! - [`PresenceSync`]: discovers the users ([`UserSelection`]), plans channels of at most
//!   1,000 topics ([`ChannelPlan`], within the 20-channel limit), creates and subscribes them,
//!   connects one WebSocket each and hands decoded, group-filtered events to a
//!   [`PresenceSink`]. It
//!   - subscribes with `ignoreErrors=true`: a `Rejected` topic (a deleted user, a missing
//!     permission) is that user's problem, counted and kept in
//!     [`SyncStatus::rejected_users`] and asked for again at the channel's next
//!     subscription, while the rest of the channel streams;
//!   - pings a quiet socket and replaces one that stays silent (no heartbeat, no pong);
//!   - on `v2.system.socket_closing`, connects a new socket to the same channel before
//!     dropping the old one (the server moves delivery to the newest socket): no new
//!     channel, no resync, even when every channel is warned at once;
//!   - keeps a channel alive past its lifetime by subscribing again before it expires,
//!     getting a fresh token first when the held one has less life left than the channel
//!     should have; only before the token that created it ends does it roll to a new
//!     channel (made with a fresh token), with no gap;
//!   - recovers from `no_longer_subscribed` (by topic or type, when its `channelId` is this
//!     channel's), `{"result":"404"}` without a topic, and vanished channels (404) with a new
//!     channel;
//!   - after every gap resyncs that channel's users over REST (bulk presence, or the paged
//!     user listing when many channels ask at once), with Genesys's own `modifiedDate`;
//!   - re-discovers the users every [`discovery_interval`](SyncConfig::discovery_interval)
//!     (10 minutes) and follows the organisation: new users are subscribed on the channels
//!     with room (`POST` of their topics; a new channel only when none has room) and resynced,
//!     users no longer listed (by two listings in a row: an offset-paged listing can skip
//!     a user when another is deleted between its pages; a listing that misses users is
//!     followed by another at once) are unsubscribed (`PUT` of the
//!     remaining topics) and [removed](PresenceSink::remove) from the sink, as are users
//!     the sink [holds](PresenceSink::held) from elsewhere (a warm start) that the listings
//!     no longer have; a held state whose group mask the listing contradicts is handed to
//!     [`PresenceSink::regroup`] again; changed group masks are handed to
//!     [`PresenceSink::regroup`] with the user's presence, and rejected users are asked for
//!     again. Its requests go one at a time through the client's pacing, taking turns with
//!     the periodic resync, so channel resyncs waiting there are never starved;
//!   - reconnects with exponential backoff and full jitter, capped, and logs one line per
//!     state change.
//!   - bounds what a socket can hold: a message over
//!     [`max_message_bytes`](SyncConfig::max_message_bytes) (128 KiB) is counted and skipped,
//!     one over [`max_socket_message_bytes`](SyncConfig::max_socket_message_bytes) (256 KiB)
//!     is refused from its header and the socket replaced, so 20 sockets never hold more
//!     than a few MiB.
//! - [`RelaySource`]: the same for a binary relay of 16-byte frames, token in a header.
//! - Behind a corporate proxy, every WebSocket goes through the proxy that
//!   [`SyncConfig::proxy`] names for its host (by default `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`
//!   as curl reads them), tunnelled with `CONNECT` so the proxy sees only the host and port,
//!   and TLS trusts [`SyncConfig::tls_roots`] (the bundled roots, and the operating system's
//!   store when asked). Give both the same settings as the API client's `AuthConfig`.
//! - [`SyncStatus`]: counters ([`SyncStats`]) and per-channel states for metrics, readiness
//!   and dashboards.
//!
//! Transient trouble never surfaces as an error; [`PresenceSync::run`] returns an [`Error`]
//! only for what retrying cannot fix (credentials refused, more users than the channel
//! limits allow).
//!
//! ```no_run
//! use genesys_auth::{AuthConfig, Endpoints, GenesysClient, SecretString};
//! use presence_sync::{ChannelSink, PresenceSync, SyncConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let endpoints = Endpoints::for_environment("mypurecloud.com")?;
//! let client = GenesysClient::new(AuthConfig::new(endpoints, "client-id", SecretString::from("secret")))?;
//! let (sink, mut events) = ChannelSink::new(10_000);
//! let sync = PresenceSync::new(client, SyncConfig::default(), sink)?;
//! let shutdown = CancellationToken::new();
//! tokio::spawn(sync.run(shutdown.clone()));
//! while let Some(event) = events.recv().await {
//!     println!("{} is {}", event.user, event.state.status);
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod api;
mod backoff;
mod channel;
mod config;
mod decode;
mod error;
mod plan;
mod relay;
mod resync;
mod sink;
mod stats;
mod sync;
mod transport;

pub use config::{
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_SOCKET_MESSAGE_BYTES, SyncConfig, UserSelection,
};
pub use error::{Error, Result};
pub use plan::ChannelPlan;
pub use relay::RelaySource;
pub use sink::{ChannelSink, PresenceSink};
pub use stats::{
    ChannelState, ChannelStatus, DecodeErrorKind, ReconnectCause, SyncStats, SyncStatus,
};
pub use sync::PresenceSync;
