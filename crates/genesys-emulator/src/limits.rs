//! The limits every setting and fault is checked against: constants, with no behaviour.

use std::time::Duration;

/// Longest accepted duration setting (one year): far beyond any real need, and far from
/// overflowing clock arithmetic.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Most users accepted (about 1 GB of emulator state).
pub const MAX_USERS: u32 = 10_000_000;

/// Most OAuth clients accepted (see [`EmulatorConfig::clients`](crate::EmulatorConfig::clients)).
pub const MAX_CLIENTS: usize = 1_000;

/// Highest change rate accepted (changes per second).
pub const MAX_CHANGE_RATE: f64 = 10_000_000.0;

/// Largest oversized message (also the cap of [`Fault::Oversized`]'s `bytes`): 64 MiB.
///
/// [`Fault::Oversized`]: crate::Fault::Oversized
pub const MAX_OVERSIZED_BYTES: usize = 64 * 1024 * 1024;
