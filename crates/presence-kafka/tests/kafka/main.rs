//! Integration tests of presence-kafka against a real Kafka broker (found and waited for by
//! `broker`, the workspace's one broker helper, shared with the end-to-end tests), plus the
//! ones that need none (schema, an unreachable broker).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
#![allow(missing_docs, unreachable_pub)]

#[path = "../../../../tests/support/broker.rs"]
mod broker;
mod common;

mod backpressure;
mod group;
mod outage;
mod roundtrip;
mod sasl;
mod schema;
mod tls;
mod topic;
