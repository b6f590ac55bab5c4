//! The binary as a user meets it: `--help` and the README agree, bad configuration fails at
//! start naming the option, signals end it cleanly with exit code 0.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use presence_bridge::cli::{Cli, Command as Subcommand, RunArgs};
use presence_bridge::config::BridgeConfig;
use presence_kafka::{SaslMechanism, SecurityProtocol};

const BIN: &str = env!("CARGO_BIN_EXE_presence-bridge");

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    std::fs::read_to_string(path).expect("README.md")
}

#[test]
fn every_option_in_help_is_in_the_readme() {
    let readme = readme();
    let mut cli = Cli::command();
    cli.build();
    let mut missing = Vec::new();
    for sub in cli.get_subcommands() {
        for arg in sub.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" {
                continue;
            }
            if !readme.contains(&format!("--{long}")) {
                missing.push(format!("{} --{long}", sub.get_name()));
            }
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy();
                if !readme.contains(env.as_ref()) {
                    missing.push(format!("{} {env}", sub.get_name()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "options missing from README.md: {missing:?}"
    );
}

#[test]
fn help_explains_every_option() {
    let out = Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    // Wrapped lines are joined, so that a default split over two lines still reads whole.
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for option in [
        "--kafka-brokers",
        "--topic",
        "--ttl",
        "--resync-interval",
        "--admin-addr",
        "--relay-url",
        "--allowed-groups",
    ] {
        assert!(help.contains(option), "{option} in --help");
    }
    assert!(help.contains("[default: genesys.presence.updates]"));
    assert!(help.contains("[default: 127.0.0.1:9464]"));
}

fn args() -> RunArgs {
    RunArgs {
        client_id: Some("id".into()),
        ..RunArgs::default()
    }
}

fn error_of(args: RunArgs) -> String {
    // The secret comes from a file here so the test does not depend on the environment.
    let dir = std::env::temp_dir().join(format!("pb-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // One file per call: tests run in parallel, and rewriting a shared file (truncate, then
    // write) lets another test read it empty.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let secret = dir.join(format!("secret-{call}"));
    std::fs::write(&secret, "s3cret-value").expect("secret");
    let args = RunArgs {
        client_secret_file: args.client_secret_file.or(Some(secret)),
        ..args
    };
    let err = BridgeConfig::from_args(&args).expect_err("invalid");
    let text = format!("{err:#}");
    assert!(!text.contains("s3cret-value"), "secret leaked: {text}");
    text
}

#[test]
fn invalid_options_name_the_option() {
    let cases: Vec<(RunArgs, &str)> = vec![
        (
            RunArgs {
                region: Some("example.com".into()),
                ..args()
            },
            "region",
        ),
        (
            RunArgs {
                api_url: Some("ftp://x".into()),
                ..args()
            },
            "api-url",
        ),
        (
            RunArgs {
                ttl: Some("forever".into()),
                ..args()
            },
            "--ttl",
        ),
        (
            RunArgs {
                ttl: Some("1m".into()),
                resync_interval: Some("5m".into()),
                ..args()
            },
            "--resync-interval",
        ),
        (
            RunArgs {
                admin_addr: Some("nowhere".into()),
                ..args()
            },
            "--admin-addr",
        ),
        (
            RunArgs {
                allowed_groups: Some("0xZZ".into()),
                ..args()
            },
            "--allowed-groups",
        ),
        (
            RunArgs {
                allowed_groups: Some("0".into()),
                ..args()
            },
            "--allowed-groups",
        ),
        (
            RunArgs {
                group_bits: Some(vec!["abc".into()]),
                ..args()
            },
            "--group-bits",
        ),
        (
            RunArgs {
                group_bits: Some(vec!["9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f=64".into()]),
                ..args()
            },
            "--group-bits",
        ),
        (
            RunArgs {
                groups: Some(vec!["not-a-guid".into()]),
                ..args()
            },
            "--groups",
        ),
        (
            RunArgs {
                relay_url: Some("http://x".into()),
                ..args()
            },
            "--relay-url",
        ),
        (
            RunArgs {
                kafka_security_protocol: Some(SecurityProtocol::SaslPlaintext),
                ..args()
            },
            "--kafka-security-protocol",
        ),
        (
            RunArgs {
                client_secret_file: Some("/nonexistent/secret".into()),
                ..args()
            },
            "--client-secret-file",
        ),
        (
            RunArgs {
                client_id: None,
                ..args()
            },
            "--client-id",
        ),
    ];
    for (args, option) in cases {
        let text = error_of(args);
        assert!(text.contains(option), "{option}: {text}");
    }
    // A protocol or mechanism the library does not know never makes a `RunArgs`: clap refuses
    // it, naming the option.
    for (flags, option) in [
        (
            &["--kafka-security-protocol", "tls"][..],
            "--kafka-security-protocol",
        ),
        (
            &[
                "--kafka-sasl-mechanism",
                "GSSAPI",
                "--kafka-security-protocol",
                "sasl_ssl",
            ][..],
            "--kafka-sasl-mechanism",
        ),
    ] {
        let text = Cli::try_parse_from(["presence-bridge", "run"].iter().chain(flags))
            .expect_err("invalid")
            .to_string();
        assert!(text.contains(option), "{option}: {text}");
    }
}

/// The Kafka protocol and mechanism are the library's own types: clap parses the flags (any
/// case, values listed in `--help`), the file's values go through the same parsing.
#[test]
fn kafka_protocol_and_mechanism_are_parsed_by_the_library_types() {
    let cli = Cli::try_parse_from([
        "presence-bridge",
        "run",
        "--kafka-security-protocol",
        "SASL_PLAINTEXT",
        "--kafka-sasl-mechanism",
        "scram-sha-256",
    ])
    .expect("valid flags");
    let Subcommand::Run(run) = cli.command else {
        panic!("not run: {:?}", cli.command)
    };
    assert_eq!(
        run.kafka_security_protocol,
        Some(SecurityProtocol::SaslPlaintext)
    );
    assert_eq!(run.kafka_sasl_mechanism, Some(SaslMechanism::ScramSha256));

    let out = Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains("[possible values: plaintext, ssl, sasl_plaintext, sasl_ssl]"),
        "{help}"
    );
    assert!(
        help.contains("[possible values: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512]"),
        "{help}"
    );

    let dir = std::env::temp_dir().join(format!("pb-cfg-kafka-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("bridge.toml");
    for (text, option) in [
        (
            "kafka-security-protocol = \"tls\"\n",
            "--kafka-security-protocol",
        ),
        (
            "kafka-security-protocol = \"sasl_ssl\"\nkafka-sasl-mechanism = \"GSSAPI\"\n",
            "--kafka-sasl-mechanism",
        ),
    ] {
        std::fs::write(&file, text).expect("file");
        let text = error_of(RunArgs {
            config: Some(file.clone()),
            ..args()
        });
        assert!(text.contains(option), "{option}: {text}");
    }
    // An empty mechanism in the file is no mechanism (a stray one would be refused).
    std::fs::write(
        &file,
        "kafka-security-protocol = \"SSL\"\nkafka-sasl-mechanism = \"\"\n",
    )
    .expect("file");
    let config = config_of(RunArgs {
        config: Some(file),
        ..args()
    })
    .expect("valid");
    assert!(
        format!("{:?}", config.kafka).contains("tls: Some("),
        "{:?}",
        config.kafka
    );
}

/// An empty KAFKA_SASL_MECHANISM is no mechanism, as an unset one: not a value to refuse.
#[test]
fn an_empty_sasl_mechanism_variable_counts_as_unset() {
    let out = Command::new(BIN)
        .args(["run", "--ttl", "soon"])
        .env_remove("KAFKA_SASL_USERNAME")
        .env_remove("KAFKA_SECURITY_PROTOCOL")
        .env("KAFKA_SASL_MECHANISM", "")
        .env("GENESYS_CLIENT_ID", "id")
        .env("GENESYS_CLIENT_SECRET", "very-secret-value")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--ttl"), "{stderr}");
    assert!(!stderr.contains("mechanism"), "{stderr}");
}

#[test]
fn a_config_file_is_read_and_flags_win() {
    let dir = std::env::temp_dir().join(format!("pb-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let secret = dir.join("secret");
    std::fs::write(&secret, "x").expect("secret");
    let file = dir.join("bridge.toml");
    std::fs::write(
        &file,
        format!(
            "region = \"mypurecloud.ie\"\nclient-id = \"from-file\"\nclient-secret-file = {:?}\ntopic = \"file.topic\"\nttl = \"2h\"\n",
            secret.display().to_string()
        ),
    )
    .expect("file");
    let config = BridgeConfig::from_args(&RunArgs {
        config: Some(file.clone()),
        topic: Some("flag.topic".into()),
        ..RunArgs::default()
    })
    .expect("valid");
    assert_eq!(config.endpoints.api_base(), "https://api.mypurecloud.ie");
    assert_eq!(config.client_id, "from-file");
    assert_eq!(config.kafka.topic_name(), "flag.topic", "the flag wins");
    assert_eq!(config.ttl, Duration::from_secs(7200));

    std::fs::write(&file, "no-such-option = 1\n").expect("file");
    let err = BridgeConfig::from_args(&RunArgs {
        config: Some(file),
        ..args()
    })
    .expect_err("unknown key");
    assert!(format!("{err:#}").contains("--config"), "{err:#}");
}

#[test]
fn a_fatal_config_error_exits_1_with_one_line() {
    let out = Command::new(BIN)
        .args(["run", "--ttl", "soon"])
        // `scripts/kafka.sh env` exports a SASL user for the SASL tests: under the default
        // plaintext protocol it would be the (first) error instead of --ttl.
        .env_remove("KAFKA_SASL_USERNAME")
        .env_remove("KAFKA_SASL_MECHANISM")
        .env_remove("KAFKA_SECURITY_PROTOCOL")
        .env_remove("GENESYS_CLIENT_ID")
        .env("GENESYS_CLIENT_ID", "id")
        .env("GENESYS_CLIENT_SECRET", "very-secret-value")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("presence-bridge:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("--ttl"), "{stderr}");
    assert!(!stderr.contains("very-secret-value"));
}

#[cfg(unix)]
#[test]
fn sigterm_ends_the_emulator_with_exit_0() {
    let mut child = Command::new(BIN)
        .args(["emulate", "--addr", "127.0.0.1:0", "--users", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 256];
    while !seen.contains("Ctrl-C") {
        assert!(Instant::now() < deadline, "no banner: {seen}");
        let n = stdout.read(&mut buf).expect("read");
        assert!(n > 0, "exited early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("client secret:"), "{seen}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The configuration for `args`, with a client secret from a file of its own (tests run in
/// parallel: one shared file could be read while another test rewrites it).
fn config_of(args: RunArgs) -> anyhow::Result<BridgeConfig> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pb-cli-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let secret = dir.join(format!("secret-{call}"));
    if !secret.exists() {
        std::fs::write(&secret, "s3cret-value").expect("secret");
    }
    BridgeConfig::from_args(&RunArgs {
        client_secret_file: args.client_secret_file.clone().or(Some(secret)),
        ..args
    })
}

/// Issue 15, item 9: a TLS file under a protocol without TLS, or a SASL setting under a
/// protocol without SASL, would be ignored; it is an error naming the option and the
/// protocol instead.
#[test]
fn tls_and_sasl_settings_under_the_wrong_protocol_are_errors() {
    let dir = std::env::temp_dir().join(format!("pb-cli-wrong-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let password = dir.join("kafka-password");
    std::fs::write(&password, "kafka-s3cret").expect("password");
    let pem = dir.join("file.pem");
    std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").expect("pem");
    let protocol = |p: &str| Some(p.parse::<SecurityProtocol>().expect("a protocol"));
    let cases: Vec<(RunArgs, &str, &str)> = vec![
        (
            RunArgs {
                kafka_ca_file: Some(pem.clone()),
                ..args()
            },
            "--kafka-ca-file",
            "plaintext",
        ),
        (
            RunArgs {
                kafka_security_protocol: protocol("sasl_plaintext"),
                kafka_sasl_username: Some("u".into()),
                kafka_sasl_password_file: Some(password.clone()),
                kafka_cert_file: Some(pem.clone()),
                kafka_key_file: Some(pem.clone()),
                ..args()
            },
            "--kafka-cert-file",
            "sasl_plaintext",
        ),
        (
            RunArgs {
                kafka_key_file: Some(pem.clone()),
                ..args()
            },
            "--kafka-key-file",
            "plaintext",
        ),
        (
            RunArgs {
                kafka_sasl_mechanism: Some(SaslMechanism::Plain),
                ..args()
            },
            "--kafka-sasl-mechanism",
            "plaintext",
        ),
        (
            RunArgs {
                kafka_security_protocol: protocol("ssl"),
                kafka_sasl_username: Some("u".into()),
                ..args()
            },
            "--kafka-sasl-username",
            "ssl",
        ),
        (
            RunArgs {
                kafka_sasl_password_file: Some(password.clone()),
                ..args()
            },
            "--kafka-sasl-password-file",
            "plaintext",
        ),
    ];
    for (args, option, protocol) in cases {
        let text = match config_of(args) {
            Ok(config) => panic!("{option} under {protocol} accepted: {:?}", config.kafka),
            Err(e) => format!("{e:#}"),
        };
        assert!(text.contains(option), "{option}: {text}");
        assert!(text.contains(protocol), "{protocol}: {text}");
        assert!(!text.contains("kafka-s3cret"), "secret leaked: {text}");
    }
    // The same settings under their protocol are fine.
    let ok = config_of(RunArgs {
        kafka_security_protocol: protocol("sasl_ssl"),
        kafka_sasl_mechanism: Some(SaslMechanism::Plain),
        kafka_sasl_username: Some("u".into()),
        kafka_sasl_password_file: Some(password.clone()),
        kafka_ca_file: Some(pem.clone()),
        kafka_cert_file: Some(pem.clone()),
        kafka_key_file: Some(pem.clone()),
        ..args()
    })
    .expect("valid under sasl_ssl");
    // `KafkaConfig` has no getters for its TLS and SASL settings: its `Debug` shows them.
    let kafka = format!("{:?}", ok.kafka);
    assert!(kafka.contains("mechanism: Plain"), "{kafka}");
    assert!(kafka.contains(&format!("ca: File({pem:?})")), "{kafka}");
}

/// Issue 15, item 10: a duration that the process cannot add to a clock reading (an
/// enormous `--shutdown-grace`, `--ttl` or `--resync-interval`) is refused at start with the
/// option's name, instead of panicking later (`Instant + Duration` overflows).
#[test]
fn enormous_durations_are_refused_naming_the_option() {
    let huge = "500000000000y";
    for (args, option) in [
        (
            RunArgs {
                shutdown_grace: Some(huge.into()),
                ..args()
            },
            "--shutdown-grace",
        ),
        (
            RunArgs {
                ttl: Some(huge.into()),
                resync_interval: Some("off".into()),
                ..args()
            },
            "--ttl",
        ),
        (
            RunArgs {
                ttl: Some(huge.into()),
                resync_interval: Some("400000000000y".into()),
                ..args()
            },
            "--ttl",
        ),
    ] {
        let text = match config_of(args) {
            Ok(config) => panic!(
                "{option} {huge} accepted: ttl {:?}, shutdown grace {:?}",
                config.ttl, config.shutdown_grace
            ),
            Err(e) => format!("{e:#}"),
        };
        assert!(text.contains(option), "{option}: {text}");
    }
}

/// The values a duration flag might be given: numbers of every size with every unit,
/// composites, and junk.
fn duration_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let unit = prop::sample::select(vec![
        "ns", "us", "ms", "s", "sec", "m", "min", "h", "hours", "d", "days", "w", "M", "y",
        "years", "",
    ]);
    let number = prop_oneof![0u64..100_000, any::<u64>(), Just(u64::MAX)];
    prop_oneof![
        (number.clone(), unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
        (number.clone(), unit.clone(), number, unit)
            .prop_map(|(a, u, b, v)| format!("{a}{u} {b}{v}")),
        "\\PC{0,12}",
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Every duration flag, whatever its text: either a clear error naming the option, or a
    /// value that can be added to any clock reading of this process (a year of uptime and
    /// more) and whose milliseconds fit in a u64. Never a panic.
    #[test]
    fn duration_flags_never_yield_an_unusable_value(
        text in duration_text(),
        which in 0usize..3,
    ) {
        let (args, option) = match which {
            0 => (RunArgs { shutdown_grace: Some(text.clone()), ..args() }, "--shutdown-grace"),
            1 => (
                RunArgs { ttl: Some(text.clone()), resync_interval: Some("off".into()), ..args() },
                "--ttl",
            ),
            _ => (
                RunArgs { resync_interval: Some(text.clone()), ttl: Some("300d".into()), ..args() },
                "--resync-interval",
            ),
        };
        match config_of(args) {
            Ok(config) => {
                let later = std::time::Instant::now() + Duration::from_secs(400 * 86_400);
                let tokio_later = tokio::time::Instant::now() + Duration::from_secs(400 * 86_400);
                for d in [Some(config.ttl), Some(config.shutdown_grace), config.resync_interval]
                    .into_iter()
                    .flatten()
                {
                    proptest::prop_assert!(later.checked_add(d).is_some(), "{option} {text:?}: {d:?}");
                    proptest::prop_assert!(
                        tokio_later.checked_add(d).is_some(),
                        "{option} {text:?}: {d:?}"
                    );
                    proptest::prop_assert!(u64::try_from(d.as_millis()).is_ok());
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                proptest::prop_assert!(e.contains(option), "{option} {text:?}: {e}");
            }
        }
    }

    /// The mask parser never panics, and reads back any u64 in decimal or hex.
    #[test]
    fn masks_parse_or_fail_cleanly(n in proptest::prelude::any::<u64>(), junk in "\\PC{0,24}") {
        use presence_bridge::config::parse_mask;
        proptest::prop_assert_eq!(parse_mask("allowed-groups", &n.to_string()).ok().map(|m| m.0), Some(n));
        proptest::prop_assert_eq!(parse_mask("allowed-groups", &format!("{n:#x}")).ok().map(|m| m.0), Some(n));
        if let Err(e) = parse_mask("allowed-groups", &junk) {
            proptest::prop_assert!(e.to_string().contains("--allowed-groups"));
        }
    }
}

/// Issue 15, item 10, the emulator's duration and number flags: an enormous or meaningless
/// value ends `emulate` with one line naming the flag, not the listening address, and never
/// starts an emulator that silently ignores it.
#[test]
fn emulate_refuses_enormous_durations_naming_the_flag() {
    for (flag, value) in [
        ("--heartbeat", "500000000000y"),
        ("--channel-lifetime", "18446744073709551615s"),
        ("--token-lifetime", "2y"),
        ("--rate", "NaN"),
        ("--chaos", "NaN"),
        ("--chaos", "inf"),
    ] {
        let mut child = Command::new(BIN)
            .args([
                "emulate",
                "--addr",
                "127.0.0.1:0",
                "--users",
                "10",
                flag,
                value,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("emulate {flag} {value} started instead of failing");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read");
        assert_eq!(status.code(), Some(1), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid {flag}")),
            "{flag} {value}: {stderr}"
        );
    }
}

#[test]
fn message_size_limits_parse_and_are_checked() {
    let config = config_of(RunArgs {
        max_message_size: Some("64KiB".into()),
        max_socket_message_size: Some("1MiB".into()),
        ..args()
    })
    .expect("valid sizes");
    assert_eq!(config.max_message_bytes, 64 << 10);
    assert_eq!(config.max_socket_message_bytes, 1 << 20);
    let defaults = config_of(args()).expect("defaults");
    assert_eq!(
        (
            defaults.max_message_bytes,
            defaults.max_socket_message_bytes
        ),
        (128 << 10, 256 << 10)
    );
    for (message, socket, option) in [
        ("512", "1MiB", "--max-message-size"),
        ("12 parsecs", "1MiB", "--max-message-size"),
        ("99999999999999999999", "1MiB", "--max-message-size"),
        ("128KiB", "64KiB", "--max-socket-message-size"),
        ("128KiB", "65MiB", "--max-socket-message-size"),
    ] {
        let error = config_of(RunArgs {
            max_message_size: Some(message.into()),
            max_socket_message_size: Some(socket.into()),
            ..args()
        })
        .map(|_| ())
        .expect_err("refused");
        assert!(
            error.to_string().contains(option),
            "{message}/{socket}: {error}"
        );
    }
}
