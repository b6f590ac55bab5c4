//! The librdkafka side of a publisher: [`PublisherContext`], our callbacks (librdkafka's
//! logs, statistics, client errors and delivery reports, each handed to [`Shared`]), and the
//! two clients created with them: the producer ([`Rdkafka`]) and the short-lived admin client
//! of the topic check. Creation errors are scrubbed of secrets.

use std::sync::Arc;

use log::{debug, error, info, warn};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use secrecy::SecretString;

use crate::client_config::{client_config, producer_config};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::queue::Pending;
use crate::security::redact;
use crate::shared::Shared;

/// The producer type, with our callbacks.
pub(crate) type Rdkafka = ThreadedProducer<PublisherContext>;

/// The librdkafka callbacks.
pub(crate) struct PublisherContext {
    shared: Arc<Shared>,
}

impl ClientContext for PublisherContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let message = self.shared.scrub(message);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", "{fac} {message}"),
        }
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.shared.on_statistics(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.on_client_error(&error, reason);
    }
}

impl ProducerContext for PublisherContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, record: Box<Pending>) {
        let error = result.as_ref().err().map(|(error, _message)| error);
        self.shared.on_delivery(error, *record);
    }
}

/// The producer, with our callbacks.
pub(crate) fn create_producer(config: &KafkaConfig, shared: &Arc<Shared>) -> Result<Rdkafka> {
    let context = PublisherContext {
        shared: Arc::clone(shared),
    };
    producer_config(config)
        .create_with_context(context)
        .map_err(|e| client_error("producer", &e, &shared.secrets))
}

/// A client-creation error with secrets scrubbed. A configuration error names the property
/// but never echoes its value.
fn client_error(what: &'static str, error: &KafkaError, secrets: &[SecretString]) -> Error {
    let message = match error {
        KafkaError::ClientConfig(_, description, key, _value) => {
            format!("property {key}: {}", redact(description, secrets))
        }
        other => redact(&other.to_string(), secrets),
    };
    Error::Client { what, message }
}

/// The admin client of the topic check (creating the topic, reading its configuration), with
/// our callbacks.
pub(crate) fn admin_client(
    config: &KafkaConfig,
    shared: &Arc<Shared>,
) -> Result<rdkafka::admin::AdminClient<PublisherContext>> {
    let mut admin_config = client_config(config);
    // Nobody polls the admin client's own event queue: no statistics for it.
    admin_config.set("statistics.interval.ms", "0");
    admin_config
        .create_with_context(PublisherContext {
            shared: Arc::clone(shared),
        })
        .map_err(|e| client_error("admin", &e, &shared.secrets))
}
