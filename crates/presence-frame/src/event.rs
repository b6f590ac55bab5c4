//! The presence event and the value types it is made of.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result, echo};

/// A Genesys Cloud id (users, presence definitions), held as its 128-bit value.
///
/// Parsing accepts the hyphenated form in any case (and the bare 32-digit form); display is
/// always lowercase and hyphenated, as Genesys writes it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Guid(pub u128);

impl Guid {
    /// Parses `8-4-4-4-12` hex digits (or 32 bare hex digits), any case.
    pub fn parse(text: &str) -> Option<Guid> {
        let bytes = text.as_bytes();
        let hyphenated = match bytes.len() {
            36 => true,
            32 => false,
            _ => return None,
        };
        let mut value: u128 = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if hyphenated && matches!(i, 8 | 13 | 18 | 23) {
                if b != b'-' {
                    return None;
                }
                continue;
            }
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return None,
            };
            value = (value << 4) | u128::from(digit);
        }
        Some(Guid(value))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xffff_ffff_ffff
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Who an event is about: a Genesys user (GUID) or a relay user (the relay's own number).
///
/// The two namespaces never collide: a relay user 7 and a Genesys user whose GUID ends in 7 are
/// different keys. The text form ([`Display`](fmt::Display), and the Kafka record key) is the
/// GUID or the decimal number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UserId {
    /// A Genesys Cloud user.
    Genesys(Guid),
    /// A user numbered by a binary relay.
    Relay(u32),
}

impl UserId {
    /// A cheap, well-mixed 64-bit hash of the id, for sharding and hash tables.
    #[inline]
    pub fn mix64(&self) -> u64 {
        // SplitMix64 finalizer: fast, and spreads sequential relay numbers across shards.
        let raw = match *self {
            UserId::Genesys(Guid(v)) => (v as u64) ^ ((v >> 64) as u64).rotate_left(29),
            UserId::Relay(n) => u64::from(n) ^ 0x5bd1_e995_0000_0000,
        };
        let mut z = raw.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserId::Genesys(guid) => fmt::Display::fmt(guid, f),
            UserId::Relay(n) => fmt::Display::fmt(n, f),
        }
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserId::Genesys(guid) => write!(f, "Genesys({guid})"),
            UserId::Relay(n) => write!(f, "Relay({n})"),
        }
    }
}

impl FromStr for UserId {
    type Err = Error;

    /// A GUID is a Genesys user; a decimal number that fits in 32 bits is a relay user.
    fn from_str(text: &str) -> Result<UserId> {
        if let Some(guid) = Guid::parse(text) {
            return Ok(UserId::Genesys(guid));
        }
        let decimal =
            !text.is_empty() && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit());
        if let Some(n) = decimal.then(|| text.parse::<u32>().ok()).flatten() {
            return Ok(UserId::Relay(n));
        }
        Err(Error::InvalidUserId { id: echo(text) })
    }
}

/// When something happened, in milliseconds since the Unix epoch (UTC). May be negative.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventTime(pub i64);

impl EventTime {
    /// Milliseconds since the Unix epoch.
    #[inline]
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// Parses an RFC 3339 timestamp such as `2026-11-28T09:03:17.067Z` (any offset; sub-millisecond
    /// digits are truncated).
    pub fn parse_rfc3339(text: &str) -> Result<EventTime> {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| EventTime(t.timestamp_millis()))
            .map_err(|_| Error::InvalidTimestamp { value: echo(text) })
    }

    /// The time as RFC 3339 in UTC with milliseconds, as Genesys writes it
    /// (`2026-11-28T09:03:17.067Z`). Times outside chrono's range print as the epoch offset.
    pub fn to_rfc3339(self) -> String {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            None => format!("{}ms", self.0),
        }
    }

    /// The current wall-clock time.
    pub fn now() -> EventTime {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        EventTime(since.map(|d| d.as_millis() as i64).unwrap_or(0))
    }
}

impl fmt::Debug for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventTime({})", self.to_rfc3339())
    }
}

