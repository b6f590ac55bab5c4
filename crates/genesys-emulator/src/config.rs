//! [`EmulatorConfig`]: every knob of the emulator, with documented defaults.

use std::collections::HashSet;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};
use crate::fault::{ChaosConfig, Fault};
use crate::limits::{MAX_CHANGE_RATE, MAX_CLIENTS, MAX_DURATION, MAX_OVERSIZED_BYTES, MAX_USERS};

/// How a `systemPresence` value is spelled in one place of the API.
///
/// Genesys spells it differently by place (`AVAILABLE`/`ON_QUEUE` in notifications, `OnQueue`
/// in presence definitions, `On Queue` in REST samples); clients compare case- and
/// separator-insensitively, and the emulator lets each place be set.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Spelling {
    /// `ON_QUEUE`, `AVAILABLE`.
    Upper,
    /// `On Queue`, `Available`.
    Title,
    /// `OnQueue`, `Available`.
    Camel,
    /// One of the three, varying from user to user and change to change, so a client that
    /// compares spellings exactly is caught.
    Varied,
}

/// What creating a channel does when the client already has the maximum number of channels
/// and every one of them has a connected WebSocket.
///
/// (With at least one unconnected channel, the oldest unconnected one is replaced silently,
/// as Genesys documents.) The real service's behaviour in this case is unconfirmed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum ChannelLimitPolicy {
    /// Replace the oldest channel: its socket gets a `no_longer_subscribed` system message
    /// (reason `another_channel_subscribed`) and is closed.
    #[default]
    ReplaceOldest,
    /// Refuse the new channel with 400.
    Reject,
}

/// The id of the `n`th generated client (`n` from 2): `emulator-client-id-2`, ...
fn generated_id(n: usize) -> String {
    format!("emulator-client-id-{n}")
}

/// The secret of the `n`th generated client (`n` from 2): `emulator-client-secret-2`, ...
fn generated_secret(n: usize) -> String {
    format!("emulator-client-secret-{n}")
}

/// One OAuth client the emulator accepts: its id and secret. The secret never shows in
/// `Debug` output.
///
/// ```
/// use genesys_emulator::EmulatorConfig;
///
/// let clients = EmulatorConfig::default().clients(2).client_credentials();
/// assert_eq!(clients[1].id(), "emulator-client-id-2");
/// assert_eq!(clients[1].secret(), "emulator-client-secret-2");
/// assert!(!format!("{clients:?}").contains("emulator-client-secret"));
/// ```
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    id: String,
    secret: SecretString,
}

impl ClientCredentials {
    /// A client with this id and secret.
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> ClientCredentials {
        ClientCredentials {
            id: id.into(),
            secret: SecretString::from(secret.into()),
        }
    }

    /// The client id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client secret, in the clear (it is a fake, well-known credential; print it only
    /// where the user asked for it).
    pub fn secret(&self) -> &str {
        self.secret.expose_secret()
    }

    /// The client secret, wrapped so that it never shows in `Debug` output.
    pub fn secret_string(&self) -> &SecretString {
        &self.secret
    }
}

