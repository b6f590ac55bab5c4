//! What the Kafka tests share: the broker ([`broker`], [`sasl_broker`], [`tls_broker`]) as
//! the workspace's one broker helper (`tests/support/broker.rs`, module `crate::broker`) finds
//! it, waits for it and skips or fails, seen as publisher settings; reading a topic back; and
//! building events.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use presence_frame::{
    EventTime, GroupMask, Guid, Location, PresenceEvent, PresenceState, Source, Status, UserId,
};
use presence_kafka::{KafkaConfig, Sasl, SaslMechanism, SecretString, Tls};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::broker::{self, Endpoint};

/// A broker that answered, and how to log in to it.
#[derive(Clone, Debug)]
pub struct Broker {
    pub brokers: String,
    pub sasl: Option<Sasl>,
    pub tls: Option<Tls>,
    endpoint: Endpoint,
}

impl Broker {
    fn new(endpoint: Endpoint) -> Broker {
        Broker {
            brokers: endpoint.brokers.clone(),
            sasl: endpoint.sasl.clone().map(|(username, password)| {
                Sasl::new(
                    SaslMechanism::ScramSha512,
                    username,
                    SecretString::from(password),
                )
            }),
            tls: endpoint.tls_ca.clone().map(Tls::ca_file),
            endpoint,
        }
    }

    /// A publisher config for this broker and a fresh random topic.
    pub fn config(&self, name: &str) -> KafkaConfig {
        let mut config = KafkaConfig::new(&self.brokers)
            .topic(random_topic(name))
            .partitions(3)
            .linger(Duration::from_millis(1))
            .startup_timeout(Duration::from_secs(20));
        if let Some(sasl) = &self.sasl {
            config = config.sasl(sasl.clone());
        }
        if let Some(tls) = &self.tls {
            config = config.tls(tls.clone());
        }
        config
    }

    /// A raw librdkafka config (for consumers and admin clients the test makes itself).
    pub fn client_config(&self) -> ClientConfig {
        self.endpoint.client_config()
    }
}

/// The plaintext broker, or `None` (skip) when there is none and `CI` is not set.
pub fn broker() -> Option<Broker> {
    broker::plain().map(Broker::new)
}

/// The SASL listener with SCRAM-SHA-512 credentials, or `None` (skip) as for [`broker`].
pub fn sasl_broker() -> Option<Broker> {
    broker::sasl().map(Broker::new)
}

/// The TLS listener, trusting the script's self-signed certificate (`KAFKA_TLS_CA`), or
/// `None` (skip) as for [`broker`].
pub fn tls_broker() -> Option<Broker> {
    broker::tls().map(Broker::new)
}

/// The SASL user's password, from the environment.
pub fn sasl_password() -> String {
    broker::env("KAFKA_SASL_PASSWORD").unwrap_or_default()
}

/// A topic name no other test (or earlier run) uses.
pub fn random_topic(name: &str) -> String {
    format!("presence-test-{name}-{:016x}", fastrand::u64(..))
}

pub fn admin(broker: &Broker) -> AdminClient<DefaultClientContext> {
    broker.client_config().create().expect("admin client")
}

/// Creates a topic with the given cleanup policy, outside the publisher.
pub async fn create_topic(broker: &Broker, topic: &str, partitions: i32, cleanup_policy: &str) {
    let admin = admin(broker);
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
        .set("cleanup.policy", cleanup_policy);
    let results = admin
        .create_topics(
            [&new_topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for result in results {
        result.expect("topic created");
    }
}

/// A topic's `cleanup.policy` and partition count, read independently of the publisher.
pub async fn describe_topic(broker: &Broker, topic: &str) -> (String, usize) {
    let admin = admin(broker);
    let configs = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe configs");
    let resource = configs
        .into_iter()
        .next()
        .expect("one result")
        .expect("topic config");
    let policy = resource
        .entries
        .into_iter()
        .find(|e| e.name == "cleanup.policy")
        .and_then(|e| e.value)
        .expect("cleanup.policy");
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len();
    (policy, partitions)
}

/// Every record of `topic`, from the beginning up to the high watermark of each partition,
/// in offset order per partition.
pub fn read_topic(broker: &Broker, topic: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", random_topic("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut expected = 0i64;
    for &partition in &partitions {
        // A topic created a moment ago may briefly answer "not leader": ask again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (low, high) = loop {
            match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
                Ok(marks) => break marks,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("watermarks of {topic}/{partition}: {e}; asking again");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("watermarks of {topic}/{partition}: {e}"),
            }
        };
        expected += high - low;
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (messages.len() as i64) < expected {
        assert!(
            Instant::now() < deadline,
            "read {} of {expected} records of {topic}",
            messages.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            messages.push(message.expect("consume").detach());
        }
    }
    messages.sort_by_key(|m| (m.partition(), m.offset()));
    messages
}

pub fn key(message: &OwnedMessage) -> String {
    String::from_utf8(message.key().expect("a key").to_vec()).expect("utf-8 key")
}

pub fn value(message: &OwnedMessage) -> Option<serde_json::Value> {
    message
        .payload()
        .map(|payload| serde_json::from_slice(payload).expect("JSON value"))
}

pub fn headers(message: &OwnedMessage) -> HashMap<String, String> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                    (h.key.to_owned(), value.unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The last record of each key, in topic order (per partition, which is per key).
pub fn last_per_key(messages: &[OwnedMessage]) -> HashMap<String, &OwnedMessage> {
    messages.iter().map(|m| (key(m), m)).collect()
}

pub fn relay_event(user: u32, time_ms: i64, status: Status) -> PresenceEvent {
    PresenceEvent {
        user: UserId::Relay(user),
        time: EventTime(time_ms),
        state: PresenceState::new(status, Location::DESK, GroupMask(1 << (user % 8))),
        source: Source::Relay,
    }
}

pub fn genesys_event(guid: &str, time_ms: i64) -> PresenceEvent {
    PresenceEvent {
        user: UserId::Genesys(Guid::parse(guid).expect("guid")),
        time: EventTime(time_ms),
        state: PresenceState::new(Status::ON_QUEUE, Location::UNKNOWN, GroupMask(0b101))
            .with_message("Back in 5")
            .with_definition_id("e08eaf1b-ee47-4fa9-a231-1200e284798f"),
        source: Source::Stream,
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// The Java client's partitioner: `toPositive(murmur2(key)) % partitions`.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let len = key.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions as u32) as i32
}
