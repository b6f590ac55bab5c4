//! How a publisher is set up: [`KafkaConfig`], the builder of every setting (brokers, topic,
//! producer tuning, the coalescing queue, the topic check, TLS and SASL, raw librdkafka
//! properties) and its validation, which names the option at fault. The TLS and SASL types
//! live in `security.rs`, the librdkafka properties a config becomes in `client_config.rs`.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};
use crate::security::{Sasl, Tls, security_protocol};

/// The topic used when none is configured.
pub const DEFAULT_TOPIC: &str = "genesys.presence.updates";

/// Properties this crate always sets and a raw [`KafkaConfig::property`] may not override:
/// the delivery guarantees and key placement other clients rely on.
pub(crate) const FIXED_PROPERTIES: [(&str, &str); 3] = [
    // No duplicates or reordering from librdkafka's own retries.
    ("enable.idempotence", "true"),
    ("acks", "all"),
    // The Java client's murmur2 hash (random partition for a null key, which we never send),
    // so Java, Go and librdkafka producers place a user on the same partition.
    ("partitioner", "murmur2_random"),
];

/// Aliases of the fixed properties that librdkafka also accepts.
const FIXED_ALIASES: [&str; 2] = ["request.required.acks", "topic.partitioner"];

/// Record batch compression (librdkafka `compression.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// No compression.
    None,
    /// gzip: small output, most CPU.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4: fast with a fair ratio, readable by every client since Kafka 0.10. The default,
    /// because presence records are small and latency matters more than bytes.
    #[default]
    Lz4,
    /// Zstandard: the best ratio at moderate CPU; needs Kafka 2.1+ clients to read.
    Zstd,
}

impl Compression {
    /// The librdkafka spelling (`none`, `gzip`, `snappy`, `lz4`, `zstd`).
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// A raw librdkafka property. Values of properties whose names suggest a secret (`password`,
/// `secret`, private keys) are hidden in `Debug` output and error messages.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RawProperty {
    pub(crate) key: String,
    pub(crate) value: String,
}

impl RawProperty {
    fn is_sensitive(&self) -> bool {
        let key = self.key.to_ascii_lowercase();
        [
            "password",
            "secret",
            "key.pem",
            "keystore",
            "sasl.jaas",
            "token",
        ]
        .iter()
        .any(|word| key.contains(word))
    }
}

impl fmt::Debug for RawProperty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_sensitive() {
            write!(f, "{}=<redacted>", self.key)
        } else {
            write!(f, "{}={}", self.key, self.value)
        }
    }
}

/// Settings of a [`KafkaPublisher`](crate::KafkaPublisher). Every setting has a default;
/// [`validate`](KafkaConfig::validate) says which option is wrong, by name.
///
/// Whatever is configured, the producer always runs with `enable.idempotence=true`,
/// `acks=all` and `partitioner=murmur2_random` (the Java client's key placement), and with
/// `allow.auto.create.topics=false` so that only the topic check creates the topic, compacted.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub(crate) brokers: String,
    pub(crate) topic: String,
    pub(crate) client_id: String,
    pub(crate) instance: Option<String>,
    pub(crate) compression: Compression,
    pub(crate) linger: Duration,
    pub(crate) delivery_timeout: Duration,
    pub(crate) queue_capacity: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) retry_backoff: Duration,
    pub(crate) retry_backoff_max: Duration,
    pub(crate) tls: Option<Tls>,
    pub(crate) sasl: Option<Sasl>,
    pub(crate) properties: Vec<RawProperty>,
    pub(crate) check_topic: bool,
    pub(crate) create_topic: bool,
    pub(crate) partitions: i32,
    pub(crate) replication_factor: i32,
    pub(crate) topic_properties: Vec<(String, String)>,
    pub(crate) startup_timeout: Duration,
    pub(crate) statistics_interval: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "localhost:9092".to_owned(),
            topic: DEFAULT_TOPIC.to_owned(),
            client_id: "presence-bridge".to_owned(),
            instance: None,
            compression: Compression::Lz4,
            linger: Duration::from_millis(5),
            delivery_timeout: Duration::from_secs(60),
            queue_capacity: 1_000_000,
            max_in_flight: 10_000,
            retry_backoff: Duration::from_millis(500),
            retry_backoff_max: Duration::from_secs(30),
            tls: None,
            sasl: None,
            properties: Vec::new(),
            check_topic: true,
            create_topic: true,
            partitions: 6,
            replication_factor: 1,
            topic_properties: Vec::new(),
            startup_timeout: Duration::from_secs(30),
            statistics_interval: Duration::from_secs(5),
        }
    }
}

