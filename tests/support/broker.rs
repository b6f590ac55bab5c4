//! The one place the tests learn where the Kafka broker is and wait until it answers. Both
//! test suites that need a broker include this file, so they find it, wait for it and skip or
//! fail by the same rule:
//!
//! - `crates/presence-kafka/tests/kafka/main.rs`: `#[path = "../../../../tests/support/broker.rs"] mod broker;`
//! - `tests/e2e/main.rs`: `#[path = "../support/broker.rs"] mod broker;`
//!
//! The broker comes from the environment, as `scripts/kafka.sh env` prints it: `KAFKA_BROKERS`
//! (the plaintext listener), `KAFKA_SASL_BROKERS` with `KAFKA_SASL_USERNAME` and
//! `KAFKA_SASL_PASSWORD` (SCRAM-SHA-512), `KAFKA_TLS_BROKERS` with `KAFKA_TLS_CA` (the PEM
//! certificate to trust). Each listener is looked up once per test binary and waited for until
//! it answers a metadata request listing a broker. One that is not configured, or does not
//! answer within [`READY_TIMEOUT`], skips the test with one line on stderr saying how to start
//! a broker, except when `CI` is set: then the test fails, so CI can never pass by skipping.

// Each suite uses its own part of this file (the end-to-end tests have no TLS test).
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// How to get a broker for these tests.
pub const HOW_TO_RUN: &str = "KAFKA_PORT=0 KAFKA_SASL_PORT=0 KAFKA_TLS_PORT=0 scripts/kafka.sh start && eval \"$(scripts/kafka.sh env)\" (or scripts/test.sh, which starts its own)";

/// How long to wait for a broker that is still starting.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a Kafka listener is and how to log in to it.
#[derive(Clone)]
pub struct Endpoint {
    pub brokers: String,
    /// SCRAM-SHA-512 username and password, for the SASL_PLAINTEXT listener.
    pub sasl: Option<(String, String)>,
    /// The PEM certificate to trust, for the SSL listener.
    pub tls_ca: Option<PathBuf>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("brokers", &self.brokers)
            .field("sasl_username", &self.sasl.as_ref().map(|(user, _)| user))
            .field("tls_ca", &self.tls_ca)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// A librdkafka config for the clients a test makes itself (consumers, admin clients).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        let protocol = match (&self.sasl, &self.tls_ca) {
            (None, None) => "plaintext",
            (None, Some(_)) => "ssl",
            (Some(_), None) => "sasl_plaintext",
            (Some(_), Some(_)) => "sasl_ssl",
        };
        config.set("security.protocol", protocol);
        if let Some(ca) = &self.tls_ca {
            config.set("ssl.ca.location", ca.to_string_lossy());
        }
        if let Some((username, password)) = &self.sasl {
            config
                .set("sasl.mechanism", "SCRAM-SHA-512")
                .set("sasl.username", username)
                .set("sasl.password", password);
        }
        config
    }
}

/// The plaintext listener, or `None` (skip) when there is none and `CI` is not set.
pub fn plain() -> Option<Endpoint> {
    static FOUND: OnceLock<Result<Endpoint, String>> = OnceLock::new();
    available(FOUND.get_or_init(|| {
        ready(Endpoint {
            brokers: env("KAFKA_BROKERS").ok_or("KAFKA_BROKERS is not set")?,
            sasl: None,
            tls_ca: None,
        })
    }))
}

/// The SASL_PLAINTEXT listener with its SCRAM credentials, or `None` (skip) as for [`plain`].
pub fn sasl() -> Option<Endpoint> {
    static FOUND: OnceLock<Result<Endpoint, String>> = OnceLock::new();
    available(FOUND.get_or_init(|| {
        let brokers = env("KAFKA_SASL_BROKERS")
            .ok_or("KAFKA_SASL_BROKERS is not set (start the broker with KAFKA_SASL_PORT=0)")?;
        let username = env("KAFKA_SASL_USERNAME").ok_or("KAFKA_SASL_USERNAME is not set")?;
        let password = env("KAFKA_SASL_PASSWORD").ok_or("KAFKA_SASL_PASSWORD is not set")?;
        ready(Endpoint {
            brokers,
            sasl: Some((username, password)),
            tls_ca: None,
        })
    }))
}

/// The SSL listener, trusting `KAFKA_TLS_CA`, or `None` (skip) as for [`plain`].
pub fn tls() -> Option<Endpoint> {
    static FOUND: OnceLock<Result<Endpoint, String>> = OnceLock::new();
    available(FOUND.get_or_init(|| {
        let brokers = env("KAFKA_TLS_BROKERS")
            .ok_or("KAFKA_TLS_BROKERS is not set (start the broker with KAFKA_TLS_PORT=0)")?;
        let ca = PathBuf::from(env("KAFKA_TLS_CA").ok_or("KAFKA_TLS_CA is not set")?);
        if !ca.is_file() {
            return Err(format!("KAFKA_TLS_CA={} is not a file", ca.display()));
        }
        ready(Endpoint {
            brokers,
            sasl: None,
            tls_ca: Some(ca),
        })
    }))
}

/// An environment variable, when it is set to something other than blanks.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether a test that cannot run must fail rather than skip.
pub fn in_ci() -> bool {
    env("CI").is_some()
}

/// Skips the test (`None`) with one line saying why and how to run it, or fails it when `CI`
/// is set. Each reason is told once per test binary, straight to stderr, past the test
/// harness's capture.
pub fn skip_or_fail<T>(why: &str) -> Option<T> {
    if in_ci() {
        panic!(
            "Kafka test cannot run: {why}. CI is set, so this fails instead of skipping; start a broker first: {HOW_TO_RUN}"
        );
    }
    static TOLD: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut told = TOLD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !told.iter().any(|t| t == why) {
        told.push(why.to_owned());
        let _ = writeln!(
            std::io::stderr(),
            "skipping Kafka tests: {why}; to run them: {HOW_TO_RUN}"
        );
    }
    None
}

fn available(found: &Result<Endpoint, String>) -> Option<Endpoint> {
    match found {
        Ok(endpoint) => Some(endpoint.clone()),
        Err(why) => skip_or_fail(why),
    }
}

/// The endpoint, once it answers a metadata request listing a broker (it may still be
/// starting), or why not within [`READY_TIMEOUT`].
fn ready(endpoint: Endpoint) -> Result<Endpoint, String> {
    let client: BaseConsumer = endpoint
        .client_config()
        .create()
        .map_err(|e| format!("cannot create a Kafka client for {}: {e}", endpoint.brokers))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let why = match client.fetch_metadata(None, Duration::from_secs(2)) {
            Ok(metadata) if !metadata.brokers().is_empty() => return Ok(endpoint),
            Ok(_) => "no broker in the metadata".to_owned(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "no Kafka broker answered at {} within {READY_TIMEOUT:?} ({why})",
                endpoint.brokers
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
