//! What a sync has seen and where each channel stands: counters for metrics and state for
//! readiness and dashboards. Libraries count; the binary exports.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use presence_frame::Guid;
use tokio::time::Instant;

/// Kinds of bad input, for the decode-error counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Not JSON, or JSON of the wrong shape.
    Json,
    /// A binary message whose length is not a positive multiple of 16.
    BadLength,
    /// A user id that is not a GUID.
    InvalidUserId,
    /// A timestamp that is not RFC 3339.
    InvalidTimestamp,
    /// A notification without a field its topic needs.
    MissingField,
    /// A message over the size cap.
    Oversized,
    /// A message of a kind the source does not send (binary on a notification socket).
    Unexpected,
}

impl DecodeErrorKind {
    /// Every kind, in a fixed order.
    pub const ALL: [DecodeErrorKind; 7] = [
        DecodeErrorKind::Json,
        DecodeErrorKind::BadLength,
        DecodeErrorKind::InvalidUserId,
        DecodeErrorKind::InvalidTimestamp,
        DecodeErrorKind::MissingField,
        DecodeErrorKind::Oversized,
        DecodeErrorKind::Unexpected,
    ];

    /// A stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeErrorKind::Json => "json",
            DecodeErrorKind::BadLength => "bad_length",
            DecodeErrorKind::InvalidUserId => "invalid_user_id",
            DecodeErrorKind::InvalidTimestamp => "invalid_timestamp",
            DecodeErrorKind::MissingField => "missing_field",
            DecodeErrorKind::Oversized => "oversized",
            DecodeErrorKind::Unexpected => "unexpected",
        }
    }

    pub(crate) fn of(error: &presence_frame::Error) -> DecodeErrorKind {
        match error {
            presence_frame::Error::BadLength { .. } => DecodeErrorKind::BadLength,
            presence_frame::Error::InvalidUserId { .. } => DecodeErrorKind::InvalidUserId,
            presence_frame::Error::InvalidTimestamp { .. } => DecodeErrorKind::InvalidTimestamp,
            presence_frame::Error::MissingField { .. } => DecodeErrorKind::MissingField,
            _ => DecodeErrorKind::Json,
        }
    }
}

/// Why a socket was replaced or reconnected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconnectCause {
    /// The server closed the socket, or it broke.
    Closed,
    /// No heartbeat, traffic or pong in time.
    HeartbeatTimeout,
    /// `v2.system.socket_closing` (a planned rollover).
    SocketClosing,
    /// The channel (or its token) was about to expire (a planned rollover).
    Expiring,
    /// `no_longer_subscribed`, or the channel vanished (404).
    ChannelGone,
    /// Connecting or setting the channel up failed.
    ConnectFailed,
}

impl ReconnectCause {
    /// Every cause, in a fixed order.
    pub const ALL: [ReconnectCause; 6] = [
        ReconnectCause::Closed,
        ReconnectCause::HeartbeatTimeout,
        ReconnectCause::SocketClosing,
        ReconnectCause::Expiring,
        ReconnectCause::ChannelGone,
        ReconnectCause::ConnectFailed,
    ];

    /// A stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ReconnectCause::Closed => "closed",
            ReconnectCause::HeartbeatTimeout => "heartbeat_timeout",
            ReconnectCause::SocketClosing => "socket_closing",
            ReconnectCause::Expiring => "expiring",
            ReconnectCause::ChannelGone => "channel_gone",
            ReconnectCause::ConnectFailed => "connect_failed",
        }
    }
}