impl KafkaConfig {
    /// The defaults, with these bootstrap brokers.
    pub fn new(brokers: impl Into<String>) -> KafkaConfig {
        KafkaConfig::default().brokers(brokers)
    }

    /// Bootstrap brokers, comma-separated `host:port` (`bootstrap.servers`). By default,
    /// `localhost:9092`.
    pub fn brokers(mut self, brokers: impl Into<String>) -> KafkaConfig {
        self.brokers = brokers.into();
        self
    }

    /// The topic to publish to. By default, `genesys.presence.updates`.
    pub fn topic(mut self, topic: impl Into<String>) -> KafkaConfig {
        self.topic = topic.into();
        self
    }

    /// The client id the brokers see in their logs and quotas (`client.id`). By default,
    /// `presence-bridge`.
    pub fn client_id(mut self, client_id: impl Into<String>) -> KafkaConfig {
        self.client_id = client_id.into();
        self
    }

    /// The name of this instance, sent in the [`HEADER_INSTANCE`](crate::HEADER_INSTANCE)
    /// header of every record, so that a reader can tell which of several instances sharing
    /// the topic wrote it. By default, none (no header).
    pub fn instance(mut self, instance: impl Into<String>) -> KafkaConfig {
        self.instance = Some(instance.into());
        self
    }

    /// Batch compression. By default, [`Compression::Lz4`].
    pub fn compression(mut self, compression: Compression) -> KafkaConfig {
        self.compression = compression;
        self
    }

    /// How long librdkafka waits to fill a batch (`linger.ms`); more batches fewer requests,
    /// at this much added latency. By default, 5 ms.
    pub fn linger(mut self, linger: Duration) -> KafkaConfig {
        self.linger = linger;
        self
    }

    /// How long librdkafka keeps trying one record, its own retries included
    /// (`message.timeout.ms`). After that the record is reported failed and this crate retries
    /// the user's newest state itself. By default, 60 seconds.
    pub fn delivery_timeout(mut self, timeout: Duration) -> KafkaConfig {
        self.delivery_timeout = timeout;
        self
    }

    /// The most users with a pending (not yet handed to librdkafka) state. A newer state of a
    /// pending user replaces the older one and takes no room. When the queue is full, a state
    /// for a user who has none pending is dropped and counted (`rejected`), with an error log:
    /// the caller is never blocked. Memory is bounded by this number plus
    /// [`max_in_flight`](KafkaConfig::max_in_flight). By default, 1,000,000.
    pub fn queue_capacity(mut self, capacity: usize) -> KafkaConfig {
        self.queue_capacity = capacity;
        self
    }

    /// The most records handed to librdkafka and not yet acknowledged (one per user at a
    /// time). By default, 10,000.
    pub fn max_in_flight(mut self, records: usize) -> KafkaConfig {
        self.max_in_flight = records;
        self
    }

    /// After a delivery fails, the user's next send waits `base * 2^(failures - 1)`, capped at
    /// `max`. By default, 500 ms and 30 seconds.
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> KafkaConfig {
        self.retry_backoff = base;
        self.retry_backoff_max = max;
        self
    }

    /// TLS to the brokers. By default, none (plaintext).
    pub fn tls(mut self, tls: Tls) -> KafkaConfig {
        self.tls = Some(tls);
        self
    }

    /// SASL authentication. By default, none.
    pub fn sasl(mut self, sasl: Sasl) -> KafkaConfig {
        self.sasl = Some(sasl);
        self
    }

