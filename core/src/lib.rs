//! # harmonylite-core
//!
//! The replication engine every harmonylite host runs: the native sidecar, the browser
//! replica and the edge worker. It is *sans-IO*: no sockets, no threads, and it never reads a
//! clock. Time is an argument (`now`), the transport belongs to the host.
//!
//! - [`hlc`]: hybrid logical clock, node ids, the timestamp encoding (byte order = `Ord`).
//! - [`value`], [`change`]: SQLite values, row changes, batches.
//! - [`capture`]: which tables replicate and the trigger/log DDL (pure SQL generation).
//! - [`merge`]: the last-writer-wins rule, as the specification.
//! - [`column_merge`]: column-level last-writer-wins and counter columns, as a pure model.
//! - [`wire`]: `Message::V1` frames (postcard, CRC-32, optional LZ4, multi-part batches) and
//!   `Message::Migration` frames.
//! - [`migration`]: which SQL a replicated schema migration may contain.
//! - [`snapshot`]: snapshot header and chunk framing with an incremental decoder.
//! - [`scope`]: scope rules (which partition a row belongs to) and the subjects that carry
//!   each partition's changes, so untrusted replicas see and write only their rows.
//! - [`engine`]: [`engine::Engine`] with `handle_input` / `poll_output` / `poll_timeout`.
//! - [`session`]: [`session::Session`], the engine plus the change-stream consumer's rules
//!   (stream identity, falling behind, gaps, flow control, lag and health) both hosts share.
//! - `sqlite` (feature `sqlite`): [`sqlite::Store`], which installs capture and executes
//!   drain and apply on a `rusqlite::Connection`; [`sqlite::snapshot`]: what a snapshot copy
//!   keeps and what a restored file gets.
//!
//! ## The host loop
//!
//! A host feeds inputs and carries out outputs; after every input it drains
//! `poll_output` until `None`, then waits for a transport event or the deadline from
//! `poll_timeout`. Written once, with an in-process "stream" standing in for JetStream:
//!
//! ```
//! # #[cfg(feature = "sqlite")] {
//! use std::time::Duration;
//! use harmonylite_core::engine::{Engine, EngineConfig, Input, Now, Output};
//! use harmonylite_core::hlc::{NodeId, NTP64};
//! use harmonylite_core::report::Inbound;
//! use harmonylite_core::sqlite::{Store, StoreOptions};
//! use harmonylite_core::change::StreamSeq;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("app.db");
//! let app = rusqlite::Connection::open(&path).unwrap();
//! app.execute_batch("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)").unwrap();
//!
//! let store = Store::open(rusqlite::Connection::open(&path).unwrap(),
//!                         StoreOptions::new(NodeId::from_u128(1).unwrap())).unwrap();
//! let mut engine = Engine::new(store, EngineConfig::default());
//! let mut stream: Vec<Vec<u8>> = Vec::new(); // JetStream, in miniature
//! let now = |ms: u64| Now { monotonic: Duration::from_millis(ms), wall: NTP64(0) };
//!
//! engine.handle_input(now(0), Input::Connected);
//! app.execute("INSERT INTO notes(body) VALUES ('hello')", []).unwrap();
//! engine.handle_input(now(1), Input::LocalWrite);
//! while let Some(output) = engine.poll_output() {
//!     match output {
//!         Output::Publish(p) => {
//!             stream.push(p.frame);                       // publish with p.msg_id ...
//!             engine.handle_input(now(2), Input::Acked { id: p.id }); // ... and report the ack
//!         }
//!         Output::Event(event) => println!("{event:?}"),
//!     }
//! }
//! assert_eq!(stream.len(), 1);
//! // Our own message coming back from the stream only advances the cursor.
//! engine.handle_input(now(3), Input::Message(Inbound { seq: StreamSeq::new(1), frame: stream[0].clone(), subject: None }));
//! while engine.poll_output().is_some() {}
//! assert_eq!(engine.applied_cursor(), StreamSeq::new(1));
//! let _next_deadline = engine.poll_timeout();
//! # }
//! ```

pub mod capture;
pub mod change;
pub mod column_merge;
pub mod engine;
pub mod error;
pub mod hlc;
pub mod merge;
pub mod migration;
pub mod report;
pub mod scope;
pub mod session;
pub mod snapshot;
pub mod value;
pub mod wire;

#[cfg(feature = "sqlite")]
pub mod sqlite;
