//! The harness the sync tests share: an emulator on loopback, a sync feeding a registry,
//! and convergence against the emulator's truth.
#![allow(dead_code, reason = "each test binary uses part of it")]

use std::sync::Arc;
use std::time::Duration;

use genesys_auth::{AuthConfig, Endpoints, GenesysClient, SecretString};
use genesys_emulator::{Emulator, EmulatorConfig, EmulatorHandle, TruthEntry};
use presence_frame::{EventTime, GroupMask, Guid, PresenceEvent, UserId};
use presence_registry::{ManualClock, Registry, RegistryConfig};
use presence_sync::{PresenceSync, SyncConfig, SyncStatus};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An emulator, a sync feeding a registry, and the means to judge convergence.
pub(crate) struct Harness {
    pub(crate) emulator: EmulatorHandle,
    pub(crate) client: GenesysClient,
    pub(crate) registry: Arc<Registry<ManualClock>>,
    pub(crate) status: SyncStatus,
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: JoinHandle<presence_sync::Result<()>>,
}

pub(crate) fn fast_sync() -> SyncConfig {
    SyncConfig::default()
        .idle_before_ping(Duration::from_secs(2))
        .pong_timeout(Duration::from_secs(1))
        .backoff(Duration::from_millis(20), Duration::from_millis(500))
        .connect_timeout(Duration::from_secs(5))
}

