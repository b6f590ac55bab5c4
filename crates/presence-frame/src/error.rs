//! The one error type of this crate.

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest piece of offending input echoed back inside an error, so that a huge or hostile
/// message cannot make an error (and the log line it ends up in) huge.
const ECHO_LIMIT: usize = 80;

/// Everything that can be wrong with input handed to this crate.
///
/// None of these is fatal to a stream: each describes one message (or one field of it) that the
/// caller should count, log and skip.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A binary message whose length is zero or not a multiple of the 16-byte frame size. The
    /// whole message is rejected.
    #[error("message length {len} is not a positive multiple of 16")]
    BadLength {
        /// The length of the rejected message, in bytes.
        len: usize,
    },
    /// The bytes are not JSON, or not JSON of the expected shape.
    #[error("malformed JSON notification: {source}")]
    Json {
        /// What the JSON parser reported.
        #[source]
        source: serde_json::Error,
    },
    /// A presence or routing-status topic whose user id is not a Genesys GUID.
    #[error("invalid user id {id:?} (expected a GUID or a relay number)")]
    InvalidUserId {
        /// The offending id, shortened when long.
        id: String,
    },
    /// A timestamp that is not RFC 3339, or is out of the representable range.
    #[error("invalid timestamp {value:?} (expected RFC 3339, e.g. 2026-11-28T09:03:17.067Z)")]
    InvalidTimestamp {
        /// The offending value, shortened when long.
        value: String,
    },
    /// A notification that lacks a field its topic requires.
    #[error("notification on topic {topic:?} lacks {field}")]
    MissingField {
        /// The topic of the notification, shortened when long.
        topic: String,
        /// The JSON path of the missing field.
        field: &'static str,
    },
}

impl Error {
    /// A short, stable name for the kind of error, suitable as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadLength { .. } => "bad_length",
            Error::Json { .. } => "json",
            Error::InvalidUserId { .. } => "invalid_user_id",
            Error::InvalidTimestamp { .. } => "invalid_timestamp",
            Error::MissingField { .. } => "missing_field",
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(source: serde_json::Error) -> Self {
        Error::Json { source }
    }
}

/// Copies at most [`ECHO_LIMIT`] characters of `text` for use inside an error.
pub(crate) fn echo(text: &str) -> String {
    match text.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}