/// Counters of a sync (all sources and channels together).
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Presence events from notification sockets.
    pub stream_events: AtomicU64,
    /// Presence events from REST resyncs.
    pub resync_events: AtomicU64,
    /// Presence events from relay frames.
    pub relay_events: AtomicU64,
    /// Events dropped by the group filter.
    pub filtered_out: AtomicU64,
    /// Heartbeats received.
    pub heartbeats: AtomicU64,
    /// Pings sent.
    pub pings: AtomicU64,
    /// Pongs received.
    pub pongs: AtomicU64,
    /// Routing-status events (decoded, not forwarded).
    pub routing_status: AtomicU64,
    /// `v2.system.*` messages.
    pub system_messages: AtomicU64,
    /// Notifications on topics we do not know.
    pub unknown_topics: AtomicU64,
    /// Full or per-channel resyncs completed.
    pub resyncs: AtomicU64,
    /// Resyncs that failed (and will be retried).
    pub resync_failures: AtomicU64,
    /// Notification channels created (at start, and when one was gone or its token was
    /// about to expire).
    pub channels_created: AtomicU64,
    /// Channels kept alive past their lifetime by subscribing their topics again.
    pub channels_extended: AtomicU64,
    /// Channels closed because the users left fit in fewer (after a release to other
    /// instances, or users deleted): their sockets dropped, their users moved onto the
    /// others, so that Genesys may give the slot to another instance on the same OAuth client.
    pub channels_closed: AtomicU64,
    /// Sockets replaced by a new socket to the same channel (after `socket_closing`), with
    /// no new channel and no resync.
    pub socket_handovers: AtomicU64,
    /// `socket_closing` messages that cost a new channel after all: the new socket to the
    /// same channel was refused because the channel was gone (404) before its end. A
    /// maintenance wave on live channels costs none; one read only after the channel's end
    /// (the process held up past it) is not counted, the channel having died of age.
    pub socket_closing_new_channels: AtomicU64,
    /// Tokens fetched ahead of the client's own refresh because the held one had less life
    /// left than a channel created or extended with it should have.
    pub early_token_refreshes: AtomicU64,
    /// Topics that came back `Rejected` from a subscription (each time; the users rejected
    /// now are [`SyncStatus::rejected_users`]).
    pub topics_rejected: AtomicU64,
    /// Socket messages without `topicName` (such as `{"result":"404",...}`): understood,
    /// logged, never counted as decode errors.
    pub messages_without_topic: AtomicU64,
    /// Re-discoveries completed (the one at start not counted).
    pub discoveries: AtomicU64,
    /// Users a re-discovery found new and subscribed.
    pub users_added: AtomicU64,
    /// Users a re-discovery found gone (deleted, deactivated, out of the watched groups),
    /// unsubscribed and removed from the sink.
    pub users_removed: AtomicU64,
    /// Users whose group mask a re-discovery found changed.
    pub mask_changes: AtomicU64,
    /// Users no longer watched because this instance no longer owns them (another does).
    pub users_released: AtomicU64,
    /// Duration of the last completed resync, in milliseconds.
    pub last_resync_ms: AtomicU64,
    /// Sum of the durations of completed resyncs, in milliseconds.
    pub resync_ms_total: AtomicU64,
    decode_errors: [AtomicU64; DecodeErrorKind::ALL.len()],
    reconnects: [AtomicU64; ReconnectCause::ALL.len()],
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl SyncStats {
    pub(crate) fn decode_error(&self, kind: DecodeErrorKind) {
        if let Some(i) = DecodeErrorKind::ALL.iter().position(|k| *k == kind) {
            bump(&self.decode_errors[i]);
        }
    }

    pub(crate) fn reconnect(&self, cause: ReconnectCause) {
        if let Some(i) = ReconnectCause::ALL.iter().position(|c| *c == cause) {
            bump(&self.reconnects[i]);
        }
    }

    pub(crate) fn resync_done(&self, took: Duration) {
        let ms = took.as_millis() as u64;
        bump(&self.resyncs);
        self.last_resync_ms.store(ms, Ordering::Relaxed);
        add(&self.resync_ms_total, ms);
    }

    /// Decode errors by kind.
    pub fn decode_errors(&self) -> Vec<(DecodeErrorKind, u64)> {
        DecodeErrorKind::ALL
            .iter()
            .zip(&self.decode_errors)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Total decode errors.
    pub fn decode_errors_total(&self) -> u64 {
        self.decode_errors
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Reconnects and replacements by cause.
    pub fn reconnects(&self) -> Vec<(ReconnectCause, u64)> {
        ReconnectCause::ALL
            .iter()
            .zip(&self.reconnects)
            .map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Reconnects of one cause.
    pub fn reconnects_of(&self, cause: ReconnectCause) -> u64 {
        self.reconnects()
            .into_iter()
            .find(|(c, _)| *c == cause)
            .map_or(0, |(_, n)| n)
    }
}

/// Where one channel (or the relay connection) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// Creating the channel and subscribing.
    Setup,
    /// Connecting its WebSocket.
    Connecting,
    /// Connected; the resync after the gap is still running.
    Resyncing,
    /// Connected and resynced.
    Streaming,
    /// Waiting before the next attempt.
    Backoff,
    /// Stopped (shutdown).
    Stopped,
}

impl ChannelState {
    /// A stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelState::Setup => "setup",
            ChannelState::Connecting => "connecting",
            ChannelState::Resyncing => "resyncing",
            ChannelState::Streaming => "streaming",
            ChannelState::Backoff => "backoff",
            ChannelState::Stopped => "stopped",
        }
    }
}