/// A presence status code, as carried by relay frames and shared with Genesys `systemPresence`.
///
/// The table is 0 Offline, 1 Available, 2 Busy, 3 Away, 4 Break, 5 Meal, 6 Meeting, 7 Training,
/// 8 On Queue, 9 Idle and 255 Unknown. Any other code is kept as it came and shows as
/// `unknown(n)`: nothing is dropped.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Status(pub u8);

/// The named statuses in code order (codes 0 to 9), with their display and Genesys spellings.
const STATUS_NAMES: [(&str, &str); 10] = [
    ("Offline", "OFFLINE"),
    ("Available", "AVAILABLE"),
    ("Busy", "BUSY"),
    ("Away", "AWAY"),
    ("Break", "BREAK"),
    ("Meal", "MEAL"),
    ("Meeting", "MEETING"),
    ("Training", "TRAINING"),
    ("On Queue", "ON_QUEUE"),
    ("Idle", "IDLE"),
];

impl Status {
    /// Logged off.
    pub const OFFLINE: Status = Status(0);
    /// Available.
    pub const AVAILABLE: Status = Status(1);
    /// Busy.
    pub const BUSY: Status = Status(2);
    /// Away.
    pub const AWAY: Status = Status(3);
    /// On a break.
    pub const BREAK: Status = Status(4);
    /// At a meal.
    pub const MEAL: Status = Status(5);
    /// In a meeting.
    pub const MEETING: Status = Status(6);
    /// In training.
    pub const TRAINING: Status = Status(7);
    /// On queue (taking interactions).
    pub const ON_QUEUE: Status = Status(8);
    /// Idle.
    pub const IDLE: Status = Status(9);
    /// The status is not known.
    pub const UNKNOWN: Status = Status(255);

    /// Every named status, in code order (Unknown last).
    pub const ALL: [Status; 11] = [
        Status::OFFLINE,
        Status::AVAILABLE,
        Status::BUSY,
        Status::AWAY,
        Status::BREAK,
        Status::MEAL,
        Status::MEETING,
        Status::TRAINING,
        Status::ON_QUEUE,
        Status::IDLE,
        Status::UNKNOWN,
    ];

    /// The status code.
    #[inline]
    pub fn code(self) -> u8 {
        self.0
    }

    /// Whether the code is in the table (0 to 9, or 255).
    pub fn is_known(self) -> bool {
        self.0 <= 9 || self.0 == 255
    }

    /// The display name (`"On Queue"`), or `None` for a code outside the table.
    pub fn name(self) -> Option<&'static str> {
        match self.0 {
            255 => Some("Unknown"),
            n => STATUS_NAMES.get(usize::from(n)).map(|(name, _)| *name),
        }
    }

    /// The Genesys `systemPresence` spelling used in notifications (`"ON_QUEUE"`), or `None`
    /// for Unknown and codes outside the table.
    pub fn system_presence(self) -> Option<&'static str> {
        STATUS_NAMES
            .get(usize::from(self.0))
            .map(|(_, genesys)| *genesys)
    }

    /// Maps a Genesys `systemPresence` (or a display name) to a status, ignoring case and
    /// separators: `ON_QUEUE`, `OnQueue` and `On Queue` are all [`Status::ON_QUEUE`]. Anything
    /// unrecognised is [`Status::UNKNOWN`].
    pub fn from_system_presence(text: &str) -> Status {
        // Fold to lowercase letters and digits without allocating; no known name is longer
        // than 16 folded characters.
        let mut folded = [0u8; 16];
        let mut len = 0;
        for b in text.bytes() {
            if b.is_ascii_alphanumeric() {
                if len == folded.len() {
                    return Status::UNKNOWN;
                }
                folded[len] = b.to_ascii_lowercase();
                len += 1;
            }
        }
        let code = match &folded[..len] {
            b"offline" => 0,
            b"available" => 1,
            b"busy" => 2,
            b"away" => 3,
            b"break" => 4,
            b"meal" => 5,
            b"meeting" => 6,
            b"training" => 7,
            b"onqueue" => 8,
            b"idle" => 9,
            _ => 255,
        };
        Status(code)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "unknown({})", self.0),
        }
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status({}: {self})", self.0)
    }
}

