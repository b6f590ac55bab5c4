//! Prints every presence change of a Genesys Cloud organisation (or of the emulator) to
//! stdout, one line each. Uses only `genesys-auth`, `presence-sync` and `presence-frame`.
//!
//! ```text
//! # against a real org (a client-credentials OAuth client with presence and notification
//! # permissions):
//! GENESYS_REGION=mypurecloud.ie GENESYS_CLIENT_ID=... GENESYS_CLIENT_SECRET=... \
//!     cargo run --example print_presence
//!
//! # against the emulator (start it first: cargo run --example emulator):
//! GENESYS_API_URL=http://127.0.0.1:8089 GENESYS_LOGIN_URL=http://127.0.0.1:8089 \
//!     GENESYS_CLIENT_ID=emulator-client-id GENESYS_CLIENT_SECRET=emulator-client-secret \
//!     cargo run --example print_presence
//! ```
//!
//! `RUST_LOG=info` shows the session's state changes (connected, resynced, rolled over).

use std::process::ExitCode;

use genesys_auth::{AuthConfig, Endpoints, GenesysClient, SecretString};
use presence_sync::{ChannelSink, PresenceSync, SyncConfig};
use tokio_util::sync::CancellationToken;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn endpoints() -> Result<Endpoints, String> {
    let region = env("GENESYS_REGION").unwrap_or_else(|| "mypurecloud.com".into());
    let mut endpoints = Endpoints::for_environment(&region).map_err(|e| e.to_string())?;
    if let Some(api) = env("GENESYS_API_URL") {
        endpoints = endpoints.with_api_base(&api).map_err(|e| e.to_string())?;
    }
    if let Some(login) = env("GENESYS_LOGIN_URL") {
        endpoints = endpoints
            .with_login_base(&login)
            .map_err(|e| e.to_string())?;
    }
    Ok(endpoints)
}

async fn run() -> Result<(), String> {
    let id = env("GENESYS_CLIENT_ID").ok_or("set GENESYS_CLIENT_ID")?;
    let secret =
        SecretString::from(env("GENESYS_CLIENT_SECRET").ok_or("set GENESYS_CLIENT_SECRET")?);
    let client =
        GenesysClient::new(AuthConfig::new(endpoints()?, id, secret)).map_err(|e| e.to_string())?;
    let (sink, mut events) = ChannelSink::new(100_000);
    let sync = PresenceSync::new(client, SyncConfig::default(), sink).map_err(|e| e.to_string())?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sync.run(shutdown.clone()));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.recv() => match event {
                Some(e) => println!(
                    "{}  {}  {:<9} {}{}",
                    e.time.to_rfc3339(),
                    e.user,
                    e.state.status.to_string(),
                    e.source,
                    e.state.message.as_deref().map(|m| format!("  \"{m}\"")).unwrap_or_default(),
                ),
                None => break,
            },
        }
    }
    shutdown.cancel();
    match task.await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