/// A snapshot of one channel.
#[derive(Clone, Debug)]
pub struct ChannelStatus {
    /// The channel's slot (0-based; a closed channel's slot is reused by the next one added).
    pub index: usize,
    /// The Genesys channel id in use, if any.
    pub channel_id: Option<String>,
    /// The state.
    pub state: ChannelState,
    /// Users (topics) on the channel.
    pub users: usize,
    /// Reconnects and rollovers of this channel.
    pub reconnects: u64,
    /// Time since the last message on the socket, if connected.
    pub last_message_age: Option<Duration>,
}

#[derive(Debug)]
pub(crate) struct ChannelSlot {
    pub(crate) channel_id: Option<String>,
    pub(crate) state: ChannelState,
    pub(crate) users: usize,
    pub(crate) reconnects: u64,
    pub(crate) last_message: Option<Instant>,
    /// The channel was closed (its slot waits to be reused): left out of every view.
    pub(crate) closed: bool,
}

impl ChannelSlot {
    /// A slot for a channel about to be set up for `users` users.
    pub(crate) fn new(users: usize) -> ChannelSlot {
        ChannelSlot {
            channel_id: None,
            state: ChannelState::Setup,
            users,
            reconnects: 0,
            last_message: None,
            closed: false,
        }
    }
}

/// Shared view of a running sync: counters and channel states. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct SyncStatus {
    pub(crate) stats: Arc<SyncStats>,
    pub(crate) channels: Arc<Mutex<Vec<ChannelSlot>>>,
    pub(crate) ready: Arc<std::sync::atomic::AtomicBool>,
    /// Users whose topic the last subscription of their channel rejected.
    pub(crate) rejected: Arc<Mutex<BTreeSet<Guid>>>,
    /// Wakes the sync to follow a change of ownership at once.
    pub(crate) replan: Arc<tokio::sync::Notify>,
    /// Changes of ownership told ([`SyncStatus::ownership_changed`]), counted.
    pub(crate) ownership_told: Arc<std::sync::atomic::AtomicU64>,
    /// The count of `ownership_told` the sync had read when it last finished following the
    /// ownership (`u64::MAX` once it has stopped).
    pub(crate) ownership_followed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Owned users listed but not watched: the channel limit is reached.
    pub(crate) unwatched: Arc<std::sync::atomic::AtomicUsize>,
    /// Users watched now.
    pub(crate) watched: Arc<std::sync::atomic::AtomicUsize>,
}

impl SyncStatus {
    /// The counters.
    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// Tells the sync that the users it owns changed (its [`Owner`](presence_frame::Owner)
    /// answers differently now): it subscribes the users it gained and unsubscribes (and
    /// removes from the sink, which drops what it does not own) those it lost, from the
    /// last listing, without waiting for the next discovery.
    pub fn ownership_changed(&self) {
        self.ownership_told.fetch_add(1, Ordering::SeqCst);
        self.replan.notify_one();
    }

    /// Waits until the sync has followed every change of ownership told so far: users lost
    /// unsubscribed (their channels told), and channels that the users left no longer need
    /// closed, so that another instance on the same OAuth client can have them. Returns at
    /// once when the sync is not running, and for a relay source (which has nothing to
    /// release). Following takes moments, also while a re-discovery is listing; callers
    /// still bound the wait.
    pub async fn ownership_followed(&self) {
        let told = self.ownership_told.load(Ordering::SeqCst);
        if !self.ready.load(Ordering::Relaxed) {
            return;
        }
        let mut followed = self.ownership_followed.subscribe();
        let _ = followed.wait_for(|f| *f >= told).await;
    }

