//! Integration tests of presence-kafka against a real Kafka broker (see `common` for how
//! the broker is found), plus the ones that need none (schema, an unreachable broker).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
#![allow(missing_docs, unreachable_pub)]

mod common;

mod backpressure;
mod outage;
mod roundtrip;
mod sasl;
mod schema;
mod tls;
mod topic;
