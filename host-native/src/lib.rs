//! # harmonylite (native host)
//!
//! The sidecar that sits next to an unchanged application and keeps its SQLite file
//! replicated with every other node through NATS JetStream. The replication decisions live in
//! `harmonylite-core`; this crate supplies configuration, the supervised `nats-server`, the
//! JetStream transport, change detection, metrics and health.
pub mod cli;
pub mod config;
pub mod driver;
pub mod health;
pub mod metrics;
pub mod nats_server;
pub mod transport;
pub mod watcher;

pub use driver::run;
