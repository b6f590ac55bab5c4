//! The topic check at start: wait for the brokers, then find the topic, create it compacted
//! when it is missing (if allowed), and warn when an existing one is not compacted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;

use crate::config::KafkaConfig;
use crate::context::{Rdkafka, admin_client};
use crate::error::{Error, Result};
use crate::shared::Shared;

/// What the topic check at start found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicCheck {
    /// The topic.
    pub topic: String,
    /// Whether the check created it.
    pub created: bool,
    /// Its partitions.
    pub partitions: usize,
    /// Its `cleanup.policy`, when the brokers let us read it.
    pub cleanup_policy: Option<String>,
    /// Whether the topic is log-compacted (`cleanup.policy` includes `compact`). False also
    /// when the policy could not be read.
    pub compacted: bool,
    /// Everything worth an operator's attention, also logged as warnings (for example a topic
    /// that is not compacted).
    pub warnings: Vec<String>,
}

/// Runs the check with the producer's connection (for reachability and authentication) and
/// a short-lived admin client (for configs and creation).
pub(crate) async fn ensure_topic(
    config: &KafkaConfig,
    shared: &Arc<Shared>,
    producer: &Rdkafka,
) -> Result<TopicCheck> {
    let topic = config.topic.clone();
    let deadline = Instant::now() + config.startup_timeout;
    let mut partitions = wait_for_metadata(config, shared, producer, deadline).await?;
    if partitions == Some(0) {
        // Listed while another client creates it: wait for its partitions.
        partitions = Some(wait_for_partitions(config, shared, producer, deadline).await?);
    }
    let admin = admin_client(config, shared)?;
    let options = || {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        AdminOptions::new()
            .request_timeout(Some(left))
            .operation_timeout(Some(left))
    };

    let mut check = TopicCheck {
        topic: topic.clone(),
        created: false,
        partitions: partitions.unwrap_or(0),
        cleanup_policy: None,
        compacted: false,
        warnings: Vec::new(),
    };

    if partitions.is_none() {
        if !config.create_topic {
            return Err(Error::TopicMissing { topic });
        }
        let mut new_topic = NewTopic::new(
            &topic,
            config.partitions,
            TopicReplication::Fixed(config.replication_factor),
        )
        .set("cleanup.policy", "compact");
        for (key, value) in &config.topic_properties {
            new_topic = new_topic.set(key, value);
        }
        let results = admin
            .create_topics([&new_topic], &options())
            .await
            .map_err(|source| Error::TopicCheck {
                topic: topic.clone(),
                source,
            })?;
        match results.into_iter().next() {
            Some(Ok(_)) | None => {
                info!(
                    "created Kafka topic {topic} (cleanup.policy=compact, {} partitions, replication {})",
                    config.partitions, config.replication_factor
                );
                check.created = true;
                check.partitions = usize::try_from(config.partitions).unwrap_or(0);
                check.cleanup_policy = Some("compact".to_owned());
                check.compacted = true;
                return Ok(check);
            }
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {
                // Created by someone else meanwhile (another instance starting): check it
                // like any existing topic, once its partitions show.
                info!("Kafka topic {topic} was created concurrently; checking it");
                check.partitions = wait_for_partitions(config, shared, producer, deadline).await?;
            }
            Some(Err((_, code))) => return Err(create_error(&topic, config, code)),
        }
    }

    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(&topic)], &options())
        .await;
    let policy = match described {
        Ok(results) => match results.into_iter().next() {
            Some(Ok(resource)) => resource
                .entries
                .into_iter()
                .find(|entry| entry.name == "cleanup.policy")
                .and_then(|entry| entry.value),
            Some(Err(code)) => {
                check.warnings.push(format!(
                    "could not read the configuration of topic {topic} ({code}); cannot tell whether it is compacted"
                ));
                None
            }
            None => None,
        },
        Err(e) => {
            check.warnings.push(format!(
                "could not read the configuration of topic {topic} ({e}); cannot tell whether it is compacted"
            ));
            None
        }
    };
    if let Some(policy) = &policy {
        check.compacted = policy.split(',').any(|p| p.trim() == "compact");
        if !check.compacted {
            check.warnings.push(format!(
                "Kafka topic {topic} has cleanup.policy={policy}, not compact: old states and tombstones are deleted by age instead of kept per user, so a consumer reading from the beginning may miss users; set cleanup.policy=compact"
            ));
        }
    }
    check.cleanup_policy = policy;
    for warning in &check.warnings {
        warn!("{warning}");
    }
    Ok(check)
}

/// The topic's partition count once the metadata shows at least one (a topic another client
/// has just created may be listed without them for a moment); 0 if it never does by
/// `deadline`.
async fn wait_for_partitions(
    config: &KafkaConfig,
    shared: &Arc<Shared>,
    producer: &Rdkafka,
    deadline: Instant,
) -> Result<usize> {
    loop {
        if let Some(n) = wait_for_metadata(config, shared, producer, deadline).await?
            && n > 0
        {
            return Ok(n);
        }
        if Instant::now() >= deadline {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fetches metadata until a broker answers, returning the topic's partition count (`None`
/// when it does not exist). Fails early on an authentication error.
async fn wait_for_metadata(
    config: &KafkaConfig,
    shared: &Arc<Shared>,
    producer: &Rdkafka,
    deadline: Instant,
) -> Result<Option<usize>> {
    let topic = config.topic.clone();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = left
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(100));
        let client = producer.clone();
        let wanted = topic.clone();
        // All topics, not just ours: asking for one topic by name could auto-create it on
        // brokers that allow that, uncompacted.
        let fetched = tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_metadata(None, attempt)
                .map(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == wanted)
                        .and_then(|t| match t.error().map(RDKafkaErrorCode::from) {
                            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => None,
                            _ => Some(t.partitions().len()),
                        })
                })
        })
        .await;
        let outcome = match fetched {
            Ok(outcome) => outcome,
            Err(join) => Err(KafkaError::MetadataFetch(if join.is_cancelled() {
                RDKafkaErrorCode::OperationTimedOut
            } else {
                RDKafkaErrorCode::Fail
            })),
        };
        match outcome {
            Ok(partitions) => return Ok(partitions),
            Err(error) => {
                if let Some(reason) = shared.auth_error() {
                    return Err(Error::Authentication {
                        brokers: shared.brokers().to_owned(),
                        reason,
                    });
                }
                if Instant::now() >= deadline {
                    let reason = shared.last_error().unwrap_or_else(|| error.to_string());
                    return Err(Error::Unreachable {
                        brokers: shared.brokers().to_owned(),
                        timeout_ms: u64::try_from(config.startup_timeout.as_millis())
                            .unwrap_or(u64::MAX),
                        reason,
                    });
                }
            }
        }
    }
}

fn create_error(topic: &str, config: &KafkaConfig, code: RDKafkaErrorCode) -> Error {
    let reason = match code {
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => format!(
            "not authorized ({code}): the client's principal needs the CREATE permission on topic {topic} or on the cluster; grant it, or create the topic yourself with cleanup.policy=compact"
        ),
        RDKafkaErrorCode::InvalidReplicationFactor => format!(
            "replication factor {} is not possible on this cluster ({code}); lower replication_factor",
            config.replication_factor
        ),
        RDKafkaErrorCode::PolicyViolation => format!(
            "the cluster's create-topic policy refused it ({code}); create the topic yourself with cleanup.policy=compact"
        ),
        other => format!("{other}"),
    };
    Error::TopicCreate {
        topic: topic.to_owned(),
        reason,
    }
}
