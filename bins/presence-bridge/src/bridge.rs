//! The wiring of `run`: the Genesys client, the sync (or relay) feeding the registry, every
//! real change and every expiry handed to the Kafka publisher, the admin server, and the
//! shutdown sequence (stop taking events, flush Kafka within the grace, close, exit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use genesys_auth::{AuthConfig, GenesysClient, TlsRoots};
use parking_lot::Mutex;
use presence_frame::{Owner, PresenceEvent, UserId};
use presence_kafka::{
    GroupHandler, GroupMember, KafkaPublisher, Ownership, Publisher, RegistrySink, SinkConfig,
};
use presence_registry::{Registry, RegistryConfig};
use presence_sync::{PresenceSync, RelaySource, SyncConfig, SyncStatus, UserSelection};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{BridgeConfig, SourceConfig};
use crate::history::{History, SAMPLE_INTERVAL};
use crate::state::{AppState, GroupView, RecentChanges};

/// How long a revocation may spend flushing the revoked users' records before the partitions
/// go (their next owner reads the topic after that).
const HANDOVER_FLUSH: Duration = Duration::from_secs(10);

/// How long a revocation waits for the sync to unsubscribe the revoked users and close the
/// channels they no longer need, so that the partitions' next owner, when it shares this
/// OAuth client, finds the channels free. Following takes moments (also while a
/// re-discovery is listing); the bound is for a sync that cannot answer.
const HANDOVER_RELEASE: Duration = Duration::from_secs(5);

/// How long the start waits for the group's first assignment before the source starts
/// anyway (it then follows the assignment when it comes).
const FIRST_ASSIGNMENT: Duration = Duration::from_secs(30);

/// The group's calls, turned into the bridge's moves (docs/decisions/0002-scale-out.md).
/// An assignment loads the warm start's states as already published and tells the source to
/// watch the new users; a revocation (the partitions are already not owned: the sink drops
/// their users' events from then on) tells the source to stop watching them, flushes their
/// records and forgets them, before the partitions go to their next owner.
struct Handover {
    join: RegistrySink<Arc<KafkaPublisher>>,
    ownership: Arc<Ownership>,
    source: SyncStatus,
    runtime: tokio::runtime::Handle,
}

impl GroupHandler for Handover {
    fn assigned(&self, partitions: &[u32], last: Vec<PresenceEvent>) {
        let started = Instant::now();
        let states = last.len();
        let loaded = self.join.load_published(last);
        // A relay's frames that came while nobody owned these users (the relay has no
        // resync): applied over the loaded states, last write wins.
        let adopted = self.join.adopt_frames();
        log::info!(
            "assigned partitions {partitions:?}: {loaded} of {states} users' last states loaded from the topic (read as the group member logged above), {adopted} relay frames kept meanwhile applied, in {:.1?}; watching them",
            started.elapsed()
        );
        self.source.ownership_changed();
    }

    fn revoked(&self, partitions: &[u32], lost: bool) {
        let started = Instant::now();
        self.source.ownership_changed();
        let ownership = Arc::clone(&self.ownership);
        let not_owned = move |user: UserId| !ownership.owns(user);
        let (released, left) = self.runtime.block_on(async {
            let released = tokio::time::timeout(HANDOVER_RELEASE, self.source.ownership_followed());
            let flushed = async {
                if lost {
                    0
                } else {
                    self.join
                        .publisher()
                        .flush_users(&not_owned, HANDOVER_FLUSH)
                        .await
                }
            };
            tokio::join!(released, flushed)
        });
        if released.is_err() {
            log::warn!(
                "handing over partitions {partitions:?}: the sync had not released their users within {HANDOVER_RELEASE:?}; it releases them when it follows the ownership"
            );
        }
        if left > 0 {
            log::warn!(
                "handing over partitions {partitions:?}: {left} users' last records not delivered within {HANDOVER_FLUSH:?}; their next owner resyncs them"
            );
        }
        let forgotten = self.join.forget(&not_owned);
        log::info!(
            "{} partitions {partitions:?}: {forgotten} users handed over in {:.1?}",
            if lost { "lost" } else { "revoked" },
            started.elapsed()
        );
    }
}