pub(crate) async fn start_emulator(config: EmulatorConfig) -> EmulatorHandle {
    Emulator::start(config, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("emulator starts")
}

pub(crate) fn client_for(emulator: &EmulatorHandle, rpm: u32) -> GenesysClient {
    client_with(emulator, rpm, Duration::from_secs(60))
}

/// A client that renews its token `refresh_margin` before expiry.
pub(crate) fn client_with(
    emulator: &EmulatorHandle,
    rpm: u32,
    refresh_margin: Duration,
) -> GenesysClient {
    let base = emulator.base_url();
    let config = AuthConfig::new(
        Endpoints::new(&base, &base).expect("endpoints"),
        emulator.client_id(),
        SecretString::from(emulator.client_secret()),
    )
    .backoff(Duration::from_millis(20), Duration::from_millis(500))
    .refresh_margin(refresh_margin)
    .requests_per_minute(rpm)
    .max_attempts(8);
    GenesysClient::new(config).expect("client")
}

pub(crate) fn registry() -> Arc<Registry<ManualClock>> {
    Arc::new(
        Registry::with_clock(
            RegistryConfig::new(Duration::from_secs(3600)),
            ManualClock::new(),
        )
        .expect("registry"),
    )
}

impl Harness {
    pub(crate) async fn start(emulator: EmulatorConfig, sync: SyncConfig) -> Harness {
        Harness::start_with(emulator, sync, Duration::from_secs(60), |_| {}).await
    }

    /// `refresh_margin`: how long before its expiry the API client itself renews a token;
    /// `prepare` runs on the emulator before the sync starts.
    pub(crate) async fn start_with(
        emulator: EmulatorConfig,
        sync: SyncConfig,
        refresh_margin: Duration,
        prepare: impl FnOnce(&EmulatorHandle),
    ) -> Harness {
        let registry = registry();
        let sink_registry = Arc::clone(&registry);
        let sink = move |events: &mut Vec<PresenceEvent>| {
            for event in events.drain(..) {
                let _ = sink_registry.apply(event);
            }
        };
        Harness::start_sink(emulator, sync, refresh_margin, prepare, registry, sink).await
    }

    /// [`start_with`](Self::start_with) with the sync feeding `sink`, which should keep
    /// `registry` (the one convergence is judged on).
    pub(crate) async fn start_sink(
        emulator: EmulatorConfig,
        sync: SyncConfig,
        refresh_margin: Duration,
        prepare: impl FnOnce(&EmulatorHandle),
        registry: Arc<Registry<ManualClock>>,
        sink: impl presence_sync::PresenceSink,
    ) -> Harness {
        Harness::start_owned(
            emulator,
            sync,
            refresh_margin,
            prepare,
            registry,
            sink,
            None,
        )
        .await
    }

    /// Like [`start_sink`](Harness::start_sink), watching only the users `owner` owns.
    pub(crate) async fn start_owned(
        emulator: EmulatorConfig,
        sync: SyncConfig,
        refresh_margin: Duration,
        prepare: impl FnOnce(&EmulatorHandle),
        registry: Arc<Registry<ManualClock>>,
        sink: impl presence_sync::PresenceSink,
        owner: Option<Arc<dyn presence_frame::Owner>>,
    ) -> Harness {
        let emulator = start_emulator(emulator).await;
        prepare(&emulator);
        let client = client_with(&emulator, 300, refresh_margin);
        let bits: Vec<(Guid, u32)> = emulator.group_ids().into_iter().zip(0u32..).collect();
        let mut sync =
            PresenceSync::new(client.clone(), sync.group_bits(bits), sink).expect("sync");
        if let Some(owner) = owner {
            sync = sync.with_owner(owner);
        }
        let status = sync.status();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(sync.run(shutdown.clone()));
        Harness {
            emulator,
            client,
            registry,
            status,
            shutdown,
            task,
        }
    }

    pub(crate) async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&Harness) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; channels {:?}; stats {:?}",
                self.status.channels(),
                self.status.stats()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn ready(&self) {
        self.wait_for("every channel streaming", Duration::from_secs(60), |h| {
            h.status.is_ready()
        })
        .await;
    }

    /// Quiesces the emulator and waits until the registry equals its truth.
    pub(crate) async fn converge(&self, limit: Duration) {
        self.converge_except(limit, &[]).await;
    }

    /// [`converge`](Self::converge) for every user but `except`.
    pub(crate) async fn converge_except(&self, limit: Duration, except: &[Guid]) {
        self.emulator.quiesce().await;
        let truth: Vec<TruthEntry> = self
            .emulator
            .truth()
            .into_iter()
            .filter(|t| t.user().is_some_and(|u| !except.contains(&u)))
            .collect();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let wrong = mismatches(&self.registry, &truth);
            if wrong.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {} users differ from the truth, e.g. {:?}; stats {:?}",
                wrong.len(),
                truth.len(),
                &wrong[..wrong.len().min(3)],
                self.status.stats()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts that the users rejected now are exactly `users`.
    pub(crate) fn assert_rejected(&self, users: &[Guid]) {
        let mut rejected = self.status.rejected_users();
        rejected.sort();
        let mut expected = users.to_vec();
        expected.sort();
        assert_eq!(rejected, expected, "the rejected users");
    }

    /// The channel id of each planned channel.
    pub(crate) fn channel_ids(&self) -> Vec<Option<String>> {
        self.status
            .channels()
            .into_iter()
            .map(|c| c.channel_id)
            .collect()
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        assert!(
            matches!(result, Ok(Ok(Ok(())))),
            "sync ends cleanly: {result:?}"
        );
        self.emulator.shutdown().await;
    }
}

/// Users whose registry entry differs from the emulator's truth (status, definition, message,
/// event time and group mask).
pub(crate) fn mismatches(registry: &Registry<ManualClock>, truth: &[TruthEntry]) -> Vec<String> {
    truth
        .iter()
        .filter_map(|t| {
            let guid = t.user()?;
            let Some(held) = registry.get(UserId::Genesys(guid)) else {
                return Some(format!("{guid}: missing"));
            };
            let time = EventTime::parse_rfc3339(&t.modified_date).ok()?;
            let message = (!t.message.is_empty()).then_some(t.message.as_str());
            let ok = held.state.status == t.status()
                && held.time == time
                && held.state.message.as_deref() == message
                && held.state.definition_id.as_deref() == Some(t.presence_definition_id.as_str())
                && held.state.groups == GroupMask(t.group_mask);
            (!ok).then(|| {
                format!(
                    "{guid}: held {:?} at {:?}, truth {} at {}",
                    held.state, held.time, t.system_presence, t.modified_date
                )
            })
        })
        .collect()
}
