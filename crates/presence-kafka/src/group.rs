//! The bridge's consumer group (`docs/decisions/0002-scale-out.md`): every instance is a
//! member of one group consuming the presence topic itself, and owns the users of the
//! partitions the group assigns it ([`Ownership`]).
//!
//! On an assignment the member reads the new partitions from the beginning to their end
//! (the warm start), keeps each key's newest record, and only then marks the partitions owned
//! and hands the last published state of their users to the [`GroupHandler`]; it then pauses
//! them (nothing more is fetched). On a revocation it marks the partitions not owned first,
//! then calls the handler, which stops watching their users and flushes their records,
//! *before* the partitions are released: the next owner starts only after that. The offsets
//! are never committed: every assignment reads its partitions whole.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use presence_frame::PresenceEvent;
use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};

use crate::client_config::client_config;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::ownership::Ownership;
use crate::record::PresenceRecord;

/// The group protocol: Kafka 4's consumer protocol (KIP-848, the broker assigns and every
/// rebalance is incremental) or the classic one with cooperative-sticky assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupProtocol {
    /// `group.protocol=consumer` (Kafka 4.0+ brokers).
    Consumer,
    /// `group.protocol=classic`, `partition.assignment.strategy=cooperative-sticky`.
    Classic,
}

impl GroupProtocol {
    /// Every protocol.
    pub const ALL: [GroupProtocol; 2] = [GroupProtocol::Consumer, GroupProtocol::Classic];

    /// librdkafka's name (`consumer`, `classic`).
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Consumer => "consumer",
            GroupProtocol::Classic => "classic",
        }
    }
}

impl fmt::Display for GroupProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses `consumer` or `classic`, in any case.
impl FromStr for GroupProtocol {
    type Err = Error;

    fn from_str(text: &str) -> Result<GroupProtocol> {
        GroupProtocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| Error::Config {
                option: "group.protocol".into(),
                reason: format!("expected consumer or classic, got {text:?}"),
            })
    }
}

/// How an instance joins the group.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// The group (`group.id`). Every instance sharing the topic uses the same one.
    pub group_id: String,
    /// The protocol.
    pub protocol: GroupProtocol,
    /// Under the classic protocol, how long the group waits for a silent member before its
    /// partitions move (`session.timeout.ms`; the consumer protocol's is the broker's).
    pub session_timeout: Duration,
    /// This instance's name in the group (`client.id`), for logs and tools.
    pub instance_id: String,
}

impl GroupConfig {
    /// The consumer protocol in group `group_id`, a 6-second classic session timeout.
    pub fn new(group_id: impl Into<String>, instance_id: impl Into<String>) -> GroupConfig {
        GroupConfig {
            group_id: group_id.into(),
            protocol: GroupProtocol::Consumer,
            session_timeout: Duration::from_secs(6),
            instance_id: instance_id.into(),
        }
    }
}

/// What the group tells an instance. Both calls come from the member's thread, one at a
/// time.
pub trait GroupHandler: Send + Sync + 'static {
    /// `partitions` are now owned; `last` is the newest published state of each of their
    /// users (read from the topic to its end; users whose last record is a tombstone are not
    /// in it). Load it as already published, then start watching the users. Return quickly.
    fn assigned(&self, partitions: &[u32], last: Vec<PresenceEvent>);

    /// `partitions` are no longer owned (already, when `lost`: the group moved them without
    /// asking, as after a session timeout). Stop watching their users, flush their pending
    /// records (not when `lost`: another instance may be writing them) and forget them;
    /// return when done. The next owner starts only after this returns.
    fn revoked(&self, partitions: &[u32], lost: bool);
}

/// Counters of a group member.
#[derive(Debug, Default)]
pub struct GroupStats {
    /// Assignments handed to the handler.
    pub assignments: AtomicU64,
    /// Revocations handed to the handler (lost ones included).
    pub revocations: AtomicU64,
    /// Records read by warm starts.
    pub warm_records: AtomicU64,
    /// Records a warm start could not read (counted, skipped).
    pub warm_bad_records: AtomicU64,
    /// Records fetched outside a warm start (none while owned partitions stay paused, as
    /// they should: this instance's own output is not read back).
    pub records_ignored: AtomicU64,
    /// Duration of the last warm start, in milliseconds.
    pub last_warm_start_ms: AtomicU64,
    /// Duration of the last revocation (the handler's handover), in milliseconds.
    pub last_revocation_ms: AtomicU64,
}

/// A member of the group, polled by its own thread until [`stop`](GroupMember::stop) (or
/// drop), which leaves the group: the owned partitions are revoked through the handler first.
pub struct GroupMember {
    ownership: Arc<Ownership>,
    stats: Arc<GroupStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Closed when the member's thread ends, however it ends (a panic in the handler
    /// included): the thread owns the sender, which drops with it.
    ended: tokio::sync::watch::Receiver<()>,
}

impl fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupMember")
            .field("owned", &self.ownership.owned())
            .finish_non_exhaustive()
    }
}

