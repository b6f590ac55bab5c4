//! The one error type of this crate.
//!
//! Messages from librdkafka can echo configuration values, so every such message is scrubbed
//! of the configured secrets and kept as text rather than as the original error (which would
//! print the raw value through its own `Display`).

use rdkafka::error::KafkaError;

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What stops a publisher from starting. Once running, a publisher never fails: delivery
/// trouble is retried, counted and shown by [`health`](crate::Publisher::health).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option has an invalid value. Fatal: fix the configuration.
    #[error("invalid Kafka option {option}: {reason}")]
    Config {
        /// The option at fault, as named by [`KafkaConfig`](crate::KafkaConfig)'s setters
        /// (`brokers`, `topic`, `sasl.password`, `property <name>`, ...).
        option: String,
        /// What is wrong with it.
        reason: String,
    },
    /// librdkafka refused the configuration or could not create the client (an unknown raw
    /// property, an unreadable certificate). Fatal. Secrets are scrubbed from the message.
    #[error("librdkafka refused the {what} configuration: {message}")]
    Client {
        /// Which client (`producer`, `admin`).
        what: &'static str,
        /// librdkafka's message, secrets scrubbed.
        message: String,
    },
    /// The brokers refused the credentials (SASL) or the TLS handshake failed. Fatal.
    #[error("Kafka authentication failed at {brokers}: {reason}")]
    Authentication {
        /// The bootstrap brokers.
        brokers: String,
        /// librdkafka's reason, secrets scrubbed (for example `SASL authentication error:
        /// Authentication failed during authentication due to invalid credentials with SASL
        /// mechanism SCRAM-SHA-512`).
        reason: String,
    },
    /// No broker answered within the startup timeout. Fatal at start; retry later.
    #[error("no Kafka broker reachable at {brokers} within {timeout_ms} ms: {reason}")]
    Unreachable {
        /// The bootstrap brokers.
        brokers: String,
        /// The startup timeout.
        timeout_ms: u64,
        /// The last error librdkafka reported, secrets scrubbed.
        reason: String,
    },
    /// The topic does not exist and creating it is turned off. Fatal.
    #[error(
        "Kafka topic {topic} does not exist and topic creation is off; create it with cleanup.policy=compact, or allow creation (create_topic)"
    )]
    TopicMissing {
        /// The topic.
        topic: String,
    },
    /// The topic does not exist and the brokers refused to create it. Fatal.
    #[error("could not create Kafka topic {topic}: {reason}")]
    TopicCreate {
        /// The topic.
        topic: String,
        /// What the broker said, and what is missing (for example the `CREATE` ACL on the
        /// topic or cluster).
        reason: String,
    },
    /// Looking the topic up failed (not for a missing topic: that is created or
    /// [`TopicMissing`](Error::TopicMissing)). Fatal at start.
    #[error("could not check Kafka topic {topic}: {source}")]
    TopicCheck {
        /// The topic.
        topic: String,
        /// What failed.
        #[source]
        source: KafkaError,
    },
    /// [`KafkaPublisher::start`](crate::KafkaPublisher::start) was called outside a Tokio
    /// runtime, which the topic check needs.
    #[error("presence-kafka needs a Tokio runtime: {0}")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    /// The dispatcher thread (or its timer runtime) could not be started.
    #[error("could not start the Kafka dispatcher thread: {0}")]
    Thread(#[source] std::io::Error),
}