/// Everything the emulator can be told at start.
///
/// Build it from [`EmulatorConfig::default`] with the chainable setters; each setter's
/// documentation ends with its default. [`Emulator::start`](crate::Emulator::start) calls
/// [`validate`](EmulatorConfig::validate).
///
/// ```
/// use std::time::Duration;
/// use genesys_emulator::EmulatorConfig;
///
/// let config = EmulatorConfig::default()
///     .users(5_000)
///     .change_rate(200.0)
///     .seed(7)
///     .heartbeat_interval(Duration::from_secs(5));
/// config.validate()?;
/// # Ok::<(), genesys_emulator::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    pub(crate) seed: u64,
    pub(crate) users: u32,
    pub(crate) groups: u32,
    pub(crate) max_groups_per_user: u32,
    pub(crate) change_rate: f64,
    pub(crate) tick: Duration,
    pub(crate) skew: f64,
    pub(crate) shift_change_every: Duration,
    pub(crate) shift_change_fraction: f64,
    pub(crate) message_change_fraction: f64,
    pub(crate) custom_definitions: bool,
    pub(crate) churn_per_day: f64,
    pub(crate) day: Duration,
    pub(crate) spare_users: u32,

    pub(crate) client_id: String,
    pub(crate) client_secret: SecretString,
    /// Total number of clients from [`clients`](Self::clients): the first plus `n - 1`
    /// generated ones.
    pub(crate) generated_clients: usize,
    pub(crate) extra_clients: Vec<ClientCredentials>,
    pub(crate) token_lifetime: Duration,
    pub(crate) rate_limit_per_minute: u32,

    pub(crate) default_page_size: u32,
    pub(crate) max_page_size: u32,
    pub(crate) max_bulk_ids: usize,
    pub(crate) presence_missing_fraction: f64,
    pub(crate) rest_spelling: Spelling,
    pub(crate) definition_spelling: Spelling,
    pub(crate) notification_spelling: Spelling,

    pub(crate) channel_lifetime: Duration,
    pub(crate) max_channels_per_client: usize,
    pub(crate) channel_limit_policy: ChannelLimitPolicy,
    pub(crate) max_topics_per_channel: usize,
    pub(crate) strict_topics: bool,
    pub(crate) channels_close_with_token: bool,
    pub(crate) socket_404_message: bool,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) socket_closing_grace: Duration,
    pub(crate) notification_modified_date: bool,
    pub(crate) socket_queue: usize,
    pub(crate) oversized_message_bytes: usize,

    pub(crate) relay_frames_per_message: usize,
    pub(crate) relay_queue: usize,
    pub(crate) relay_snapshot: bool,

    pub(crate) chaos: ChaosConfig,
    pub(crate) startup_faults: Vec<Fault>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            seed: 1,
            users: 1_000,
            groups: 8,
            max_groups_per_user: 2,
            change_rate: 10.0,
            tick: Duration::from_millis(10),
            skew: 1.0,
            shift_change_every: Duration::from_secs(600),
            shift_change_fraction: 0.1,
            message_change_fraction: 0.05,
            custom_definitions: true,
            churn_per_day: 0.0,
            day: Duration::from_secs(24 * 3600),
            spare_users: 0,

            client_id: "emulator-client-id".to_owned(),
            client_secret: SecretString::from("emulator-client-secret"),
            generated_clients: 1,
            extra_clients: Vec::new(),
            token_lifetime: Duration::from_secs(86_400),
            rate_limit_per_minute: 300,

            default_page_size: 25,
            max_page_size: 500,
            max_bulk_ids: 50,
            presence_missing_fraction: 0.0,
            rest_spelling: Spelling::Title,
            definition_spelling: Spelling::Camel,
            notification_spelling: Spelling::Upper,

            channel_lifetime: Duration::from_secs(24 * 3600),
            max_channels_per_client: 20,
            channel_limit_policy: ChannelLimitPolicy::ReplaceOldest,
            max_topics_per_channel: 1_000,
            strict_topics: true,
            channels_close_with_token: true,
            socket_404_message: false,
            heartbeat_interval: Duration::from_secs(30),
            socket_closing_grace: Duration::from_secs(60),
            notification_modified_date: true,
            socket_queue: 65_536,
            oversized_message_bytes: 2 * 1024 * 1024,

            relay_frames_per_message: 256,
            relay_queue: 1_024,
            relay_snapshot: true,

            chaos: ChaosConfig::default(),
            startup_faults: Vec::new(),
        }
    }
}

impl EmulatorConfig {
    /// Org churn: this fraction of [`users`](Self::users) changes per simulated
    /// [`day`](Self::day), each change one of (equally likely) a user created (from the
    /// [`spare_users`](Self::spare_users)), deleted, deactivated, reactivated (a deactivated
    /// user, with the presence it had; nothing when there is none), or moved between groups. A
    /// soak that scales the day down (say, 10 s) gets the same churn per day at any scale.
    /// Stops while quiesced. At most 100 (the whole org a hundred times a day). By default, 0.
    pub fn churn_per_day(mut self, fraction: f64) -> Self {
        self.churn_per_day = fraction;
        self
    }

