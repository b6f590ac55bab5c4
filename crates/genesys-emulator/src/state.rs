//! The state every task and handler of a running emulator shares: [`Shared`] (the
//! configuration, the organisation and its presence, the token and channel tables, pending
//! faults, relay subscribers, the generator's switches), its [`Clock`] and its [`Counters`],
//! with the methods that touch nothing but these fields.
//!
//! Plain data: it imports only the data types it holds, never the modules that act on it
//! (those take `&Shared` and live in the file named after what they do).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::body::Bytes;
use parking_lot::{Mutex, RwLock};
use presence_frame::{EventTime, Guid};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bursts::ApiFaults;
use crate::channel_table::ChannelTable;
use crate::config::{ClientCredentials, EmulatorConfig};
use crate::control::Control;
use crate::error::{Error, Result};
use crate::fault::{ChaosConfig, Fault, FaultHits, FaultKind, FaultTarget, Landed};
use crate::limits::MAX_CHANGE_RATE;
use crate::org::Org;
use crate::rng::Rng;
use crate::tokens::Tokens;
use crate::workload::{UserPresence, World, stream};

/// The emulator's clock: wall time at start plus tokio's elapsed time, so that a paused
/// tokio clock drives it in tests.
#[derive(Debug)]
pub(crate) struct Clock {
    wall_at_start: i64,
    started: Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
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
    pub(crate) channels_created: AtomicU64,
    /// Connected channels replaced under the channel limit.
    pub(crate) channels_replaced_connected: AtomicU64,
    pub(crate) relay_messages_sent: AtomicU64,
    pub(crate) relay_frames_sent: AtomicU64,
    pub(crate) relay_messages_lost: AtomicU64,
    pub(crate) users_created: AtomicU64,
    pub(crate) users_deleted: AtomicU64,
    pub(crate) users_deactivated: AtomicU64,
    pub(crate) users_reactivated: AtomicU64,
    pub(crate) users_moved: AtomicU64,
    /// Faults asked for, by kind.
    pub(crate) faults_requested: Mutex<BTreeMap<&'static str, u64>>,
    /// Faults applied, by kind and where.
    pub(crate) fault_hits: Mutex<BTreeMap<&'static str, FaultHits>>,
}

/// One OAuth client's counters.
#[derive(Debug, Default)]
pub(crate) struct ClientCounters {
    pub(crate) tokens_issued: AtomicU64,
    /// `/api/v2` calls with a valid token of this client (rate-limited ones included).
    pub(crate) api_requests: AtomicU64,
    pub(crate) api_rate_limited: AtomicU64,
    pub(crate) channels_created: AtomicU64,
}

/// An OAuth client the emulator accepts, and its counters.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) id: Arc<str>,
    pub(crate) credentials: ClientCredentials,
    pub(crate) counters: ClientCounters,
}

/// Everything the tasks and handlers share.
pub(crate) struct Shared {
    pub(crate) config: EmulatorConfig,
    /// The address in `connectUri`s and [`EmulatorHandle::addr`](crate::EmulatorHandle::addr) (an unspecified bind
    /// address is reported as loopback).
    pub(crate) addr: SocketAddr,
    pub(crate) clock: Clock,
    /// Every OAuth client, in [`EmulatorConfig::client_credentials`] order (a token's and a
    /// caller's `client` index into it).
    pub(crate) clients: Vec<Client>,
    pub(crate) world: World,
    /// Who is active and in which groups now (churn changes it; `world` stays as built).
    pub(crate) org: RwLock<Org>,
    pub(crate) presence: RwLock<Vec<UserPresence>>,
    pub(crate) tokens: Mutex<Tokens>,
    pub(crate) channels: Mutex<ChannelTable>,
    /// Users (by index) whose topics a subscription refuses, as Genesys refuses the topics of
    /// deleted users: see `EmulatorHandle::refuse_topics`.
    pub(crate) refused_users: RwLock<HashSet<u32>>,
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
    pub(crate) generator_wake: Notify,
    /// Held by the generator while it makes and dispatches one batch.
    pub(crate) tick_lock: tokio::sync::Mutex<()>,
    pub(crate) chaos: Mutex<ChaosConfig>,
    pub(crate) chaos_changed: Notify,
    pub(crate) misc_rng: Mutex<Rng>,
    next_conn: AtomicU64,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl Shared {
    /// The state of a new emulator: the organisation built from `config`, every user's
    /// initial presence, empty tables; `startup_faults` (socket faults from the config) wait
    /// for the first matching socket to connect.
    pub(crate) fn new(
        config: EmulatorConfig,
        addr: SocketAddr,
        startup_faults: Vec<Fault>,
    ) -> Shared {
        let clock = Clock::new();
        let world = World::build(&config);
        let presence = world.initial_presence(config.seed, clock.now_ms());
        let (relay_tx, _) = broadcast::channel(config.relay_queue);
        let clients = config
            .client_credentials()
            .into_iter()
            .map(|credentials| Client {
                id: Arc::from(credentials.id()),
                credentials,
                counters: ClientCounters::default(),
            })
            .collect();
        Shared {
            addr,
            clock,
            clients,
            presence: RwLock::new(presence),
            tokens: Mutex::new(Tokens::default()),
            channels: Mutex::new(ChannelTable::new(world.users.len())),
            refused_users: RwLock::new(HashSet::new()),
            org: RwLock::new(Org::new(&world, config.users)),
            world,
            api_faults: Mutex::new(ApiFaults::default()),
            login_faults: Mutex::new(ApiFaults::default()),
            startup_faults: Mutex::new(startup_faults),
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
        }
    }

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
        if !(0.0..=MAX_CHANGE_RATE).contains(&per_second) {
            return Err(Error::InvalidConfig {
                field: "change_rate",
                reason: format!(
                    "must be between 0 and {} changes per second",
                    MAX_CHANGE_RATE
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

    /// The client with this id and secret.
    pub(crate) fn client_of(&self, id: &str, secret: &str) -> Option<usize> {
        self.clients
            .iter()
            .position(|c| &*c.id == id && c.credentials.secret() == secret)
    }

    /// The counters of client `client` (an index from a token).
    pub(crate) fn client_counters(&self, client: usize) -> Option<&ClientCounters> {
        self.clients.get(client).map(|c| &c.counters)
    }

    /// Counts `n` applications of a fault of `kind` where it `landed`; none when `n` is 0, so
    /// a kind shows in the statistics only once it hit something.
    pub(crate) fn count_hit(&self, kind: FaultKind, landed: Landed, n: u64) {
        if n == 0 {
            return;
        }
        let mut hits = self.counters.fault_hits.lock();
        let hits = hits.entry(kind.as_str()).or_default();
        let field = match landed {
            Landed::ChannelSocket => &mut hits.channel_sockets,
            Landed::RelaySocket => &mut hits.relay_sockets,
            Landed::Channel => &mut hits.channels,
            Landed::Token => &mut hits.tokens,
            Landed::ApiCall => &mut hits.api_calls,
            Landed::TokenRequest => &mut hits.token_requests,
        };
        *field += n;
    }
}
