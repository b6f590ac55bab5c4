//! The running emulator: shared state, the HTTP router, the background tasks (generator,
//! janitor, chaos) and the [`EmulatorHandle`] that owns them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, head, post};
use parking_lot::{Mutex, RwLock};
use presence_frame::{EventTime, FRAME_LEN, Guid};
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::admin::{Stats, TruthEntry};
use crate::auth;
use crate::bursts::ApiFaults;
use crate::channel_table::ChannelTable;
use crate::channels;
use crate::config::EmulatorConfig;
use crate::control::Control;
use crate::error::{Error, Result};
use crate::fault::{BurstScope, ChaosConfig, Fault, FaultHits, FaultTarget};
use crate::faults;
use crate::rest;
use crate::rng::Rng;
use crate::socket;
use crate::tokens::Tokens;
use crate::wire;
use crate::workload::{Change, Generator, UserPresence, World, stream};

/// How often expired channels and tokens are swept.
const JANITOR_PERIOD: Duration = Duration::from_millis(250);

/// How long [`EmulatorHandle::shutdown`] waits for tasks to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The emulator's clock: wall time at start plus tokio's elapsed time, so that a paused
/// tokio clock drives it in tests.
#[derive(Debug)]
pub(crate) struct Clock {
    wall_at_start: i64,
    started: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            wall_at_start: EventTime::now().as_millis(),
            started: Instant::now(),
        }
    }

    /// Now, in Unix milliseconds.
    pub(crate) fn now_ms(&self) -> i64 {
        self.wall_at(Instant::now()).as_millis()
    }

    /// The wall time of a tokio instant.
    pub(crate) fn wall_at(&self, at: Instant) -> EventTime {
        let since = at.saturating_duration_since(self.started).as_millis();
        EventTime(self.wall_at_start + since as i64)
    }
}

/// Global counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) events_generated: AtomicU64,
    pub(crate) events_delivered: AtomicU64,
    pub(crate) events_lost: AtomicU64,
    pub(crate) events_unreached: AtomicU64,
    pub(crate) heartbeats_sent: AtomicU64,
    pub(crate) api_requests: AtomicU64,
    pub(crate) api_rate_limited: AtomicU64,
    pub(crate) tokens_issued: AtomicU64,
    pub(crate) relay_messages_sent: AtomicU64,
    pub(crate) relay_frames_sent: AtomicU64,
    pub(crate) relay_messages_lost: AtomicU64,
    /// Faults asked for, by kind.
    pub(crate) faults_requested: Mutex<BTreeMap<&'static str, u64>>,
    /// Faults applied, by kind and where.
    pub(crate) fault_hits: Mutex<BTreeMap<&'static str, FaultHits>>,
}

