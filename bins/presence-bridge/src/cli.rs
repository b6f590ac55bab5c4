//! Command-line flags. Options that may also come from the environment or the TOML file are
//! `Option`s here, so that "not given" can fall through to the file and then to the default;
//! [`crate::config`] does the merging and validation.

use std::ffi::OsStr;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{Arg, Args, Parser, Subcommand};
use presence_kafka::{GroupProtocol, SaslMechanism, SecurityProtocol};

/// Genesys Cloud presence into Apache Kafka.
#[derive(Debug, Parser)]
#[command(
    name = "presence-bridge",
    version,
    about = "Genesys Cloud presence into Apache Kafka",
    long_about = "Keeps a live picture of every Genesys Cloud user's presence and publishes each \
                  real change to a Kafka topic (key: user id; value: JSON; tombstone on expiry).\n\n\
                  Start with `presence-bridge demo` (the emulator and the bridge in one process) \
                  after starting a local Kafka with scripts/kafka.sh start."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bridge: Genesys Cloud (or a binary relay) to Kafka, with the admin HTTP server.
    Run(Box<RunArgs>),
    /// Start the Genesys Cloud emulator alone and print its URL and credentials.
    Emulate(EmulateArgs),
    /// Run the emulator and the bridge in one process against KAFKA_BROKERS, with the
    /// dashboard URL printed at start.
    Demo(DemoArgs),
}

