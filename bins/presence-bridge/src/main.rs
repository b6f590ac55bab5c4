//! presence-bridge: Genesys Cloud presence into Apache Kafka. See `presence-bridge --help`.
//!
//! A thin shell: parse the flags and hand them to [`presence_bridge::commands::main`], which
//! installs the logger, runs the command and turns its result into the exit code.

use std::process::ExitCode;

use clap::Parser;
use presence_bridge::cli::Cli;

fn main() -> ExitCode {
    presence_bridge::commands::main(Cli::parse())
}
