//! # harmonylite (native host)
//!
//! The sidecar that sits next to an unchanged application and keeps its SQLite file
//! replicated with every other node through NATS JetStream. The replication decisions live in
//! `harmonylite-core`; this crate supplies configuration, the supervised `nats-server`, the
//! JetStream transport, change detection, snapshots (taking, storing, restoring), metrics
//! and health.
pub mod catch_up;
pub mod cli;
pub mod config;
pub mod db_lock;
pub mod driver;
pub mod failpoint;
pub mod health;
pub mod lease;
pub mod metrics;
pub mod nats_server;
pub mod nats_setup;
pub mod peer_snapshot;
pub mod progress;
pub mod restore;
pub mod route_peers;
pub mod s3_store;
pub mod schema;
pub mod serverless;
pub mod snapshot;
pub mod snapshot_frame;
pub mod snapshot_info;
pub mod snapshot_responder;
pub mod snapshot_store;
pub mod startup;
pub mod stream_identity;
pub mod transport;
pub mod util;
pub mod watcher;

pub use driver::run;
