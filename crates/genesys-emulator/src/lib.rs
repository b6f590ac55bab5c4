//! A local stand-in for the slice of Genesys Cloud that presence-bridge uses: OAuth client
//! credentials, users and presences over REST, notification channels and their WebSockets,
//! plus a binary frame relay, all driven by a seeded presence workload, with fault
//! injection and a ground-truth endpoint.
//!
//! Tests, benchmarks and demos run against it; it follows `genesys-api.md` (the API
//! contract of this project), and where that contract is unconfirmed the behaviour is a
//! setting of [`EmulatorConfig`].
//!
//! A short tour:
//! - [`EmulatorConfig`]: every setting, with documented defaults, chainable setters and
//!   [`validate`](EmulatorConfig::validate).
//! - [`Emulator::start`]: binds (port 0 is fine) and serves; returns an [`EmulatorHandle`]
//!   with the bound address, the base URL (login and API share it), the client
//!   credentials (one client or [several](EmulatorConfig::clients), each with its own
//!   channels: [`clients`](EmulatorHandle::clients)), fault injection, [`truth`](EmulatorHandle::truth),
//!   [`quiesce`](EmulatorHandle::quiesce) and [`shutdown`](EmulatorHandle::shutdown)
//!   (also on drop).
//! - [`Fault`] and [`ChaosConfig`]: faults to inject on demand or at random.
//! - [`TruthEntry`] and [`Stats`]: what `/emulator/truth` and `/emulator/stats` return.
//!
//! Endpoints (see the crate README for details):
//!
//! | endpoint | what |
//! |---|---|
//! | `POST /oauth/token` | client credentials (Basic auth or form fields) |
//! | `GET /api/v2/users` | paged users, `expand=presence`/`groups`, `state` |
//! | `GET /api/v2/users/presences/purecloud/bulk?id=..` | up to 50 presences |
//! | `GET /api/v2/groups`, `GET /api/v2/groups/{id}/members` | groups and members, paged |
//! | `GET /api/v2/presence/definitions` | presence definitions |
//! | `POST/GET /api/v2/notifications/channels`, `HEAD .../{id}` | channels |
//! | `GET/POST/PUT/DELETE .../channels/{id}/subscriptions` | topics |
//! | `GET /channels/{id}` (WebSocket) | a channel's notifications |
//! | `GET /relay` (WebSocket, bearer token) | the workload as 16-byte frames |
//! | `GET /emulator/truth`, `GET /emulator/stats` | ground truth, counters |
//! | `POST /emulator/quiesce`, `/resume`, `/faults`, `/chaos`, `/rate` | control |
//!
//! Relay user ids are the users' indices (`0..users`), the same as
//! [`TruthEntry::relay_id`]; group `i` is bit `i` of the frame's group mask.
//!
//! ```no_run
//! use genesys_emulator::{Emulator, EmulatorConfig, FaultTarget};
//!
//! # async fn demo() -> Result<(), genesys_emulator::Error> {
//! let config = EmulatorConfig::default().users(2_000).change_rate(50.0).seed(42);
//! let emulator = Emulator::start(config, "127.0.0.1:0".parse().expect("an address")).await?;
//! println!("API and login at {}", emulator.base_url());
//! println!("client id {} / secret {}", emulator.client_id(), emulator.client_secret());
//!
//! // ... run a client against it, then:
//! emulator.drop_sockets(FaultTarget::All)?;
//! emulator.quiesce().await;
//! let truth = emulator.truth();
//! assert_eq!(truth.len(), 2_000);
//! emulator.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod admin;
mod auth;
mod bursts;
mod channel_table;
mod channels;
mod chaos;
mod churn;
mod config;
mod control;
mod error;
mod fault;
mod generator;
mod inject;
mod janitor;
mod limits;
mod org;
mod rest;
mod rng;
mod server;
mod socket;
mod state;
mod tokens;
mod wire;
mod workload;

pub use admin::{ChannelStats, ChurnStats, ClientStats, RelayStats, Stats, TruthEntry};
pub use config::{ChannelLimitPolicy, ClientCredentials, EmulatorConfig, Spelling};
pub use error::{Error, Result};
pub use fault::{BurstScope, ChaosConfig, Fault, FaultHits, FaultKind, FaultTarget};
pub use limits::{MAX_CHANGE_RATE, MAX_CLIENTS, MAX_OVERSIZED_BYTES, MAX_USERS};
pub use server::{Emulator, EmulatorHandle};
