//! Reading a presence topic back and judging it against the emulator's truth, shared by the
//! test crates that run the bridge against a real broker:
//!
//! - `tests/e2e/main.rs`: `#[path = "../support/topic.rs"] mod topic;`
//! - `bins/presence-bridge/tests/soak.rs`: `#[path = "../../../tests/support/topic.rs"] mod topic;`
//!
//! [`TopicReader`] reads a topic from the beginning with its own consumer and keeps each key's
//! last record and every problem seen on the way; [`Expect`] says whose truth the topic is
//! judged against and [`judge`] lists the users whose last record differs from it (and
//! [`lingering`] the keys whose last record still holds a user the truth no longer has);
//! [`admin_get`] and [`publisher_idle`] read the bridge's admin server, to know when all it
//! accepted is on the topic. The broker comes from `crate::broker` (`tests/support/broker.rs`,
//! included beside this file).

// Each suite uses its own part of this file.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use genesys_emulator::TruthEntry;
use presence_frame::{EventTime, Status};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::broker::Endpoint;

/// A GET on the bridge's admin server at `addr` (blocking): status and body.
pub fn admin_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://{addr}{path}"))
        .call()
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// Whether the bridge's publisher has nothing queued and nothing unacknowledged, from the text
/// of its `/metrics`. Every state the bridge accepted was handed to the publisher before the
/// bridge counted it; once the publisher is idle, all of it is on the topic.
pub fn publisher_idle(metrics: &str) -> bool {
    let gauge = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    gauge("presence_bridge_kafka_queue_depth") == Some(0.0)
        && gauge("presence_bridge_kafka_in_flight") == Some(0.0)
}

/// A topic name no other test (or earlier run) uses.
pub fn random_topic(name: &str) -> String {
    format!("presence-test-{name}-{:016x}", fastrand::u64(..))
}

/// One record as read back.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (Unix ms).
    pub timestamp: Option<i64>,
    /// The JSON value; `None` for a tombstone.
    pub value: Option<serde_json::Value>,
    /// The instance that wrote it (its `bridge-instance` header), when named.
    pub writer: Option<String>,
}

impl Record {
    pub fn field_i64(&self, name: &str) -> Option<i64> {
        self.value.as_ref()?.get(name)?.as_i64()
    }

    pub fn field_u64(&self, name: &str) -> Option<u64> {
        self.value.as_ref()?.get(name)?.as_u64()
    }

    /// A string field; `Some(None)` for JSON null, `None` when absent or not a string.
    pub fn field_str(&self, name: &str) -> Option<Option<&str>> {
        match self.value.as_ref()?.get(name)? {
            serde_json::Value::Null => Some(None),
            serde_json::Value::String(s) => Some(Some(s)),
            _ => None,
        }
    }
}

/// Reads a topic from the beginning with its own consumer (a fresh group, assigned every
/// partition) and keeps, per key, the last record, the number of tombstones, and every problem
/// seen on the way: a key whose event time went backwards, a state older than the tombstone
/// before it (a reader keeping each key's newest event time, as the schema says, would never
/// see it), a value that breaks the schema (`docs/schema/presence-record.v1.json`), headers
/// that disagree with the value.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    next: HashMap<i32, i64>,
    /// Records read (values and tombstones).
    pub records: usize,
    /// Every key's last record.
    pub last: HashMap<String, Record>,
    /// Every key's last record that is not a tombstone.
    pub last_value: HashMap<String, Record>,
    /// Tombstones per key.
    pub tombstones: HashMap<String, usize>,
    /// The newest event time per key since its last tombstone (values only).
    newest: HashMap<String, i64>,
    /// The time of each key's last tombstone, until a state at least as new follows it.
    tombstoned: HashMap<String, i64>,
    /// Every record read, with its key, per partition in offset order, when asked for
    /// ([`keeping_every_record`](TopicReader::keeping_every_record)).
    log: HashMap<i32, Vec<(String, Record)>>,
    keep_all: bool,
    problems: Vec<String>,
    problem_count: usize,
}

