//! # harmonylite (native host)
//!
//! The sidecar that sits next to an unchanged application and keeps its SQLite file
//! replicated with every other node through NATS JetStream. The replication decisions live in
//! `harmonylite-core`; this crate supplies configuration, the supervised `nats-server`, the
//! JetStream transport, change detection, snapshots (taking, storing, restoring), metrics
//! and health.
//!
//! The modules form layers, lowest first; a module imports only from its own layer and the
//! ones before it (`host-native/layers.txt`, checked by `scripts/lib/check_layers.py`):
//!
//! 1. [`util`]: randomness, Unix ms, directory fsync, SQLite lock inspection, failpoints.
//! 2. [`config`]: the configuration file and the command-line flags.
//! 3. [`ops`]: health, metrics, file notifications, progress bars.
//! 4. [`nats`]: the supervised nats-server, its cluster peers, the JetStream transport.
//! 5. [`auth`]: the NATS auth callout that admits scoped clients (browsers) by their token.
//! 6. [`snapshot`]: taking, storing, restoring snapshots; catching up from one.
//! 7. [`startup`]: what start-up does with the database, and doing it.
//! 8. [`run`](mod@run): the run loop and serverless mode.
//! 9. [`commands`]: the one-shot commands (`--save-snapshot`, `--cleanup`, schema, ...).
//!
//! Errors are typed per layer ([`util::UtilError`], [`ops::OpsError`], [`nats::NatsError`],
//! [`snapshot::SnapshotError`] and the store's, lease's and peer's, [`startup::StartupError`];
//! [`config::ConfigError`]), each variant naming what failed and keeping its cause as
//! `source()`, so callers match on variants. They print like `anyhow` errors (`{:#}` adds the
//! causes, [`util::error`]). `anyhow` is only the binary's: `main.rs`, the one-shot
//! [`commands`] and the run loop's entry ([`run::driver::run`]).
pub mod util;

pub mod config;

pub mod ops;

pub mod nats;

pub mod auth;

pub mod snapshot;

pub mod startup;

pub mod run;

pub mod commands;

pub use run::driver::run;