/// How often expired entries are swept (and tombstoned): a fraction of the TTL, between
/// 100 ms and 1 s.
fn sweep_interval(ttl: Duration) -> Duration {
    (ttl / 64).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Runs the bridge until `shutdown` is cancelled (then `Ok`) or something fatal happens.
pub async fn serve(
    config: BridgeConfig,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let started = Instant::now();
    // Proxies come from the environment (HTTPS_PROXY, NO_PROXY, ...), for REST and sockets.
    let tls_roots = TlsRoots::bundled().native(config.tls_native_roots);
    let client = GenesysClient::new(
        AuthConfig::new(
            config.endpoints.clone(),
            config.client_id.clone(),
            config.client_secret.clone(),
        )
        .tls_roots(tls_roots.clone()),
    )?;
    let registry = Arc::new(Registry::new(RegistryConfig::new(config.ttl))?);
    // Connects, checks the topic (creating it compacted if allowed) and starts the dispatcher.
    let publisher = Arc::new(
        KafkaPublisher::start(config.kafka.clone())
            .await
            .with_context(|| format!("Kafka at {}", config.kafka_brokers))?,
    );
    // The dashboard's list of recent changes hears of each batch's changes and each sweep's
    // expiries from the join, outside the registry's locks.
    let recent = Arc::new(Mutex::new(RecentChanges::new(8_192)));
    // Ownership: the partitions of the topic the consumer group assigns to this instance.
    let partitions = publisher
        .topic_check()
        .map(|check| check.partitions)
        .context("the topic check is needed for its partition count")?;
    let partitions = u32::try_from(partitions)
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| {
            format!(
                "topic {} shows no partition (its metadata never listed any)",
                config.kafka.topic_name()
            )
        })?;
    let ownership = Arc::new(Ownership::none(partitions));
    let join = RegistrySink::new(
        Arc::clone(&registry),
        Arc::clone(&publisher),
        SinkConfig::default()
            .max_future_skew(config.max_event_skew)
            .owner(Arc::clone(&ownership) as Arc<dyn Owner>)
            .observer({
                let recent = Arc::clone(&recent);
                move |users: &[UserId], expired: bool| {
                    let mut recent = recent.lock();
                    for &user in users {
                        recent.push(user, expired);
                    }
                }
            }),
    );

    let sync_config = SyncConfig::default()
        .group_bits(config.group_bits.clone())
        .allowed(config.allowed)
        .resync_interval(config.resync_interval)
        .discovery_interval(config.discovery_interval)
        .max_channels(config.max_channels)
        .max_message_bytes(config.max_message_bytes)
        .max_socket_message_bytes(config.max_socket_message_bytes)
        .tls_roots(tls_roots);
    let source_shutdown = shutdown.child_token();
    // The source is made first (its status is what the group's handler tells), started once
    // the group has assigned this instance its partitions.
    enum Source {
        Sync(PresenceSync),
        Relay(RelaySource),
    }
    let (status, source) = match &config.source {
        SourceConfig::Genesys { groups } => {
            let selection = if groups.is_empty() {
                UserSelection::AllActive
            } else {
                UserSelection::Groups(groups.clone())
            };
            let sync =
                PresenceSync::new(client.clone(), sync_config.users(selection), join.clone())?
                    .with_owner(Arc::clone(&ownership) as Arc<dyn Owner>);
            (sync.status(), Source::Sync(sync))
        }
        SourceConfig::Relay { url } => {
            let relay = RelaySource::new(url, client.clone(), sync_config, join.clone())?;
            (relay.status(), Source::Relay(relay))
        }
    };
    let member = {
        let kafka = config.kafka.clone();
        let group = config.group.clone();
        let handler = Arc::new(Handover {
            join: join.clone(),
            ownership: Arc::clone(&ownership),
            source: status.clone(),
            runtime: tokio::runtime::Handle::current(),
        });
        tokio::task::spawn_blocking(move || {
            GroupMember::start_with(&kafka, ownership, group, handler)
        })
        .await
        .context("joining the consumer group")??
    };
    let group_stats = member.stats();
    let first_assignment = Instant::now() + FIRST_ASSIGNMENT;
    while group_stats
        .assignments
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
        && Instant::now() < first_assignment
        && !shutdown.is_cancelled()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let source = match source {
        Source::Sync(sync) => tokio::spawn(sync.run(source_shutdown.clone())),
        Source::Relay(relay) => tokio::spawn(relay.run(source_shutdown.clone())),
    };

    let state = Arc::new(AppState {
        registry: Arc::clone(&registry),
        sync: status,
        client,
        publisher: Arc::clone(&publisher) as Arc<dyn Publisher>,
        started,
        recent: Arc::clone(&recent),
        sink: Arc::clone(join.stats()),
        history: Mutex::new(History::new(config.history_window, SAMPLE_INTERVAL)),
        group: GroupView {
            group_id: config.group.group_id.clone(),
            instance_id: config.group.instance_id.clone(),
            ownership: member.ownership(),
            stats: Arc::clone(&group_stats),
        },
    });

    // The dashboard's history: one sample a second into a ring allocated above.
    let sampler = tokio::spawn(crate::history::run_sampler(
        Arc::clone(&state),
        source_shutdown.clone(),
    ));

    // Expiry: swept entries become tombstones (under the registry's locks, in the join), held
    // back while the source is not healthy.
    let sweeper = {
        let join = join.clone();
        let source = state.sync.clone();
        let stop = source_shutdown.clone();
        let every = sweep_interval(config.ttl);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let swept = join.sweep(source.is_ready());
                if !swept.expired.is_empty() {
                    log::debug!("expired {} users", swept.expired.len());
                }
            }
        })
    };

    let server_stop = CancellationToken::new();
    let server = {
        let stop = server_stop.clone();
        let router = crate::admin::router_with(Arc::clone(&state), config.admin.clone());
        tokio::spawn(async move {
            axum::serve(admin, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };

    // Wait for a stop request, for the source to end on its own (a fatal error), or for the
    // Kafka producer to fail for good: then exit with an error so that the supervisor starts
    // a new bridge, which resyncs every user on start.
    let mut source = source;
    let fatal = tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        reason = publisher.fatal_error() => Some(anyhow!(
            "the Kafka producer failed and cannot deliver anything more: {reason}"
        )),
        () = member.ended() => Some(anyhow!(
            "the consumer group member stopped unexpectedly (see the log above)"
        )),
        ended = &mut source => match ended {
            // The source's token is a child of `shutdown`: a clean end during shutdown is fine.
            Ok(Ok(())) if shutdown.is_cancelled() => None,
            Ok(Ok(())) => Some(anyhow!("the presence source stopped unexpectedly")),
            Ok(Err(e)) => Some(e.into()),
            Err(e) => Some(anyhow::Error::new(e).context("the presence source failed")),
        },
    };

    // Leave the group first: the owned partitions are handed over (their users' records
    // flushed, within the handover's own bound) while the source still runs, so that the next
    // owners start from the topic at once. Then stop taking events, flush the rest within the
    // grace, and close.
    let _ = tokio::task::spawn_blocking(move || member.stop()).await;
    source_shutdown.cancel();
    if fatal.is_none() && !source.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut source).await;
    }
    let _ = sweeper.await;
    let _ = sampler.await;
    let report = publisher.flush(config.shutdown_grace).await;
    if report.is_complete() {
        log::info!("Kafka flushed");
    } else {
        log::warn!(
            "shutdown grace of {:?} ran out: {} users still pending and {} records unacknowledged (e.g. {:?})",
            config.shutdown_grace,
            report.pending,
            report.in_flight,
            report.undelivered_users
        );
    }
    server_stop.cancel();
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => log::warn!("admin server: {e}"),
        Err(_) => log::warn!("admin server did not stop in time"),
        _ => {}
    }
    match fatal {
        Some(e) => Err(e),
        None => {
            log::info!("stopped cleanly");
            Ok(())
        }
    }
}
