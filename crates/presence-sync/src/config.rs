//! How a sync is set up.

use std::time::Duration;

use genesys_auth::{ProxySettings, TlsRoots};
use presence_frame::{GroupMask, Guid};

use crate::error::{Error, Result};

/// Default of [`SyncConfig::max_message_bytes`]: 128 KiB. Genesys notifications are a few
/// hundred bytes and relay batches 64 KiB (4,096 frames).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// Default of [`SyncConfig::max_socket_message_bytes`]: 256 KiB, so that 20 sockets hold at
/// most a few MiB of message buffers between them, well inside a 64 MiB process.
pub const DEFAULT_MAX_SOCKET_MESSAGE_BYTES: usize = 256 * 1024;

/// Which users to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserSelection {
    /// Every active user of the organisation.
    AllActive,
    /// The members of these groups (Genesys group ids).
    Groups(Vec<Guid>),
}

/// Settings of a [`PresenceSync`](crate::PresenceSync). Every setting has a default.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub(crate) users: UserSelection,
    pub(crate) group_bits: Vec<(Guid, u32)>,
    pub(crate) default_mask: GroupMask,
    pub(crate) allowed: Option<GroupMask>,
    pub(crate) topics_per_channel: usize,
    pub(crate) max_channels: usize,
    pub(crate) page_size: usize,
    pub(crate) idle_before_ping: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) rollover_before_expiry: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_cap: Duration,
    pub(crate) healthy_after: Duration,
    pub(crate) max_message_bytes: usize,
    pub(crate) max_socket_message_bytes: usize,
    pub(crate) resync_interval: Option<Duration>,
    pub(crate) discovery_interval: Option<Duration>,
    pub(crate) batch_size: usize,
    pub(crate) proxy: ProxySettings,
    pub(crate) tls_roots: TlsRoots,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            users: UserSelection::AllActive,
            group_bits: Vec::new(),
            default_mask: GroupMask::NONE,
            allowed: None,
            topics_per_channel: 1_000,
            max_channels: 20,
            page_size: 500,
            idle_before_ping: Duration::from_secs(45),
            pong_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(15),
            rollover_before_expiry: Duration::from_secs(600),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
            healthy_after: Duration::from_secs(30),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_socket_message_bytes: DEFAULT_MAX_SOCKET_MESSAGE_BYTES,
            resync_interval: None,
            discovery_interval: Some(Duration::from_secs(600)),
            batch_size: 512,
            proxy: ProxySettings::from_env(),
            tls_roots: TlsRoots::bundled(),
        }
    }
}

impl SyncConfig {
    /// Default of [`SyncConfig::max_message_bytes`]: 128 KiB. Genesys notifications are a few
    /// hundred bytes and relay batches 64 KiB (4,096 frames).
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 128 * 1024;

    /// Default of [`SyncConfig::max_socket_message_bytes`]: 256 KiB, so that 20 sockets hold at
    /// most a few MiB of message buffers between them, well inside a 64 MiB process.
    pub const DEFAULT_MAX_SOCKET_MESSAGE_BYTES: usize = 256 * 1024;

    /// Which users to watch. By default, every active user.
    pub fn users(mut self, users: UserSelection) -> SyncConfig {
        self.users = users;
        self
    }

    /// Maps Genesys groups to bits of the group mask (bit 0 to 63); a user's mask is the OR of
    /// the bits of the mapped groups it is a member of. By default, none.
    pub fn group_bits(mut self, bits: Vec<(Guid, u32)>) -> SyncConfig {
        self.group_bits = bits;
        self
    }

    /// The mask of a user in no mapped group. By default, 0 (no group).
    pub fn default_mask(mut self, mask: GroupMask) -> SyncConfig {
        self.default_mask = mask;
        self
    }

    /// The group filter: when set, only events whose mask shares a bit with this pass (a mask
    /// of 0 never does). By default, no filter: every event passes.
    pub fn allowed(mut self, allowed: Option<GroupMask>) -> SyncConfig {
        self.allowed = allowed;
        self
    }

    /// Topics per notification channel; Genesys allows 1,000. By default, 1,000.
    pub fn topics_per_channel(mut self, topics: usize) -> SyncConfig {
        self.topics_per_channel = topics;
        self
    }