/// Options of `run` (and of the bridge half of `demo`). Each has a TOML file key of the same
/// name (`region = "mypurecloud.ie"`); flags and environment win over the file.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// TOML file with any of these options, keyed by their long names
    /// (e.g. `kafka-brokers = "k1:9092"`). Flags and environment win over it.
    #[arg(long, env = "PRESENCE_BRIDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Genesys Cloud environment, e.g. mypurecloud.ie or usw2.pure.cloud.
    /// [default: mypurecloud.com]
    #[arg(long, env = "GENESYS_REGION", value_name = "ENV")]
    pub region: Option<String>,

    /// API base URL, overriding the region's (proxies, the emulator).
    #[arg(long, env = "GENESYS_API_URL", value_name = "URL")]
    pub api_url: Option<String>,

    /// Login (OAuth) base URL, overriding the region's.
    #[arg(long, env = "GENESYS_LOGIN_URL", value_name = "URL")]
    pub login_url: Option<String>,

    /// OAuth client id (client-credentials grant).
    #[arg(long, env = "GENESYS_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,

    /// File holding the OAuth client secret. The secret itself is read from
    /// GENESYS_CLIENT_SECRET or this file, never from a flag (flags show in `ps`).
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,

    /// Watch only the members of these Genesys groups (comma-separated group ids).
    /// [default: every active user]
    #[arg(
        long,
        env = "GENESYS_GROUPS",
        value_name = "IDS",
        value_delimiter = ','
    )]
    pub groups: Option<Vec<String>>,

    /// Map Genesys groups to bits of the group mask: `GROUP_ID=BIT,...` (bits 0 to 63).
    /// A user's mask is the OR of its mapped groups' bits. [default: none]
    #[arg(long, env = "GROUP_BITS", value_name = "ID=BIT", value_delimiter = ',')]
    pub group_bits: Option<Vec<String>>,

    /// Group filter: publish only users whose mask shares a bit with this mask (decimal or
    /// 0x-hex). A user in no mapped group has mask 0 and never passes. [default: no filter]
    #[arg(long, env = "ALLOWED_GROUPS", value_name = "MASK")]
    pub allowed_groups: Option<String>,

    /// Read a binary relay of 16-byte frames at this wss:// URL instead of Genesys
    /// notifications (the bearer token still comes from the OAuth client, in a header).
    /// ws:// only to a loopback address; no user or password in the URL.
    #[arg(long, env = "RELAY_URL", value_name = "URL")]
    pub relay_url: Option<String>,

    /// Kafka bootstrap servers, comma-separated. [default: localhost:9092]
    #[arg(long, env = "KAFKA_BROKERS", value_name = "HOST:PORT,...")]
    pub kafka_brokers: Option<String>,

    /// Kafka topic (meant to be log-compacted; created compacted if missing).
    /// [default: genesys.presence.updates]
    #[arg(long, env = "KAFKA_TOPIC", value_name = "TOPIC")]
    pub topic: Option<String>,

    /// Kafka security protocol (any case). [default: plaintext]
    #[arg(
        long,
        env = "KAFKA_SECURITY_PROTOCOL",
        value_name = "PROTOCOL",
        value_parser = LibraryValue::new(SecurityProtocol::ALL, SecurityProtocol::as_str)
    )]
    pub kafka_security_protocol: Option<SecurityProtocol>,

    /// SASL mechanism (any case). SASL settings under a protocol without SASL (and TLS files
    /// under one without TLS) are refused at start.
    /// [default: SCRAM-SHA-512 when a sasl_* protocol is chosen]
    #[arg(
        long,
        env = unless_empty("KAFKA_SASL_MECHANISM"),
        value_name = "MECHANISM",
        value_parser = LibraryValue::new(SaslMechanism::ALL, SaslMechanism::as_str)
    )]
    pub kafka_sasl_mechanism: Option<SaslMechanism>,

    /// SASL username.
    #[arg(long, env = "KAFKA_SASL_USERNAME", value_name = "USER")]
    pub kafka_sasl_username: Option<String>,

    /// File holding the SASL password (or set KAFKA_SASL_PASSWORD; never a flag).
    #[arg(long, value_name = "FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,

    /// CA certificate file (PEM) for TLS to Kafka. [default: the system's roots]
    #[arg(long, env = "KAFKA_CA_FILE", value_name = "FILE")]
    pub kafka_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS to Kafka.
    #[arg(long, env = "KAFKA_CERT_FILE", value_name = "FILE")]
    pub kafka_cert_file: Option<PathBuf>,

    /// Client key (PEM) for mutual TLS to Kafka.
    #[arg(long, env = "KAFKA_KEY_FILE", value_name = "FILE")]
    pub kafka_key_file: Option<PathBuf>,

    /// Partitions of the topic when the bridge creates it: more than the instances you will
    /// run (each owns the users of its share; see "Running several instances"), say 12 or
    /// 24; 1 to 10000. An existing topic keeps its own. [default: 12]
    #[arg(long, env = "KAFKA_PARTITIONS", value_name = "N")]
    pub kafka_partitions: Option<String>,

    /// Notification channels this instance may use on its OAuth client (Genesys allows 20
    /// per client, shared with every other app on it); one is kept free for rollovers, so it
    /// watches up to (N - 1) x 1,000 users. 2 to 20. [default: 20]
    #[arg(long, env = "MAX_CHANNELS", value_name = "N")]
    pub max_channels: Option<String>,

    /// The Kafka consumer group the instances share: each owns the users of the presence
    /// topic's partitions the group assigns it (a lone instance owns them all). Every
    /// instance watching the same organisation and topic uses the same one.
    /// [default: presence-bridge]
    #[arg(long, env = "GROUP_ID", value_name = "GROUP")]
    pub group_id: Option<String>,

    /// The group protocol: `consumer` (Kafka 4's, KIP-848; the broker sets the session
    /// timeout) or `classic` (cooperative-sticky, a 6 s session timeout).
    /// [default: consumer]
    #[arg(
        long,
        env = "GROUP_PROTOCOL",
        value_name = "PROTOCOL",
        value_parser = LibraryValue::new(GroupProtocol::ALL, GroupProtocol::as_str)
    )]
    pub group_protocol: Option<GroupProtocol>,

    /// This instance's name in the group, in logs and in `/v1/stats`.
    /// [default: HOSTNAME-PID]
    #[arg(long, env = "INSTANCE_ID", value_name = "NAME")]
    pub instance_id: Option<String>,

    /// Time-to-live: a user not confirmed (by an event or a resync) for this long is expired
    /// and a tombstone published; 1s to 365d. [default: 1h]
    #[arg(long, env = "PRESENCE_TTL", value_name = "DURATION")]
    pub ttl: Option<String>,

    /// How far ahead of this machine's clock an event time may be: an event dated later is
    /// dropped, counted and logged (it would win last-write-wins against every real event
    /// until its time came, and the broker refuses such timestamps); 1s to 1h. [default: 5m]
    #[arg(long, env = "MAX_EVENT_SKEW", value_name = "DURATION")]
    pub max_event_skew: Option<String>,

    /// Messages longer than this are counted (`oversized`) and skipped, the socket stays up
    /// (Genesys notifications are a few hundred bytes; relay batches 64 KiB). Bytes, or with
    /// a KiB/MiB suffix; at least 1KiB. [default: 128KiB]
    #[arg(long, env = "MAX_MESSAGE_SIZE", value_name = "SIZE")]
    pub max_message_size: Option<String>,

    /// The most a WebSocket reads for one message: a longer one is refused from its header
    /// (counted, the socket replaced and its users resynced). Bounds the memory of every
    /// socket together (20 sockets x 256 KiB = 5 MiB). At least --max-message-size, at most
    /// 64MiB. [default: 256KiB]
    #[arg(long, env = "MAX_SOCKET_MESSAGE_SIZE", value_name = "SIZE")]
    pub max_socket_message_size: Option<String>,

    /// Resynchronise every user over REST this often, confirming live users; must be shorter
    /// than --ttl. A re-discovery reads every user's presence too, so it counts as one: with
    /// the defaults, re-discoveries do the resyncs. "off" disables it; at least 10ms (shorter
    /// than a pass takes means back to back, at the pace the rate limit allows). [default: 15m]
    #[arg(long, env = "RESYNC_INTERVAL", value_name = "DURATION")]
    pub resync_interval: Option<String>,

    /// Discover the users again this often and follow the organisation: new users are
    /// subscribed and published, deleted or deactivated ones unsubscribed and tombstoned
    /// (once two listings in a row miss them: a listing that misses users is followed by
    /// another at once), group moves republished with the new mask. One listing of every active user with
    /// their presence and groups (a call per 500 users). "off" discovers only at start; at
    /// least 10ms. [default: 10m]
    #[arg(long, env = "DISCOVERY_INTERVAL", value_name = "DURATION")]
    pub discovery_interval: Option<String>,

    /// Address of the admin HTTP server (health, readiness, metrics, query API, dashboard).
    /// [default: 127.0.0.1:9464]
    #[arg(long, env = "ADMIN_ADDR", value_name = "HOST:PORT")]
    pub admin_addr: Option<String>,

    /// Most dashboard event-stream clients (`GET /v1/events`) at once; more get 503 (0
    /// turns the stream off). [default: 16]
    #[arg(long, env = "ADMIN_MAX_EVENT_STREAMS", value_name = "N")]
    pub admin_max_event_streams: Option<String>,

    /// How much history the dashboard and `/v1/history` keep, one sample per second, in a
    /// ring allocated at start (about 110 bytes a sample: 15m is 99 KiB); 1m to 4h.
    /// [default: 15m]
    #[arg(long, env = "HISTORY_WINDOW", value_name = "DURATION")]
    pub history_window: Option<String>,

    /// How long shutdown may spend flushing Kafka; at most 1h. [default: 10s]
    #[arg(long, env = "SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,

    /// Also trust the operating system's certificate store, beside the bundled Mozilla
    /// roots, for Genesys REST and WebSockets: for a TLS-inspecting corporate proxy whose CA
    /// is installed there. The proxy itself comes from HTTPS_PROXY/HTTP_PROXY/NO_PROXY (or
    /// lowercase), as curl reads them.
    #[arg(long, env = "TLS_NATIVE_ROOTS")]
    pub tls_native_roots: bool,
}