impl GroupMember {
    /// Joins `group` as a consumer of `kafka`'s topic, which has `partitions` partitions.
    pub fn start(
        kafka: &KafkaConfig,
        partitions: u32,
        group: GroupConfig,
        handler: Arc<dyn GroupHandler>,
    ) -> Result<GroupMember> {
        GroupMember::start_with(kafka, Arc::new(Ownership::none(partitions)), group, handler)
    }

    /// Like [`start`](GroupMember::start), keeping `ownership` (owning nothing yet, sized to
    /// the topic's partitions) up to date: for a sink or a source made before the member.
    pub fn start_with(
        kafka: &KafkaConfig,
        ownership: Arc<Ownership>,
        group: GroupConfig,
        handler: Arc<dyn GroupHandler>,
    ) -> Result<GroupMember> {
        let stats = Arc::new(GroupStats::default());
        let topic = kafka.topic_name().to_owned();
        let mut config = client_config(kafka);
        config
            .set("client.id", &group.instance_id)
            .set("group.id", &group.group_id)
            .set("group.protocol", group.protocol.as_str())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            // The producer's statistics are enough; none from this client.
            .set("statistics.interval.ms", "0");
        if group.protocol == GroupProtocol::Classic {
            let session = group.session_timeout.as_millis().max(1000);
            config
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set("session.timeout.ms", session.to_string())
                .set("heartbeat.interval.ms", (session / 3).to_string());
        }
        let context = GroupContext {
            topic: topic.clone(),
            handler,
            ownership: Arc::clone(&ownership),
            stats: Arc::clone(&stats),
            warming: Mutex::new(None),
        };
        let consumer: BaseConsumer<GroupContext> =
            config
                .create_with_context(context)
                .map_err(|e| Error::Client {
                    what: "consumer",
                    message: e.to_string(),
                })?;
        consumer
            .subscribe(&[topic.as_str()])
            .map_err(|e| Error::Client {
                what: "consumer",
                message: e.to_string(),
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let (alive, ended) = tokio::sync::watch::channel(());
        let thread = std::thread::Builder::new()
            .name("kafka-group".into())
            .spawn(move || {
                let _alive = alive;
                poll(consumer, &stopping);
            })
            .map_err(Error::Thread)?;
        log::info!(
            "joined consumer group {} ({} protocol) on {topic} as {}",
            group.group_id,
            group.protocol,
            group.instance_id
        );
        Ok(GroupMember {
            ownership,
            stats,
            stop,
            thread: Some(thread),
            ended,
        })
    }

    /// The partitions this instance owns now.
    pub fn ownership(&self) -> Arc<Ownership> {
        Arc::clone(&self.ownership)
    }

    /// The member's counters.
    pub fn stats(&self) -> Arc<GroupStats> {
        Arc::clone(&self.stats)
    }

    /// Returns once the member's thread has ended: after [`stop`](GroupMember::stop), or on
    /// its own, which only a bug does (a panic in the handler): the instance then owns
    /// partitions nobody serves until it leaves the group, so its owner should stop it.
    pub async fn ended(&self) {
        let mut ended = self.ended.clone();
        while ended.changed().await.is_ok() {}
    }

    /// Leaves the group: the owned partitions are revoked (through the handler) and the
    /// member's thread ends. Blocks until then.
    pub fn stop(mut self) {
        self.leave();
    }

    fn leave(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Dropped without [`stop`](GroupMember::stop) (a panic, or a task aborted while it held the
/// member): the thread is told to stop, and joined only outside a Tokio runtime. On a
/// runtime's thread it is left to end on its own: its last act is the final revocation, whose
/// handler may wait on that very runtime (the bridge's does), so joining there could hang the
/// runtime, and the test or process with it, for good.
impl Drop for GroupMember {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.stop.store(true, Ordering::Relaxed);
            drop(self.thread.take());
        } else {
            self.leave();
        }
    }
}

/// Polls until asked to stop, then closes the consumer (which serves the final revocation).
fn poll(consumer: BaseConsumer<GroupContext>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => consumer.context().record(&message),
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                let context = consumer.context();
                if let Some(done) = context.reached_end(partition) {
                    let mut paused = TopicPartitionList::new();
                    for &p in &done {
                        paused.add_partition(&context.topic, p as i32);
                    }
                    if let Err(e) = consumer.pause(&paused) {
                        log::warn!("could not pause the warmed-up partitions: {e}");
                    }
                }
            }
            Some(Err(e)) => log::warn!("consumer group: {e}"),
        }
    }
    // Leaving: unsubscribe, so that the revocation runs (through the handler) while this
    // thread still polls, then close.
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !consumer.context().ownership.owned().is_empty() && Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(100));
    }
    drop(consumer);
    log::info!("left the consumer group");
}

/// The newest record of one key seen by a warm start.
struct Newest {
    partition: u32,
    timestamp: i64,
    value: Option<Vec<u8>>,
}

/// A warm start in progress: the partitions assigned and not yet read to their end, and the
/// newest record of every key read so far.
struct Warming {
    partitions: Vec<u32>,
    pending: HashSet<u32>,
    newest: HashMap<Vec<u8>, Newest>,
    started: Instant,
}

