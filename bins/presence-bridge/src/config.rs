//! The validated configuration of `run`: flags and environment (through clap) over the TOML
//! file over the defaults. Every error names the option and says what was wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use genesys_auth::{Endpoints, SecretString};
use presence_frame::{GroupMask, Guid};
use presence_kafka::{
    GroupConfig, GroupProtocol, KafkaConfig, Sasl, SaslMechanism, SecurityProtocol, Tls,
};
use serde::Deserialize;

use crate::admin::{AdminOptions, DEFAULT_MAX_EVENT_STREAMS};
use crate::cli::RunArgs;

/// Default Kafka topic.
pub const DEFAULT_TOPIC: &str = "genesys.presence.updates";
/// Default admin address.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9464";
/// Partitions of a topic the bridge creates: divisible by 1, 2, 3, 4, 6 and 12 instances.
pub const DEFAULT_PARTITIONS: i32 = 12;
/// Default consumer group.
pub const DEFAULT_GROUP_ID: &str = "presence-bridge";

/// `HOSTNAME-PID`: unique among the instances of a machine and readable in logs.
fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "presence-bridge".into());
    format!("{host}-{}", std::process::id())
}

/// The TOML file: the same options as the flags, by their long names.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    region: Option<String>,
    api_url: Option<String>,
    login_url: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    groups: Option<Vec<String>>,
    group_bits: Option<Vec<String>>,
    allowed_groups: Option<String>,
    relay_url: Option<String>,
    kafka_brokers: Option<String>,
    topic: Option<String>,
    kafka_security_protocol: Option<String>,
    kafka_sasl_mechanism: Option<String>,
    kafka_sasl_username: Option<String>,
    kafka_sasl_password_file: Option<PathBuf>,
    kafka_ca_file: Option<PathBuf>,
    kafka_cert_file: Option<PathBuf>,
    kafka_key_file: Option<PathBuf>,
    kafka_partitions: Option<String>,
    max_channels: Option<String>,
    group_id: Option<String>,
    group_protocol: Option<String>,
    instance_id: Option<String>,
    ttl: Option<String>,
    max_event_skew: Option<String>,
    max_message_size: Option<String>,
    max_socket_message_size: Option<String>,
    resync_interval: Option<String>,
    discovery_interval: Option<String>,
    admin_addr: Option<String>,
    admin_max_event_streams: Option<String>,
    history_window: Option<String>,
    shutdown_grace: Option<String>,
    tls_native_roots: Option<bool>,
}

/// Where presence comes from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// Genesys notification channels.
    Genesys {
        /// Everyone active, or members of these groups.
        groups: Vec<Guid>,
    },
    /// A binary relay.
    Relay {
        /// Its ws:// or wss:// URL.
        url: String,
    },
}

/// Everything `run` needs, checked.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Genesys API and login endpoints.
    pub endpoints: Endpoints,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: SecretString,
    /// Where presence comes from.
    pub source: SourceConfig,
    /// Group id to mask bit.
    pub group_bits: Vec<(Guid, u32)>,
    /// The group filter, if any.
    pub allowed: Option<GroupMask>,
    /// The Kafka publisher's configuration, validated.
    pub kafka: KafkaConfig,
    /// The bootstrap servers of `kafka`, for messages (`KafkaConfig` does not give them back).
    pub kafka_brokers: String,
    /// The consumer group this instance joins, and as whom.
    pub group: GroupConfig,
    /// Notification channels this instance may use on its OAuth client.
    pub max_channels: usize,
    /// Registry time-to-live.
    pub ttl: Duration,
    /// How far ahead of this machine's clock an event time may be.
    pub max_event_skew: Duration,
    /// Messages longer than this are skipped (the socket stays up).
    pub max_message_bytes: usize,
    /// The most a socket reads for one message (longer: the socket is replaced).
    pub max_socket_message_bytes: usize,
    /// Periodic full resync, if any.
    pub resync_interval: Option<Duration>,
    /// Periodic re-discovery of the users, if any.
    pub discovery_interval: Option<Duration>,
    /// Admin HTTP address.
    pub admin_addr: SocketAddr,
    /// Admin server limits.
    pub admin: AdminOptions,
    /// How much history the dashboard keeps (`/v1/history`).
    pub history_window: Duration,
    /// Deadline of the Kafka flush at shutdown.
    pub shutdown_grace: Duration,
    /// Whether Genesys TLS also trusts the operating system's certificate store.
    pub tls_native_roots: bool,
}

fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