/// Everything the tasks and handlers share.
pub(crate) struct Shared {
    pub(crate) config: EmulatorConfig,
    /// The address in `connectUri`s and [`EmulatorHandle::addr`] (an unspecified bind
    /// address is reported as loopback).
    pub(crate) addr: SocketAddr,
    pub(crate) clock: Clock,
    pub(crate) world: World,
    pub(crate) presence: RwLock<Vec<UserPresence>>,
    pub(crate) tokens: Mutex<Tokens>,
    pub(crate) channels: Mutex<ChannelTable>,
    pub(crate) api_faults: Mutex<ApiFaults>,
    pub(crate) login_faults: Mutex<ApiFaults>,
    /// Socket faults from the config, waiting for a socket to connect.
    startup_faults: Mutex<Vec<Fault>>,
    pub(crate) relay_tx: broadcast::Sender<Bytes>,
    pub(crate) relay_conns:
        Mutex<std::collections::HashMap<u64, tokio::sync::mpsc::UnboundedSender<Control>>>,
    pub(crate) counters: Counters,
    quiesced: AtomicBool,
    rate_bits: AtomicU64,
    /// Wakes the generator when the rate or quiesce state changes.
    generator_wake: Notify,
    /// Held by the generator while it makes and dispatches one batch.
    tick_lock: tokio::sync::Mutex<()>,
    pub(crate) chaos: Mutex<ChaosConfig>,
    pub(crate) chaos_changed: Notify,
    pub(crate) misc_rng: Mutex<Rng>,
    next_conn: AtomicU64,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl Shared {
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn random_guid(&self) -> Guid {
        self.misc_rng.lock().guid()
    }

    pub(crate) fn is_quiesced(&self) -> bool {
        self.quiesced.load(Ordering::SeqCst)
    }

    pub(crate) fn change_rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    pub(crate) fn set_change_rate(&self, per_second: f64) -> Result<()> {
        if !(0.0..=crate::limits::MAX_CHANGE_RATE).contains(&per_second) {
            return Err(Error::InvalidConfig {
                field: "change_rate",
                reason: format!(
                    "must be between 0 and {} changes per second",
                    crate::limits::MAX_CHANGE_RATE
                ),
            });
        }
        self.rate_bits
            .store(per_second.to_bits(), Ordering::Relaxed);
        self.generator_wake.notify_one();
        Ok(())
    }

    pub(crate) async fn quiesce(&self) {
        self.quiesced.store(true, Ordering::SeqCst);
        self.generator_wake.notify_one();
        // Wait for a batch in progress to be applied and dispatched.
        drop(self.tick_lock.lock().await);
    }

    pub(crate) fn resume(&self) {
        self.quiesced.store(false, Ordering::SeqCst);
        self.generator_wake.notify_one();
    }

    pub(crate) fn set_chaos(&self, chaos: ChaosConfig) -> Result<()> {
        chaos.validate()?;
        *self.chaos.lock() = chaos;
        self.chaos_changed.notify_one();
        Ok(())
    }

    /// Takes the startup socket faults whose target `matches`.
    pub(crate) fn take_startup_faults(&self, matches: impl Fn(&FaultTarget) -> bool) -> Vec<Fault> {
        let mut pending = self.startup_faults.lock();
        if pending.is_empty() {
            return Vec::new();
        }
        let (take, keep) = std::mem::take(&mut *pending)
            .into_iter()
            .partition(|f: &Fault| f.target().is_some_and(&matches));
        *pending = keep;
        take
    }

    /// Sends a batch of changes to relay sockets and to channels subscribed to them.
    fn dispatch(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        self.counters
            .events_generated
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        if self.relay_tx.receiver_count() > 0 {
            for chunk in changes.chunks(self.config.relay_frames_per_message) {
                let mut buf = Vec::with_capacity(chunk.len() * FRAME_LEN);
                for change in chunk {
                    self.relay_frame(change.user, &change.presence)
                        .encode_into(&mut buf);
                }
                let _ = self.relay_tx.send(Bytes::from(buf));
            }
        }
        let table = self.channels.lock();
        if !table.has_subscriptions() {
            return;
        }
        let mut lost = 0u64;
        let mut unreached = 0u64;
        for change in changes {
            let subscribers = table.subscribers(change.user);
            if subscribers.is_empty() {
                continue;
            }
            let mut reached = false;
            // Formatted once per change, and only when some socket will take it.
            let mut text: Option<Utf8Bytes> = None;
            for id in subscribers {
                let Some(channel) = table.channels.get(id) else {
                    continue;
                };
                let delivered = match &channel.connection {
                    Some(conn) if !conn.stalled.load(Ordering::Relaxed) => {
                        let message = text
                            .get_or_insert_with(|| {
                                Utf8Bytes::from(wire::presence_notification(
                                    &self.world,
                                    change.user,
                                    &change.presence,
                                    self.config.notification_spelling,
                                    self.config.notification_modified_date,
                                    self.random_guid(),
                                ))
                            })
                            .clone();
                        conn.events.try_send(message).is_ok()
                    }
                    _ => false,
                };
                if delivered {
                    reached = true;
                } else {
                    channel.counters.lost.fetch_add(1, Ordering::Relaxed);
                    lost += 1;
                }
            }
            if !reached {
                unreached += 1;
            }
        }
        self.counters.events_lost.fetch_add(lost, Ordering::Relaxed);
        self.counters
            .events_unreached
            .fetch_add(unreached, Ordering::Relaxed);
    }
}

/// Makes the workload's changes until cancelled.
async fn run_generator(shared: Arc<Shared>) {
    let config = &shared.config;
    let mut generator = Generator::new(config);
    let mut batch: Vec<Change> = Vec::new();
    let shift_every = (!config.shift_change_every.is_zero()).then_some(config.shift_change_every);
    let mut last = Instant::now();
    let mut carry = 0.0f64;
    let mut next_shift = shift_every.map(|every| last + every);
    loop {
        let rate = shared.change_rate();
        if rate <= 0.0 || shared.is_quiesced() {
            tokio::select! {
                _ = shared.cancel.cancelled() => return,
                _ = shared.generator_wake.notified() => {}
            }
            // Time spent idle makes no backlog of changes or shift changes.
            last = Instant::now();
            carry = 0.0;
            next_shift = shift_every.map(|every| last + every);
            continue;
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = shared.generator_wake.notified() => continue,
            _ = tokio::time::sleep(config.tick) => {}
        }
        let _tick = shared.tick_lock.lock().await;
        if shared.is_quiesced() {
            continue;
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        last = now;
        // At most a quarter second's worth per batch, so a stalled runtime neither floods the
        // clients nor allocates a huge batch (the rate is then best effort).
        let due = (rate * elapsed + carry).min(rate * 0.25 + 1.0);
        let count = due.floor();
        carry = due - count;
        let now_ms = shared.clock.now_ms();
        {
            let mut presence = shared.presence.write();
            generator.generate(
                &shared.world,
                &mut presence,
                count as usize,
                now_ms,
                &mut batch,
            );
            if let Some(at) = next_shift
                && now >= at
            {
                generator.shift_change(
                    &shared.world,
                    &mut presence,
                    config.shift_change_fraction,
                    now_ms,
                    &mut batch,
                );
                next_shift = shift_every.map(|every| at + every);
            }
        }
        shared.dispatch(&batch);
        batch.clear();
    }
}

/// Sweeps expired channels and tokens until cancelled.
async fn run_janitor(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(JANITOR_PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = Instant::now();
        let mut dead = shared.tokens.lock().sweep(now);
        if !shared.config.channels_close_with_token {
            dead.clear();
        }
        let gone = shared.channels.lock().sweep(now, &dead);
        shared.close_expired(gone);
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/users", get(rest::list_users))
        .route("/users/presences/purecloud/bulk", get(rest::bulk_presences))
        .route("/groups", get(rest::list_groups))
        .route("/groups/{id}/members", get(rest::group_members))
        .route("/presence/definitions", get(rest::definitions))
        .route(
            "/notifications/channels",
            get(channels::list).post(channels::create),
        )
        .route("/notifications/channels/{id}", head(channels::head))
        .route(
            "/notifications/channels/{id}/subscriptions",
            get(channels::get_subscriptions)
                .post(channels::post_subscriptions)
                .put(channels::put_subscriptions)
                .delete(channels::delete_subscriptions),
        )
        .fallback(api_not_found)
        .layer(from_fn_with_state(shared.clone(), auth::api_guard));
    Router::new()
        .nest("/api/v2", api)
        .route("/oauth/token", post(auth::oauth_token))
        .route("/channels/{id}", get(socket::channel_socket))
        .route("/relay", get(socket::relay_socket))
        .route("/emulator/truth", get(admin::truth))
        .route("/emulator/stats", get(admin::stats))
        .route("/emulator/quiesce", post(admin::quiesce))
        .route("/emulator/resume", post(admin::resume))
        .route("/emulator/faults", post(admin::faults))
        .route("/emulator/chaos", post(admin::chaos))
        .route("/emulator/rate", post(admin::rate))
        .fallback(not_found)
        .with_state(shared)
}

async fn api_not_found() -> Response {
    wire::not_found("No such API resource in the emulator")
}

async fn not_found() -> Response {
    wire::not_found("No such resource")
}

/// Starts emulators. See the [crate documentation](crate) for an example.
#[derive(Debug)]
pub struct Emulator;

impl Emulator {
    /// Validates `config`, binds `addr` (port 0 picks a free port) and starts serving.
    /// Must be called inside a tokio runtime; the emulator's tasks run on it until the
    /// returned handle is shut down or dropped.
    pub async fn start(config: EmulatorConfig, addr: SocketAddr) -> Result<EmulatorHandle> {
        config.validate()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Emulator::start_on(config, listener).await
    }

    /// Like [`start`](Emulator::start), on a listener the caller bound.
    pub async fn start_on(config: EmulatorConfig, listener: TcpListener) -> Result<EmulatorHandle> {
        config.validate()?;
        let mut addr = listener
            .local_addr()
            .map_err(|source| Error::LocalAddr { source })?;
        if addr.ip().is_unspecified() {
            let loopback = match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            };
            addr.set_ip(loopback);
        }
        let clock = Clock::new();
        let world = World::build(&config);
        let presence = world.initial_presence(config.seed, clock.now_ms());
        let (relay_tx, _) = broadcast::channel(config.relay_queue);
        let (api_startup, socket_startup): (Vec<Fault>, Vec<Fault>) = config
            .startup_faults
            .iter()
            .cloned()
            .partition(|f| f.target().is_none());
        let shared = Arc::new(Shared {
            addr,
            clock,
            presence: RwLock::new(presence),
            tokens: Mutex::new(Tokens::default()),
            channels: Mutex::new(ChannelTable::new(world.users.len())),
            world,
            api_faults: Mutex::new(ApiFaults::default()),
            login_faults: Mutex::new(ApiFaults::default()),
            startup_faults: Mutex::new(socket_startup),
            relay_tx,
            relay_conns: Mutex::new(Default::default()),
            counters: Counters::default(),
            quiesced: AtomicBool::new(false),
            rate_bits: AtomicU64::new(config.change_rate.to_bits()),
            generator_wake: Notify::new(),
            tick_lock: tokio::sync::Mutex::new(()),
            chaos: Mutex::new(config.chaos.clone()),
            chaos_changed: Notify::new(),
            misc_rng: Mutex::new(Rng::new(config.seed, stream::MISC)),
            next_conn: AtomicU64::new(1),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            config,
        });
        for fault in &api_startup {
            shared.inject(fault)?;
        }
        let app = router(shared.clone());
        let cancel = shared.cancel.clone();
        shared.tracker.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
            if let Err(error) = serve.await {
                log::error!("emulator server failed: {error}");
            }
        });
        shared.tracker.spawn(run_generator(shared.clone()));
        shared.tracker.spawn(run_janitor(shared.clone()));
        shared.tracker.spawn(faults::run_chaos(shared.clone()));
        log::info!(
            "emulator listening on http://{addr} ({} users, {} changes/s)",
            shared.world.users.len(),
            shared.change_rate()
        );
        Ok(EmulatorHandle { shared })
    }
}

