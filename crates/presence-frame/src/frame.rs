//! The 16-byte big-endian relay frame, and zero-copy views over messages of frames.
//!
//! | bytes | field | type |
//! |---|---|---|
//! | 0..8 | event time, Unix milliseconds | i64 |
//! | 8..12 | user id (relay-assigned number) | u32 |
//! | 12 | status code | u8 |
//! | 13 | location code | u8 |
//! | 14 | group bitmask | u8 |
//! | 15 | reserved: zero when encoding, ignored when decoding | u8 |

use crate::error::{Error, Result};
use crate::event::{
    EventTime, GroupMask, Location, PresenceEvent, PresenceState, Source, Status, UserId,
};

/// Size of one frame in bytes.
pub const FRAME_LEN: usize = 16;

/// Offset of the group bitmask byte inside a frame.
const GROUPS_AT: usize = 14;

/// One decoded relay frame. `Copy`, 24 bytes, no heap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Frame {
    /// Event time in Unix milliseconds.
    pub time_ms: i64,
    /// The relay's number for the user.
    pub user_id: u32,
    /// Status code (kept as sent, even outside the table).
    pub status: Status,
    /// Location code (kept as sent, even outside the table).
    pub location: Location,
    /// The 8 group bits the frame carries.
    pub groups: u8,
}

impl Frame {
    /// Decodes one frame. The reserved byte is ignored. Never fails: every 16 bytes are a frame.
    #[inline]
    pub fn decode(bytes: &[u8; FRAME_LEN]) -> Frame {
        let (time, rest) = bytes.split_at(8);
        let (user, rest) = rest.split_at(4);
        Frame {
            time_ms: i64::from_be_bytes(time.try_into().unwrap_or_default()),
            user_id: u32::from_be_bytes(user.try_into().unwrap_or_default()),
            status: Status(rest[0]),
            location: Location(rest[1]),
            groups: rest[2],
        }
    }

    /// Decodes a slice that must be exactly one frame long.
    pub fn decode_slice(bytes: &[u8]) -> Result<Frame> {
        let frame: &[u8; FRAME_LEN] = bytes
            .try_into()
            .map_err(|_| Error::BadLength { len: bytes.len() })?;
        Ok(Frame::decode(frame))
    }

    /// Encodes the frame, with the reserved byte zero.
    #[inline]
    pub fn encode(&self) -> [u8; FRAME_LEN] {
        let mut out = [0u8; FRAME_LEN];
        out[..8].copy_from_slice(&self.time_ms.to_be_bytes());
        out[8..12].copy_from_slice(&self.user_id.to_be_bytes());
        out[12] = self.status.0;
        out[13] = self.location.0;
        out[GROUPS_AT] = self.groups;
        out
    }

    /// Appends the encoded frame to `out` (to build a message of several frames).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.encode());
    }

    /// The frame's groups as a 64-bit mask (bits 8 and up are zero).
    #[inline]
    pub fn group_mask(&self) -> GroupMask {
        GroupMask(u64::from(self.groups))
    }

    /// The frame as a presence event from [`Source::Relay`].
    pub fn to_event(&self) -> PresenceEvent {
        PresenceEvent {
            user: UserId::Relay(self.user_id),
            time: EventTime(self.time_ms),
            state: PresenceState::new(self.status, self.location, self.group_mask()),
            source: Source::Relay,
        }
    }
}

/// Encodes frames back to back into one message.
pub fn encode_message(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames.len() * FRAME_LEN);
    for frame in frames {
        frame.encode_into(&mut out);
    }
    out
}

/// A validated, borrowed view of one binary message of back-to-back frames.
///
/// Building it checks only the length; frames are decoded lazily by [`iter`](FrameBatch::iter)
/// or [`filter`](FrameBatch::filter), without copying or allocating.
///
/// ```
/// use presence_frame::{FrameBatch, GroupMask};
///
/// let message = [0u8; 32]; // two frames
/// let batch = FrameBatch::new(&message)?;
/// assert_eq!(batch.len(), 2);
/// assert_eq!(batch.filter(GroupMask::ALL).count(), 0); // neither frame is in a group
/// assert!(FrameBatch::new(&message[..17]).is_err());
/// # Ok::<(), presence_frame::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct FrameBatch<'a> {
    frames: &'a [[u8; FRAME_LEN]],
}

impl<'a> FrameBatch<'a> {
    /// Checks that `message` is a positive multiple of 16 bytes long.
    pub fn new(message: &'a [u8]) -> Result<FrameBatch<'a>> {
        let (frames, rest) = message.as_chunks::<FRAME_LEN>();
        if frames.is_empty() || !rest.is_empty() {
            return Err(Error::BadLength { len: message.len() });
        }
        Ok(FrameBatch { frames })
    }

    /// Number of frames in the message (at least one).
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Always false: an empty message is rejected by [`FrameBatch::new`].
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The frame at `index`, if any.
    pub fn get(&self, index: usize) -> Option<Frame> {
        self.frames.get(index).map(Frame::decode)
    }

    /// Every frame, in order.
    pub fn iter(&self) -> Frames<'a> {
        Frames {
            inner: self.frames.iter(),
        }
    }

