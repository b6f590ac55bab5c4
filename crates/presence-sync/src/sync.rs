//! The Genesys notification sync: discovery, planning, the channel workers, the resync task
//! and the periodic resync.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use genesys_auth::GenesysClient;
use presence_frame::{GroupMask, Guid, PresenceEvent};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{members_uri, users_uri, walk_pages};
use crate::backoff::full_jitter;
use crate::channel::ChannelContext;
use crate::config::{SyncConfig, UserSelection};
use crate::decode::{Decoder, UserMasks};
use crate::error::{Error, Result};
use crate::plan::ChannelPlan;
use crate::resync::{ResyncRequest, Resyncer};
use crate::sink::PresenceSink;
use crate::stats::{ChannelSlot, ChannelState, SyncStatus, add};

/// Streams Genesys Cloud presence for a set of users into a [`PresenceSink`], and keeps it
/// right through every fault the service can throw. See the [crate docs](crate).
pub struct PresenceSync {
    client: GenesysClient,
    config: SyncConfig,
    sink: Arc<dyn PresenceSink>,
    status: SyncStatus,
}

/// Users found at start, their group masks, and the presence that came with them.
struct Discovered {
    users: Vec<Guid>,
    masks: HashMap<Guid, GroupMask>,
    snapshot: Vec<PresenceEvent>,
}

impl PresenceSync {
    /// A sync that will use `client` and deliver to `sink`. Nothing happens until
    /// [`run`](PresenceSync::run).
    pub fn new(
        client: GenesysClient,
        config: SyncConfig,
        sink: impl PresenceSink,
    ) -> Result<PresenceSync> {
        config.validate()?;
        Ok(PresenceSync {
            client,
            config,
            sink: Arc::new(sink),
            status: SyncStatus::default(),
        })
    }

    /// A live view of counters and channel states.
    pub fn status(&self) -> SyncStatus {
        self.status.clone()
    }

    /// Runs until `shutdown` is cancelled (then returns `Ok`), or until something retrying
    /// cannot fix: credentials refused, too many users for the channel limits. Everything else
    /// during discovery (network trouble, 429, 5xx, a malformed page) is retried with the
    /// reconnect backoff. Once it has returned, nothing more reaches the sink: every channel,
    /// the resync task and the drains of rolled-over sockets have ended.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let started = Instant::now();
        let mut attempt = 0u32;
        let discovered = loop {
            if attempt > 0 {
                let wait = full_jitter(self.config.backoff_base, self.config.backoff_cap, attempt);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = sleep(wait) => {}
                }
            }
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = self.discover() => r,
            };
            match result {
                Ok(found) => break found,
                Err(e) if e.is_transient() => {
                    attempt += 1;
                    log::warn!("discovering users failed: {e}; retrying");
                }
                Err(e) => return Err(Error::Refused(e)),
            }
        };
        log::info!(
            "discovered {} users ({} with presence) in {:.1?}",
            discovered.users.len(),
            discovered.snapshot.len(),
            started.elapsed()
        );
        let plan = ChannelPlan::new(
            discovered.users,
            self.config.topics_per_channel,
            self.config.max_channels - 1,
        )?;
        log::info!(
            "planned {} notification channel(s) for {} users",
            plan.channels().len(),
            plan.users()
        );

        let decoder = Arc::new(Decoder::new(
            Arc::clone(&self.status.stats),
            Arc::new(UserMasks::new(discovered.masks, self.config.default_mask)),
            self.config.allowed,
            self.config.max_message_bytes,
        ));
        self.deliver_snapshot(&decoder, discovered.snapshot);

        *self.status.channels.lock() = plan
            .channels()
            .iter()
            .map(|users| ChannelSlot {
                channel_id: None,
                state: ChannelState::Setup,
                users: users.len(),
                reconnects: 0,
                last_message: None,
            })
            .collect();

        let tracker = TaskTracker::new();
        let (resync_tx, resync_rx) = mpsc::channel(plan.channels().len() * 2 + 4);
        let resyncer = Resyncer {
            client: self.client.clone(),
            selection: self.config.users.clone(),
            page_size: self.config.page_size,
            watched: plan.users(),
            decoder: Arc::clone(&decoder),
            sink: Arc::clone(&self.sink),
            batch_size: self.config.batch_size,
        };
        tracker.spawn(resyncer.run(resync_rx, shutdown.clone()));
        let spare = self.config.max_channels - plan.channels().len();
        let context = Arc::new(ChannelContext {
            rollover_slots: Arc::new(tokio::sync::Semaphore::new(spare.max(1))),
            client: self.client.clone(),
            config: self.config.clone(),
            decoder,
            sink: Arc::clone(&self.sink),
            status: self.status.clone(),
            resync: resync_tx.clone(),
            tasks: tracker.clone(),
            token_life_ms: Default::default(),
        });
        let all_users: Arc<[Guid]> = plan.channels().iter().flatten().copied().collect();
        for (index, users) in plan.channels().iter().enumerate() {
            let users: Arc<[Guid]> = users.as_slice().into();
            tracker.spawn(Arc::clone(&context).run(index, users, shutdown.clone()));
        }
        // Closed, but still taking the drain tasks of rollovers: `wait` returns once every
        // channel, the resync task and every drain have ended.
        tracker.close();
        self.status.ready.store(true, Ordering::Relaxed);

        match self.config.resync_interval {
            Some(interval) => loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = sleep(interval) => {}
                }
                let (done, answer) = oneshot::channel();
                let request = ResyncRequest {
                    users: Arc::clone(&all_users),
                    done,
                };
                if resync_tx.send(request).await.is_err() {
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = answer => {}
                }
            },
            None => shutdown.cancelled().await,
        }
        tracker.wait().await;
        self.status.ready.store(false, Ordering::Relaxed);
        log::info!("presence sync stopped");
        Ok(())
    }

    async fn discover(&self) -> genesys_auth::Result<Discovered> {
        let page = self.config.page_size;
        let mut masks: HashMap<Guid, GroupMask> = HashMap::new();
        for (group, bit) in &self.config.group_bits {
            let Some(bit) = GroupMask::bit(*bit) else {
                continue;
            };
            walk_pages(&self.client, members_uri(*group, page, false), |listed| {
                *masks.entry(listed.user).or_default() |= bit;
            })
            .await?;
        }
        let mut users = Vec::new();
        let mut snapshot = Vec::new();
        let uris = match &self.config.users {
            UserSelection::AllActive => vec![users_uri(page, true)],
            UserSelection::Groups(groups) => {
                groups.iter().map(|g| members_uri(*g, page, true)).collect()
            }
        };
        for uri in uris {
            let bad = walk_pages(&self.client, uri, |listed| {
                users.push(listed.user);
                snapshot.extend(listed.presence);
            })
            .await?;
            if bad > 0 {
                log::warn!(
                    "discovery: {bad} users came back with an id or presence that could not be read"
                );
            }
        }
        Ok(Discovered {
            users,
            masks,
            snapshot,
        })
    }

    fn deliver_snapshot(&self, decoder: &Decoder, snapshot: Vec<PresenceEvent>) {
        add(&self.status.stats.resync_events, snapshot.len() as u64);
        let mut batch = Vec::with_capacity(self.config.batch_size);
        for event in snapshot {
            decoder.admit(event, &mut batch);
            if batch.len() >= self.config.batch_size {
                self.sink.publish(&mut batch);
                batch.clear();
            }
        }
        if !batch.is_empty() {
            self.sink.publish(&mut batch);
        }
    }
}
