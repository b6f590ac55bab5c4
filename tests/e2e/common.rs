//! What every end-to-end test shares: the broker ([`kafka`], [`kafka_exclusive`],
//! [`sasl_endpoint`]) as the workspace's one broker helper (`tests/support/broker.rs`, module
//! `crate::broker`) finds it, waits for it and skips or fails, taken in turns with the outage
//! test; the emulator plus the bridge ([`Bridge`]), chaos ([`run_chaos`]), reading a topic back
//! ([`TopicReader`]) and judging it against the emulator's truth ([`converge`], [`Expect`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use genesys_emulator::{
    BurstScope, ChaosConfig, Emulator, EmulatorConfig, EmulatorHandle, Fault, FaultKind,
    FaultTarget, Stats, TruthEntry,
};
use presence_bridge::bridge::serve;
use presence_bridge::cli::RunArgs;
use presence_bridge::config::BridgeConfig;
use presence_frame::{EventTime, Status};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::net::TcpListener;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::broker::{Endpoint, env, skip_or_fail};

/// Every test holds the broker shared, except the outage test, which stops it and so holds it
/// exclusively: while it runs, no other test of this binary talks to Kafka.
static BROKER_TURN: RwLock<()> = RwLock::const_new(());

enum Turn {
    Shared {
        _guard: RwLockReadGuard<'static, ()>,
    },
    Exclusive {
        _guard: RwLockWriteGuard<'static, ()>,
    },
}

/// A broker that answered. While it is held, the outage test leaves the broker alone (or, for
/// the outage test's own exclusive hold, no other test uses it).
pub struct Kafka {
    pub endpoint: Endpoint,
    _turn: Turn,
}

/// The plaintext broker, held shared; `None` (skip) when there is none and `CI` is not set.
pub async fn kafka() -> Option<Kafka> {
    let turn = Turn::Shared {
        _guard: BROKER_TURN.read().await,
    };
    let endpoint = tokio::task::block_in_place(crate::broker::plain)?;
    Some(Kafka {
        endpoint,
        _turn: turn,
    })
}

/// The plaintext broker, held exclusively (for the test that stops it).
pub async fn kafka_exclusive() -> Option<Kafka> {
    let turn = Turn::Exclusive {
        _guard: BROKER_TURN.write().await,
    };
    let endpoint = tokio::task::block_in_place(crate::broker::plain)?;
    Some(Kafka {
        endpoint,
        _turn: turn,
    })
}

/// The SASL_PLAINTEXT listener of the broker `kafka` holds, with its SCRAM credentials; `None`
/// (skip) when it is not configured and `CI` is not set.
pub async fn sasl_endpoint(_held: &Kafka) -> Option<Endpoint> {
    tokio::task::block_in_place(crate::broker::sasl)
}

/// A topic name no other test (or earlier run) uses.
pub fn random_topic(name: &str) -> String {
    format!("presence-e2e-{name}-{:016x}", fastrand::u64(..))
}

/// Test logs through `RUST_LOG` (e.g. `RUST_LOG=presence_sync=debug`), captured per test.
pub fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A file holding a secret, removed when dropped.
pub struct SecretFile {
    pub path: PathBuf,
}

