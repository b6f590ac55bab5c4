//! The librdkafka properties a [`KafkaConfig`] becomes: the connection and security
//! settings every client shares, the producer's batching and timeouts, and the delivery
//! guarantees that are always set ([`FIXED_PROPERTIES`]). Never log a `ClientConfig`: it holds
//! the secrets.

use rdkafka::ClientConfig;

use crate::config::{FIXED_PROPERTIES, KafkaConfig};

/// The librdkafka configuration shared by the producer and the admin client. Never log
/// it: it holds the secrets.
pub(crate) fn client_config(config: &KafkaConfig) -> ClientConfig {
    config_with(config, &[])
}

/// The producer's configuration: the client's plus batching, timeouts and the fixed
/// delivery guarantees.
pub(crate) fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let producer = [
        ("compression.type", config.compression.as_str().to_owned()),
        ("linger.ms", config.linger.as_millis().to_string()),
        (
            "message.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        ),
        // Above our own in-flight limit, so librdkafka's queue never refuses a record.
        (
            "queue.buffering.max.messages",
            (config.max_in_flight + 1000).max(100_000).to_string(),
        ),
    ];
    let mut client = config_with(config, &producer);
    for (key, value) in FIXED_PROPERTIES {
        client.set(key, value);
    }
    client
}

/// Connection and security settings, then `extra`, then the raw properties (which win).
fn config_with(config: &KafkaConfig, extra: &[(&str, String)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", config.brokers.trim())
        .set("client.id", &config.client_id)
        .set("security.protocol", config.security_protocol())
        .set("allow.auto.create.topics", "false")
        .set(
            "statistics.interval.ms",
            config.statistics_interval.as_millis().to_string(),
        );
    if let Some(tls) = &config.tls {
        tls.set_properties(&mut client);
    }
    if let Some(sasl) = &config.sasl {
        sasl.set_properties(&mut client);
    }
    for (key, value) in extra {
        client.set(*key, value);
    }
    for property in &config.properties {
        client.set(property.key.trim(), &property.value);
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Compression;
    use crate::security::{Sasl, SaslMechanism, Tls};
    use secrecy::SecretString;

    #[test]
    fn fixed_properties_are_always_set() {
        let config = KafkaConfig::new("b:9092")
            .compression(Compression::Zstd)
            .property("socket.keepalive.enable", "true")
            .property("linger.ms", "50");
        let config = producer_config(&config);
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("partitioner"), Some("murmur2_random"));
        assert_eq!(config.get("compression.type"), Some("zstd"));
        assert_eq!(config.get("allow.auto.create.topics"), Some("false"));
        assert_eq!(config.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(config.get("linger.ms"), Some("50"), "raw properties win");
        assert_eq!(config.get("security.protocol"), Some("plaintext"));
    }

    #[test]
    fn security_protocol_follows_tls_and_sasl() {
        let sasl = Sasl::new(SaslMechanism::ScramSha512, "u", SecretString::from("p"));
        let base = KafkaConfig::default();
        assert_eq!(
            base.clone().tls(Tls::system_roots()).security_protocol(),
            "ssl"
        );
        assert_eq!(
            base.clone().sasl(sasl.clone()).security_protocol(),
            "sasl_plaintext"
        );
        let both = base.tls(Tls::system_roots()).sasl(sasl);
        assert_eq!(both.security_protocol(), "sasl_ssl");
        let config = client_config(&both);
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("ssl.ca.location"), Some("probe"));
        assert_eq!(producer_config(&both).get("sasl.password"), Some("p"));
    }
}