/// Where a user works from: 0 unknown, 1 Desk, 2 Remote; other codes are kept and show as
/// `unknown(n)`. Genesys notifications carry no location, so their events have
/// [`Location::UNKNOWN`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Location(pub u8);

impl Location {
    /// Location not known.
    pub const UNKNOWN: Location = Location(0);
    /// At a desk in an office.
    pub const DESK: Location = Location(1);
    /// Working remotely.
    pub const REMOTE: Location = Location(2);

    /// The location code.
    #[inline]
    pub fn code(self) -> u8 {
        self.0
    }

    /// The display name, or `None` for a code outside the table.
    pub fn name(self) -> Option<&'static str> {
        match self.0 {
            0 => Some("Unknown"),
            1 => Some("Desk"),
            2 => Some("Remote"),
            _ => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "unknown({})", self.0),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({}: {self})", self.0)
    }
}

/// A set of up to 64 groups, one bit each. Relay frames carry the low 8 bits; for Genesys users
/// the bits come from configuration mapping group ids to bits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct GroupMask(pub u64);

impl GroupMask {
    /// No group.
    pub const NONE: GroupMask = GroupMask(0);
    /// Every group.
    pub const ALL: GroupMask = GroupMask(u64::MAX);

    /// The mask with only bit `bit` set, or `None` when `bit` is 64 or more.
    pub fn bit(bit: u32) -> Option<GroupMask> {
        1u64.checked_shl(bit).map(GroupMask)
    }

    /// The group filter: whether this mask shares at least one bit with `allowed`.
    #[inline]
    pub fn passes(self, allowed: GroupMask) -> bool {
        self.0 & allowed.0 != 0
    }
}

impl std::ops::BitOr for GroupMask {
    type Output = GroupMask;

    fn bitor(self, rhs: GroupMask) -> GroupMask {
        GroupMask(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for GroupMask {
    fn bitor_assign(&mut self, rhs: GroupMask) {
        self.0 |= rhs.0;
    }
}

/// Where an event came from.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Source {
    /// A Genesys notification on a WebSocket.
    Stream,
    /// A REST snapshot taken to resynchronise after a gap.
    Resync,
    /// A binary relay frame.
    Relay,
}

impl Source {
    /// The lowercase name used in Kafka records and metrics (`stream`, `resync`, `relay`).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Stream => "stream",
            Source::Resync => "resync",
            Source::Relay => "relay",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The part of a user's presence whose change is worth publishing.
///
/// The derived order (status, location, groups, definition, message) is the fixed total order
/// used to break ties between different states with the same event time, so that replicas fed
/// the same events in any order converge.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct PresenceState {
    /// The system presence.
    pub status: Status,
    /// Where the user works from.
    pub location: Location,
    /// The groups the user belongs to.
    pub groups: GroupMask,
    /// The organisation's presence definition (a GUID in Genesys), when known.
    pub definition_id: Option<Arc<str>>,
    /// The user's presence message, when set. An empty message is stored as `None`.
    pub message: Option<Arc<str>>,
}

impl Default for Status {
    fn default() -> Self {
        Status::UNKNOWN
    }
}

impl PresenceState {
    /// A state with only a status, location and groups (what a relay frame carries).
    pub fn new(status: Status, location: Location, groups: GroupMask) -> PresenceState {
        PresenceState {
            status,
            location,
            groups,
            definition_id: None,
            message: None,
        }
    }

    /// Sets the presence message; an empty message is no message.
    pub fn with_message(mut self, message: &str) -> PresenceState {
        self.message = (!message.is_empty()).then(|| Arc::from(message));
        self
    }

    /// Sets the presence definition id; an empty id is no id.
    pub fn with_definition_id(mut self, id: &str) -> PresenceState {
        self.definition_id = (!id.is_empty()).then(|| Arc::from(id));
        self
    }
}

/// One observation of a user's presence at a point in time.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PresenceEvent {
    /// Whose presence this is.
    pub user: UserId,
    /// When the presence took effect at the source (Genesys `modifiedDate`, or the frame's
    /// time). Last-write-wins compares this, never the time of arrival.
    pub time: EventTime,
    /// The presence itself.
    pub state: PresenceState,
    /// How the event reached us.
    pub source: Source,
}