    /// Sets a raw librdkafka property, applied after everything else (an escape hatch, for
    /// example `sasl.mechanism=OAUTHBEARER` or `socket.keepalive.enable`). It may not override
    /// `enable.idempotence`, `acks` or `partitioner`. By default, none.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> KafkaConfig {
        let key = key.into();
        self.properties.retain(|p| p.key != key);
        self.properties.push(RawProperty {
            key,
            value: value.into(),
        });
        self
    }

    /// Whether to look the topic up at start (and create it, see
    /// [`create_topic`](KafkaConfig::create_topic)). When off, the topic must already exist.
    /// By default, on.
    pub fn check_topic(mut self, check: bool) -> KafkaConfig {
        self.check_topic = check;
        self
    }

    /// Whether a missing topic is created (compacted) at start; when off, a missing topic is
    /// an error. By default, on.
    pub fn create_topic(mut self, create: bool) -> KafkaConfig {
        self.create_topic = create;
        self
    }

    /// Partitions of a topic created at start. By default, 6.
    pub fn partitions(mut self, partitions: i32) -> KafkaConfig {
        self.partitions = partitions;
        self
    }

    /// Replication factor of a topic created at start. By default, 1 (use 3 in production).
    pub fn replication_factor(mut self, replication: i32) -> KafkaConfig {
        self.replication_factor = replication;
        self
    }

    /// A topic-level config for a topic created at start, besides `cleanup.policy=compact`
    /// (for example `min.compaction.lag.ms`). By default, none.
    pub fn topic_property(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> KafkaConfig {
        self.topic_properties.push((key.into(), value.into()));
        self
    }

    /// How long the start may take to reach the brokers and check the topic. By default,
    /// 30 seconds.
    pub fn startup_timeout(mut self, timeout: Duration) -> KafkaConfig {
        self.startup_timeout = timeout;
        self
    }

    /// How often librdkafka reports broker states, which [`health`](crate::Publisher::health)
    /// reads (`statistics.interval.ms`). By default, 5 seconds.
    pub fn statistics_interval(mut self, interval: Duration) -> KafkaConfig {
        self.statistics_interval = interval;
        self
    }

    /// The topic.
    pub fn topic_name(&self) -> &str {
        &self.topic
    }

    /// Checks every option; the error names the one at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |option: &str, reason: String| {
            Err(Error::Config {
                option: option.to_owned(),
                reason,
            })
        };
        if self.brokers.trim().is_empty() {
            return bad(
                "brokers",
                "no broker given; expected host:port[,host:port...]".into(),
            );
        }
        for broker in self.brokers.split(',').map(str::trim) {
            if let Err(reason) = check_broker(broker) {
                return bad("brokers", format!("`{broker}`: {reason}"));
            }
        }
        if let Err(reason) = check_topic_name(&self.topic) {
            return bad("topic", reason);
        }
        if self.client_id.trim().is_empty() {
            return bad("client_id", "must not be empty".into());
        }
        if self.linger > Duration::from_millis(900_000) {
            return bad(
                "linger",
                format!("{:?} is over librdkafka's limit of 900 s", self.linger),
            );
        }
        if self.delivery_timeout < Duration::from_millis(1) {
            return bad("delivery_timeout", "must be at least 1 ms".into());
        }
        if self.delivery_timeout <= self.linger {
            return bad(
                "delivery_timeout",
                format!(
                    "{:?} must be longer than linger ({:?})",
                    self.delivery_timeout, self.linger
                ),
            );
        }
        if self.delivery_timeout > Duration::from_millis(i32::MAX as u64) {
            return bad(
                "delivery_timeout",
                format!("{:?} is too long", self.delivery_timeout),
            );
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "must be at least 1".into());
        }
        if self.max_in_flight == 0 || self.max_in_flight > 1_000_000 {
            return bad(
                "max_in_flight",
                format!("must be from 1 to 1,000,000, got {}", self.max_in_flight),
            );
        }
        if self.retry_backoff.is_zero() || self.retry_backoff_max < self.retry_backoff {
            return bad(
                "retry_backoff",
                format!(
                    "base must be positive and not above max (got {:?} and {:?})",
                    self.retry_backoff, self.retry_backoff_max
                ),
            );
        }
        if self.partitions < 1 {
            return bad(
                "partitions",
                format!("must be at least 1, got {}", self.partitions),
            );
        }
        if self.replication_factor < 1 {
            return bad(
                "replication_factor",
                format!("must be at least 1, got {}", self.replication_factor),
            );
        }
        if self.startup_timeout < Duration::from_millis(100) {
            return bad("startup_timeout", "must be at least 100 ms".into());
        }
        if self.statistics_interval < Duration::from_millis(100) {
            return bad("statistics_interval", "must be at least 100 ms".into());
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        if let Some(sasl) = &self.sasl {
            sasl.validate()?;
        }
        for property in &self.properties {
            let key = property.key.trim();
            if key.is_empty() {
                return bad("property", "a property with an empty name".into());
            }
            if FIXED_PROPERTIES.iter().any(|(fixed, _)| *fixed == key)
                || FIXED_ALIASES.contains(&key)
            {
                return bad(
                    &format!("property {key}"),
                    "is always set by presence-kafka (enable.idempotence=true, acks=all, partitioner=murmur2_random) and cannot be overridden".into(),
                );
            }
        }
        for (key, _) in &self.topic_properties {
            if key == "cleanup.policy" {
                return bad(
                    "topic_property cleanup.policy",
                    "the topic is always created with cleanup.policy=compact".into(),
                );
            }
        }
        Ok(())
    }

    /// The security protocol that TLS and SASL settings select.
    pub(crate) fn security_protocol(&self) -> &'static str {
        security_protocol(self.tls.as_ref(), self.sasl.as_ref())
    }

    /// Every secret in this configuration, to scrub from messages that echo config values.
    pub(crate) fn secrets(&self) -> Vec<SecretString> {
        let mut secrets = Vec::new();
        if let Some(sasl) = &self.sasl {
            secrets.push(sasl.password().clone());
        }
        if let Some(password) = self.tls.as_ref().and_then(Tls::key_passphrase) {
            secrets.push(password.clone());
        }
        for property in self.properties.iter().filter(|p| p.is_sensitive()) {
            secrets.push(SecretString::from(property.value.as_str()));
        }
        secrets.retain(|s| !s.expose_secret().is_empty());
        secrets
    }
}

