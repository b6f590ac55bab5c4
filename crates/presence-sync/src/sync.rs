//! The Genesys notification sync: discovery, planning, the channel workers, the resync task
//! and the periodic resync.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use genesys_auth::GenesysClient;
use presence_frame::{GroupMask, Guid, Owner, PresenceEvent, UserId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{bulk_presence, members_uri, users_uri, walk_pages};
use crate::backoff::full_jitter;
use crate::channel::{ChannelContext, ChannelUsers};
use crate::config::{SyncConfig, UserSelection};
use crate::decode::{Decoder, UserMasks};
use crate::error::{Error, Result};
use crate::plan::ChannelPlan;
use crate::resync::{ResyncRequest, Resyncer};
use crate::sink::PresenceSink;
use crate::stats::{ChannelSlot, SyncStatus, add, bump};

/// Streams Genesys Cloud presence for a set of users into a [`PresenceSink`], and keeps it
/// right through every fault the service can throw. See the [crate docs](crate).
pub struct PresenceSync {
    client: GenesysClient,
    config: SyncConfig,
    sink: Arc<dyn PresenceSink>,
    status: SyncStatus,
    owner: Option<Arc<dyn Owner>>,
}

/// Users found by a discovery, their group masks, and the presence that came with them.
struct Discovered {
    users: Vec<Guid>,
    masks: HashMap<Guid, GroupMask>,
    snapshot: Vec<PresenceEvent>,
    /// Which listing this is: 0 for the first, one more for each re-discovery.
    seq: u64,
}

/// The last listing of the organisation, owned users or not: what a change of ownership is
/// planned from, without listing again.
struct Listing {
    users: Vec<Guid>,
    masks: HashMap<Guid, GroupMask>,
    seq: u64,
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
            owner: None,
        })
    }

    /// Watches only the users `owner` owns (when several instances share the organisation;
    /// see [`SyncStatus::ownership_changed`]). Owning more than the channels hold is not an
    /// error then: as many as fit are watched, the rest counted
    /// ([`SyncStatus::unwatched_users`]) and logged. By default, every user is owned.
    pub fn with_owner(mut self, owner: Arc<dyn Owner>) -> PresenceSync {
        self.owner = Some(owner);
        self
    }

    /// Whether `user` is owned (always, without an owner).
    fn owns(&self, user: Guid) -> bool {
        self.owner
            .as_ref()
            .is_none_or(|owner| owner.owns(UserId::Genesys(user)))
    }

    /// `found` cut down to the owned users.
    fn owned(&self, mut found: Discovered) -> Discovered {
        if self.owner.is_some() {
            found.users.retain(|u| self.owns(*u));
            found.snapshot.retain(|e| match e.user {
                UserId::Genesys(user) => self.owns(user),
                UserId::Relay(_) => false,
            });
        }
        found
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
                r = discover(self.client.clone(), self.config.clone()) => r,
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
        let mut listing = Listing {
            users: discovered.users.clone(),
            masks: discovered.masks.clone(),
            seq: 0,
        };
        let listed = Arc::new(AtomicUsize::new(listing.users.len()));
        let told = self.status.ownership_told.load(Ordering::SeqCst);
        let mut discovered = self.owned(discovered);
        let owned: HashSet<Guid> = discovered.users.iter().copied().collect();
        let capacity = self.config.topics_per_channel.max(1) * (self.config.max_channels - 1);
        if self.owner.is_some() && discovered.users.len() > capacity {
            // Owned is not chosen: watch what fits, say the rest.
            discovered.users.sort_unstable();
            let unwatched = discovered.users.split_off(capacity);
            log::warn!(
                "this instance owns {} users, more than its OAuth client's channels hold ({capacity}); {} are not watched (add instances, each with its own OAuth client)",
                discovered.users.len() + unwatched.len(),
                unwatched.len()
            );
            self.status
                .unwatched
                .store(unwatched.len(), Ordering::Relaxed);
        }
        let plan = ChannelPlan::new(
            discovered.users,
            self.config.topics_per_channel,
            self.config.max_channels - 1,
        )?;
        self.status.watched.store(plan.users(), Ordering::Relaxed);
        log::info!(
            "planned {} notification channel(s) for {} users",
            plan.channels().len(),
            plan.users()
        );

        let masks = Arc::new(UserMasks::new(discovered.masks, self.config.default_mask));
        let decoder = Arc::new(Decoder::new(
            Arc::clone(&self.status.stats),
            Arc::clone(&masks),
            self.config.allowed,
            self.config.max_message_bytes,
        ));
        // What the sink already holds (a warm start's states) is set right first; held users
        // this listing does not have are removed once the next one misses them too.
        let (stale_masks, unlisted) = against_held(&self.held(), &masks, &owned);
        let mut absences = Absences::default();
        absences.confirm(0, &unlisted.into_iter().collect());
        let stale: HashSet<Guid> = stale_masks.iter().copied().collect();
        let (regrouped, snapshot) = split_off_users(discovered.snapshot, &stale);
        self.deliver_snapshot(&decoder, snapshot);

        let tracker = TaskTracker::new();
        let (resync_tx, resync_rx) = mpsc::channel(plan.channels().len() * 2 + 4);
        let resyncer = Resyncer {
            client: self.client.clone(),
            selection: self.config.users.clone(),
            page_size: self.config.page_size,
            listed: Arc::clone(&listed),
            decoder: Arc::clone(&decoder),
            sink: Arc::clone(&self.sink),
            batch_size: self.config.batch_size,
        };
        tracker.spawn(resyncer.run(resync_rx, shutdown.clone()));
        // Every channel the client may have, less one for each channel added below.
        let permits = self.config.max_channels.max(1);
        let context = Arc::new(ChannelContext {
            rollover_slots: Arc::new(tokio::sync::Semaphore::new(permits)),
            client: self.client.clone(),
            config: self.config.clone(),
            decoder,
            sink: Arc::clone(&self.sink),
            status: self.status.clone(),
            resync: resync_tx.clone(),
            tasks: tracker.clone(),
            token_life_ms: Default::default(),
        });
        let mut watch = Watch {
            context,
            masks,
            absences,
            channels: Vec::new(),
            retired: Vec::new(),
            rollover_permits: permits,
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
        };
        for users in plan.channels() {
            watch.add_channel(users.as_slice().into());
        }
        if !stale_masks.is_empty() {
            log::info!(
                "{} users held from before carry another group mask than listed: published again",
                stale_masks.len()
            );
            add(&self.status.stats.mask_changes, stale_masks.len() as u64);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.publish_masks(&watch, &stale_masks, regrouped) => {}
            }
        }
        // Closed, but still taking the drain tasks of rollovers and the channels re-discovery
        // adds: `wait` returns once every channel, the resync task and every drain have ended.
        tracker.close();
        self.status.ready.store(true, Ordering::Relaxed);
        self.status.followed_ownership(told);

        // The periodic resync and re-discovery take turns: neither runs while the other does,
        // and each makes one request at a time, so that the channels' own resyncs, waiting in
        // the client's pacing queue (first come, first served), are never starved by them.
        // Either may take long under the rate limit (a whole-org listing); a change of
        // ownership is followed meanwhile, at once, from the last listing, so that a
        // revocation never waits for them. Both run as tasks of their own, which go on while
        // this loop follows a change (and may make requests of its own): a listing held here
        // as a future and not polled meanwhile could sit in the client's pacing queue, and
        // every request behind it would wait for good.
        let after = |interval: Option<std::time::Duration>| interval.map(|i| Instant::now() + i);
        let mut next_resync = after(self.config.resync_interval);
        let mut next_discovery = after(self.config.discovery_interval);
        let mut resync: Option<oneshot::Receiver<crate::resync::ResyncOutcome>> = None;
        let mut discovery: Option<(Instant, JoinHandle<genesys_auth::Result<Discovered>>)> = None;
        // Whether the listing under way was started at once to confirm users the one before
        // it missed.
        let mut confirming = false;
        loop {
            let idle = resync.is_none() && discovery.is_none();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sleep_until_some(next_resync), if idle => {
                    let (done, answer) = oneshot::channel();
                    let request = ResyncRequest {
                        users: watch.all_users(),
                        done,
                    };
                    if resync_tx.send(request).await.is_err() {
                        break;
                    }
                    resync = Some(answer);
                }
                _ = async { resync.as_mut().expect("guarded").await }, if resync.is_some() => {
                    resync = None;
                    next_resync = after(self.config.resync_interval);
                }
                _ = self.status.replan.notified() => {
                    let found = Discovered {
                        users: listing.users.clone(),
                        masks: listing.masks.clone(),
                        snapshot: Vec::new(),
                        seq: listing.seq,
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.apply_listing(&mut watch, found, Instant::now(), "ownership change") => {}
                    }
                }
                _ = sleep_until_some(next_discovery), if idle => {
                    let listing = discover(self.client.clone(), self.config.clone());
                    discovery = Some((Instant::now(), tokio::spawn(listing)));
                }
                found = async { (&mut discovery.as_mut().expect("guarded").1).await }, if discovery.is_some() => {
                    let started = discovery.take().map_or_else(Instant::now, |(at, _)| at);
                    let found = found.unwrap_or_else(|e| Err(genesys_auth::Error::Worker(e.to_string())));
                    let changes = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        changes = self.rediscovered(&mut watch, &mut listing, found, started) => changes,
                    };
                    listed.store(listing.users.len(), Ordering::Relaxed);
                    next_discovery = after(self.config.discovery_interval);
                    let confirmed = std::mem::take(&mut confirming);
                    if let Some(changes) = changes {
                        // It read every watched user's presence: that was the resync too.
                        next_resync = after(self.config.resync_interval);
                        // Users it missed are removed only when the next listing misses them
                        // too: list again at once rather than an interval later, so that a
                        // deleted user's tombstone waits one listing, not two intervals. Once:
                        // what a confirming listing misses waits for the interval.
                        if changes.unconfirmed > 0 && !confirmed && next_discovery.is_some() {
                            next_discovery = Some(Instant::now());
                            confirming = true;
                        }
                    }
                }
            }
        }
        if let Some((_, listing)) = discovery {
            listing.abort();
        }
        tracker.wait().await;
        self.status.ready.store(false, Ordering::Relaxed);
        // Nobody waits for a sync that has stopped.
        self.status.followed_ownership(u64::MAX);
        log::info!("presence sync stopped");
        Ok(())
    }

    /// The Genesys users the sink holds, with the group mask of the state it holds.
    fn held(&self) -> HashMap<Guid, GroupMask> {
        self.sink
            .held()
            .into_iter()
            .filter_map(|(user, mask)| match user {
                UserId::Genesys(user) => Some((user, mask)),
                UserId::Relay(_) => None,
            })
            .collect()
    }

    fn deliver_snapshot(&self, decoder: &Decoder, snapshot: Vec<PresenceEvent>) {
        add(&self.status.stats.resync_events, snapshot.len() as u64);
        let mut batch = Vec::with_capacity(self.config.batch_size);
        for event in snapshot {
            batch.push(event);
            if batch.len() >= self.config.batch_size {
                decoder.deliver(&*self.sink, &mut batch);
            }
        }
        decoder.deliver(&*self.sink, &mut batch);
    }
}