/// The longest `--ttl` and `--resync-interval` accepted: a year. Longer values could not be
/// added to a clock reading without overflow somewhere down the line, and mean "never".
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// The longest `--max-event-skew` accepted: an hour, the broker's own limit on record
/// timestamps ahead of its clock (`log.message.timestamp.after.max.ms`, Kafka 4's default).
pub const MAX_EVENT_SKEW: Duration = Duration::from_secs(60 * 60);
/// The shortest `--resync-interval` and `--discovery-interval` accepted: shorter than a full
/// pass can take, so that a time-scaled soak (a simulated day in seconds) can ask for "as
/// often as the rate limit allows"; the client's pacing, not the interval, then sets the pace.
pub const MIN_PERIOD: Duration = Duration::from_millis(10);
/// The longest `--shutdown-grace` accepted: an hour (supervisors stop waiting long before).
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(60 * 60);

/// The most `--admin-max-event-streams` accepted.
pub const MAX_EVENT_STREAMS: usize = 10_000;

/// The largest `--max-socket-message-size` accepted.
pub const MAX_SOCKET_MESSAGE_SIZE: usize = 64 << 20;

/// Parses a size flag: bytes, or a number with a `KiB`/`MiB` (or `K`/`M`) suffix.
fn size(option: &str, text: &str) -> Result<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit_bytes: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        _ => bail!("invalid --{option} {text:?}: expected bytes, or a number with KiB or MiB"),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit_bytes))
        .filter(|n| *n <= MAX_SOCKET_MESSAGE_SIZE)
        .ok_or_else(|| anyhow!("invalid --{option} {text:?}: expected at most 64MiB"))
}

/// Parses a duration flag, refusing anything longer than `max` (so that no later
/// `Instant + duration` can overflow and panic).
fn duration(option: &str, text: &str, max: Duration) -> Result<Duration> {
    let value = humantime::parse_duration(text.trim())
        .map_err(|e| anyhow!("invalid --{option} {text:?}: {e} (examples: 30s, 15m, 1h)"))?;
    if value > max {
        bail!(
            "invalid --{option} {text:?}: at most {}",
            humantime::format_duration(max)
        );
    }
    Ok(value)
}

/// A value of the TOML file parsed by its type's `FromStr`, as clap parses the flag's.
fn from_file<T>(option: &str, text: &str) -> Result<T>
where
    T: FromStr<Err = presence_kafka::Error>,
{
    text.trim()
        .parse()
        .with_context(|| format!("invalid --{option} in --config"))
}

fn read_secret_file(option: &str, path: &Path) -> Result<SecretString> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("invalid --{option}: cannot read {}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        bail!("invalid --{option}: {} is empty", path.display());
    }
    Ok(SecretString::from(secret))
}

fn env_secret(name: &str) -> Option<SecretString> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
}

fn guid(option: &str, text: &str) -> Result<Guid> {
    Guid::parse(text.trim())
        .ok_or_else(|| anyhow!("invalid --{option}: {text:?} is not a Genesys id (a GUID)"))
}

/// Parses a mask given in decimal or `0x` hex.
pub fn parse_mask(option: &str, text: &str) -> Result<GroupMask> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed
        .map(GroupMask)
        .map_err(|_| anyhow!("invalid --{option} {text:?}: expected a number like 5 or 0x0f"))
}

/// Refuses SASL settings under a protocol without SASL and TLS files under one without TLS:
/// librdkafka would ignore them, and the operator would believe them in force. `sasl` and
/// `tls` list each option with whether it was given (flag, environment or file).
fn check_protocol_settings(
    protocol: SecurityProtocol,
    sasl: &[(&str, bool)],
    tls: &[(&str, bool)],
) -> Result<()> {
    let given = |options: &[(&str, bool)]| -> Vec<String> {
        options
            .iter()
            .filter(|(_, given)| *given)
            .map(|(name, _)| format!("--{name}"))
            .collect()
    };
    let stray_sasl = given(sasl);
    if !protocol.uses_sasl() && !stray_sasl.is_empty() {
        bail!(
            "invalid {}: SASL settings have no effect under --kafka-security-protocol {protocol}; \
             use sasl_plaintext or sasl_ssl, or remove them",
            stray_sasl.join(", ")
        );
    }
    let stray_tls = given(tls);
    if !protocol.uses_tls() && !stray_tls.is_empty() {
        bail!(
            "invalid {}: TLS files have no effect under --kafka-security-protocol {protocol}; \
             use ssl or sasl_ssl, or remove them",
            stray_tls.join(", ")
        );
    }
    Ok(())
}

