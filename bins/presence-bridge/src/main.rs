//! presence-bridge: Genesys Cloud presence into Apache Kafka. See `presence-bridge --help`.
//!
//! A thin shell: parse the flags, install the logger, run a command from the library, and turn
//! its result into an exit code (0 on a clean shutdown, 1 with a one-line reason otherwise).

use std::process::ExitCode;

use clap::Parser;
use presence_bridge::cli::{Cli, Command};
use presence_bridge::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("presence-bridge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => commands::run(&args).await,
            Command::Emulate(args) => commands::emulate(&args).await,
            Command::Demo(args) => commands::demo(&args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined, never a secret (no error type carries one).
            eprintln!("presence-bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}