    /// Channels allowed per OAuth client (Genesys: 20; a 21st silently replaces the oldest
    /// channel without a connection). The plan uses at most one less, keeping the rest free
    /// for rollovers, which take turns on the free channels so that a new channel never
    /// replaces another rollover's. By default, 20.
    pub fn max_channels(mut self, channels: usize) -> SyncConfig {
        self.max_channels = channels;
        self
    }

    /// Page size of user and group-member listings during resync. By default, 500.
    pub fn page_size(mut self, page_size: usize) -> SyncConfig {
        self.page_size = page_size;
        self
    }

    /// Send `{"message":"ping"}` when a socket has been silent this long (Genesys heartbeats
    /// come about every 30 s). By default, 45 seconds.
    pub fn idle_before_ping(mut self, idle: Duration) -> SyncConfig {
        self.idle_before_ping = idle;
        self
    }

    /// After a ping, a socket that stays silent this long is dead and replaced. By default,
    /// 10 seconds.
    pub fn pong_timeout(mut self, timeout: Duration) -> SyncConfig {
        self.pong_timeout = timeout;
        self
    }

    /// Timeout of a WebSocket connect. By default, 15 seconds.
    pub fn connect_timeout(mut self, timeout: Duration) -> SyncConfig {
        self.connect_timeout = timeout;
        self
    }

    /// Roll to a new channel this long before the channel (or the token that created it)
    /// expires. By default, 10 minutes (capped at a quarter of the lifetime).
    pub fn rollover_before_expiry(mut self, before: Duration) -> SyncConfig {
        self.rollover_before_expiry = before;
        self
    }