struct GroupContext {
    topic: String,
    handler: Arc<dyn GroupHandler>,
    ownership: Arc<Ownership>,
    stats: Arc<GroupStats>,
    warming: Mutex<Option<Warming>>,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is the warm start's signal (it comes through `poll`), not
        // an error.
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            log::warn!("consumer group: {error}: {reason}");
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = self.partitions_of(list);
                if partitions.is_empty() {
                    return;
                }
                log::info!(
                    "consumer group: assigned partitions {partitions:?}; reading them to their end"
                );
                let mut warming = self.warming.lock();
                let warming = warming.get_or_insert_with(|| Warming {
                    partitions: Vec::new(),
                    pending: HashSet::new(),
                    newest: HashMap::new(),
                    started: Instant::now(),
                });
                warming.partitions.extend(&partitions);
                warming.pending.extend(&partitions);
            }
            Rebalance::Revoke(list) => {
                let partitions = self.partitions_of(list);
                let gone: HashSet<u32> = partitions.iter().copied().collect();
                if let Some(warming) = self.warming.lock().as_mut() {
                    // Not handed over yet: forget what was read of them.
                    warming.partitions.retain(|p| !gone.contains(p));
                    warming.pending.retain(|p| !gone.contains(p));
                    warming.newest.retain(|_, n| !gone.contains(&n.partition));
                }
                let owned: Vec<u32> = partitions
                    .into_iter()
                    .filter(|p| self.ownership.owns_partition(*p))
                    .collect();
                if owned.is_empty() {
                    return;
                }
                let lost = consumer.assignment_lost();
                let started = Instant::now();
                // Not owned from now on: the source drops their users' events.
                self.ownership.revoke(&owned);
                self.handler.revoked(&owned, lost);
                let took = started.elapsed();
                self.stats.revocations.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .last_revocation_ms
                    .store(took.as_millis() as u64, Ordering::Relaxed);
                log::info!(
                    "consumer group: {} partitions {owned:?} in {took:.1?}",
                    if lost { "lost" } else { "handed over" }
                );
            }
            Rebalance::Error(e) => log::warn!("consumer group rebalance: {e}"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // A partition paused after an earlier warm start stays paused through its revocation
        // (librdkafka keeps the flag): a new assignment must read it again.
        if let Rebalance::Assign(list) = rebalance
            && let Err(e) = consumer.resume(list)
        {
            log::warn!("could not resume the assigned partitions: {e}");
        }
    }
}

impl GroupContext {
    /// The partitions of our topic in `list`.
    fn partitions_of(&self, list: &TopicPartitionList) -> Vec<u32> {
        list.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .collect()
    }

    /// Keeps `message` if it is the newest of its key in a partition being warmed up.
    fn record(&self, message: &BorrowedMessage<'_>) {
        let Ok(partition) = u32::try_from(message.partition()) else {
            return;
        };
        let mut warming = self.warming.lock();
        let Some(warming) = warming.as_mut().filter(|w| w.pending.contains(&partition)) else {
            self.stats.records_ignored.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.stats.warm_records.fetch_add(1, Ordering::Relaxed);
        let Some(key) = message.key() else {
            self.stats.warm_bad_records.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // A record's timestamp is its event time (a tombstone's is at least the deleted
        // state's): the newest wins, and on a tie the later one, as compaction keeps it.
        let timestamp = message.timestamp().to_millis().unwrap_or(i64::MIN);
        let newer = warming
            .newest
            .get(key)
            .is_none_or(|held| timestamp >= held.timestamp);
        if newer {
            warming.newest.insert(
                key.to_vec(),
                Newest {
                    partition,
                    timestamp,
                    value: message.payload().map(<[u8]>::to_vec),
                },
            );
        }
    }

    /// Notes that `partition` was read to its end. When it was the last one pending, the warm
    /// start is over: the partitions become owned, the handler gets them with their users'
    /// last states, and they are returned (to be paused).
    fn reached_end(&self, partition: i32) -> Option<Vec<u32>> {
        let partition = u32::try_from(partition).ok()?;
        let warming = {
            let mut slot = self.warming.lock();
            let warming = slot.as_mut()?;
            if !warming.pending.remove(&partition) || !warming.pending.is_empty() {
                return None;
            }
            slot.take()?
        };
        let mut last = Vec::with_capacity(warming.newest.len());
        for newest in warming.newest.into_values() {
            let Some(value) = newest.value else {
                continue; // a tombstone: the user has no state
            };
            match serde_json::from_slice::<PresenceRecord>(&value)
                .ok()
                .and_then(|r| r.to_event())
            {
                Some(event) => last.push(event),
                None => {
                    self.stats.warm_bad_records.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let took = warming.started.elapsed();
        self.stats.assignments.fetch_add(1, Ordering::Relaxed);
        self.stats
            .last_warm_start_ms
            .store(took.as_millis() as u64, Ordering::Relaxed);
        log::info!(
            "consumer group: partitions {:?} read to their end in {took:.1?}: {} users with a state",
            warming.partitions,
            last.len()
        );
        self.ownership.assign(&warming.partitions);
        self.handler.assigned(&warming.partitions, last);
        Some(warming.partitions)
    }
}
