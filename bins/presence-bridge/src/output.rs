//! The one place the binary touches `presence-kafka`: building its config from the flags,
//! and adapting its counters for the admin server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use presence_kafka::{KafkaConfig, KafkaPublisher, Publisher, Sasl, SaslMechanism, Tls};

use crate::config::KafkaSettings;
use crate::state::{KafkaSnapshot, KafkaStatus, LatencySnapshot};

/// The Kafka side of the bridge.
pub struct Output {
    publisher: Arc<KafkaPublisher>,
}

/// The publisher's configuration for the flags given.
pub fn kafka_config(settings: &KafkaSettings) -> Result<KafkaConfig> {
    let mut config = KafkaConfig::new(settings.brokers.clone())
        .topic(settings.topic.clone())
        .client_id(format!("presence-bridge-{}", env!("CARGO_PKG_VERSION")));
    if settings.security_protocol.ends_with("ssl") {
        let mut tls = match &settings.ca_file {
            Some(ca) => Tls::ca_file(ca.clone()),
            None => Tls::system_roots(),
        };
        match (&settings.cert_file, &settings.key_file) {
            (Some(cert), Some(key)) => tls = tls.client_cert(cert.clone(), key.clone()),
            (None, None) => {}
            _ => {
                return Err(anyhow!(
                    "invalid --kafka-cert-file/--kafka-key-file: give both or neither"
                ));
            }
        }
        config = config.tls(tls);
    }
    if settings.security_protocol.starts_with("sasl") {
        let mechanism = match settings.sasl_mechanism.as_deref() {
            Some("PLAIN") => SaslMechanism::Plain,
            Some("SCRAM-SHA-256") => SaslMechanism::ScramSha256,
            _ => SaslMechanism::ScramSha512,
        };
        let username = settings.sasl_username.clone().unwrap_or_default();
        let password = settings
            .sasl_password
            .as_ref()
            .map(|p| presence_kafka::Secret::new(p.expose()))
            .ok_or_else(|| anyhow!("missing Kafka SASL password (KAFKA_SASL_PASSWORD or --kafka-sasl-password-file)"))?;
        config = config.sasl(Sasl::new(mechanism, username, password));
    }
    config.validate().map_err(|e| anyhow!("{e}"))?;
    Ok(config)
}

impl Output {
    /// Connects the publisher and checks the topic (creating it compacted if allowed).
    pub async fn start(settings: &KafkaSettings) -> Result<Output> {
        let publisher = KafkaPublisher::start(kafka_config(settings)?)
            .await
            .map_err(|e| anyhow!("Kafka at {}: {e}", settings.brokers))?;
        Ok(Output {
            publisher: Arc::new(publisher),
        })
    }

    /// The publisher, for the join between the registry and Kafka.
    pub fn publisher(&self) -> Arc<KafkaPublisher> {
        Arc::clone(&self.publisher)
    }

    /// Resolves with the reason once the Kafka producer has failed for good.
    pub async fn fatal_error(&self) -> String {
        self.publisher.fatal_error().await
    }

    /// Sends what is pending, within `grace`.
    pub async fn flush(&self, grace: Duration) -> Result<(), String> {
        let report = self.publisher.flush(grace).await;
        if report.is_complete() {
            Ok(())
        } else {
            Err(format!(
                "{} users still pending and {} records unacknowledged (e.g. {:?})",
                report.pending, report.in_flight, report.undelivered_users
            ))
        }
    }
}

impl KafkaStatus for Output {
    fn snapshot(&self) -> KafkaSnapshot {
        let health = self.publisher.health();
        let stats = self.publisher.snapshot();
        let (bounds_ms, cumulative) = stats
            .latency
            .cumulative()
            .filter_map(|(bound, total)| bound.map(|b| (b.as_secs_f64() * 1000.0, total)))
            .unzip();
        KafkaSnapshot {
            healthy: health.reachable && health.fatal.is_none(),
            last_error: health.fatal.or(health.last_error),
            enqueued: stats.enqueued,
            coalesced: stats.coalesced,
            delivered: stats.delivered,
            failed: stats.failed,
            retried: stats.retried,
            rejected: stats.rejected,
            queue_depth: stats.queue_depth as u64,
            in_flight: stats.in_flight as u64,
            latency: LatencySnapshot {
                bounds_ms,
                cumulative,
                count: stats.latency.count,
                sum_ms: stats.latency.sum.as_secs_f64() * 1000.0,
            },
        }
    }
}
