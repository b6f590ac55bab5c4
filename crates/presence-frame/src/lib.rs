//! Presence events for presence-bridge, and the two wire formats they arrive in.
//!
//! This crate is pure: no I/O, no async runtime. Use it alone to decode relay frames or Genesys
//! notifications in your own consumer.
//!
//! A short tour:
//! - [`PresenceEvent`]: one observation of a user's presence: [`UserId`] (a Genesys [`Guid`]
//!   or a relay number, never confused), [`EventTime`], [`PresenceState`] ([`Status`],
//!   [`Location`], [`GroupMask`], presence definition and message) and [`Source`].
//! - [`Frame`]: the 16-byte big-endian relay frame; [`FrameBatch`] validates a whole
//!   WebSocket message of frames and iterates it without copying or allocating;
//!   [`FrameBatch::filter`] applies the group filter without decoding rejected frames.
//! - [`Payload`]: tells JSON from frames (a text message, or a binary one starting with `{`).
//! - [`decode_notification`]: a Genesys notification to a typed [`Notification`].
//! - [`PresenceSink`]: where decoded events go, the interface between sources and consumers.
//! - [`RateLimit`]: the workspace's limiter for log lines that bad input can repeat.
//! - [`Error`]: everything that can be wrong with input. Nothing here panics on any input.
//!
//! ```
//! use presence_frame::{Frame, FrameBatch, GroupMask, Location, Status};
//!
//! let sent = [
//!     Frame { time_ms: 1_764_322_997_067, user_id: 42, status: Status::AVAILABLE,
//!             location: Location::DESK, groups: 0b0001 },
//!     Frame { time_ms: 1_764_322_997_068, user_id: 7, status: Status::BUSY,
//!             location: Location::REMOTE, groups: 0b1010 },
//! ];
//! let message = presence_frame::encode_message(&sent);
//!
//! let batch = FrameBatch::new(&message)?;
//! let passing: Vec<u32> = batch.filter(GroupMask(0b0010)).map(|f| f.user_id).collect();
//! assert_eq!(passing, [7]);
//!
//! let event = batch.iter().next().map(|f| f.to_event());
//! assert_eq!(event.map(|e| e.user.to_string()), Some("42".to_string()));
//! # Ok::<(), presence_frame::Error>(())
//! ```
#![deny(missing_docs)]

mod error;
mod event;
mod frame;
mod json;
mod ratelimit;
mod sink;

pub use error::{Error, Result};
pub use event::{
    EventTime, GroupMask, Guid, Location, PresenceEvent, PresenceState, Source, Status, UserId,
};
pub use frame::{FRAME_LEN, Filtered, Frame, FrameBatch, Frames, Payload, encode_message};
pub use json::{
    GenesysPresence, Notification, PresenceDefinitionRef, RoutingStatusEvent, SystemMessage,
    SystemTopicType, decode_notification, presence_topic,
};
pub use ratelimit::RateLimit;
pub use sink::{Owner, PresenceSink};