impl SecretFile {
    pub fn new(secret: &str) -> SecretFile {
        let path =
            std::env::temp_dir().join(format!("presence-e2e-{:016x}.secret", fastrand::u64(..)));
        std::fs::write(&path, secret).expect("write a secret file");
        SecretFile { path }
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Maps every emulator group to its bit (group `i` is bit `i`, as in the truth's mask): the
/// demo's mapping.
pub fn group_bits(emulator: &EmulatorHandle) -> Vec<String> {
    presence_bridge::commands::group_bits_of(emulator)
}

/// The emulator and the bridge (`bridge::serve`, as `presence-bridge run` runs it) publishing to
/// a fresh topic.
pub struct Bridge {
    pub emulator: EmulatorHandle,
    pub topic: String,
    pub admin: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), String>>>,
    _secret: SecretFile,
}

impl Bridge {
    /// Starts the emulator and the bridge (without waiting for readiness). `tune` adjusts the
    /// flags; by default they point at the emulator, `endpoint` and a fresh topic.
    pub async fn launch(
        endpoint: &Endpoint,
        emulator: EmulatorConfig,
        name: &str,
        tune: impl FnOnce(&mut RunArgs, &EmulatorHandle),
    ) -> Bridge {
        init_logging();
        let emulator = Emulator::start(emulator, "127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("the emulator starts");
        let secret = SecretFile::new(emulator.client_secret());
        let topic = random_topic(name);
        let mut args = RunArgs {
            api_url: Some(emulator.base_url()),
            login_url: Some(emulator.base_url()),
            client_id: Some(emulator.client_id().to_owned()),
            client_secret_file: Some(secret.path.clone()),
            kafka_brokers: Some(endpoint.brokers.clone()),
            topic: Some(topic.clone()),
            shutdown_grace: Some("5s".into()),
            ..RunArgs::default()
        };
        tune(&mut args, &emulator);
        let config = BridgeConfig::from_args(&args).expect("a valid bridge config");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the admin port");
        let admin = listener.local_addr().expect("the admin address");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            serve(config, listener, stop)
                .await
                .map_err(|e| format!("{e:#}"))
        });
        Bridge {
            emulator,
            topic,
            admin,
            shutdown,
            task: Some(task),
            _secret: secret,
        }
    }

    /// Starts the emulator and the bridge and waits until the bridge is ready.
    pub async fn start(
        kafka: &Kafka,
        emulator: EmulatorConfig,
        name: &str,
        tune: impl FnOnce(&mut RunArgs, &EmulatorHandle),
    ) -> Bridge {
        let bridge = Bridge::launch(&kafka.endpoint, emulator, name, tune).await;
        bridge.ready().await;
        bridge
    }

    /// Whether the bridge's task has ended (it never should before `stop`).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Fails the test, with the bridge's error, if the bridge has stopped on its own.
    pub async fn assert_running(&mut self) {
        if self.is_finished() {
            let ended = match self.task.take() {
                Some(task) => task.await.map_err(|e| e.to_string()),
                None => Ok(Err("already taken".into())),
            };
            panic!("the bridge stopped on its own: {ended:?}");
        }
    }

    /// What `serve` returned, if it ends within `limit` (taking its task).
    pub async fn ended_within(&mut self, limit: Duration) -> Option<Result<(), String>> {
        let task = self.task.as_mut()?;
        let ended = tokio::time::timeout(limit, task).await.ok()?;
        self.task = None;
        Some(ended.unwrap_or_else(|e| Err(format!("the bridge task failed: {e}"))))
    }

    /// Waits until `/readyz` says ready (token, every channel streaming, Kafka reachable).
    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                !self.is_finished(),
                "the bridge stopped before it was ready"
            );
            if let Ok((200, _)) = self.admin_json("/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the bridge was not ready within 60 s: {:?}",
                self.admin_json("/readyz").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A GET on the admin server: status and body.
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        let url = format!("http://{}{path}", self.admin);
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .http_status_as_error(false)
                .build()
                .into();
            let mut response = agent.get(&url).call().map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .read_to_string()
                .map_err(|e| e.to_string())?;
            Ok((status, body))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// A GET on the admin server: status and JSON body.
    pub async fn admin_json(&self, path: &str) -> Result<(u16, serde_json::Value), String> {
        let (status, body) = self.admin_get(path).await?;
        let json = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        Ok((status, json))
    }

    /// Whether the publisher has nothing queued and nothing unacknowledged (from `/metrics`).
    pub async fn publisher_idle(&self) -> bool {
        let Ok((200, text)) = self.admin_get("/metrics").await else {
            return false;
        };
        let gauge = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        gauge("presence_bridge_kafka_queue_depth") == Some(0.0)
            && gauge("presence_bridge_kafka_in_flight") == Some(0.0)
    }

    /// `/v1/stats`, or the error as JSON (for failure messages).
    pub async fn stats(&self) -> serde_json::Value {
        match self.admin_json("/v1/stats").await {
            Ok((_, json)) => json,
            Err(e) => serde_json::Value::String(e),
        }
    }

    /// Stops the bridge as SIGINT would and checks that it ends cleanly, then the emulator.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let ended = tokio::time::timeout(Duration::from_secs(30), task).await;
            assert!(
                matches!(ended, Ok(Ok(Ok(())))),
                "the bridge ends cleanly: {ended:?}"
            );
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The fault kinds a chaos run on `target` claims, which are the kinds that can reach its
/// client: every kind for a client of notification channels; for a relay client, its socket
/// faults, expired tokens and bursts on the token endpoint (it calls no `/api/v2` endpoint,
/// gets no maintenance warning and has no channel to lose).
pub fn chaos_kinds(target: &FaultTarget) -> Vec<FaultKind> {
    match target {
        FaultTarget::Relay => vec![
            FaultKind::DropSocket,
            FaultKind::StallSocket,
            FaultKind::Garbage,
            FaultKind::TruncatedJson,
            FaultKind::Oversized,
            FaultKind::ExpireTokens,
            FaultKind::RateLimitBurst,
            FaultKind::ServerErrorBurst,
        ],
        _ => FaultKind::ALL.to_vec(),
    }
}

/// How often a fault of `kind` landed on the client of `target`, by the emulator's count of
/// applications (never of requests): sockets that acted on it, channels removed, tokens
/// expired, calls answered with it.
pub fn applied_to_client(stats: &Stats, target: &FaultTarget, kind: FaultKind) -> u64 {
    stats
        .fault_hits
        .get(kind.as_str())
        .map_or(0, |hits| match target {
            FaultTarget::Relay => hits.on_relay_clients(),
            _ => hits.on_channel_clients(),
        })
}

/// Waits (up to 30 s) until faults of `kind` have landed on the client of `target` more often
/// than `before` times; panics with the emulator's counts if they never do.
async fn landed(bridge: &Bridge, target: &FaultTarget, kind: FaultKind, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    wait_landed(bridge, target, kind, before, deadline, deadline).await;
}

/// Whether faults of `kind` landed on the client of `target` more often than `before` times
/// by `until`; panics with the emulator's counts once `deadline` has passed.
async fn wait_landed(
    bridge: &Bridge,
    target: &FaultTarget,
    kind: FaultKind,
    before: u64,
    until: Instant,
    deadline: Instant,
) -> bool {
    loop {
        let stats = bridge.emulator.stats();
        if applied_to_client(&stats, target, kind) > before {
            return true;
        }
        assert!(
            Instant::now() < deadline,
            "{} never landed on the bridge within 30 s; requested {:?}, hits {:?}",
            kind.as_str(),
            stats.faults_requested,
            stats.fault_hits
        );
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the bridge is ready and, for the relay (whose readiness does not need a
/// connection), until a relay socket is connected: a socket fault then has a socket to hit.
async fn sockets_up(bridge: &Bridge, target: &FaultTarget) {
    bridge.ready().await;
    if *target == FaultTarget::Relay {
        let deadline = Instant::now() + Duration::from_secs(30);
        while bridge.emulator.stats().relay.connections == 0 {
            assert!(
                Instant::now() < deadline,
                "the relay did not reconnect within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Injects a fault of `kind` with `inject` and waits until it landed on the bridge, injecting
/// it again every 2 s (up to 30 s) while it has not: a socket fault can find the bridge
/// between two sockets.
async fn land_one(
    bridge: &Bridge,
    target: &FaultTarget,
    kind: FaultKind,
    inject: impl Fn(&EmulatorHandle),
) {
    let before = applied_to_client(&bridge.emulator.stats(), target, kind);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        inject(&bridge.emulator);
        let retry_at = Instant::now() + Duration::from_secs(2);
        if wait_landed(bridge, target, kind, before, retry_at, deadline).await {
            return;
        }
    }
}

/// Lands each kind of [`chaos_kinds`] on the bridge once, each on a ready bridge (every channel
/// or the relay streaming) and waited for until the emulator counts it as applied to the
/// bridge; then chaos with those kinds at 4 faults a second until at least `min_changes`
/// changes and `min_time` have passed; then calm. Asserts that every kind was applied to the
/// bridge at least once, by the emulator's own count of applications (never of requests), and
/// returns its stats.
pub async fn run_chaos(
    bridge: &mut Bridge,
    target: FaultTarget,
    min_changes: u64,
    min_time: Duration,
) -> Stats {
    let started = Instant::now();
    let relay = target == FaultTarget::Relay;
    let kinds = chaos_kinds(&target);
    let t = &target;
    let scope = if relay {
        BurstScope::Login
    } else {
        BurstScope::Api
    };
    sockets_up(bridge, t).await;
    // Bad messages, a stall and the drop that ends it, on the live sockets.
    land_one(bridge, t, FaultKind::Garbage, |e| {
        e.send_garbage(t.clone()).expect("garbage");
    })
    .await;
    land_one(bridge, t, FaultKind::TruncatedJson, |e| {
        e.send_truncated_json(t.clone()).expect("truncated");
    })
    .await;
    land_one(bridge, t, FaultKind::Oversized, |e| {
        e.send_oversized(t.clone(), 3 << 20).expect("oversized");
    })
    .await;
    land_one(bridge, t, FaultKind::StallSocket, |e| {
        e.stall_sockets(t.clone()).expect("stall");
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    land_one(bridge, t, FaultKind::DropSocket, |e| {
        e.drop_sockets(t.clone()).expect("drop");
    })
    .await;
    sockets_up(bridge, t).await;
    if !relay {
        land_one(bridge, t, FaultKind::SocketClosing, |e| {
            e.socket_closing(t.clone(), Duration::from_secs(2))
                .expect("socket_closing");
        })
        .await;
        sockets_up(bridge, t).await;
        land_one(bridge, t, FaultKind::MaintenanceWave, |e| {
            e.maintenance_wave(Duration::from_secs(2))
                .expect("maintenance wave");
        })
        .await;
        sockets_up(bridge, t).await;
    }
    land_one(bridge, t, FaultKind::ExpireTokens, |e| {
        e.expire_tokens().expect("expire tokens");
    })
    .await;
    sockets_up(bridge, t).await;
    // Bursts land on the next calls: for a channel client the ones that replace a removed
    // channel, for a relay client the token request after its expired token was refused on
    // the reconnect that a drop forces.
    let before = |kind| applied_to_client(&bridge.emulator.stats(), t, kind);
    let (limited, failed) = (
        before(FaultKind::RateLimitBurst),
        before(FaultKind::ServerErrorBurst),
    );
    let e = &bridge.emulator;
    e.inject(Fault::RateLimitBurst {
        count: 2,
        scope,
        retry_after_secs: Some(1),
    })
    .expect("429s");
    e.inject(Fault::ServerErrorBurst {
        count: 2,
        scope,
        status: Some(503),
    })
    .expect("5xx");
    if relay {
        e.expire_tokens().expect("expire tokens");
        e.drop_sockets(t.clone()).expect("drop");
    } else {
        land_one(bridge, t, FaultKind::NoLongerSubscribed, |e| {
            e.no_longer_subscribed(t.clone())
                .expect("no_longer_subscribed");
        })
        .await;
    }
    landed(bridge, t, FaultKind::RateLimitBurst, limited).await;
    landed(bridge, t, FaultKind::ServerErrorBurst, failed).await;
    sockets_up(bridge, t).await;

    // Then at random. Chaos draws bursts for `/api/v2`, which a relay client never calls.
    let random: Vec<FaultKind> = kinds
        .iter()
        .copied()
        .filter(|k| !relay || !matches!(k, FaultKind::RateLimitBurst | FaultKind::ServerErrorBurst))
        .collect();
    bridge
        .emulator
        .set_chaos(ChaosConfig::new(240.0).kinds(random))
        .expect("chaos on");
    let chaos_began = Instant::now();
    loop {
        let generated = bridge.emulator.stats().events_generated;
        if generated >= min_changes && chaos_began.elapsed() >= min_time {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "workload too slow: {generated} changes in 120 s"
        );
        bridge.assert_running().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bridge
        .emulator
        .set_chaos(ChaosConfig::new(0.0))
        .expect("calm");
    let stats = bridge.emulator.stats();
    for kind in &kinds {
        assert!(
            applied_to_client(&stats, &target, *kind) > 0,
            "{} applied to the bridge: {:?}",
            kind.as_str(),
            stats.fault_hits
        );
    }
    stats
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
/// seen on the way: a key whose event time went backwards, a value that breaks the schema
/// (`docs/schema/presence-record.v1.json`), headers that disagree with the value.
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
            problems: Vec::new(),
            problem_count: 0,
        }
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
            };
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
            // starts afresh (a state older than the deleted one may follow).
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

    fn key(&self, t: &TruthEntry) -> String {
        if self.relay {
            t.relay_id.to_string()
        } else {
            t.user_id.clone()
        }
    }

    fn wanted<'t>(&self, truth: &'t [TruthEntry]) -> Vec<&'t TruthEntry> {
        truth
            .iter()
            .filter(|t| self.allowed.is_none_or(|a| t.group_mask & a != 0))
            .collect()
    }

    /// Whether a JSON view of a user (a record value or a registry entry) holds `t`'s state.
    fn same_state(&self, v: &serde_json::Value, t: &TruthEntry) -> bool {
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

/// How a topic converged.
#[derive(Debug)]
pub struct Converged {
    /// How long after the quiesce.
    pub after: Duration,
}

/// Every user the bridge's registry holds (`/v1/presence`), by user id.
async fn registry_view(bridge: &Bridge) -> HashMap<String, serde_json::Value> {
    match bridge.admin_json("/v1/presence?pageSize=5000").await {
        Ok((200, json)) => json["entities"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|e| Some((e["userId"].as_str()?.to_owned(), e.clone())))
                    .collect()
            })
            .unwrap_or_default(),
        other => panic!("the registry query failed: {other:?}"),
    }
}

/// Users whose last record differs from the truth (the registry's entry is shown beside, to
/// tell a publishing problem from a sync problem).
fn judge(
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

/// Quiesces the emulator, then reads the topic (and the bridge's registry) until the topic holds the truth as `expect` says; fails after `limit`.
pub async fn converge(
    bridge: &mut Bridge,
    reader: &mut TopicReader,
    limit: Duration,
    expect: Expect,
) -> Converged {
    bridge.emulator.quiesce().await;
    let truth = bridge.emulator.truth();
    let wanted = expect.wanted(&truth);
    let started = Instant::now();
    loop {
        bridge.assert_running().await;
        // Every state the registry holds was handed to the publisher before the registry
        // showed it; once the publisher is idle, all of it is on the topic.
        let registry = registry_view(bridge).await;
        let idle = bridge.publisher_idle().await;
        reader.read_to_end().await;
        let wrong = judge(&expect, reader, &wanted, &registry);
        if wrong.is_empty() && idle {
            return Converged {
                after: started.elapsed(),
            };
        }
        if started.elapsed() > limit {
            panic!(
                "{} of {} users on the topic differ from the truth after {limit:?}, e.g. {:#?}\nbridge stats: {:#}\nemulator stats: {:?}",
                wrong.len(),
                wanted.len(),
                &wrong[..wrong.len().min(5)],
                bridge.stats().await,
                bridge.emulator.stats()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