/// Lists the users to watch, their group masks and their presence. Watching every
/// active user, one listing with `expand=presence&expand=groups` gives all three (one
/// call per 500 users); watching groups, each group's members are listed with their
/// presence, and each mapped group's members for the masks.
async fn discover(client: GenesysClient, config: SyncConfig) -> genesys_auth::Result<Discovered> {
    let page = config.page_size;
    let mut bits: HashMap<Guid, GroupMask> = HashMap::new();
    for (group, bit) in &config.group_bits {
        if let Some(bit) = GroupMask::bit(*bit) {
            *bits.entry(*group).or_default() |= bit;
        }
    }
    let groups_inline = matches!(config.users, UserSelection::AllActive);
    let mut masks: HashMap<Guid, GroupMask> = HashMap::new();
    if !groups_inline {
        for (group, bit) in &bits {
            walk_pages(&client, members_uri(*group, page, false), |listed| {
                *masks.entry(listed.user).or_default() |= *bit;
            })
            .await?;
        }
    }
    let mut users = Vec::new();
    let mut snapshot = Vec::new();
    let uris = match &config.users {
        UserSelection::AllActive => vec![users_uri(page, true, !bits.is_empty())],
        UserSelection::Groups(groups) => {
            groups.iter().map(|g| members_uri(*g, page, true)).collect()
        }
    };
    for uri in uris {
        let bad = walk_pages(&client, uri, |listed| {
            if groups_inline {
                let mask = listed
                    .groups
                    .iter()
                    .filter_map(|g| bits.get(g))
                    .fold(GroupMask::default(), |mask, bit| mask | *bit);
                if mask != GroupMask::default() {
                    masks.insert(listed.user, mask);
                }
            }
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
        seq: 0,
    })
}

/// What the sink holds that a listing shows wrong: the `listed` users whose held state
/// carries another group mask than `masks` (updated to the listing) gives them, and the users
/// held but not listed (gone, or skipped by this listing: see [`Absences`]). Both sorted.
fn against_held(
    held: &HashMap<Guid, GroupMask>,
    masks: &UserMasks,
    listed: &HashSet<Guid>,
) -> (Vec<Guid>, Vec<Guid>) {
    let mut stale_masks = Vec::new();
    let mut unlisted = Vec::new();
    for (user, mask) in held {
        if !listed.contains(user) {
            unlisted.push(*user);
        } else if *mask != masks.of(UserId::Genesys(*user)) {
            stale_masks.push(*user);
        }
    }
    stale_masks.sort_unstable();
    unlisted.sort_unstable();
    (stale_masks, unlisted)
}

/// `snapshot` split into the events of `users` and the rest.
fn split_off_users(
    snapshot: Vec<PresenceEvent>,
    users: &HashSet<Guid>,
) -> (Vec<PresenceEvent>, Vec<PresenceEvent>) {
    if users.is_empty() {
        return (Vec::new(), snapshot);
    }
    snapshot.into_iter().partition(|e| match e.user {
        UserId::Genesys(user) => users.contains(&user),
        UserId::Relay(_) => false,
    })
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a running sync watches: its channels and their users, and what it needs to add or
/// close a channel.
struct Watch {
    context: Arc<ChannelContext>,
    masks: Arc<UserMasks>,
    absences: Absences,
    channels: Vec<Watched>,
    /// Closed channels' slots and workers: a slot is reused once its worker has ended.
    retired: Vec<(usize, JoinHandle<()>)>,
    /// Permits of `context.rollover_slots` in all (held or not).
    rollover_permits: usize,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Owned users the last listings did not have, each with the first listing that missed it. A
/// user is taken for gone only when a later listing misses it too: the users listing is paged
/// by offset, so a user deleted (or created) between two page fetches shifts the users after
/// it, and one listing can skip a user who is still there. Removing such a user would
/// tombstone a live user until the next listing brings it back with its old state, which,
/// older than the tombstone, a reader keeping each key's newest event time then ignores.
#[derive(Debug, Default)]
struct Absences {
    since: HashMap<Guid, u64>,
}

impl Absences {
    /// Of `missing` (the users listing `seq` did not have), those an earlier listing missed
    /// too: gone. The others are remembered from `seq`; users not missing now are forgotten.
    fn confirm(&mut self, seq: u64, missing: &HashSet<Guid>) -> HashSet<Guid> {
        self.since.retain(|user, _| missing.contains(user));
        let mut gone = HashSet::new();
        for user in missing {
            let first = *self.since.entry(*user).or_insert(seq);
            if first < seq {
                gone.insert(*user);
            }
        }
        self.since.retain(|user, _| !gone.contains(user));
        gone
    }
}

/// One channel of a running sync.
struct Watched {
    /// Its slot in the status's channel list, which is also its name in the log.
    index: usize,
    members: Arc<ChannelUsers>,
    /// Stops this channel alone.
    cancel: CancellationToken,
    worker: JoinHandle<()>,
}

/// How long closing a channel waits for its worker to drop the socket.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Watch {
    /// Starts a channel worker for `users`, in the first free slot.
    fn add_channel(&mut self, users: Arc<[Guid]>) {
        let members = Arc::new(ChannelUsers::new(Arc::clone(&users)));
        let index = {
            let mut slots = self.context.status.channels.lock();
            let reusable = self.retired.iter().position(|(_, w)| w.is_finished());
            let index = match reusable {
                Some(at) => self.retired.swap_remove(at).0,
                None => slots.len(),
            };
            if let Some(slot) = slots.get_mut(index) {
                *slot = ChannelSlot::new(users.len());
            } else {
                slots.push(ChannelSlot::new(users.len()));
            }
            index
        };
        let cancel = self.shutdown.child_token();
        let worker = self.tracker.spawn(Arc::clone(&self.context).run(
            index,
            Arc::clone(&members),
            cancel.clone(),
        ));
        self.channels.push(Watched {
            index,
            members,
            cancel,
            worker,
        });
        // One rollover slot fewer: the new channel takes a free one (one is always kept).
        if self.rollover_permits > 1
            && let Ok(permit) = self.context.rollover_slots.try_acquire()
        {
            permit.forget();
            self.rollover_permits -= 1;
        }
    }

    /// Closes the channels at `positions` (of `channels`): their workers stop and drop their
    /// sockets (waited for, briefly), their slots leave the status. Genesys has no way to
    /// delete a channel; one without a connection is the first it replaces when the OAuth
    /// client creates one more than its limit, and it expires by itself.
    async fn close_channels(&mut self, mut positions: Vec<usize>) {
        positions.sort_unstable();
        positions.dedup();
        let mut closing = Vec::with_capacity(positions.len());
        for at in positions.into_iter().rev() {
            let watched = self.channels.remove(at);
            watched.cancel.cancel();
            closing.push(watched);
        }
        for mut watched in closing {
            if tokio::time::timeout(CLOSE_WAIT, &mut watched.worker)
                .await
                .is_err()
            {
                log::warn!(
                    "channel {}: still stopping after {CLOSE_WAIT:?}",
                    watched.index
                );
            }
            self.context.status.update(watched.index, |slot| {
                slot.closed = true;
                slot.users = 0;
                slot.channel_id = None;
            });
            log::info!(
                "channel {}: closed (its users fit on the others)",
                watched.index
            );
            bump(&self.context.status.stats.channels_closed);
            self.retired.push((watched.index, watched.worker));
            let max = self.context.config.max_channels;
            if self.rollover_permits < max.saturating_sub(self.channels.len()).max(1) {
                self.context.rollover_slots.add_permits(1);
                self.rollover_permits += 1;
            }
        }
    }

    /// Every watched user.
    fn all_users(&self) -> Arc<[Guid]> {
        self.channels
            .iter()
            .flat_map(|c| c.members.get().to_vec())
            .collect()
    }
}

/// How many of `channels` channels to keep for `users` users, `per_channel` topics each:
/// fewer only when the users would fill the fewer to at most 90 %, so that a few new users
/// after a close do not need a new channel at once (none for no users).
fn channels_to_keep(channels: usize, users: usize, per_channel: usize) -> usize {
    let mut keep = channels;
    while keep > 0 && users * 10 <= (keep - 1) * per_channel * 9 {
        keep -= 1;
    }
    keep
}

/// What one re-discovery changed.
#[derive(Debug, Default)]
struct Changes {
    added: usize,
    removed: usize,
    mask_changes: usize,
    retried: usize,
    not_placed: usize,
    /// Of the removed, those still listed but no longer owned.
    released: usize,
    /// Channels closed because the users left fit in fewer.
    closed: usize,
    /// Users moved from the closed channels onto the others.
    moved: usize,
    /// Users the sink held from before (a warm start) that were neither listed nor watched,
    /// removed.
    left_over: usize,
    /// Owned users this listing did not have but the one before did: kept until a later
    /// listing confirms them gone.
    unconfirmed: usize,
}

impl PresenceSync {
    /// Follows the organisation as a re-discovery that started at `started` found it
    /// (`found`, from [`discover`]): subscribes new users on
    /// channels with room (a new channel only when none has any, within the channel limit),
    /// unsubscribes and removes those no longer listed, asks again for rejected users still
    /// listed, and publishes changed group masks. The listing carries every user's presence,
    /// which is delivered as a resync would deliver it, so a re-discovery is also a full
    /// resync. Returns what changed; one log line with the counts. A failed listing changes
    /// nothing (the next discovery tries again) and returns `None`.
    async fn rediscovered(
        &self,
        watch: &mut Watch,
        listing: &mut Listing,
        found: genesys_auth::Result<Discovered>,
        started: Instant,
    ) -> Option<Changes> {
        let mut found = match found {
            Ok(found) => found,
            Err(e) => {
                log::warn!("re-discovering users failed: {e}; trying again at the next discovery");
                return None;
            }
        };
        listing.users.clone_from(&found.users);
        listing.masks.clone_from(&found.masks);
        listing.seq += 1;
        found.seq = listing.seq;
        let changes = self
            .apply_listing(watch, found, started, "re-discovery")
            .await;
        bump(&self.status.stats.discoveries);
        Some(changes)
    }

    /// Follows a listing (cut down to the owned users) and logs one line with the counts.
    async fn apply_listing(
        &self,
        watch: &mut Watch,
        found: Discovered,
        started: Instant,
        what: &str,
    ) -> Changes {
        let told = self.status.ownership_told.load(Ordering::SeqCst);
        let listed = found.users.len();
        let found = self.owned(found);
        let owned = found.users.len();
        let changes = self.follow(watch, found).await;
        self.status.followed_ownership(told);
        log::debug!(
            "{what}: {listed} users listed, {owned} owned, {} watched now",
            self.status.watched_users()
        );
        add(&self.status.stats.users_added, changes.added as u64);
        let removed = changes.removed - changes.released + changes.left_over;
        add(&self.status.stats.users_removed, removed as u64);
        add(&self.status.stats.mask_changes, changes.mask_changes as u64);
        add(&self.status.stats.users_released, changes.released as u64);
        log::info!(
            "{what}: {} users added, {} removed{}, {} released to other instances, {} mask changes, {} rejected asked again{}{}{}, took {:.1?}",
            changes.added,
            removed,
            if changes.left_over > 0 {
                format!(
                    " ({} of them held from before, not watched)",
                    changes.left_over
                )
            } else {
                String::new()
            },
            changes.released,
            changes.mask_changes,
            changes.retried,
            if changes.unconfirmed > 0 {
                format!(
                    ", {} not listed this time (removed if the next listing misses them too)",
                    changes.unconfirmed
                )
            } else {
                String::new()
            },
            if changes.closed > 0 {
                format!(
                    ", {} channels closed ({} users moved onto the others)",
                    changes.closed, changes.moved
                )
            } else {
                String::new()
            },
            if changes.not_placed > 0 {
                format!(
                    ", {} not watched (the channel limit is reached)",
                    changes.not_placed
                )
            } else {
                String::new()
            },
            started.elapsed()
        );
        changes
    }

    async fn follow(&self, watch: &mut Watch, found: Discovered) -> Changes {
        let mut changes = Changes::default();
        let listed: HashSet<Guid> = found.users.iter().copied().collect();
        let mut lists: Vec<Vec<Guid>> = watch
            .channels
            .iter()
            .map(|c| c.members.get().to_vec())
            .collect();
        let watched: HashSet<Guid> = lists.iter().flatten().copied().collect();

        // Masks: the new ones for everybody; the kept users whose mask changed, and the users
        // whose held state carries another mask (a warm start's, read back from the topic).
        let kept = watched.iter().copied().filter(|u| listed.contains(u));
        let mut changed_masks = watch.masks.update(found.masks, kept);
        let (stale_masks, held_unlisted) = against_held(&self.held(), &watch.masks, &listed);
        let mut regroup: HashSet<Guid> = changed_masks.iter().copied().collect();
        changed_masks.extend(stale_masks.into_iter().filter(|u| regroup.insert(*u)));
        changes.mask_changes = changed_masks.len();

        // Gone: unsubscribed (each channel's remaining list), removed from the sink. Users
        // no longer owned go at once; an owned user the listing does not have only once a
        // later listing misses it too (see `Absences`): watched, or held from before (a warm
        // start's states of users gone since).
        let (released, unlisted): (Vec<Guid>, Vec<Guid>) = watched
            .iter()
            .copied()
            .filter(|u| !listed.contains(u))
            .partition(|u| !self.owns(*u));
        let missing: HashSet<Guid> = unlisted.iter().chain(&held_unlisted).copied().collect();
        let gone = watch.absences.confirm(found.seq, &missing);
        let mut removed = released;
        changes.released = removed.len();
        removed.extend(unlisted.into_iter().filter(|u| gone.contains(u)));
        changes.removed = removed.len();
        let removed_set: HashSet<Guid> = removed.iter().copied().collect();
        let left_over: Vec<Guid> = held_unlisted
            .into_iter()
            .filter(|u| gone.contains(u) && !watched.contains(u))
            .collect();
        changes.left_over = left_over.len();
        changes.unconfirmed = missing.len() - gone.len();

        // Rejected before: dropped when gone, asked for again when still listed.
        let rejected = self.status.rejected_users();
        let gone_rejected: Vec<Guid> = rejected
            .iter()
            .copied()
            .filter(|u| !listed.contains(u))
            .collect();
        self.status.forget_rejected(&gone_rejected);
        let retry: HashSet<Guid> = rejected
            .iter()
            .copied()
            .filter(|u| listed.contains(u) && watched.contains(u))
            .collect();
        changes.retried = retry.len();

        // New: on the channels with the most room first.
        let mut added: Vec<Guid> = found
            .users
            .iter()
            .copied()
            .filter(|u| !watched.contains(u))
            .collect();
        added.sort_unstable();
        added.dedup();
        changes.added = added.len();
        watch.masks.next_round();
        watch.masks.set_gone(&removed, true);
        watch.masks.set_gone(&added, false);

        let per_channel = self.config.topics_per_channel.max(1);
        let mut touched = vec![false; lists.len()];
        for (list, touched) in lists.iter_mut().zip(touched.iter_mut()) {
            let before = list.len();
            list.retain(|u| !removed_set.contains(u));
            *touched = list.len() != before || list.iter().any(|u| retry.contains(u));
        }
        // Fewer channels when the users left fit in fewer (after a release, or deletions):
        // the emptiest close and their users move onto the others (each subscribed there and
        // resynced, which covers the moment between the two channels).
        let users_after = lists.iter().map(Vec::len).sum::<usize>() + added.len();
        let keep = channels_to_keep(lists.len(), users_after, per_channel);
        let mut closing: Vec<usize> = (0..lists.len()).collect();
        closing.sort_by_key(|&i| (lists[i].len(), std::cmp::Reverse(i)));
        closing.truncate(lists.len() - keep);
        let mut moved = Vec::new();
        for &i in &closing {
            moved.append(&mut lists[i]);
        }
        changes.closed = closing.len();
        changes.moved = moved.len();
        let mut rest = Vec::new();
        for user in moved.into_iter().chain(added) {
            let roomiest = lists
                .iter()
                .enumerate()
                .filter(|(i, l)| l.len() < per_channel && !closing.contains(i))
                .min_by_key(|(_, l)| l.len())
                .map(|(i, _)| i);
            match roomiest {
                Some(i) => {
                    lists[i].push(user);
                    touched[i] = true;
                }
                None => rest.push(user),
            }
        }
        for (i, (watched, list)) in watch.channels.iter().zip(lists).enumerate() {
            if touched[i] && !closing.contains(&i) {
                let retry_here: Vec<Guid> =
                    list.iter().copied().filter(|u| retry.contains(u)).collect();
                let len = list.len();
                watched.members.set(list.into(), retry_here);
                self.status.update(watched.index, |s| s.users = len);
            }
        }
        watch.close_channels(closing).await;
        // No room anywhere: new channels, within the plan's limit (one of Genesys's channels
        // stays free for rollovers).
        let limit = self.config.max_channels.saturating_sub(1);
        let mut rest = rest.as_slice();
        while !rest.is_empty() && watch.channels.len() < limit {
            let (head, tail) = rest.split_at(rest.len().min(per_channel));
            log::info!(
                "no channel has room; adding a channel for {} users",
                head.len()
            );
            watch.add_channel(head.into());
            rest = tail;
        }
        changes.not_placed = rest.len();
        changes.added = changes.added.saturating_sub(rest.len());
        self.status.unwatched.store(rest.len(), Ordering::Relaxed);
        self.status.watched.store(
            watch.channels.iter().map(|c| c.members.get().len()).sum(),
            Ordering::Relaxed,
        );
        // Not watched after all: their late events are dropped.
        watch.masks.set_gone(rest, true);

        if !removed.is_empty() || !left_over.is_empty() {
            let users: Vec<UserId> = removed
                .iter()
                .chain(&left_over)
                .map(|u| UserId::Genesys(*u))
                .collect();
            self.sink.remove(&users);
        }
        // The presence listed with the users: the changed masks with it, the rest as a
        // resync (new users are resynced again once subscribed, which closes the gap between
        // the listing and their subscription).
        let (regrouped, rest) = split_off_users(found.snapshot, &regroup);
        self.publish_masks(watch, &changed_masks, regrouped).await;
        self.deliver_snapshot(&watch.context.decoder, rest);
        changes
    }

    /// Publishes the changed masks of `users`: a user whose new mask no longer passes the
    /// filter is removed from the sink; the others' presence (`listed` when the listing had
    /// it, else fetched in bulk, in the same pacing as every request) is handed to
    /// [`PresenceSink::regroup`] with the new mask and Genesys's own `modifiedDate`: a
    /// registry orders two states of the same time by their content, in which a smaller mask
    /// loses, so an ordinary publish could leave the old mask in place.
    async fn publish_masks(&self, watch: &Watch, users: &[Guid], listed: Vec<PresenceEvent>) {
        if users.is_empty() {
            return;
        }
        let (keep, drop): (Vec<Guid>, Vec<Guid>) = users.iter().partition(|u| {
            UserMasks::passes(watch.masks.of(UserId::Genesys(**u)), self.config.allowed)
        });
        if !drop.is_empty() {
            let gone: Vec<UserId> = drop.iter().map(|u| UserId::Genesys(*u)).collect();
            self.sink.remove(&gone);
        }
        let decoder = &watch.context.decoder;
        let mut batch = Vec::with_capacity(self.config.batch_size);
        let mut unlisted: HashSet<Guid> = keep.iter().copied().collect();
        for event in listed {
            if let UserId::Genesys(user) = event.user
                && unlisted.remove(&user)
            {
                batch.push(event);
            }
        }
        add(&self.status.stats.resync_events, batch.len() as u64);
        decoder.deliver_regroup(&*self.sink, &mut batch);
        let keep: Vec<Guid> = keep.into_iter().filter(|u| unlisted.contains(u)).collect();
        for chunk in keep.chunks(50) {
            match bulk_presence(&self.client, chunk).await {
                Ok((events, _bad)) => {
                    add(&self.status.stats.resync_events, events.len() as u64);
                    batch.extend(events);
                    decoder.deliver_regroup(&*self.sink, &mut batch);
                }
                Err(e) => {
                    log::warn!(
                        "re-discovery: presence of {} users whose group mask changed could not be read: {e}; they are published at their next change or resync",
                        chunk.len()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Absences, channels_to_keep};
    use presence_frame::Guid;
    use std::collections::HashSet;

    #[test]
    fn a_user_is_gone_only_when_a_later_listing_misses_it_too() {
        let set = |users: &[u128]| -> HashSet<Guid> { users.iter().map(|u| Guid(*u)).collect() };
        let mut absences = Absences::default();
        // Listing 1 skips users 1 and 2: nobody is gone yet.
        assert!(absences.confirm(1, &set(&[1, 2])).is_empty());
        // The same listing again (a change of ownership planned from it) confirms nothing.
        assert!(absences.confirm(1, &set(&[1, 2])).is_empty());
        // Listing 2 has user 1 again (it was skipped, not gone) and misses 2 and 3.
        assert_eq!(absences.confirm(2, &set(&[2, 3])), set(&[2]));
        // User 1 is forgotten: missed again later, it needs two listings once more.
        assert!(absences.confirm(3, &set(&[1, 3])) == set(&[3]));
        assert_eq!(absences.confirm(4, &set(&[1])), set(&[1]));
        assert!(absences.since.is_empty());
    }

    #[test]
    fn channels_close_only_when_the_rest_stay_at_most_90_percent_full() {
        // Nothing to close: full, or the fewer would be over 90 %.
        assert_eq!(channels_to_keep(5, 5_000, 1_000), 5);
        assert_eq!(channels_to_keep(5, 3_601, 1_000), 5);
        // 3,600 users fill 4 channels to exactly 90 %.
        assert_eq!(channels_to_keep(5, 3_600, 1_000), 4);
        // A failback: 15 channels, 7,500 users left: 9 hold them at 83 %.
        assert_eq!(channels_to_keep(15, 7_500, 1_000), 9);
        // Never more than there are; none for nobody.
        assert_eq!(channels_to_keep(2, 10_000, 1_000), 2);
        assert_eq!(channels_to_keep(3, 0, 1_000), 0);
        assert_eq!(channels_to_keep(0, 0, 1_000), 0);
        // One user keeps one channel.
        assert_eq!(channels_to_keep(4, 1, 1_000), 1);
    }
}
