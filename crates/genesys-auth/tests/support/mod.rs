//! Shared test support.

pub mod proxy;
