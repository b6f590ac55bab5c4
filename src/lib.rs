//! Top-level examples, benchmarks and cross-crate tests of the presence-bridge workspace; no code of its own.