impl TopicReader {
    /// A reader of `topic`, once the topic exists.
    pub async fn open(endpoint: &Endpoint, topic: &str) -> TopicReader {
        tokio::task::block_in_place(|| TopicReader::open_blocking(endpoint, topic))
    }

    fn open_blocking(endpoint: &Endpoint, topic: &str) -> TopicReader {
        let consumer: BaseConsumer = endpoint
            .client_config()
            .set("group.id", random_topic("reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create()
            .expect("a consumer");
        let deadline = Instant::now() + Duration::from_secs(30);
        let partitions: Vec<i32> = loop {
            let found = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()
                .and_then(|m| {
                    let t = m.topics().first()?;
                    (t.error().is_none() && !t.partitions().is_empty())
                        .then(|| t.partitions().iter().map(|p| p.id()).collect())
                });
            if let Some(partitions) = found {
                break partitions;
            }
            assert!(Instant::now() < deadline, "topic {topic} never appeared");
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut assignment = TopicPartitionList::new();
        for &partition in &partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("an assignment");
        }
        consumer.assign(&assignment).expect("assign");
        TopicReader {
            consumer,
            topic: topic.to_owned(),
            next: partitions.iter().map(|&p| (p, 0)).collect(),
            records: 0,
            last: HashMap::new(),
            last_value: HashMap::new(),
            tombstones: HashMap::new(),
            newest: HashMap::new(),
            tombstoned: HashMap::new(),
            log: HashMap::new(),
            keep_all: false,
            problems: Vec::new(),
            problem_count: 0,
        }
    }

    /// Keeps every record read from now on, not just each key's last (see
    /// [`log`](TopicReader::log)): for tests that judge the sequence of records.
    pub fn keeping_every_record(mut self) -> TopicReader {
        self.keep_all = true;
        self
    }

    /// Every record read, with its key, per partition in offset order (empty unless
    /// [`keeping_every_record`](TopicReader::keeping_every_record)).
    pub fn log(&self) -> &HashMap<i32, Vec<(String, Record)>> {
        &self.log
    }

    /// Reads every record up to each partition's high watermark as of now.
    pub async fn read_to_end(&mut self) {
        tokio::task::block_in_place(|| self.read_to_end_blocking());
    }

    fn read_to_end_blocking(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut high = HashMap::new();
        for (&partition, next) in self.next.iter_mut() {
            // Right after a broker restart the partition may be unknown for a moment.
            let (low, hi) = loop {
                match self
                    .consumer
                    .fetch_watermarks(&self.topic, partition, Duration::from_secs(5))
                {
                    Ok(watermarks) => break watermarks,
                    Err(e) if Instant::now() >= deadline => {
                        panic!("watermarks of {}/{partition}: {e}", self.topic)
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            };
            *next = (*next).max(low);
            high.insert(partition, hi);
        }
        while self.next.iter().any(|(p, next)| *next < high[p]) {
            assert!(
                Instant::now() < deadline,
                "reading {} stalled at {:?}, high watermarks {high:?}",
                self.topic,
                self.next
            );
            let Some(message) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            // Transient errors (a broker restarting) are retried by librdkafka; read on.
            let Ok(message) = message else {
                continue;
            };
            let next = self.next.entry(message.partition()).or_insert(0);
            *next = (*next).max(message.offset() + 1);
            let key = match message.key().map(std::str::from_utf8) {
                Some(Ok(key)) => key.to_owned(),
                other => {
                    self.problem(format!(
                        "record {}/{} has no UTF-8 key: {other:?}",
                        message.partition(),
                        message.offset()
                    ));
                    continue;
                }
            };
            let headers: HashMap<String, String> = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                            (h.key.to_owned(), value.unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let value = match message.payload().map(serde_json::from_slice) {
                None => None,
                Some(Ok(value)) => Some(value),
                Some(Err(e)) => {
                    self.problem(format!("{key}: value is not JSON: {e}"));
                    continue;
                }
            };
            let record = Record {
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp().to_millis(),
                value,
                writer: headers.get("bridge-instance").cloned(),
            };
            if self.keep_all {
                self.log
                    .entry(record.partition)
                    .or_default()
                    .push((key.clone(), record.clone()));
            }
            self.records += 1;
            self.check(&key, &record, &headers);
            if record.value.is_none() {
                *self.tombstones.entry(key.clone()).or_default() += 1;
            } else {
                self.last_value.insert(key.clone(), record.clone());
            }
            self.last.insert(key, record);
        }
    }

    fn check(&mut self, key: &str, record: &Record, headers: &HashMap<String, String>) {
        if headers.get("schema-version").map(String::as_str) != Some("1") {
            self.problem(format!("{key}: schema-version header {headers:?}"));
        }
        if record.value.is_none() {
            // A tombstone is never dated before the state it deletes; after it, the key
            // starts afresh, but no state older than the tombstone may follow (below).
            if let Some(stamp) = record.timestamp {
                self.tombstoned.insert(key.to_owned(), stamp);
            }
            match (self.newest.remove(key), record.timestamp) {
                (Some(newest), Some(stamp)) if stamp < newest => self.problem(format!(
                    "{key}: tombstone at {stamp} is older than the state it deletes ({newest}) at {}/{}",
                    record.partition, record.offset
                )),
                (Some(_), None) => self.problem(format!(
                    "{key}: tombstone without a timestamp at {}/{}",
                    record.partition, record.offset
                )),
                _ => {}
            }
            return;
        }
        let user = record.field_str("userId").flatten();
        let time = record.field_i64("eventTimeMillis");
        let code = record.field_u64("statusCode");
        let ok = user == Some(key)
            && record.field_u64("schemaVersion") == Some(1)
            && time.is_some()
            && record.field_i64("receivedAtMillis").is_some()
            && record.field_u64("groupMask").is_some()
            && record.field_u64("locationCode").is_some()
            && record.field_str("location").flatten().is_some()
            && record.field_str("message").is_some()
            && record.field_str("presenceDefinitionId").is_some()
            && matches!(
                record.field_str("source").flatten(),
                Some("stream" | "resync" | "relay")
            )
            && code
                .and_then(|c| u8::try_from(c).ok())
                .map(|c| Status(c).to_string())
                == record.field_str("status").flatten().map(str::to_owned)
            && record
                .field_str("eventTime")
                .flatten()
                .and_then(|t| EventTime::parse_rfc3339(t).ok())
                .map(EventTime::as_millis)
                == time
            && headers
                .get("event-time-ms")
                .and_then(|h| h.parse::<i64>().ok())
                == time
            && record.timestamp == time;
        if !ok {
            self.problem(format!(
                "{key}: record breaks the schema: {:?} headers {headers:?} timestamp {:?}",
                record.value, record.timestamp
            ));
        }
        if let Some(time) = time
            && let Some(stamp) = self.tombstoned.remove(key)
            && time < stamp
        {
            self.problem(format!(
                "{key}: state at {time} follows a newer tombstone ({stamp}) at {}/{}: a reader \
                 keeping each key's newest event time never sees it",
                record.partition, record.offset
            ));
        }
        if let Some(time) = time {
            match self.newest.get(key) {
                Some(&newest) if time < newest => self.problem(format!(
                    "{key}: event time went backwards from {newest} to {time} at {}/{}",
                    record.partition, record.offset
                )),
                _ => {
                    self.newest.insert(key.to_owned(), time);
                }
            }
        }
    }

    fn problem(&mut self, problem: String) {
        self.problem_count += 1;
        if self.problems.len() < 20 {
            self.problems.push(problem);
        }
    }

    /// Fails the test if any record so far broke the schema or went backwards in time.
    pub fn assert_no_problems(&self) {
        assert!(
            self.problem_count == 0,
            "{} problems in {} records of {}, e.g. {:#?}",
            self.problem_count,
            self.records,
            self.topic,
            self.problems
        );
    }
}

/// Whose truth the topic is judged against, and how.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// Relay users (keys are relay ids; location and 8-bit masks from frames) or Genesys users
    /// (keys are GUIDs; message and presence definition from notifications).
    pub relay: bool,
    /// Whether the group masks are mapped (`--group-bits`), so that they must match the truth.
    pub masks: bool,
    /// The group filter: only users in these groups are expected.
    pub allowed: Option<u64>,
}

impl Expect {
    pub fn genesys(masks: bool) -> Expect {
        Expect {
            relay: false,
            masks,
            allowed: None,
        }
    }

    pub fn relay() -> Expect {
        Expect {
            relay: true,
            masks: true,
            allowed: None,
        }
    }

    /// The topic key of a truth entry.
    pub fn key(&self, t: &TruthEntry) -> String {
        if self.relay {
            t.relay_id.to_string()
        } else {
            t.user_id.clone()
        }
    }

    /// The users of the truth expected on the topic.
    pub fn wanted<'t>(&self, truth: &'t [TruthEntry]) -> Vec<&'t TruthEntry> {
        truth
            .iter()
            .filter(|t| self.allowed.is_none_or(|a| t.group_mask & a != 0))
            .collect()
    }

    /// Whether a JSON view of a user (a record value or a registry entry) holds `t`'s state.
    pub fn same_state(&self, v: &serde_json::Value, t: &TruthEntry) -> bool {
        let u = |name: &str| v.get(name).and_then(serde_json::Value::as_u64);
        let text = |name: &str| v.get(name).map(serde_json::Value::as_str);
        let status = u("statusCode") == Some(u64::from(t.status().code()));
        if self.relay {
            status
                && text("location") == Some(Some(t.location.as_str()))
                && u("groupMask") == Some(t.group_mask & 0xff)
                && text("message") == Some(None)
                && text("presenceDefinitionId") == Some(None)
        } else {
            let message = (!t.message.is_empty()).then_some(t.message.as_str());
            status
                && text("message") == Some(message)
                && text("presenceDefinitionId") == Some(Some(t.presence_definition_id.as_str()))
                && (!self.masks || u("groupMask") == Some(t.group_mask))
        }
    }
}

/// Users whose last record differs from the truth (the registry's entry is shown beside, to
/// tell a publishing problem from a sync problem).
pub fn judge(
    expect: &Expect,
    reader: &TopicReader,
    truth: &[&TruthEntry],
    registry: &HashMap<String, serde_json::Value>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for t in truth {
        let key = expect.key(t);
        let time = t.modified().map(EventTime::as_millis);
        let truth_text = || {
            format!(
                "truth {} {:?} {} def {} mask {} at {} ({time:?})",
                t.system_presence,
                t.message,
                t.location,
                t.presence_definition_id,
                t.group_mask,
                t.modified_date
            )
        };
        let Some(record) = reader.last.get(&key) else {
            wrong.push(format!("{key}: no record; {}", truth_text()));
            continue;
        };
        let Some(value) = record.value.as_ref() else {
            wrong.push(format!("{key}: tombstone; {}", truth_text()));
            continue;
        };
        let at = record.field_i64("eventTimeMillis");
        if expect.same_state(value, t) && at == time {
            continue;
        }
        let held = registry.get(&key);
        wrong.push(format!(
            "{key}: last record {value}; registry {held:?}; {}",
            truth_text()
        ));
    }
    wrong
}

/// Keys whose last record still holds a state although the truth no longer wants the user (a
/// deleted or deactivated user, absent from the truth, or one the group filter now leaves
/// out): each should have been tombstoned. A key whose last record is a tombstone, or that
/// never had a record, is fine.
pub fn lingering(expect: &Expect, reader: &TopicReader, truth: &[&TruthEntry]) -> Vec<String> {
    let wanted: HashSet<String> = truth.iter().map(|t| expect.key(t)).collect();
    let mut stale: Vec<String> = reader
        .last
        .iter()
        .filter(|(key, _)| !wanted.contains(*key))
        .filter_map(|(key, record)| {
            let value = record.value.as_ref()?;
            Some(format!("{key}: not in the truth, last record {value}"))
        })
        .collect();
    stale.sort();
    stale
}
