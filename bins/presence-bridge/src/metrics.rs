//! `/metrics` in the Prometheus/OpenMetrics text format. The libraries count in atomics; this
//! module reads them at scrape time and encodes them with `prometheus-client`.

use std::sync::atomic::{AtomicU64, Ordering};

use presence_kafka::HistogramSnapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::state::{AppState, kafka_healthy};

/// One metric family at scrape time: (labels, value) pairs.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// Everything read from the running bridge for one scrape.
#[derive(Debug)]
struct Scrape {
    families: Vec<Family>,
    latency: HistogramSnapshot,
}

impl Scrape {
    fn add(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        samples: Vec<(Vec<(&'static str, String)>, f64)>,
    ) {
        self.families.push(Family {
            name,
            help,
            kind,
            samples,
        });
    }

    fn counter(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.add(
            name,
            help,
            MetricType::Counter,
            vec![(vec![], value as f64)],
        );
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, value: f64) {
        self.add(name, help, MetricType::Gauge, vec![(vec![], value)]);
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.families {
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
            for (labels, value) in &family.samples {
                let mut sample = metric.encode_family(labels)?;
                match family.kind {
                    MetricType::Counter => sample
                        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                            &(*value as u64),
                            None,
                        )?,
                    _ => sample.encode_gauge(value)?,
                }
            }
        }
        let l = &self.latency;
        // prometheus-client wants each bucket's own count (it sums them into `le` buckets),
        // which is what the snapshot holds: one per bound, then the unbounded one.
        let buckets: Vec<(f64, u64)> = l
            .bounds
            .iter()
            .map(std::time::Duration::as_secs_f64)
            .chain(std::iter::once(f64::INFINITY))
            .zip(l.counts.iter().copied())
            .collect();
        let metric = encoder.encode_descriptor(
            "kafka_delivery_latency_seconds",
            "Time from receiving a change to Kafka acknowledging it",
            None,
            MetricType::Histogram,
        )?;
        LatencyHistogram {
            sum: l.sum.as_secs_f64(),
            count: l.count,
            buckets,
        }
        .encode(metric)
    }
}

/// A histogram known only by its bucket counts (the publisher's own).
#[derive(Debug)]
struct LatencyHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for LatencyHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn labelled<T: Into<f64>>(
    label: &'static str,
    values: impl IntoIterator<Item = (String, T)>,
) -> Vec<(Vec<(&'static str, String)>, f64)> {
    values
        .into_iter()
        .map(|(v, n)| (vec![(label, v)], n.into()))
        .collect()
}

/// Renders every metric of the bridge.
pub fn render(state: &AppState) -> Result<String, std::fmt::Error> {
    let sync = state.sync.stats();
    let client = state.client.stats();
    let kafka = state.publisher.stats();
    let kafka_up = kafka_healthy(&state.publisher.health());
    let counts = state.registry.counts_by_status();
    let channels = state.sync.channels();
    let mut s = Scrape {
        families: Vec::new(),
        latency: kafka.latency,
    };

    s.add(
        "events_received",
        "Presence events received, by source",
        MetricType::Counter,
        labelled(
            "source",
            [
                ("stream".to_string(), load(&sync.stream_events) as f64),
                ("resync".to_string(), load(&sync.resync_events) as f64),
                ("relay".to_string(), load(&sync.relay_events) as f64),
            ],
        ),
    );
    s.add(
        "notifications",
        "Other messages received on the sockets, by kind",
        MetricType::Counter,
        labelled(
            "kind",
            [
                ("heartbeat".to_string(), load(&sync.heartbeats) as f64),
                ("pong".to_string(), load(&sync.pongs) as f64),
                (
                    "routing_status".to_string(),
                    load(&sync.routing_status) as f64,
                ),
                ("system".to_string(), load(&sync.system_messages) as f64),
                (
                    "unknown_topic".to_string(),
                    load(&sync.unknown_topics) as f64,
                ),
            ],
        ),
    );
    s.add(
        "decode_errors",
        "Messages skipped as bad input, by kind",
        MetricType::Counter,
        labelled(
            "kind",
            sync.decode_errors()
                .into_iter()
                .map(|(k, n)| (k.as_str().to_string(), n as f64)),
        ),
    );
    s.counter(
        "filtered_out",
        "Events dropped by the group filter",
        load(&sync.filtered_out),
    );
    s.gauge(
        "registry_users",
        "Users held in the registry",
        counts.total() as f64,
    );
    s.add(
        "users_by_status",
        "Users held in the registry, by status",
        MetricType::Gauge,
        labelled(
            "status",
            counts.iter().map(|(st, n)| (st.to_string(), n as f64)),
        ),
    );
    let sink = &state.sink;
    s.counter(
        "changes",
        "Real changes of state handed to the publisher",
        load(&sink.changes),
    );
    s.counter(
        "expired",
        "Users expired by the time-to-live (tombstones)",
        load(&sink.expired),
    );
    s.counter(
        "events_from_the_future",
        "Events dropped because their event time was further ahead of this machine's clock than --max-event-skew",
        load(&sink.future_dropped),
    );
    s.counter(
        "republish_marked",
        "States the publisher could not take or gave up on, marked to be sent again at the user's next confirmation",
        load(&sink.unpublished),
    );
    s.counter(
        "users_removed",
        "Users the source found gone (deleted, deactivated, out of the watched groups or the group filter), removed and tombstoned",
        load(&sink.removed),
    );
    s.counter(
        "tombstones_retried",
        "Tombstones sent again after the publisher's queue had been full",
        load(&sink.tombstones_retried),
    );
    s.counter(
        "expiry_holds",
        "Times expiry was held back because the presence source was not healthy",
        load(&sink.expiry_holds),
    );
    s.gauge(
        "expiry_held_back_users",
        "Users past their time-to-live kept because expiry is held back (the source is not healthy)",
        load(&sink.expiry_held_back) as f64,
    );
    s.gauge(
        "kafka_up",
        "1 when the Kafka brokers answered recently",
        f64::from(u8::from(kafka_up)),
    );
    s.counter(
        "kafka_enqueued",
        "Records accepted into the coalescing queue",
        kafka.enqueued,
    );
    s.counter(
        "kafka_coalesced",
        "Pending records replaced by a newer state of the same user",
        kafka.coalesced,
    );
    s.counter(
        "kafka_delivered",
        "Records acknowledged by Kafka (changes published)",
        kafka.delivered,
    );
    s.counter(
        "kafka_delivery_failures",
        "Deliveries that failed after librdkafka's retries",
        kafka.failed,
    );
    s.counter(
        "kafka_retried",
        "Failed deliveries sent again with the newest state",
        kafka.retried,
    );
    s.counter(
        "kafka_rejected",
        "Records rejected because the queue was full",
        kafka.rejected,
    );
    s.gauge(
        "kafka_queue_depth",
        "Records waiting in the coalescing queue",
        kafka.queue_depth as f64,
    );
    s.gauge(
        "kafka_in_flight",
        "Records handed to librdkafka, not yet acknowledged",
        kafka.in_flight as f64,
    );
    s.add(
        "reconnects",
        "Socket reconnects and replacements, by cause",
        MetricType::Counter,
        labelled(
            "cause",
            sync.reconnects()
                .into_iter()
                .map(|(c, n)| (c.as_str().to_string(), n as f64)),
        ),
    );
    s.counter("pings", "Pings sent on quiet sockets", load(&sync.pings));
    s.counter("resyncs", "REST resyncs completed", load(&sync.resyncs));
    s.counter(
        "resync_failures",
        "REST resyncs that failed (retried)",
        load(&sync.resync_failures),
    );
    for (name, help, counter) in [
        (
            "channels_created",
            "Notification channels created (at start, and when one was gone or its token ending)",
            &sync.channels_created,
        ),
        (
            "channels_extended",
            "Channels kept past their lifetime by subscribing their topics again",
            &sync.channels_extended,
        ),
        (
            "channels_closed",
            "Channels closed because the users left fit in fewer (released to other instances, or deleted); their users moved onto the others",
            &sync.channels_closed,
        ),
        (
            "socket_handovers",
            "Sockets replaced by a new socket to the same channel after socket_closing (no new channel, no resync)",
            &sync.socket_handovers,
        ),
        (
            "socket_closing_new_channels",
            "socket_closing messages that cost a new channel (the channel was gone before its end when the new socket connected)",
            &sync.socket_closing_new_channels,
        ),
        (
            "early_token_refreshes",
            "Tokens fetched early because the held one would die before a channel created or extended with it",
            &sync.early_token_refreshes,
        ),
        (
            "topics_rejected",
            "Topics a subscription answered Rejected (one user's problem, retried at the next subscription)",
            &sync.topics_rejected,
        ),
        (
            "messages_without_topic",
            "Socket messages without topicName (such as a 404 for a gone channel)",
            &sync.messages_without_topic,
        ),
        (
            "discoveries",
            "Re-discoveries of the users completed (--discovery-interval)",
            &sync.discoveries,
        ),
        (
            "discovery_users_added",
            "New users a re-discovery subscribed",
            &sync.users_added,
        ),
        (
            "discovery_users_removed",
            "Users a re-discovery found gone and unsubscribed",
            &sync.users_removed,
        ),
        (
            "users_released",
            "Users no longer watched because another instance owns them now",
            &sync.users_released,
        ),
        (
            "discovery_mask_changes",
            "Users whose group mask a re-discovery found changed (republished)",
            &sync.mask_changes,
        ),
    ] {
        s.counter(name, help, load(counter));
    }
    let group = &state.group;
    s.gauge(
        "group_owned_partitions",
        "Partitions of the presence topic this instance owns (its users)",
        group.ownership.owned().len() as f64,
    );
    s.counter(
        "group_assignments",
        "Assignments of partitions by the consumer group (each read to its end first)",
        load(&group.stats.assignments),
    );
    s.counter(
        "group_revocations",
        "Revocations of partitions by the consumer group (handed over or lost)",
        load(&group.stats.revocations),
    );
    s.gauge(
        "group_warm_start_last_duration_seconds",
        "How long the last assignment's read of its partitions took",
        load(&group.stats.last_warm_start_ms) as f64 / 1000.0,
    );
    s.gauge(
        "users_watched",
        "Users subscribed on a notification channel now",
        state.sync.watched_users() as f64,
    );
    s.gauge(
        "users_unwatched",
        "Owned users not watched: every channel the OAuth client may have is full",
        state.sync.unwatched_users() as f64,
    );
    s.gauge(
        "topics_rejected_users",
        "Users whose topic is rejected now",
        state.sync.rejected_users().len() as f64,
    );
    s.gauge(
        "resync_last_duration_seconds",
        "Duration of the last resync",
        load(&sync.last_resync_ms) as f64 / 1000.0,
    );
    s.gauge(
        "channels",
        "Notification channels (or relay connections) planned",
        channels.len() as f64,
    );
    let mut by_state = std::collections::BTreeMap::<&'static str, f64>::new();
    for c in &channels {
        *by_state.entry(c.state.as_str()).or_default() += 1.0;
    }
    s.add(
        "channels_by_state",
        "Channels by connection state",
        MetricType::Gauge,
        labelled(
            "state",
            by_state.into_iter().map(|(k, v)| (k.to_string(), v)),
        ),
    );
    s.counter(
        "genesys_requests",
        "Genesys API requests sent (each attempt)",
        load(&client.requests),
    );
    s.counter(
        "genesys_token_refreshes",
        "OAuth tokens obtained",
        load(&client.token_refreshes),
    );
    s.counter(
        "genesys_rate_limited",
        "429 answers from Genesys",
        load(&client.rate_limited),
    );
    s.counter(
        "genesys_server_errors",
        "5xx answers from Genesys",
        load(&client.server_errors),
    );
    s.counter(
        "genesys_unauthorized",
        "401 answers from Genesys (each followed by a token refresh)",
        load(&client.unauthorized),
    );
    s.gauge(
        "uptime_seconds",
        "Seconds since the bridge started",
        state.started.elapsed().as_secs_f64(),
    );
    let mut registry = Registry::with_prefix("presence_bridge");
    registry.register_collector(Box::new(s));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}
