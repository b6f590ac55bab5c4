//! The presence-bridge service as a library: configuration, wiring, the admin HTTP server and
//! the commands, so that tests (and the binary's `main`) run the same code. The binary is a
//! thin shell over [`commands`].
#![deny(missing_docs)]

pub mod admin;
pub mod alloc;
pub mod bridge;
pub mod cli;
pub mod commands;
pub mod config;
pub mod history;
pub mod metrics;
pub mod state;