/// A library type's value parsed by its own `FromStr` (trimmed; the library types accept any
/// case), with its accepted `names` given to clap, so that `--help` lists them and a bad
/// value gets clap's own message: the option, the accepted values, the nearest one.
#[derive(Clone, Debug)]
pub struct LibraryValue<T> {
    names: Vec<&'static str>,
    parsed: PhantomData<fn() -> T>,
}

impl<T> LibraryValue<T> {
    /// A parser for a type with these values, each spelled as `name` says.
    pub fn new(
        values: impl IntoIterator<Item = T>,
        name: fn(T) -> &'static str,
    ) -> LibraryValue<T> {
        LibraryValue {
            names: values.into_iter().map(name).collect(),
            parsed: PhantomData,
        }
    }
}

impl<T: FromStr + Clone + Send + Sync + 'static> TypedValueParser for LibraryValue<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        if let Some(parsed) = value.to_str().and_then(|text| text.trim().parse().ok()) {
            return Ok(parsed);
        }
        // Whatever the library refuses, no accepted name matches either: this is clap's error.
        PossibleValuesParser::new(self.names.iter().copied())
            .parse_ref(cmd, arg, value)
            .and_then(|_| Err(clap::Error::new(ErrorKind::InvalidValue).with_cmd(cmd)))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            self.names.iter().map(|name| PossibleValue::new(*name)),
        ))
    }
}