/// A running emulator. Dropping it stops the emulator (without waiting);
/// [`shutdown`](EmulatorHandle::shutdown) stops it and waits for its tasks.
pub struct EmulatorHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

impl EmulatorHandle {
    /// The address it listens on (an unspecified bind address shows as loopback).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://host:port`: the base of both login (`/oauth/token`) and API (`/api/v2/...`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// `ws://host:port/relay`: the binary relay (needs a bearer token).
    pub fn relay_url(&self) -> String {
        format!("ws://{}/relay", self.shared.addr)
    }

    /// The OAuth client id it accepts.
    pub fn client_id(&self) -> &str {
        &self.shared.config.client_id
    }

    /// The OAuth client secret it accepts.
    pub fn client_secret(&self) -> &str {
        &self.shared.config.client_secret.0
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EmulatorConfig {
        &self.shared.config
    }

    /// The emulator's clock now (wall time at start plus tokio's elapsed time).
    pub fn now(&self) -> EventTime {
        EventTime(self.shared.clock.now_ms())
    }

    /// Every user's GUID, by relay id.
    pub fn user_ids(&self) -> Vec<Guid> {
        self.shared.world.users.iter().map(|u| u.guid).collect()
    }

    /// Every group's GUID; group `i` is bit `i` of the group mask.
    pub fn group_ids(&self) -> Vec<Guid> {
        self.shared.world.groups.iter().map(|g| g.guid).collect()
    }

    /// Every user's current state (what `GET /emulator/truth` returns).
    pub fn truth(&self) -> Vec<TruthEntry> {
        self.shared.truth()
    }

    /// The counters (what `GET /emulator/stats` returns).
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Stops making changes; returns once a batch in progress has been dispatched, so the
    /// truth no longer moves.
    pub async fn quiesce(&self) {
        self.shared.quiesce().await;
    }

    /// Starts making changes again.
    pub fn resume(&self) {
        self.shared.resume();
    }

    /// Sets the change rate (changes per second; 0 stops changes).
    pub fn set_change_rate(&self, per_second: f64) -> Result<()> {
        self.shared.set_change_rate(per_second)
    }

    /// Switches chaos mode (random faults) on, off or to new settings.
    pub fn set_chaos(&self, chaos: ChaosConfig) -> Result<()> {
        self.shared.set_chaos(chaos)
    }

    /// Injects a fault; returns how many sockets, channels, tokens or calls it hit.
    pub fn inject(&self, fault: Fault) -> Result<usize> {
        self.shared.inject(&fault)
    }

    /// Closes the target sockets without a close frame.
    pub fn drop_sockets(&self, target: FaultTarget) -> Result<usize> {
        self.inject(Fault::DropSocket { target })
    }

    /// Stalls the target sockets (no output, no reading, TCP kept open).
    pub fn stall_sockets(&self, target: FaultTarget) -> Result<usize> {
        self.inject(Fault::StallSocket { target })
    }

    /// Sends `v2.system.socket_closing` and closes after `grace`.
    pub fn socket_closing(&self, target: FaultTarget, grace: Duration) -> Result<usize> {
        self.inject(Fault::SocketClosing {
            target,
            grace_ms: Some(grace.as_millis() as u64),
        })
    }

    /// Sends a message that is not JSON (relay: a binary message of invalid length).
    pub fn send_garbage(&self, target: FaultTarget) -> Result<usize> {
        self.inject(Fault::Garbage { target })
    }

    /// Sends half of a presence notification.
    pub fn send_truncated_json(&self, target: FaultTarget) -> Result<usize> {
        self.inject(Fault::TruncatedJson { target })
    }

    /// Sends one message of `bytes` bytes.
    pub fn send_oversized(&self, target: FaultTarget, bytes: usize) -> Result<usize> {
        self.inject(Fault::Oversized {
            target,
            bytes: Some(bytes),
        })
    }

    /// The next `count` API calls get 429 with `Retry-After: retry_after_secs`.
    pub fn rate_limit_burst(&self, count: u32, retry_after_secs: u64) -> Result<usize> {
        self.inject(Fault::RateLimitBurst {
            count,
            scope: BurstScope::Api,
            retry_after_secs: Some(retry_after_secs),
        })
    }

    /// The next `count` API calls get `status` (500 to 599).
    pub fn server_error_burst(&self, count: u32, status: u16) -> Result<usize> {
        self.inject(Fault::ServerErrorBurst {
            count,
            scope: BurstScope::Api,
            status: Some(status),
        })
    }

    /// The next `count` token requests (`POST /oauth/token`) get `status` (500 to 599).
    pub fn login_error_burst(&self, count: u32, status: u16) -> Result<usize> {
        self.inject(Fault::ServerErrorBurst {
            count,
            scope: BurstScope::Login,
            status: Some(status),
        })
    }

    /// Expires every token issued so far.
    pub fn expire_tokens(&self) -> Result<usize> {
        self.inject(Fault::ExpireTokens)
    }

    /// Sends `no_longer_subscribed` to the target channels and removes them.
    pub fn no_longer_subscribed(&self, target: FaultTarget) -> Result<usize> {
        self.inject(Fault::NoLongerSubscribed { target })
    }

    /// Stops the emulator: closes sockets (with a close frame), stops serving, and waits
    /// (up to a few seconds) for every task to end.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.shared.tracker.wait())
            .await
            .is_err()
        {
            log::warn!("emulator tasks still running after {SHUTDOWN_GRACE:?}");
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
    }
}
