//! Runs the Genesys Cloud emulator from the command line, so the bridge (or curl) can be tried
//! with no Genesys account.
//!
//! ```text
//! cargo run --example emulator -- --addr 127.0.0.1:8089 --users 5000 --rate 50 --seed 1
//! ```
//!
//! It prints the base URL (login and API) and the client credentials, then serves until
//! Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;

use genesys_emulator::{Emulator, EmulatorConfig};

const USAGE: &str = "\
usage: emulator [--addr HOST:PORT] [--users N] [--rate CHANGES_PER_SECOND] [--seed N]

  --addr   address to listen on (port 0 picks a free one)   default 127.0.0.1:8089
  --users  number of emulated users                          default 1000
  --rate   presence changes per second, 0 for none           default 10
  --seed   seed of the workload (users, groups, changes)     default 1";

struct Options {
    addr: SocketAddr,
    users: u32,
    rate: f64,
    seed: u64,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        addr: SocketAddr::from(([127, 0, 0, 1], 8089)),
        users: 1_000,
        rate: 10.0,
        seed: 1,
    };
    let mut args = args;
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        // Both `--flag value` and `--flag=value`.
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None => {
                let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
                (flag, value)
            }
        };
        let bad = |what: &str| format!("{name}: {value:?} is not {what}");
        match name.as_str() {
            "--addr" => {
                options.addr = value
                    .parse()
                    .map_err(|_| bad("an address like 127.0.0.1:8089"))?
            }
            "--users" => options.users = value.parse().map_err(|_| bad("a number of users"))?,
            "--rate" => {
                options.rate = value
                    .parse()
                    .map_err(|_| bad("a number of changes per second"))?
            }
            "--seed" => options.seed = value.parse().map_err(|_| bad("a whole number"))?,
            _ => return Err(format!("unknown option {name}")),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = EmulatorConfig::default()
        .users(options.users)
        .change_rate(options.rate)
        .seed(options.seed);
    let emulator = match Emulator::start(config, options.addr).await {
        Ok(emulator) => emulator,
        Err(error) => {
            eprintln!("error: {error}");
            if let Some(source) = std::error::Error::source(&error) {
                eprintln!("  caused by: {source}");
            }
            return ExitCode::FAILURE;
        }
    };
    let base = emulator.base_url();
    println!("Genesys Cloud emulator");
    println!("  base URL (login and API): {base}");
    println!("  client id:                {}", emulator.client_id());
    println!("  client secret:            {}", emulator.client_secret());
    println!("  relay (bearer token):     {}", emulator.relay_url());
    println!("  ground truth:             {base}/emulator/truth");
    println!("  stats:                    {base}/emulator/stats");
    println!("Ctrl-C to stop.");
    if let Err(error) = tokio::signal::ctrl_c().await {
        eprintln!("error: cannot wait for Ctrl-C: {error}");
    }
    emulator.shutdown().await;
    ExitCode::SUCCESS
}