    /// How long a simulated day lasts, for [`churn_per_day`](Self::churn_per_day). By
    /// default, 24 hours.
    pub fn day(mut self, day: Duration) -> Self {
        self.day = day;
        self
    }

    /// Users that exist beyond [`users`](Self::users) but are not created yet: churn (or
    /// [`EmulatorHandle::create_user`](crate::EmulatorHandle::create_user)) creates them in
    /// order, with their GUIDs, groups and presence drawn from the seed like the others. A
    /// creation with none left is skipped. By default, 0.
    pub fn spare_users(mut self, n: u32) -> Self {
        self.spare_users = n;
        self
    }

    /// Seed of the whole workload: user, group and definition GUIDs, group memberships,
    /// locations, initial states and the sequence of changes. By default, 1.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Number of users (relay ids `0..users`), at most [`MAX_USERS`]. By default, 1,000.
    pub fn users(mut self, users: u32) -> Self {
        self.users = users;
        self
    }

    /// Number of groups (at most 64; group `i` is bit `i` of the group mask, and only groups
    /// 0 to 7 fit in a relay frame). By default, 8.
    pub fn groups(mut self, groups: u32) -> Self {
        self.groups = groups;
        self
    }

    /// Each user is in between 0 and this many groups (at most [`groups`](Self::groups)).
    /// By default, 2.
    pub fn max_groups_per_user(mut self, n: u32) -> Self {
        self.max_groups_per_user = n;
        self
    }

    /// Presence changes per second across all users; 0 means no changes at all (no shift
    /// bursts either); at most [`MAX_CHANGE_RATE`]. Can be changed while running.
    /// By default, 10.
    pub fn change_rate(mut self, per_second: f64) -> Self {
        self.change_rate = per_second;
        self
    }

    /// How often the generator wakes to make the changes that are due (in one batch); at
    /// most 1 second. By default, 10 ms.
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Zipf exponent of the choice of which user changes: 0 is uniform, 1 makes a few users
    /// change often and most rarely. By default, 1.0.
    pub fn skew(mut self, exponent: f64) -> Self {
        self.skew = exponent;
        self
    }

    /// Interval between shift changes, when a fraction of all users change at once
    /// (alternately starting and ending a shift); zero turns them off. By default, 10 minutes.
    pub fn shift_change_every(mut self, every: Duration) -> Self {
        self.shift_change_every = every;
        self
    }

    /// Fraction of users that change in a shift change. By default, 0.1.
    pub fn shift_change_fraction(mut self, fraction: f64) -> Self {
        self.shift_change_fraction = fraction;
        self
    }

    /// Fraction of changes that change only the presence message, not the status.
    /// By default, 0.05.
    pub fn message_change_fraction(mut self, fraction: f64) -> Self {
        self.message_change_fraction = fraction;
        self
    }

    /// Whether the organisation also has user-defined presences (type `User`, such as
    /// "Lunch" mapping onto Meal) that users sometimes take instead of the system definition.
    /// By default, true.
    pub fn custom_definitions(mut self, on: bool) -> Self {
        self.custom_definitions = on;
        self
    }