impl BridgeConfig {
    /// Merges flags and environment (already in `args`) over the TOML file and validates.
    pub fn from_args(args: &RunArgs) -> Result<BridgeConfig> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("invalid --config: cannot read {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid --config {}", path.display()))?
            }
            None => FileConfig::default(),
        };

        let region =
            pick(args.region.clone(), file.region).unwrap_or_else(|| "mypurecloud.com".into());
        let mut endpoints = Endpoints::for_environment(&region)?;
        if let Some(api) = pick(args.api_url.clone(), file.api_url) {
            endpoints = endpoints.with_api_base(&api)?;
        }
        if let Some(login) = pick(args.login_url.clone(), file.login_url) {
            endpoints = endpoints.with_login_base(&login)?;
        }

        let client_id = pick(args.client_id.clone(), file.client_id)
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(|| {
                anyhow!("missing --client-id: set GENESYS_CLIENT_ID (or --client-id)")
            })?;
        let client_secret = match (
            env_secret("GENESYS_CLIENT_SECRET"),
            pick(args.client_secret_file.clone(), file.client_secret_file),
        ) {
            (_, Some(path)) => read_secret_file("client-secret-file", &path)?,
            (Some(secret), None) => secret,
            (None, None) => {
                bail!("missing client secret: set GENESYS_CLIENT_SECRET or --client-secret-file")
            }
        };

        let groups = pick(args.groups.clone(), file.groups)
            .unwrap_or_default()
            .iter()
            .filter(|g| !g.trim().is_empty())
            .map(|g| guid("groups", g))
            .collect::<Result<Vec<_>>>()?;
        let group_bits = pick(args.group_bits.clone(), file.group_bits)
            .unwrap_or_default()
            .iter()
            .filter(|g| !g.trim().is_empty())
            .map(|pair| {
                let (id, bit) = pair.split_once('=').ok_or_else(|| {
                    anyhow!("invalid --group-bits {pair:?}: expected GROUP_ID=BIT")
                })?;
                let bit: u32 = bit.trim().parse().ok().filter(|b| *b < 64).ok_or_else(|| {
                    anyhow!("invalid --group-bits {pair:?}: the bit must be 0 to 63")
                })?;
                Ok((guid("group-bits", id)?, bit))
            })
            .collect::<Result<Vec<_>>>()?;
        let allowed = pick(args.allowed_groups.clone(), file.allowed_groups)
            .map(|m| parse_mask("allowed-groups", &m))
            .transpose()?;
        if allowed == Some(GroupMask::NONE) {
            bail!(
                "invalid --allowed-groups 0: no user could ever pass; leave it unset to publish everyone"
            );
        }

        let source = match pick(args.relay_url.clone(), file.relay_url) {
            Some(url) => {
                // wss:// (ws:// only to loopback), no userinfo, no token; never echoes the
                // query or a password.
                if let Err(e) = presence_sync::RelaySource::check_url(&url) {
                    match e {
                        presence_sync::Error::Config { reason, .. } => {
                            bail!("invalid --relay-url: {reason}")
                        }
                        other => bail!("invalid --relay-url: {other}"),
                    }
                }
                if !groups.is_empty() {
                    bail!(
                        "invalid --groups: group selection needs Genesys notifications, not --relay-url"
                    );
                }
                SourceConfig::Relay { url }
            }
            None => SourceConfig::Genesys { groups },
        };

        // The file's values are parsed as clap parses the flags' (and only when no flag wins).
        let security_protocol = match args.kafka_security_protocol {
            Some(protocol) => protocol,
            None => file
                .kafka_security_protocol
                .map(|text| from_file::<SecurityProtocol>("kafka-security-protocol", &text))
                .transpose()?
                .unwrap_or_default(),
        };
        let sasl_mechanism = match args.kafka_sasl_mechanism {
            Some(mechanism) => Some(mechanism),
            // An empty value counts as not given, as an empty KAFKA_SASL_MECHANISM does.
            None => file
                .kafka_sasl_mechanism
                .filter(|text| !text.trim().is_empty())
                .map(|text| from_file::<SaslMechanism>("kafka-sasl-mechanism", &text))
                .transpose()?,
        };
        let sasl_username = pick(args.kafka_sasl_username.clone(), file.kafka_sasl_username)
            .filter(|u| !u.trim().is_empty());
        let sasl_password_file = pick(
            args.kafka_sasl_password_file.clone(),
            file.kafka_sasl_password_file,
        );
        let ca_file = pick(args.kafka_ca_file.clone(), file.kafka_ca_file);
        let cert_file = pick(args.kafka_cert_file.clone(), file.kafka_cert_file);
        let key_file = pick(args.kafka_key_file.clone(), file.kafka_key_file);
        check_protocol_settings(
            security_protocol,
            &[
                ("kafka-sasl-mechanism", sasl_mechanism.is_some()),
                ("kafka-sasl-username", sasl_username.is_some()),
                ("kafka-sasl-password-file", sasl_password_file.is_some()),
            ],
            &[
                ("kafka-ca-file", ca_file.is_some()),
                ("kafka-cert-file", cert_file.is_some()),
                ("kafka-key-file", key_file.is_some()),
            ],
        )?;
        let client_cert = match (cert_file, key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("invalid --kafka-cert-file/--kafka-key-file: give both or neither"),
        };
        let sasl_password = match sasl_password_file {
            Some(path) => Some(read_secret_file("kafka-sasl-password-file", &path)?),
            // The variable alone (no user name, no mechanism) is not taken as a request for
            // SASL: shells that ran `scripts/kafka.sh env` export it for every test.
            None => env_secret("KAFKA_SASL_PASSWORD").filter(|_| security_protocol.uses_sasl()),
        };
        let sasl = match (sasl_username, sasl_password) {
            _ if !security_protocol.uses_sasl() => None,
            (Some(username), Some(password)) => Some(Sasl::new(
                sasl_mechanism.unwrap_or(SaslMechanism::ScramSha512),
                username,
                password,
            )),
            _ => bail!(
                "invalid --kafka-security-protocol {security_protocol}: SASL needs --kafka-sasl-username and a password (KAFKA_SASL_PASSWORD or --kafka-sasl-password-file)"
            ),
        };
        let tls = security_protocol.uses_tls().then(|| {
            let tls = match ca_file {
                Some(ca) => Tls::ca_file(ca),
                None => Tls::system_roots(),
            };
            match client_cert {
                Some((cert, key)) => tls.client_cert(cert, key),
                None => tls,
            }
        });
        let kafka_brokers = pick(args.kafka_brokers.clone(), file.kafka_brokers)
            .unwrap_or_else(|| "localhost:9092".into());
        if kafka_brokers.trim().is_empty() {
            bail!("invalid --kafka-brokers: empty");
        }
        let topic = pick(args.topic.clone(), file.topic).unwrap_or_else(|| DEFAULT_TOPIC.into());
        if topic.trim().is_empty() || topic.len() > 249 {
            bail!("invalid --topic {topic:?}: 1 to 249 characters");
        }
        let mut kafka = KafkaConfig::new(kafka_brokers.clone())
            .topic(topic)
            .client_id(format!("presence-bridge-{}", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = tls {
            kafka = kafka.tls(tls);
        }
        if let Some(sasl) = sasl {
            kafka = kafka.sasl(sasl);
        }
        let partitions = match pick(args.kafka_partitions.clone(), file.kafka_partitions) {
            None => DEFAULT_PARTITIONS,
            Some(text) => text
                .trim()
                .parse::<i32>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    anyhow!("invalid --kafka-partitions {text:?}: expected 1 to 10000")
                })?,
        };
        kafka = kafka.partitions(partitions);

        let ttl = duration(
            "ttl",
            &pick(args.ttl.clone(), file.ttl).unwrap_or_else(|| "1h".into()),
            MAX_TTL,
        )?;
        if ttl < Duration::from_secs(1) {
            bail!("invalid --ttl: at least 1s");
        }
        let max_event_skew = duration(
            "max-event-skew",
            &pick(args.max_event_skew.clone(), file.max_event_skew).unwrap_or_else(|| "5m".into()),
            MAX_EVENT_SKEW,
        )?;
        if max_event_skew < Duration::from_secs(1) {
            bail!("invalid --max-event-skew: at least 1s (clocks are never that close)");
        }
        let max_message_bytes = match pick(args.max_message_size.clone(), file.max_message_size) {
            Some(text) => size("max-message-size", &text)?,
            None => presence_sync::DEFAULT_MAX_MESSAGE_BYTES,
        };
        if max_message_bytes < 1024 {
            bail!("invalid --max-message-size: at least 1KiB");
        }
        let max_socket_message_bytes = match pick(
            args.max_socket_message_size.clone(),
            file.max_socket_message_size,
        ) {
            Some(text) => size("max-socket-message-size", &text)?,
            None => presence_sync::DEFAULT_MAX_SOCKET_MESSAGE_BYTES.max(max_message_bytes),
        };
        if max_socket_message_bytes < max_message_bytes {
            bail!(
                "invalid --max-socket-message-size {max_socket_message_bytes}: at least --max-message-size {max_message_bytes}"
            );
        }
        let resync_text = pick(args.resync_interval.clone(), file.resync_interval)
            .unwrap_or_else(|| "15m".into());
        let resync_interval = match resync_text.trim() {
            "off" | "never" | "0" => None,
            text => Some(duration("resync-interval", text, MAX_TTL)?),
        };
        if let Some(interval) = resync_interval {
            if interval >= ttl {
                bail!(
                    "invalid --resync-interval {}: must be shorter than --ttl {} or live users expire between resyncs",
                    humantime::format_duration(interval),
                    humantime::format_duration(ttl)
                );
            }
            if interval < MIN_PERIOD {
                bail!("invalid --resync-interval: at least 10ms");
            }
        }
        let discovery_text = pick(args.discovery_interval.clone(), file.discovery_interval)
            .unwrap_or_else(|| "10m".into());
        let discovery_interval = match discovery_text.trim() {
            "off" | "never" | "0" => None,
            text => Some(duration("discovery-interval", text, MAX_TTL)?),
        };
        if discovery_interval.is_some_and(|i| i < MIN_PERIOD) {
            bail!("invalid --discovery-interval: at least 10ms");
        }
        let admin_text = pick(args.admin_addr.clone(), file.admin_addr)
            .unwrap_or_else(|| DEFAULT_ADMIN_ADDR.into());
        let admin_addr: SocketAddr = admin_text.trim().parse().map_err(|_| {
            anyhow!(
                "invalid --admin-addr {admin_text:?}: expected HOST:PORT such as 127.0.0.1:9464"
            )
        })?;
        let max_event_streams = match pick(
            args.admin_max_event_streams.clone(),
            file.admin_max_event_streams,
        ) {
            None => DEFAULT_MAX_EVENT_STREAMS,
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_EVENT_STREAMS)
                .ok_or_else(|| {
                    anyhow!(
                        "invalid --admin-max-event-streams {text:?}: expected 0 to {MAX_EVENT_STREAMS}"
                    )
                })?,
        };
        let history_window = duration(
            "history-window",
            &pick(args.history_window.clone(), file.history_window).unwrap_or_else(|| "15m".into()),
            crate::history::MAX_WINDOW,
        )?;
        if history_window < crate::history::MIN_WINDOW {
            bail!("invalid --history-window: at least 1m");
        }
        let shutdown_grace = duration(
            "shutdown-grace",
            &pick(args.shutdown_grace.clone(), file.shutdown_grace).unwrap_or_else(|| "10s".into()),
            MAX_SHUTDOWN_GRACE,
        )?;

        let max_channels = match pick(args.max_channels.clone(), file.max_channels) {
            None => 20,
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (2..=20).contains(n))
                .ok_or_else(|| anyhow!("invalid --max-channels {text:?}: expected 2 to 20"))?,
        };
        let group_id = pick(args.group_id.clone(), file.group_id)
            .map(|g| g.trim().to_owned())
            .unwrap_or_else(|| DEFAULT_GROUP_ID.into());
        if group_id.is_empty() {
            bail!("invalid --group-id: empty");
        }
        let protocol = match (args.group_protocol, file.group_protocol) {
            (Some(protocol), _) => protocol,
            (None, Some(text)) => from_file("group-protocol", &text)?,
            (None, None) => GroupProtocol::Consumer,
        };
        let instance_id = pick(args.instance_id.clone(), file.instance_id)
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty())
            .unwrap_or_else(default_instance_id);
        kafka = kafka.instance(instance_id.clone());
        let mut group = GroupConfig::new(group_id, instance_id);
        group.protocol = protocol;

        // Last, as when the publisher checked it at start: the options above are refused first,
        // each in the binary's words.
        kafka.validate()?;

        Ok(BridgeConfig {
            endpoints,
            client_id,
            client_secret,
            source,
            group_bits,
            allowed,
            kafka,
            kafka_brokers,
            group,
            max_channels,
            ttl,
            max_event_skew,
            max_message_bytes,
            max_socket_message_bytes,
            resync_interval,
            discovery_interval,
            admin_addr,
            admin: AdminOptions { max_event_streams },
            history_window,
            shutdown_grace,
            tls_native_roots: args.tls_native_roots || file.tls_native_roots.unwrap_or(false),
        })
    }
}