/// `name`, unless that variable is set to the empty string: then clap does not read it, so an
/// empty variable counts as not given rather than as a value that no parser accepts.
fn unless_empty(name: &'static str) -> Option<&'static str> {
    match std::env::var_os(name) {
        Some(value) if value.is_empty() => None,
        _ => Some(name),
    }
}

/// Options of `emulate`.
#[derive(Debug, Clone, Args)]
pub struct EmulateArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8089", value_name = "HOST:PORT")]
    pub addr: SocketAddr,

    /// Number of emulated users.
    #[arg(long, default_value_t = 1_000)]
    pub users: u32,

    /// Presence changes per second (0 for none).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,

    /// Seed of the workload (users, groups, changes).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Random faults per minute (drops, stalls, socket_closing, bad messages, 429 and 5xx
    /// bursts, token expiry, no_longer_subscribed); 0 for none.
    #[arg(long, default_value_t = 0.0, value_name = "PER_MINUTE")]
    pub chaos: f64,

    /// Which faults --chaos injects (comma-separated): drop_socket, stall_socket,
    /// socket_closing, garbage, truncated_json, oversized, rate_limit_burst,
    /// server_error_burst, expire_tokens, no_longer_subscribed. [default: all]
    #[arg(long, value_name = "KINDS", value_delimiter = ',')]
    pub faults: Vec<String>,

    /// Server heartbeat interval.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub heartbeat: humantime::Duration,

    /// Channel lifetime (Genesys: 24 h).
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub channel_lifetime: humantime::Duration,

    /// Token lifetime (Genesys default: 24 h).
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub token_lifetime: humantime::Duration,

    /// API requests per minute per token before 429 (Genesys default: 300).
    #[arg(long, default_value_t = 300)]
    pub rate_limit: u32,

    /// Number of OAuth clients, each with its own channels (20 each) and tokens (each token
    /// with its own rate limit): the first, then emulator-client-id-2 / emulator-client-secret-2
    /// and so on. Every client's id and secret is printed at start.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub clients: usize,

    /// Users that exist but are not created yet: org churn creates them (see
    /// --churn-per-day).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub spare_users: u32,

    /// Org churn: this fraction of --users changes per --day (users created from
    /// --spare-users, deleted, deactivated or moved between groups, equally likely); 0 for
    /// none, at most 100.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub churn_per_day: f64,

    /// How long a simulated day lasts for --churn-per-day (a soak sets, say, 10s).
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub day: humantime::Duration,
}

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The emulator's settings (its address defaults to a free port here).
    #[command(flatten)]
    pub emulator: DemoEmulatorArgs,

    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BROKERS",
        default_value = "localhost:9092",
        value_name = "HOST:PORT,..."
    )]
    pub kafka_brokers: String,

    /// Kafka topic.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "genesys.presence.updates")]
    pub topic: String,

    /// Address of the admin HTTP server and dashboard.
    #[arg(
        long,
        env = "ADMIN_ADDR",
        default_value = "127.0.0.1:9464",
        value_name = "HOST:PORT"
    )]
    pub admin_addr: String,
}

/// Default of `demo --chaos`: gentle, a fault every 30 s on average.
pub const DEMO_CHAOS: f64 = 2.0;

/// Default of `demo --faults`.
pub const DEMO_FAULTS: [&str; 7] = [
    "drop_socket",
    "stall_socket",
    "socket_closing",
    "maintenance_wave",
    "no_longer_subscribed",
    "garbage",
    "rate_limit_burst",
];

/// The emulator settings of `demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoEmulatorArgs {
    /// Number of emulated users.
    #[arg(long, default_value_t = 2_000)]
    pub users: u32,

    /// Presence changes per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,

    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Random faults per minute, so that reconnects, resyncs and faults show on the dashboard
    /// while you watch; 0 for none.
    #[arg(long, default_value_t = DEMO_CHAOS, value_name = "PER_MINUTE")]
    pub chaos: f64,

    /// Which faults --chaos injects (comma-separated kinds, as for `emulate`; `all` for
    /// every kind). By default the ones an operator would recognise: dropped, stalled and
    /// rolled-over sockets, a maintenance wave, lost subscriptions, garbage, 429 bursts.
    #[arg(
        long,
        value_name = "KINDS",
        value_delimiter = ',',
        default_values = DEMO_FAULTS
    )]
    pub faults: Vec<String>,
}