    /// The OAuth client id that `/oauth/token` accepts. By default, `emulator-client-id`.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// The OAuth client secret that `/oauth/token` accepts. By default,
    /// `emulator-client-secret`.
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = SecretString::from(secret.into());
        self
    }

    /// How many OAuth clients `/oauth/token` accepts, at least 1: the first
    /// ([`client_id`](Self::client_id)/[`client_secret`](Self::client_secret)) and `n - 1`
    /// more named `emulator-client-id-2`/`emulator-client-secret-2` up to
    /// `emulator-client-id-{n}`. Each client has its own channels (its own
    /// [`max_channels_per_client`](Self::max_channels_per_client)), and each of its tokens its
    /// own rate limit. Clients from [`extra_client`](Self::extra_client) come on top. At most
    /// [`MAX_CLIENTS`] in all. By default, 1.
    pub fn clients(mut self, n: usize) -> Self {
        self.generated_clients = n;
        self
    }

    /// One more OAuth client that `/oauth/token` accepts, after those of
    /// [`clients`](Self::clients). Ids must be unique, non-empty and without `:`; secrets
    /// non-empty. By default, none.
    pub fn extra_client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.extra_clients.push(ClientCredentials::new(id, secret));
        self
    }

    /// Every OAuth client this configuration accepts, in order: the first, the generated
    /// ones (see [`clients`](Self::clients)), then the [`extra_client`](Self::extra_client)s.
    pub fn client_credentials(&self) -> Vec<ClientCredentials> {
        let first = ClientCredentials {
            id: self.client_id.clone(),
            secret: self.client_secret.clone(),
        };
        let generated = (2..=self.generated_clients.min(MAX_CLIENTS))
            .map(|n| ClientCredentials::new(generated_id(n), generated_secret(n)));
        std::iter::once(first)
            .chain(generated)
            .chain(self.extra_clients.iter().cloned())
            .collect()
    }

    /// Lifetime of an access token (`expires_in`). Genesys allows 300 s to 172,800 s per
    /// client; any positive value is accepted here. By default, 86,400 s.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// API requests allowed per token per fixed one-minute window (the window starts at the
    /// token's first request after the previous window ended); 0 means unlimited.
    /// By default, 300.
    pub fn rate_limit_per_minute(mut self, n: u32) -> Self {
        self.rate_limit_per_minute = n;
        self
    }

    /// Page size when a request gives none. By default, 25.
    pub fn default_page_size(mut self, n: u32) -> Self {
        self.default_page_size = n;
        self
    }

    /// Largest page size accepted; larger requests get 400 (the real maximum is unconfirmed).
    /// By default, 500.
    pub fn max_page_size(mut self, n: u32) -> Self {
        self.max_page_size = n;
        self
    }

    /// Most ids in one bulk presence request; more get 400. By default, 50.
    pub fn max_bulk_ids(mut self, n: usize) -> Self {
        self.max_bulk_ids = n;
        self
    }

    /// Probability that a user in a listing with `expand=presence` comes back without
    /// `presence` (expands are best effort in Genesys). By default, 0.0.
    pub fn presence_missing_fraction(mut self, fraction: f64) -> Self {
        self.presence_missing_fraction = fraction;
        self
    }

    /// Spelling of `systemPresence` in REST user presences and bulk presences.
    /// By default, [`Spelling::Title`] (`On Queue`).
    pub fn rest_spelling(mut self, spelling: Spelling) -> Self {
        self.rest_spelling = spelling;
        self
    }

    /// Spelling of `systemPresence` in `/api/v2/presence/definitions`.
    /// By default, [`Spelling::Camel`] (`OnQueue`).
    pub fn definition_spelling(mut self, spelling: Spelling) -> Self {
        self.definition_spelling = spelling;
        self
    }

    /// Spelling of `systemPresence` in notifications. By default, [`Spelling::Upper`]
    /// (`ON_QUEUE`).
    pub fn notification_spelling(mut self, spelling: Spelling) -> Self {
        self.notification_spelling = spelling;
        self
    }

    /// Lifetime of a notification channel; subscribing (POST or PUT) restarts it.
    /// By default, 24 hours.
    pub fn channel_lifetime(mut self, lifetime: Duration) -> Self {
        self.channel_lifetime = lifetime;
        self
    }

    /// Most notification channels per OAuth client. By default, 20.
    pub fn max_channels_per_client(mut self, n: usize) -> Self {
        self.max_channels_per_client = n;
        self
    }

    /// What happens when a channel is created beyond the limit while all existing channels
    /// are connected. By default, [`ChannelLimitPolicy::ReplaceOldest`].
    pub fn channel_limit_policy(mut self, policy: ChannelLimitPolicy) -> Self {
        self.channel_limit_policy = policy;
        self
    }

    /// Most topics per channel; a subscription request that would pass it gets 400 and
    /// changes nothing. By default, 1,000.
    pub fn max_topics_per_channel(mut self, n: usize) -> Self {
        self.max_topics_per_channel = n;
        self
    }

    /// When true, a subscription request with a topic that cannot be granted changes nothing
    /// unless it has `ignoreErrors=true`: it gets 403 when a topic is refused (an unknown
    /// user, or one whose topics are refused with
    /// [`EmulatorHandle::refuse_topics`](crate::EmulatorHandle::refuse_topics)), else 400 (a
    /// malformed or unsupported topic). With `ignoreErrors=true` those topics come back
    /// `Rejected` and the rest are subscribed. When false, they always come back `Rejected`.
    /// By default, true.
    pub fn strict_topics(mut self, strict: bool) -> Self {
        self.strict_topics = strict;
        self
    }

    /// Whether a channel closes when the token that created it expires (as genesys-api.md
    /// reads the official wording). By default, true.
    pub fn channels_close_with_token(mut self, on: bool) -> Self {
        self.channels_close_with_token = on;
        self
    }

    /// How a socket learns that its channel is gone (unconfirmed: some clients report a
    /// message without `topicName`). When true, a socket whose channel expires (or whose
    /// token does) is sent `{"result":"404","message":"Channel ... not found"}` before the
    /// close, and a connection to a channel that does not exist is upgraded, sent that
    /// message and closed; when false, the first is just closed and the second answered HTTP
    /// 404. By default, false.
    pub fn socket_404_message(mut self, on: bool) -> Self {
        self.socket_404_message = on;
        self
    }

    /// Interval of the `WebSocket Heartbeat` message on each socket; zero sends none.
    /// By default, 30 seconds.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Time between `v2.system.socket_closing` and the server closing that socket, when a
    /// fault gives none. By default, 60 seconds.
    pub fn socket_closing_grace(mut self, grace: Duration) -> Self {
        self.socket_closing_grace = grace;
        self
    }

    /// Whether presence notifications carry `modifiedDate` (the schema has it, the official
    /// sample does not). By default, true.
    pub fn notification_modified_date(mut self, on: bool) -> Self {
        self.notification_modified_date = on;
        self
    }

    /// Messages queued per socket for a slow reader; beyond that, events are counted lost.
    /// By default, 65,536.
    pub fn socket_queue(mut self, n: usize) -> Self {
        self.socket_queue = n;
        self
    }

    /// Size in bytes of the message sent by the oversized-message fault when it gives none.
    /// By default, 2 MiB.
    pub fn oversized_message_bytes(mut self, n: usize) -> Self {
        self.oversized_message_bytes = n;
        self
    }

    /// Most 16-byte frames in one binary relay message. By default, 256.
    pub fn relay_frames_per_message(mut self, n: usize) -> Self {
        self.relay_frames_per_message = n;
        self
    }

    /// Relay messages buffered per relay socket; a reader that falls further behind loses
    /// the oldest (counted). By default, 1,024.
    pub fn relay_queue(mut self, n: usize) -> Self {
        self.relay_queue = n;
        self
    }

    /// Whether a new relay socket first gets every user's current state as frames, then the
    /// live stream. By default, true.
    pub fn relay_snapshot(mut self, on: bool) -> Self {
        self.relay_snapshot = on;
        self
    }

    /// Random fault injection. By default, off.
    pub fn chaos(mut self, chaos: ChaosConfig) -> Self {
        self.chaos = chaos;
        self
    }

    /// A fault switched on at start. API faults (bursts, token expiry) apply at once; socket
    /// faults wait for the first socket their target matches to connect, and apply to it
    /// once. By default, none.
    pub fn fault_at_start(mut self, fault: Fault) -> Self {
        self.startup_faults.push(fault);
        self
    }

    /// Checks every value; the error names the setter.
    pub fn validate(&self) -> Result<()> {
        fn bad(field: &'static str, reason: impl Into<String>) -> Result<()> {
            Err(Error::InvalidConfig {
                field,
                reason: reason.into(),
            })
        }
        fn fraction(field: &'static str, v: f64) -> Result<()> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                bad(field, format!("must be between 0 and 1, got {v}"))
            }
        }
        fn duration(field: &'static str, d: Duration) -> Result<()> {
            if d <= MAX_DURATION {
                Ok(())
            } else {
                bad(field, format!("must be at most one year, got {d:?}"))
            }
        }
        if self.users == 0 || self.users > MAX_USERS {
            return bad("users", format!("must be between 1 and {MAX_USERS}"));
        }
        if u64::from(self.users) + u64::from(self.spare_users) > u64::from(MAX_USERS) {
            return bad(
                "spare_users",
                format!("users and spare_users together must be at most {MAX_USERS}"),
            );
        }
        if !(0.0..=100.0).contains(&self.churn_per_day) {
            return bad(
                "churn_per_day",
                format!(
                    "must be between 0 and 100 (a fraction of users per day), got {}",
                    self.churn_per_day
                ),
            );
        }
        if self.day < Duration::from_millis(1) {
            return bad("day", "must be at least 1 ms");
        }
        duration("day", self.day)?;
        if self.groups > 64 {
            return bad("groups", format!("must be at most 64, got {}", self.groups));
        }
        if self.max_groups_per_user > self.groups {
            return bad(
                "max_groups_per_user",
                format!("must be at most groups ({})", self.groups),
            );
        }
        if !(0.0..=MAX_CHANGE_RATE).contains(&self.change_rate) {
            return bad(
                "change_rate",
                format!("must be between 0 and {MAX_CHANGE_RATE} changes per second"),
            );
        }
        if self.tick.is_zero() || self.tick > Duration::from_secs(1) {
            return bad("tick", "must be between 1 ns and 1 second");
        }
        duration("shift_change_every", self.shift_change_every)?;
        duration("token_lifetime", self.token_lifetime)?;
        duration("channel_lifetime", self.channel_lifetime)?;
        duration("heartbeat_interval", self.heartbeat_interval)?;
        duration("socket_closing_grace", self.socket_closing_grace)?;
        if !self.skew.is_finite() || self.skew < 0.0 {
            return bad("skew", "must be a finite number >= 0");
        }
        fraction("shift_change_fraction", self.shift_change_fraction)?;
        fraction("message_change_fraction", self.message_change_fraction)?;
        fraction("presence_missing_fraction", self.presence_missing_fraction)?;
        if self.client_id.is_empty() || self.client_id.contains(':') {
            return bad("client_id", "must be non-empty and contain no ':'");
        }
        if self.client_secret.expose_secret().is_empty() {
            return bad("client_secret", "must be non-empty");
        }
        if self.generated_clients == 0 {
            return bad("clients", "must be at least 1");
        }
        if self
            .generated_clients
            .saturating_add(self.extra_clients.len())
            > MAX_CLIENTS
        {
            return bad(
                "clients",
                format!("at most {MAX_CLIENTS} clients in all (clients and extra_client)"),
            );
        }
        let mut ids = HashSet::new();
        for client in self.client_credentials() {
            if client.id.is_empty() || client.id.contains(':') {
                return bad(
                    "extra_client",
                    format!(
                        "a client id must be non-empty and contain no ':', got {:?}",
                        client.id
                    ),
                );
            }
            if client.secret().is_empty() {
                return bad(
                    "extra_client",
                    format!("client {:?} has an empty secret", client.id),
                );
            }
            if !ids.insert(client.id.clone()) {
                return bad(
                    "extra_client",
                    format!("client id {:?} is given twice", client.id),
                );
            }
        }
        if self.token_lifetime < Duration::from_secs(1) {
            return bad("token_lifetime", "must be at least 1 second");
        }
        if self.default_page_size == 0 || self.default_page_size > self.max_page_size {
            return bad(
                "default_page_size",
                format!(
                    "must be between 1 and max_page_size ({})",
                    self.max_page_size
                ),
            );
        }
        if self.max_bulk_ids == 0 {
            return bad("max_bulk_ids", "must be at least 1");
        }
        if self.channel_lifetime.is_zero() {
            return bad("channel_lifetime", "must be positive");
        }
        if self.max_channels_per_client == 0 {
            return bad("max_channels_per_client", "must be at least 1");
        }
        if self.max_topics_per_channel == 0 {
            return bad("max_topics_per_channel", "must be at least 1");
        }
        if self.socket_queue == 0 {
            return bad("socket_queue", "must be at least 1");
        }
        if self.oversized_message_bytes == 0 || self.oversized_message_bytes > MAX_OVERSIZED_BYTES {
            return bad(
                "oversized_message_bytes",
                format!("must be between 1 and {MAX_OVERSIZED_BYTES}"),
            );
        }
        if !(1..=65_536).contains(&self.relay_frames_per_message) {
            return bad("relay_frames_per_message", "must be between 1 and 65,536");
        }
        if !(1..=1_000_000).contains(&self.relay_queue) {
            return bad("relay_queue", "must be between 1 and 1,000,000");
        }
        self.chaos.validate()?;
        for fault in &self.startup_faults {
            fault.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(EmulatorConfig::default().validate().is_ok());
    }

    #[test]
    fn validate_names_the_field() {
        let cases = [
            (EmulatorConfig::default().users(0), "users"),
            (EmulatorConfig::default().groups(65), "groups"),
            (
                EmulatorConfig::default().groups(2).max_groups_per_user(3),
                "max_groups_per_user",
            ),
            (
                EmulatorConfig::default().change_rate(f64::NAN),
                "change_rate",
            ),
            (EmulatorConfig::default().tick(Duration::ZERO), "tick"),
            (EmulatorConfig::default().users(MAX_USERS + 1), "users"),
            (EmulatorConfig::default().change_rate(1e12), "change_rate"),
            (
                EmulatorConfig::default().token_lifetime(Duration::MAX),
                "token_lifetime",
            ),
            (
                EmulatorConfig::default().relay_queue(usize::MAX),
                "relay_queue",
            ),
            (
                EmulatorConfig::default().presence_missing_fraction(1.5),
                "presence_missing_fraction",
            ),
            (EmulatorConfig::default().client_id("a:b"), "client_id"),
            (
                EmulatorConfig::default().default_page_size(600),
                "default_page_size",
            ),
            (
                EmulatorConfig::default().channel_lifetime(Duration::ZERO),
                "channel_lifetime",
            ),
        ];
        for (config, field) in cases {
            match config.validate() {
                Err(Error::InvalidConfig { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let config = EmulatorConfig::default()
            .client_secret("hunter2")
            .clients(3)
            .extra_client("other", "swordfish");
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2"));
        assert!(!text.contains("swordfish"));
        let clients = config.client_credentials();
        let text = format!("{clients:?}");
        assert!(!text.contains("hunter2") && !text.contains("swordfish"));
        assert!(!text.contains("emulator-client-secret"));
        assert!(text.contains("emulator-client-id-3") && text.contains("other"));
    }

    #[test]
    fn clients_are_named_in_order_and_checked() {
        let one = EmulatorConfig::default().client_credentials();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].id(), "emulator-client-id");
        assert_eq!(one[0].secret(), "emulator-client-secret");
        let config = EmulatorConfig::default().clients(3).extra_client("x", "y");
        assert!(config.validate().is_ok());
        let ids: Vec<String> = config
            .client_credentials()
            .iter()
            .map(|c| c.id().to_owned())
            .collect();
        assert_eq!(
            ids,
            [
                "emulator-client-id",
                "emulator-client-id-2",
                "emulator-client-id-3",
                "x"
            ]
        );
        assert_eq!(
            config.client_credentials()[2].secret(),
            "emulator-client-secret-3"
        );
        let cases = [
            (EmulatorConfig::default().clients(0), "clients"),
            (
                EmulatorConfig::default().clients(MAX_CLIENTS + 1),
                "clients",
            ),
            (
                EmulatorConfig::default().extra_client("emulator-client-id", "s"),
                "extra_client",
            ),
            (
                EmulatorConfig::default()
                    .clients(2)
                    .extra_client("emulator-client-id-2", "s"),
                "extra_client",
            ),
            (
                EmulatorConfig::default().extra_client("", "s"),
                "extra_client",
            ),
            (
                EmulatorConfig::default().extra_client("a:b", "s"),
                "extra_client",
            ),
            (
                EmulatorConfig::default().extra_client("a", ""),
                "extra_client",
            ),
            (EmulatorConfig::default().client_secret(""), "client_secret"),
        ];
        for (config, field) in cases {
            match config.validate() {
                Err(Error::InvalidConfig { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
}
