//! # harmonylite-wasm
//!
//! The harmonylite replica for JavaScript hosts (browsers, node, workerd), built with
//! wasm-bindgen for `wasm32-unknown-unknown`. It wraps the sans-IO
//! `harmonylite_core::session::Session` (the engine plus every rule about consuming the
//! change stream) over a `harmonylite_core::sqlite::Store` whose SQLite is `sqlite-wasm-rs`
//! (memory VFS, or OPFS through `sqlite-wasm-vfs`'s SAH pool in a dedicated Worker), and
//! exposes:
//!
//! - the session contract: what the transport did (`handleInputs`: local writes, stream
//!   messages with their pending counts, acks, publish failures, connection changes, stream
//!   info, consumer starts/failures/ends, timeouts, re-checks, a reopened database), what to
//!   do (`pollOutputs`: publish, read the stream's info, start/stop a consumer from a given
//!   sequence, and what happened: refusals, falling behind, gaps), `pollTimeout`,
//!   `wantsMessages`, `status` (lag and health), `missingStreamRefusal`;
//! - the application's SQL (`exec`, `query`) on the store's connection, so every write fires
//!   the same capture triggers as in the native sidecar, and goes out in the same wire format
//!   on the same stream.
//!
//! The JavaScript package `harmonylite` (`npm/` in this repository) owns the I/O: NATS over
//! WebSocket, timers, clocks and randomness; it decides nothing about replication. This
//! crate never reads a clock: every call that may do work takes `now` (monotonic and wall
//! milliseconds) from the caller.
//!
//! Errors reach JavaScript as `Error` objects with a stable `name` (see the `error` module).
//!
//! On other targets the crate is empty, so workspace-wide native builds, lints and tests
//! pass without a wasm toolchain.

#[cfg(target_family = "wasm")]
mod convert;
#[cfg(target_family = "wasm")]
pub mod error;
#[cfg(target_family = "wasm")]
mod options;
#[cfg(target_family = "wasm")]
mod replica;

#[cfg(target_family = "wasm")]
pub use replica::{open_replica, scope_client_inbox_prefix, scope_feed_deliver_subject, Replica};
