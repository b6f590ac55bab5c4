//! The publishing side of presence-bridge: every presence change becomes a Kafka record keyed
//! by user, on one log-compacted topic, so a consumer that reads the topic from the start
//! learns everyone's current presence; an expired user becomes a tombstone.
//!
//! This crate knows nothing about Genesys Cloud: it takes [`PresenceEvent`]s (from
//! `presence-frame`) and user ids, from whatever source.
//!
//! A short tour:
//! - [`Publisher`]: the narrow, object-safe trait the bridge publishes through:
//!   [`publish`](Publisher::publish) a change, [`tombstone`](Publisher::tombstone) an expired
//!   user, [`flush`](Publisher::flush) with a deadline, [`health`](Publisher::health) and
//!   [`stats`](Publisher::stats).
//! - [`KafkaPublisher`]: the librdkafka implementation. Idempotent producer, `acks=all`, the
//!   Java client's murmur2 key placement, compression; TLS and SASL (PLAIN, SCRAM) for managed
//!   Kafka ([`KafkaConfig`], [`Tls`], [`Sasl`], with passwords held as a [`SecretString`],
//!   re-exported from `secrecy` with [`ExposeSecret`]: never printed, wiped when dropped;
//!   [`SecurityProtocol`] and [`SaslMechanism`] parse from and print as librdkafka's names).
//!   At start it checks the topic and creates it compacted when missing ([`TopicCheck`]).
//! - Backpressure: between the callers and librdkafka sits a bounded queue that keeps only the
//!   newest pending state per user (a newer state replaces the older in place, served in order
//!   of first enqueue), so memory is bounded by the number of users and a slow broker costs
//!   intermediate states, never the final one. A dispatcher thread owned by the publisher
//!   builds the records and moves them into librdkafka, one record per user in flight. A
//!   failed delivery is retried with the user's newest state, and an older state is never sent
//!   after a newer one. A fatal producer error is reported by
//!   [`KafkaPublisher::fatal_error`].
//! - [`RegistrySink`]: the join between a `presence-registry` [`Registry`](presence_registry::Registry)
//!   and a [`Publisher`]: each real change the registry reports is published under the user's
//!   shard lock (so per user the topic follows the registry's order), expiry becomes
//!   tombstones in the same order, states the publisher could not take are sent again at the
//!   next confirmation, event times from the future are dropped, and expiry is held back
//!   while the source is not healthy.
//! - [`PresenceRecord`]: the JSON value (schema in `docs/schema/presence-record.v1.json`),
//!   with [`HEADER_EVENT_TIME`] and [`HEADER_SCHEMA_VERSION`] headers; the record timestamp is
//!   the event time.
//! - [`PublisherStats`] / [`StatsSnapshot`]: counters (enqueued, coalesced, rejected,
//!   delivered, failed, retried, ...), queue depth and in-flight gauges, and a delivery latency
//!   [`LatencyHistogram`] from receipt to broker acknowledgement. The binary exports them.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use presence_frame::{EventTime, GroupMask, Location, PresenceEvent, PresenceState, Source,
//!                      Status, UserId};
//! use presence_kafka::{KafkaConfig, KafkaPublisher, Publisher, Sasl, SaslMechanism, SecretString, Tls};
//!
//! # async fn demo() -> Result<(), presence_kafka::Error> {
//! let config = KafkaConfig::new("broker-1.example.com:9093")
//!     .tls(Tls::system_roots())
//!     .sasl(Sasl::new(SaslMechanism::ScramSha512, "presence", SecretString::from("from-a-vault")));
//! let publisher = KafkaPublisher::start(config).await?;
//!
//! let event = PresenceEvent {
//!     user: UserId::Relay(42),
//!     time: EventTime::now(),
//!     state: PresenceState::new(Status::ON_QUEUE, Location::DESK, GroupMask(1)),
//!     source: Source::Relay,
//! };
//! publisher.publish(event, Instant::now()); // never blocks
//! publisher.tombstone(UserId::Relay(7), EventTime::now(), Instant::now());
//!
//! let report = publisher.flush(Duration::from_secs(10)).await;
//! println!("{} left undelivered", report.undelivered());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod client_config;
mod config;
mod context;
mod dispatcher;
mod error;
mod group;
mod kafka_publisher;
mod latency;
mod ownership;
mod publisher;
mod queue;
mod record;
mod registry_sink;
mod security;
mod shared;
mod stats;
mod topic;

pub use config::{Compression, DEFAULT_TOPIC, KafkaConfig};
pub use error::{Error, Result};
pub use group::{GroupConfig, GroupHandler, GroupMember, GroupProtocol, GroupStats};
pub use kafka_publisher::KafkaPublisher;
pub use latency::{HistogramSnapshot, LATENCY_BOUNDS, LatencyHistogram};
pub use ownership::{Ownership, murmur2, partition_of};
pub use presence_frame::{EventTime, PresenceEvent, UserId};
pub use publisher::{BoxFuture, Enqueue, FlushReport, Publisher, Which};
pub use queue::Update;
pub use record::{
    HEADER_EVENT_TIME, HEADER_INSTANCE, HEADER_SCHEMA_VERSION, PresenceRecord, SCHEMA_VERSION,
};
pub use registry_sink::{Observer, RegistrySink, SinkConfig, SinkStats, Sweep};
pub use secrecy::{ExposeSecret, SecretString};
pub use security::{CaRoots, Sasl, SaslMechanism, SecurityProtocol, Tls};
pub use stats::{Health, PublisherStats, StatsSnapshot};
pub use topic::TopicCheck;