    /// Records that the sync followed the ownership as it was when `told` changes had been
    /// told.
    pub(crate) fn followed_ownership(&self, told: u64) {
        self.ownership_followed.send_if_modified(|f| {
            let newer = *f < told;
            if newer {
                *f = told;
            }
            newer
        });
    }

    /// Owned users the last plan could not watch because every channel the OAuth client may
    /// have is full (0 when all are watched).
    pub fn unwatched_users(&self) -> usize {
        self.unwatched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Users watched now (subscribed on a channel).
    pub fn watched_users(&self) -> usize {
        self.watched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Users whose presence topic their channel's last subscription rejected (a deleted
    /// user, a missing permission): they do not stream, the rest of their channel does.
    /// Every subscription of the channel asks for them again (when it is extended or
    /// replaced); a re-discovery can drop them or try them sooner.
    pub fn rejected_users(&self) -> Vec<Guid> {
        self.rejected.lock().iter().copied().collect()
    }

    /// Records the answer to a subscription of `asked` users: `rejected` of them (with the
    /// first reason given) are rejected now, the others are not. Each user newly rejected,
    /// or accepted again, is logged once, in one line per subscription. Returns the users
    /// accepted again, whose changes while rejected never streamed.
    pub(crate) fn record_subscription(
        &self,
        channel: &str,
        asked: &[Guid],
        rejected: &[Guid],
        reason: Option<&str>,
    ) -> Vec<Guid> {
        add(&self.stats.topics_rejected, rejected.len() as u64);
        let now_rejected: BTreeSet<Guid> = rejected.iter().copied().collect();
        let (newly, again) = {
            let mut held = self.rejected.lock();
            let newly: Vec<Guid> = rejected
                .iter()
                .copied()
                .filter(|u| held.insert(*u))
                .collect();
            let again: Vec<Guid> = asked
                .iter()
                .copied()
                .filter(|u| !now_rejected.contains(u) && held.remove(u))
                .collect();
            (newly, again)
        };
        if let Some(first) = newly.first() {
            log::warn!(
                "channel {channel}: {} of {} topics newly rejected, those users will not stream (first: {first}: {}); asked again at the channel's next subscription",
                newly.len(),
                asked.len(),
                reason.unwrap_or("no reason given")
            );
        }
        if let Some(first) = again.first() {
            log::info!(
                "channel {channel}: {} previously rejected topics accepted now (first: {first}); resyncing them",
                again.len()
            );
        }
        again
    }

    /// Drops users from [`rejected_users`](Self::rejected_users): discovery lists them no
    /// more.
    pub(crate) fn forget_rejected(&self, users: &[Guid]) {
        let mut held = self.rejected.lock();
        for user in users {
            held.remove(user);
        }
    }

    /// Every channel's state.
    pub fn channels(&self) -> Vec<ChannelStatus> {
        let now = Instant::now();
        self.channels
            .lock()
            .iter()
            .enumerate()
            .filter(|(_, slot)| !slot.closed)
            .map(|(index, slot)| ChannelStatus {
                index,
                channel_id: slot.channel_id.clone(),
                state: slot.state,
                users: slot.users,
                reconnects: slot.reconnects,
                last_message_age: slot.last_message.map(|t| now.saturating_duration_since(t)),
            })
            .collect()
    }

    /// Whether discovery finished and every channel is connected and resynced.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self
                .channels
                .lock()
                .iter()
                .all(|c| c.closed || c.state == ChannelState::Streaming)
    }

    pub(crate) fn set_state(&self, index: usize, state: ChannelState) {
        if let Some(slot) = self.channels.lock().get_mut(index) {
            if slot.state != state {
                log::debug!(
                    "channel {index}: {} -> {}",
                    slot.state.as_str(),
                    state.as_str()
                );
            }
            slot.state = state;
        }
    }

    pub(crate) fn update(&self, index: usize, f: impl FnOnce(&mut ChannelSlot)) {
        if let Some(slot) = self.channels.lock().get_mut(index) {
            f(slot);
        }
    }
}
