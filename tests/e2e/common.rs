//! What every end-to-end test shares: the broker ([`kafka`], [`kafka_exclusive`],
//! [`sasl_endpoint`]) as the workspace's one broker helper (`tests/support/broker.rs`, module
//! `crate::broker`) finds it, waits for it and skips or fails, taken in turns with the outage
//! test; the emulator plus the bridge ([`Bridge`]), chaos ([`run_chaos`]), and waiting until
//! the topic holds the emulator's truth ([`converge`]). Reading a topic back ([`TopicReader`])
//! and judging it (`Expect`, `judge`) live in `tests/support/topic.rs` (module
//! `crate::topic`, shared with the soak test) and are re-exported here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use genesys_emulator::{
    BurstScope, ChaosConfig, Emulator, EmulatorConfig, EmulatorHandle, Fault, FaultKind,
    FaultTarget, Stats,
};
use presence_bridge::bridge::serve;
use presence_bridge::cli::RunArgs;
use presence_bridge::config::BridgeConfig;
use tokio::net::TcpListener;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::broker::{Endpoint, env, skip_or_fail};
pub use crate::topic::{Expect, TopicReader};
use crate::topic::{judge, random_topic};

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
        let (admin, path) = (self.admin, path.to_owned());
        tokio::task::spawn_blocking(move || crate::topic::admin_get(admin, &path))
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
        crate::topic::publisher_idle(&text)
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
