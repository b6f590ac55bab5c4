//! The binary as a user meets it: `--help` and the README agree, bad configuration fails at
//! start naming the option, signals end it cleanly with exit code 0.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use presence_bridge::cli::{Cli, RunArgs};
use presence_bridge::config::BridgeConfig;

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
    let secret = dir.join("secret");
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
                kafka_security_protocol: Some("tls".into()),
                ..args()
            },
            "--kafka-security-protocol",
        ),
        (
            RunArgs {
                kafka_security_protocol: Some("sasl_plaintext".into()),
                ..args()
            },
            "--kafka-security-protocol",
        ),
        (
            RunArgs {
                kafka_sasl_mechanism: Some("GSSAPI".into()),
                kafka_security_protocol: Some("sasl_ssl".into()),
                ..args()
            },
            "--kafka-sasl-mechanism",
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
    assert_eq!(config.kafka.topic, "flag.topic", "the flag wins");
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
