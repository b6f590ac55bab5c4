//! Integration tests of the emulator over real loopback HTTP and WebSocket connections,
//! one module per topic.

mod common;

mod admin;
mod auth;
mod channels;
mod churn;
mod clients;
mod events;
mod faults;
mod genesys_semantics;
mod rate_limit;
mod relay;
mod rest;
mod scale;
mod sockets;