fn check_broker(broker: &str) -> std::result::Result<(), String> {
    let Some((host, port)) = broker.rsplit_once(':') else {
        return Err("expected host:port".into());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("empty host".into());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{port}` is not a port number (1-65535)")),
        Ok(_) => Ok(()),
    }
}

/// Kafka's own topic-name rule: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
fn check_topic_name(topic: &str) -> std::result::Result<(), String> {
    if topic.is_empty() || topic.len() > 249 {
        return Err(format!("must be 1 to 249 characters, got {}", topic.len()));
    }
    if topic == "." || topic == ".." {
        return Err(format!("`{topic}` is not allowed"));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`{topic}` has {c:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::security::{SaslMechanism, redact};

    fn option_of(config: &KafkaConfig) -> String {
        match config.validate() {
            Err(Error::Config { option, .. }) => option,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_validate() {
        KafkaConfig::default().validate().unwrap();
        assert_eq!(
            KafkaConfig::default().topic_name(),
            "genesys.presence.updates"
        );
    }

    #[test]
    fn errors_name_the_option() {
        assert_eq!(option_of(&KafkaConfig::new("")), "brokers");
        assert_eq!(option_of(&KafkaConfig::new("localhost")), "brokers");
        assert_eq!(option_of(&KafkaConfig::new("a:1,b:99999")), "brokers");
        assert_eq!(
            option_of(&KafkaConfig::default().topic("bad topic")),
            "topic"
        );
        assert_eq!(option_of(&KafkaConfig::default().topic("..")), "topic");
        assert_eq!(
            option_of(&KafkaConfig::default().client_id(" ")),
            "client_id"
        );
        assert_eq!(
            option_of(&KafkaConfig::default().queue_capacity(0)),
            "queue_capacity"
        );
        assert_eq!(
            option_of(&KafkaConfig::default().max_in_flight(0)),
            "max_in_flight"
        );
        assert_eq!(
            option_of(&KafkaConfig::default().partitions(0)),
            "partitions"
        );
        assert_eq!(
            option_of(&KafkaConfig::default().replication_factor(0)),
            "replication_factor"
        );
        assert_eq!(
            option_of(&KafkaConfig::default().delivery_timeout(Duration::from_millis(1))),
            "delivery_timeout"
        );
        assert_eq!(
            option_of(&KafkaConfig::default().tls(Tls::ca_file("/nonexistent/ca.pem"))),
            "tls.ca_file"
        );
        assert_eq!(
            option_of(&KafkaConfig::default().sasl(Sasl::new(
                SaslMechanism::Plain,
                "",
                SecretString::from("x")
            ))),
            "sasl.username"
        );
        assert_eq!(
            option_of(&KafkaConfig::default().sasl(Sasl::new(
                SaslMechanism::Plain,
                "u",
                SecretString::from("")
            ))),
            "sasl.password"
        );
        assert_eq!(
            option_of(&KafkaConfig::default().property("acks", "1")),
            "property acks"
        );
        assert_eq!(
            option_of(&KafkaConfig::default().property("enable.idempotence", "false")),
            "property enable.idempotence"
        );
        assert_eq!(
            option_of(&KafkaConfig::default().topic_property("cleanup.policy", "delete")),
            "topic_property cleanup.policy"
        );
    }

    #[test]
    fn secrets_never_print() {
        let config = KafkaConfig::default()
            .sasl(Sasl::new(
                SaslMechanism::Plain,
                "user",
                SecretString::from("hunter2-sasl"),
            ))
            .tls(Tls::system_roots().key_password(SecretString::from("hunter2-key")))
            .property("sasl.oauthbearer.client.secret", "hunter2-raw");
        let shown = format!("{config:?} {:?}", SecretString::from("hunter2-x"));
        assert!(!shown.contains("hunter2"), "{shown}");
        let secrets = config.secrets();
        assert_eq!(secrets.len(), 3);
        assert_eq!(
            redact("bad value hunter2-sasl and hunter2-raw", &secrets),
            "bad value <redacted> and <redacted>"
        );
    }
}