    /// Only the frames whose group bits share a bit with `allowed`; rejected frames are
    /// skipped by looking at their group byte alone, never decoded.
    pub fn filter(&self, allowed: GroupMask) -> Filtered<'a> {
        Filtered {
            inner: self.frames.iter(),
            // Frames carry 8 group bits, so only the low byte of the mask can match.
            allowed: (allowed.0 & 0xff) as u8,
        }
    }
}

impl<'a> IntoIterator for FrameBatch<'a> {
    type Item = Frame;
    type IntoIter = Frames<'a>;

    fn into_iter(self) -> Frames<'a> {
        self.iter()
    }
}

/// Iterator over every frame of a [`FrameBatch`].
#[derive(Clone, Debug)]
pub struct Frames<'a> {
    inner: std::slice::Iter<'a, [u8; FRAME_LEN]>,
}

impl Iterator for Frames<'_> {
    type Item = Frame;

    #[inline]
    fn next(&mut self) -> Option<Frame> {
        self.inner.next().map(Frame::decode)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for Frames<'_> {}

impl DoubleEndedIterator for Frames<'_> {
    fn next_back(&mut self) -> Option<Frame> {
        self.inner.next_back().map(Frame::decode)
    }
}

/// Iterator over the frames of a [`FrameBatch`] that pass a group filter.
#[derive(Clone, Debug)]
pub struct Filtered<'a> {
    inner: std::slice::Iter<'a, [u8; FRAME_LEN]>,
    allowed: u8,
}

impl Iterator for Filtered<'_> {
    type Item = Frame;

    #[inline]
    fn next(&mut self) -> Option<Frame> {
        let allowed = self.allowed;
        self.inner
            .find(|raw| raw[GROUPS_AT] & allowed != 0)
            .map(Frame::decode)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, self.inner.size_hint().1)
    }
}

/// What a WebSocket message holds, decided by its kind and first byte.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// Binary frames.
    Frames(FrameBatch<'a>),
    /// A JSON Genesys notification (not yet parsed).
    Json(&'a [u8]),
}

impl<'a> Payload<'a> {
    /// Classifies a binary WebSocket message: first byte `{` means JSON, anything else must be
    /// frames (and is length-checked).
    pub fn classify_binary(message: &'a [u8]) -> Result<Payload<'a>> {
        if message.first() == Some(&b'{') {
            return Ok(Payload::Json(message));
        }
        FrameBatch::new(message).map(Payload::Frames)
    }

    /// Classifies a text WebSocket message: always JSON.
    pub fn classify_text(message: &'a str) -> Payload<'a> {
        Payload::Json(message.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_byte_is_zero_on_encode_and_ignored_on_decode() {
        let mut raw = Frame {
            time_ms: 5,
            user_id: 6,
            status: Status::BUSY,
            location: Location::REMOTE,
            groups: 3,
        }
        .encode();
        assert_eq!(raw[15], 0);
        let frame = Frame::decode(&raw);
        raw[15] = 0xab;
        assert_eq!(Frame::decode(&raw), frame);
    }

    #[test]
    fn filter_matches_iter_then_filter() {
        let frames: Vec<Frame> = (0..64u32)
            .map(|i| Frame {
                time_ms: i64::from(i),
                user_id: i,
                status: Status::AVAILABLE,
                location: Location::DESK,
                groups: (i * 37) as u8,
            })
            .collect();
        let message = encode_message(&frames);
        let batch = FrameBatch::new(&message).expect("valid length");
        for allowed in [0u64, 1, 0x0f, 0xf0, 0xff, 0x100, u64::MAX] {
            let want: Vec<Frame> = batch
                .iter()
                .filter(|f| f.group_mask().passes(GroupMask(allowed)))
                .collect();
            let got: Vec<Frame> = batch.filter(GroupMask(allowed)).collect();
            assert_eq!(got, want, "allowed {allowed:#x}");
        }
    }

    #[test]
    fn classify_picks_json_on_brace() {
        assert!(matches!(
            Payload::classify_binary(b"{\"a\":1}"),
            Ok(Payload::Json(_))
        ));
        assert!(matches!(
            Payload::classify_binary(&[0u8; 16]),
            Ok(Payload::Frames(_))
        ));
        assert!(matches!(
            Payload::classify_binary(&[0u8; 15]),
            Err(Error::BadLength { len: 15 })
        ));
        assert!(matches!(Payload::classify_text("x"), Payload::Json(_)));
    }
}