    /// Reconnect backoff: a random wait up to `min(cap, base * 2^attempt)` (full jitter). By
    /// default, 500 ms and 60 seconds.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> SyncConfig {
        self.backoff_base = base;
        self.backoff_cap = cap;
        self
    }

    /// A session that lasted this long resets the backoff. By default, 30 seconds.
    pub fn healthy_after(mut self, after: Duration) -> SyncConfig {
        self.healthy_after = after;
        self
    }

    /// Messages longer than this are counted (`oversized`) and skipped; the socket stays up.
    /// At least 1,024 and at most [`max_socket_message_bytes`](Self::max_socket_message_bytes).
    /// By default, 128 KiB ([`DEFAULT_MAX_MESSAGE_BYTES`]).
    pub fn max_message_bytes(mut self, bytes: usize) -> SyncConfig {
        self.max_message_bytes = bytes;
        self
    }

    /// The most a WebSocket reads for one message (and one frame): what bounds a socket's
    /// buffers, and so the memory of every socket together (20 sockets at 256 KiB: 5 MiB). A
    /// longer message is refused from its header, before its payload is read: it is counted
    /// (`oversized`), the socket is replaced and its users resynced, so no state is lost.
    /// By default, 256 KiB ([`DEFAULT_MAX_SOCKET_MESSAGE_BYTES`]).
    pub fn max_socket_message_bytes(mut self, bytes: usize) -> SyncConfig {
        self.max_socket_message_bytes = bytes;
        self
    }

    /// Resynchronise every user over REST this often, confirming live users (keeps their
    /// time-to-live fresh downstream). A re-discovery lists every user's presence too, so it
    /// counts as one: the periodic resync runs only when no discovery has within the
    /// interval. At least 10 ms (shorter than a pass takes means back to back, at the pace
    /// of the client's rate limit). By default, never (only after gaps).
    pub fn resync_interval(mut self, interval: Option<Duration>) -> SyncConfig {
        self.resync_interval = interval;
        self
    }

    /// Discover the users again this often, and follow the organisation: new users are
    /// subscribed (on channels with room, a new channel only when none has any) and their
    /// presence published; users no longer listed (deleted, deactivated, out of the watched
    /// groups) are unsubscribed and [removed](presence_frame::PresenceSink::remove) from the
    /// sink; group membership changes update the group mask, and a changed mask is published
    /// (or the user removed when the new mask no longer passes the filter); users whose topic
    /// was rejected are asked for again. Genesys announces none of these changes. At least
    /// 10 ms; `None` discovers only at start. By default, 10 minutes.
    pub fn discovery_interval(mut self, interval: Option<Duration>) -> SyncConfig {
        self.discovery_interval = interval;
        self
    }

    /// Most events handed to the sink at once. By default, 512.
    pub fn batch_size(mut self, events: usize) -> SyncConfig {
        self.batch_size = events;
        self
    }

    /// Which proxy each WebSocket goes through (tunnelled with `CONNECT`). Give it the same
    /// settings as the API client's `AuthConfig::proxy`. By default, the environment's
    /// (`ProxySettings::from_env`: `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY` and their lowercase
    /// forms, as curl reads them).
    pub fn proxy(mut self, proxy: ProxySettings) -> SyncConfig {
        self.proxy = proxy;
        self
    }

    /// Which certificate authorities the WebSockets' TLS trusts. Give it the same roots as the
    /// API client's `AuthConfig::tls_roots`. By default, only the bundled Mozilla roots.
    pub fn tls_roots(mut self, roots: TlsRoots) -> SyncConfig {
        self.tls_roots = roots;
        self
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        let bad = |option, reason: String| Err(Error::Config { option, reason });
        if self.topics_per_channel == 0 || self.topics_per_channel > 1_000 {
            return bad(
                "topics-per-channel",
                format!("must be 1 to 1000, got {}", self.topics_per_channel),
            );
        }
        if self.max_channels < 2 || self.max_channels > 20 {
            return bad(
                "max-channels",
                format!("must be 2 to 20, got {}", self.max_channels),
            );
        }
        if self.page_size == 0 || self.page_size > 500 {
            return bad(
                "page-size",
                format!("must be 1 to 500, got {}", self.page_size),
            );
        }
        if let Some((group, bit)) = self.group_bits.iter().find(|(_, bit)| *bit >= 64) {
            return bad(
                "group-bits",
                format!("group {group} has bit {bit}; bits are 0 to 63"),
            );
        }
        if self.idle_before_ping.is_zero() || self.pong_timeout.is_zero() {
            return bad(
                "heartbeat",
                "ping and pong timeouts must be more than zero".into(),
            );
        }
        if self.max_message_bytes < 1024 {
            return bad(
                "max-message-bytes",
                format!("must be at least 1024, got {}", self.max_message_bytes),
            );
        }
        if self.max_socket_message_bytes < self.max_message_bytes {
            return bad(
                "max-socket-message-bytes",
                format!(
                    "must be at least max-message-bytes ({}), got {}",
                    self.max_message_bytes, self.max_socket_message_bytes
                ),
            );
        }
        if self
            .resync_interval
            .is_some_and(|i| i < Duration::from_millis(10))
        {
            return bad("resync-interval", "must be at least 10 ms".into());
        }
        if self
            .discovery_interval
            .is_some_and(|i| i < Duration::from_millis(10))
        {
            return bad("discovery-interval", "must be at least 10 ms".into());
        }
        // The operating system's store is read now, when asked for, so that an empty one
        // fails at start rather than at the first connection.
        self.proxy
            .validate()
            .and_then(|()| self.tls_roots.certificates().map(drop))
            .map_err(|error| match error {
                genesys_auth::Error::Config { option, reason } => Error::Config { option, reason },
                other => Error::Config {
                    option: "tls-native-roots",
                    reason: other.to_string(),
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_caps_default_small_and_are_checked() {
        let config = SyncConfig::default();
        assert!(config.validate().is_ok());
        // 20 sockets at the socket cap stay far under a 64 MiB process.
        assert!(20 * config.max_socket_message_bytes <= 8 << 20);
        // A relay batch of 4,096 frames (64 KiB) is read and decoded.
        assert!(config.max_message_bytes >= 64 * 1024);
        let err = SyncConfig::default()
            .max_message_bytes(512 * 1024)
            .validate()
            .expect_err("over the socket cap");
        assert!(
            err.to_string().contains("max-socket-message-bytes"),
            "{err}"
        );
        assert!(
            SyncConfig::default()
                .max_message_bytes(512 * 1024)
                .max_socket_message_bytes(1 << 20)
                .validate()
                .is_ok()
        );
    }
}
