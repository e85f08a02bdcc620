//! [`Replica`]: the replication session and its store, driven from JavaScript.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use harmonylite_core::capture::names::quote;
use harmonylite_core::change::StreamSeq;
use harmonylite_core::column_merge::{self, MergeConfig, TableMerge};
use harmonylite_core::engine::{Event, Now, Publish};
use harmonylite_core::error::StoreError;
use harmonylite_core::hlc::ntp64_from_unix;
use harmonylite_core::session::{
    Session, SessionConfig, SessionInput, SessionOutput, SessionStatus, StreamInfo,
};
use harmonylite_core::sqlite::snapshot::install_node_local;
use harmonylite_core::sqlite::stream_identity;
use harmonylite_core::sqlite::{
    recorded_merge_modes, DiscardError, PublishMigrationError, PublishedMigration, Store,
    StoreOptions,
};
use harmonylite_core::wire;
use js_sys::{Array, BigInt, Object, Reflect, Uint8Array};
use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::{Connection, OpenFlags};
use sqlite_wasm_rs::vfs::memvfs::MemVfsUtil;
use sqlite_wasm_rs::vfs::VfsFilesManager;
use wasm_bindgen::prelude::*;

use crate::convert;
use crate::error::ReplicaError;
use crate::options::{ReplicaOptions, Storage};

mod scoped;

/// Input kinds of [`Replica::handle_inputs`], one byte each (see there for their payloads).
mod kind {
    pub const LOCAL_WRITE: u8 = 0;
    pub const MESSAGE: u8 = 1;
    pub const ACKED: u8 = 2;
    pub const PUBLISH_FAILED: u8 = 3;
    pub const CONNECTED: u8 = 4;
    pub const DISCONNECTED: u8 = 5;
    pub const TIMEOUT: u8 = 6;
    pub const STREAM_INFO: u8 = 7;
    pub const STREAM_INFO_FAILED: u8 = 8;
    pub const CONSUMER_STARTED: u8 = 9;
    pub const CONSUMER_FAILED: u8 = 10;
    pub const CONSUMER_ENDED: u8 = 11;
    pub const RECHECK: u8 = 12;
    pub const REOPENED: u8 = 13;
    pub const MESSAGE_ON_SUBJECT: u8 = 14;
}

/// VFS name of the OPFS pool.
const OPFS_VFS: &str = "harmonylite-opfs";

/// What ends a refusal in this host: how a JavaScript application adopts a re-created or
/// missing change stream.
const HOW_TO_ADOPT: &str = "call adoptStream() (docs/js-api.md)";

/// A replicated SQLite database and its replication session.
///
/// Drive it like every harmonylite host: feed what the transport did with `handleInputs`,
/// then carry out everything `pollOutputs` returns, then feed a timeout input once the
/// monotonic time passes `pollTimeout()`. The session decides everything about the change
/// stream (which stream may be consumed, from where, when to look again, when to pause); the
/// host only moves bytes. All SQL runs synchronously on the calling thread.
#[wasm_bindgen]
pub struct Replica {
    session: Option<Session<Store>>,
    /// Name of the memory database to remove at close (memory storage only).
    memory_name: Option<String>,
    /// Schema version capture was last brought up to date for.
    schema_seen: i64,
    /// The `merge` option as the store was last opened with (`None`: follow the database),
    /// which a snapshot must fit before it replaces the database.
    merge: Option<MergeConfig>,
}

/// Opens (creating if needed) the database named in `options` and installs change capture.
///
/// `options`: `{ name, storage?: "memory" | "opfs", opfsDirectory?, nodeId?, random,
/// stream?, replicate?, publish?, excludeTables?, compression?: "lz4" | "none",
/// pollingIntervalMs?, publishWindow?, applyBatch?, parkedRetryIntervalMs?,
/// maxClockAheadMs?, merge? }` where `random` is a `Uint8Array` of at least 24 bytes from a
/// cryptographic source (a new node id and the incarnation of this database's node-local
/// state), `stream` the change stream's name (in refusals; default
/// `harmonylite-changes-1`), `replicate: false` a publish-only replica and `merge: { column?:
/// [tables], counters?: ["table.column"] }` the tables that merge by column (absent: as the
/// database records; a table it records otherwise is refused with `InvalidArgumentError`).
#[wasm_bindgen(js_name = openReplica)]
pub async fn open_replica(options: JsValue) -> Result<Replica, JsValue> {
    let options = ReplicaOptions::from_js(&options)?;
    let conn = open_connection(&options).await?;
    let stored = Store::stored_node_id(&conn).map_err(ReplicaError::from)?;
    let node_id = options
        .node_id
        .or(stored)
        .unwrap_or_else(|| options.random_node_id());
    let mut store_options = StoreOptions::new(node_id);
    store_options.exclude_tables = options.exclude_tables.clone();
    store_options.publish = options.engine.publish;
    store_options.compression = options.compression;
    store_options.max_clock_ahead = options.max_clock_ahead;
    store_options.incarnation = options.random_incarnation();
    store_options.scopes = options.scopes.clone();
    if options.scoped {
        store_options.writer = harmonylite_core::scope::Writer::Scoped;
    }
    store_options.merge = options.merge.clone();
    let store = Store::open(conn, store_options).map_err(|e| match e {
        // The options do not fit the database (a table it merges otherwise than `merge`
        // says): the caller's options, not a damaged database.
        StoreError::Config(message) => ReplicaError::InvalidArgument(message),
        e => ReplicaError::from(e),
    })?;
    hold_exclusively(store.connection())?;
    let schema_seen = Replica::schema_version(store.connection())?;
    let config = SessionConfig {
        replicate: options.replicate,
        filtered: options.scoped,
        ..SessionConfig::new(options.engine.clone(), &options.stream, HOW_TO_ADOPT)
    };
    Ok(Replica {
        session: Some(Session::new(store, config)),
        memory_name: (options.storage == Storage::Memory).then(|| options.name.clone()),
        schema_seen,
        merge: options.merge,
    })
}

async fn open_connection(options: &ReplicaOptions) -> Result<Connection, ReplicaError> {
    match &options.storage {
        Storage::Memory => {
            if memory_files().is_some_and(|files| files.contains(&options.name).unwrap_or(false)) {
                return Err(ReplicaError::Storage(format!(
                    "a replica named {:?} is already open in memory in this thread",
                    options.name
                )));
            }
            Connection::open(&options.name).map_err(|e| {
                ReplicaError::Storage(format!("opening {:?} in memory: {e}", options.name))
            })
        }
        Storage::Opfs { directory } => {
            let config = sqlite_wasm_vfs::sahpool::OpfsSAHPoolCfgBuilder::new()
                .vfs_name(OPFS_VFS)
                .directory(directory)
                .build();
            sqlite_wasm_vfs::sahpool::install::<sqlite_wasm_rs::WasmOsCallback>(&config, false)
                .await
                .map_err(|e| ReplicaError::Storage(opfs_install_error(&e, directory)))?;
            Connection::open_with_flags_and_vfs(
                &options.name,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
                OPFS_VFS,
            )
            .map_err(|e| ReplicaError::Storage(format!("opening {:?} in OPFS: {e}", options.name)))
        }
    }
}

/// Keeps the database's lock from one transaction to the next (`PRAGMA locking_mode =
/// EXCLUSIVE`): nothing else opens a replica's file (a memory database lives in this
/// replica; an OPFS pool has one owner), so each transaction skips re-taking the lock,
/// re-checking the file for changes by others and deleting its rollback journal (kept with
/// its header zeroed instead, as durable as before). In the memory VFS this is most of a
/// small transaction's cost (docs/js-api.md#performance).
fn hold_exclusively(conn: &Connection) -> Result<(), ReplicaError> {
    set_locking_mode(conn, "EXCLUSIVE")
}

fn set_locking_mode(conn: &Connection, mode: &str) -> Result<(), ReplicaError> {
    let _: String = conn.query_row(&format!("PRAGMA locking_mode = {mode}"), [], |r| r.get(0))?;
    Ok(())
}

/// Why the OPFS pool in `directory` could not be installed, in words that say what to do.
fn opfs_install_error(e: &sqlite_wasm_vfs::sahpool::OpfsSAHError, directory: &str) -> String {
    use sqlite_wasm_vfs::sahpool::OpfsSAHError;
    match e {
        // The browser refuses a second access handle on a file: another Worker (a replica in
        // another tab of this origin, or one that has not shut down yet) holds the pool.
        OpfsSAHError::Opfs { value, .. }
            if Reflect::get(value, &JsValue::from_str("name"))
                .ok()
                .and_then(|n| n.as_string())
                .as_deref()
                == Some("NoModificationAllowedError") =>
        {
            format!(
                "the OPFS directory {directory:?} is in use by another replica of this origin (another tab or \
                 Worker holds its files; one replica per opfsDirectory at a time): {e}"
            )
        }
        OpfsSAHError::NotSupported => format!(
            "OPFS storage is unavailable ({e}); it needs a dedicated Worker in a secure context"
        ),
        _ => format!("OPFS storage in {directory:?} could not be opened: {e}"),
    }
}

/// The memory VFS's files, once SQLite has initialized it.
fn memory_files() -> Option<MemVfsUtil> {
    // SAFETY: wasm32 without threads: this is the thread that installed the memory VFS, and
    // nothing else registers VFSes concurrently.
    unsafe { MemVfsUtil::get() }.ok()
}

/// Removes a memory database and its journals (a memory replica lives as long as it is open).
fn remove_memory_database(name: &str) {
    if let Some(files) = memory_files() {
        for suffix in ["", "-journal", "-wal"] {
            let _ = files.remove(&format!("{name}{suffix}"));
        }
    }
}

fn now(monotonic_ms: f64, wall_ms: f64) -> Now {
    Now {
        monotonic: Duration::from_secs_f64(monotonic_ms.max(0.0) / 1000.0),
        wall: ntp64_from_unix(Duration::from_secs_f64(wall_ms.max(0.0) / 1000.0)),
    }
}

thread_local! {
    /// Property names and tags as JS strings, each made once: `JsValue::from_str` copies
    /// the text into JS on every call, and outputs are made after every drain.
    static INTERNED: RefCell<HashMap<&'static str, JsValue>> = RefCell::new(HashMap::new());
}

/// Calls `f` with `s` as a JS string made once per thread.
fn with_interned<R>(s: &'static str, f: impl FnOnce(&JsValue) -> R) -> R {
    INTERNED.with(|interned| {
        let mut interned = interned.borrow_mut();
        f(interned.entry(s).or_insert_with(|| JsValue::from_str(s)))
    })
}

/// `s` as a JS string made once per thread (for tags such as an output's `type`).
fn interned(s: &'static str) -> JsValue {
    with_interned(s, JsValue::clone)
}

/// A plain object from key/value pairs.
fn object(entries: &[(&'static str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in entries {
        with_interned(k, |k| Reflect::set(&o, k, v)).ok();
    }
    o.into()
}

fn num(n: impl Into<f64>) -> JsValue {
    JsValue::from_f64(n.into())
}

fn seq_arg(n: f64, what: &str) -> Result<u64, ReplicaError> {
    if n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= (1u64 << 53) as f64 {
        Ok(n as u64)
    } else {
        Err(ReplicaError::InvalidArgument(format!(
            "{what} must be a non-negative integer, got {n}"
        )))
    }
}

fn output_to_js(output: SessionOutput) -> JsValue {
    match output {
        SessionOutput::Publish(Publish {
            id,
            msg_id,
            frame,
            rows,
            subject,
        }) => object(&[
            ("type", interned("publish")),
            ("id", num(id as f64)),
            ("msgId", msg_id.into()),
            ("frame", Uint8Array::from(frame.as_slice()).into()),
            ("rows", num(rows as f64)),
            // The subject after the prefix; null: the unscoped subject (no scopes here yet).
            ("subject", subject.map_or(JsValue::NULL, JsValue::from)),
        ]),
        SessionOutput::Event(Event::Drained(r)) => object(&[
            ("type", interned("drained")),
            ("rows", num(r.rows as f64)),
            ("frames", num(r.frames as f64)),
            ("nullKeys", num(r.null_keys as f64)),
            ("tables", convert::string_array(&r.tables).into()),
            ("refused", scoped::refused_writes_to_js(&r.refused_writes)),
        ]),
        SessionOutput::Event(Event::Received(s)) => {
            let parked: Array = s
                .parked
                .iter()
                .map(|p| {
                    object(&[
                        ("seq", num(p.seq.get() as f64)),
                        ("kind", p.kind.as_str().into()),
                        ("reason", p.reason.as_str().into()),
                    ])
                })
                .collect();
            object(&[
                ("type", interned("received")),
                ("messages", num(s.messages as f64)),
                ("batches", num(s.batches as f64)),
                ("rowsChanged", num(s.rows_changed as f64)),
                ("remoteWon", num(s.remote_won as f64)),
                ("localWon", num(s.local_won as f64)),
                ("own", num(s.own as f64)),
                ("parked", parked.into()),
                ("unparked", num(s.unparked as f64)),
                ("tables", convert::string_array(&s.tables).into()),
                ("drainedRows", num(s.drained.rows as f64)),
                (
                    "drainedTables",
                    convert::string_array(&s.drained.tables).into(),
                ),
                ("cursor", num(s.cursor.get() as f64)),
                ("refetchQueued", num(s.refetch_queued as f64)),
                (
                    "refused",
                    scoped::refused_writes_to_js(
                        &[s.drained.refused_writes.as_slice(), s.reverted.as_slice()].concat(),
                    ),
                ),
            ])
        }
        SessionOutput::Event(Event::Acked { frames }) => {
            object(&[("type", interned("acked")), ("frames", num(frames as f64))])
        }
        SessionOutput::Event(Event::DatabaseError {
            operation,
            kind,
            error,
            retry_in,
        }) => object(&[
            ("type", "databaseError".into()),
            ("operation", operation.into()),
            ("kind", kind.as_str().into()),
            ("error", error.into()),
            ("retryInMs", num(retry_in.as_secs_f64() * 1000.0)),
        ]),
        SessionOutput::ReadStreamInfo => object(&[("type", "readStreamInfo".into())]),
        SessionOutput::StartConsumer { from } => object(&[
            ("type", "startConsumer".into()),
            ("from", num(from.get() as f64)),
        ]),
        SessionOutput::StopConsumer => object(&[("type", "stopConsumer".into())]),
        SessionOutput::Gap { expected, got } => object(&[
            ("type", "gap".into()),
            ("expected", num(expected.get() as f64)),
            ("got", num(got.get() as f64)),
        ]),
        SessionOutput::Refused { why } => {
            object(&[("type", "refused".into()), ("why", why.into())])
        }
        SessionOutput::FellBehind {
            cursor,
            first,
            last,
            first_time,
        } => object(&[
            ("type", "fellBehind".into()),
            ("cursor", num(cursor.get() as f64)),
            ("first", num(first as f64)),
            ("last", num(last as f64)),
            ("firstTime", first_time.into()),
        ]),
        SessionOutput::Consuming { from } => object(&[
            ("type", "consuming".into()),
            ("from", num(from.get() as f64)),
        ]),
    }
}

fn opt_string(s: Option<String>) -> JsValue {
    s.map_or(JsValue::NULL, JsValue::from)
}

fn status_to_js(status: &SessionStatus) -> JsValue {
    let reasons: Array = status.reasons().into_iter().map(JsValue::from).collect();
    object(&[
        ("connected", status.connected.into()),
        ("consuming", status.consuming.into()),
        ("cursor", num(status.cursor as f64)),
        ("streamLastSeq", num(status.stream_last_seq as f64)),
        ("lag", num(status.lag as f64)),
        ("fellBehind", status.fell_behind.into()),
        ("refused", opt_string(status.refused.clone())),
        ("consumerError", opt_string(status.consumer_error.clone())),
        ("inbox", num(status.inbox as f64)),
        ("inFlight", num(status.in_flight as f64)),
        ("healthy", status.healthy().into()),
        ("reasons", reasons.into()),
    ])
}

/// The next entry of `values` for input `i`, as `T`.
fn value_arg<T: JsCast>(values: &Array, next: &mut u32, what: &str) -> Result<T, ReplicaError> {
    let value = values
        .get(*next)
        .dyn_into::<T>()
        .map_err(|_| ReplicaError::InvalidArgument(format!("values[{}] must be {what}", *next)));
    *next += 1;
    value
}

/// The next entry of `values`, a string (a transport's error, rendered).
fn string_arg(values: &Array, next: &mut u32) -> Result<String, ReplicaError> {
    let value = values.get(*next).as_string().ok_or_else(|| {
        ReplicaError::InvalidArgument(format!("values[{}] must be a string", *next))
    });
    *next += 1;
    value
}

/// `{firstSeq, lastSeq, createdNs}` (`createdNs` a bigint: Unix nanoseconds exceed 2^53).
fn stream_info_arg(value: &Object) -> Result<StreamInfo, ReplicaError> {
    let get =
        |key: &str| Reflect::get(value, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED);
    let seq = |key: &str| {
        get(key)
            .as_f64()
            .ok_or_else(|| {
                ReplicaError::InvalidArgument(format!("stream info: {key} must be a number"))
            })
            .and_then(|n| seq_arg(n, key))
    };
    let created = get("createdNs");
    let created_ns = created
        .dyn_ref::<BigInt>()
        .and_then(|b| i64::try_from(b.clone()).ok())
        .ok_or_else(|| {
            ReplicaError::InvalidArgument(
                "stream info: createdNs must be a bigint of 64 bits".into(),
            )
        })?;
    Ok(StreamInfo {
        first_seq: seq("firstSeq")?,
        last_seq: seq("lastSeq")?,
        created_ns,
    })
}

/// Runs a prepared statement to completion; returns the rows it changed directly (not
/// counting trigger writes).
fn run_statement(
    conn: &Connection,
    stmt: &mut rusqlite::Statement<'_>,
) -> Result<u64, ReplicaError> {
    let total = conn.total_changes();
    let mut rows = stmt.raw_query();
    while rows.next()?.is_some() {}
    drop(rows);
    Ok(if conn.total_changes() != total {
        conn.changes()
    } else {
        0
    })
}

/// Splits SQL text into complete statements (SQLite's own `sqlite3_complete` decides where
/// a statement ends, so semicolons in strings, comments and trigger bodies are respected).
/// A trailing incomplete piece is returned as is; preparing it reports the error.
fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in sql.match_indices(';') {
        let piece = &sql[start..=i];
        if is_complete(piece) {
            out.push(piece);
            start = i + 1;
        }
    }
    if !sql[start..].trim().is_empty() {
        out.push(&sql[start..]);
    }
    out
}

fn is_complete(piece: &str) -> bool {
    match std::ffi::CString::new(piece) {
        // SAFETY: a valid NUL-terminated string, read only during the call.
        Ok(c) => unsafe { rusqlite::ffi::sqlite3_complete(c.as_ptr()) != 0 },
        Err(_) => false,
    }
}

impl Replica {
    /// Feeds a local write when the schema changed since capture was last brought up to
    /// date and no transaction is open, so the drain installs triggers on new tables.
    fn capture_new_schema(&mut self, monotonic_ms: f64, wall_ms: f64) -> Result<(), ReplicaError> {
        let conn = self.conn()?;
        if !conn.is_autocommit() {
            return Ok(());
        }
        let version = Self::schema_version(conn)?;
        if version == self.schema_seen {
            return Ok(());
        }
        self.session_mut()?
            .handle_input(now(monotonic_ms, wall_ms), SessionInput::LocalWrite);
        self.schema_seen = Self::schema_version(self.conn()?)?;
        Ok(())
    }

    fn session(&self) -> Result<&Session<Store>, ReplicaError> {
        self.session.as_ref().ok_or(ReplicaError::Closed)
    }

    fn session_mut(&mut self) -> Result<&mut Session<Store>, ReplicaError> {
        self.session.as_mut().ok_or(ReplicaError::Closed)
    }

    /// The application's connection: its SQL fires the capture triggers like any write.
    fn conn(&self) -> Result<&Connection, ReplicaError> {
        Ok(self.session()?.app_connection())
    }

    fn schema_version(conn: &Connection) -> Result<i64, ReplicaError> {
        Ok(conn
            .prepare_cached("PRAGMA schema_version")?
            .query_row([], |r| r.get(0))?)
    }

    fn outbox_id_range(&self) -> Result<(i64, i64), ReplicaError> {
        Ok(self.session()?.outbox_id_range()?)
    }

    /// The one place the database is changed under the session (a snapshot restored, a
    /// stream adopted): `change` gets the connection and the store's options, the store is
    /// opened again and the session rebuilt over it ([`Session::reopen`]); the host feeds
    /// `Reopened` next. When `change` or the reopening fails the replica is closed (reopen it).
    fn reopen_store(
        &mut self,
        monotonic_ms: f64,
        wall_ms: f64,
        change: impl FnOnce(Connection, &mut StoreOptions) -> Result<Connection, ReplicaError>,
    ) -> Result<(), ReplicaError> {
        let session = self.session.take().ok_or(ReplicaError::Closed)?;
        let mut merge_now = None;
        let session = session.reopen(now(monotonic_ms, wall_ms), |store| {
            let mut options = store.options().clone();
            // A merge switch applied since the store opened changed how the database merges
            // a table, not the options: reopening with them as given would refuse it.
            if let Some(merge) = options.merge.as_mut() {
                for (table, mode) in store.merge_modes() {
                    merge.set(&table, mode);
                }
            }
            merge_now = options.merge.clone();
            let conn = change(store.into_connection(), &mut options)?;
            // Opened as at first: `Store::open` would turn a database held exclusively into WAL.
            set_locking_mode(&conn, "NORMAL")?;
            let store = Store::open(conn, options).map_err(|e| {
                ReplicaError::Storage(format!("reopening the database: {e} (reopen the replica)"))
            })?;
            hold_exclusively(store.connection())?;
            Ok(store)
        });
        let session = match session {
            Ok(session) => session,
            Err(e) => {
                self.close();
                return Err(e);
            }
        };
        self.schema_seen = Self::schema_version(session.app_connection())?;
        self.session = Some(session);
        self.merge = merge_now;
        Ok(())
    }
}

#[wasm_bindgen]
impl Replica {
    /// Feeds what the transport did, in order, then does the work that is due. `kinds[i]`
    /// says what happened; `nums[i]`, `pending[i]` and the next entry of `values` carry it:
    ///
    /// | kind | input | payload |
    /// | --- | --- | --- |
    /// | 0 | local write | — |
    /// | 1 | stream message | `nums` sequence, `pending` messages after it, `values` its `Uint8Array` |
    /// | 2 | acked | `nums` outbox id |
    /// | 3 | publish failed | `nums` outbox id |
    /// | 4 | connected with the stream ready | `nums` the server's max payload |
    /// | 5 | disconnected | — |
    /// | 6 | timeout | — |
    /// | 7 | stream info | `values` `{firstSeq, lastSeq, createdNs}` (`createdNs` a bigint) |
    /// | 8 | reading stream info failed | `values` the error (string) |
    /// | 9 | consumer started | — |
    /// | 10 | consumer failed | `values` the error (string) |
    /// | 11 | consumer ended | — |
    /// | 12 | recheck the stream now | — |
    /// | 13 | reopened (after `restoreSnapshot` / `adoptStream`) | — |
    /// | 14 | a stream message on a subject | like 1, then `values` the subject after the prefix (a string) |
    #[wasm_bindgen(js_name = handleInputs)]
    pub fn handle_inputs(
        &mut self,
        monotonic_ms: f64,
        wall_ms: f64,
        kinds: &[u8],
        nums: &[f64],
        pending: &[f64],
        values: Array,
    ) -> Result<(), JsValue> {
        if nums.len() != kinds.len() || pending.len() != kinds.len() {
            return Err(ReplicaError::InvalidArgument(
                "kinds, nums and pending must have the same length".into(),
            )
            .into());
        }
        let mut inputs = Vec::with_capacity(kinds.len());
        let mut next = 0u32;
        for ((&k, &n), &p) in kinds.iter().zip(nums).zip(pending) {
            let input = match k {
                kind::LOCAL_WRITE => SessionInput::LocalWrite,
                kind::MESSAGE => SessionInput::Message {
                    seq: StreamSeq::new(seq_arg(n, "a stream sequence")?),
                    pending: seq_arg(p, "a pending count")?,
                    frame: value_arg::<Uint8Array>(&values, &mut next, "a Uint8Array")?.to_vec(),
                    subject: None,
                },
                kind::MESSAGE_ON_SUBJECT => SessionInput::Message {
                    seq: StreamSeq::new(seq_arg(n, "a stream sequence")?),
                    pending: seq_arg(p, "a pending count")?,
                    frame: value_arg::<Uint8Array>(&values, &mut next, "a Uint8Array")?.to_vec(),
                    subject: Some(string_arg(&values, &mut next)?),
                },
                kind::ACKED => SessionInput::Acked {
                    id: seq_arg(n, "an outbox id")? as i64,
                },
                kind::PUBLISH_FAILED => SessionInput::PublishFailed {
                    id: seq_arg(n, "an outbox id")? as i64,
                },
                kind::CONNECTED => SessionInput::Connected {
                    max_payload: seq_arg(n, "maxPayload")? as usize,
                },
                kind::DISCONNECTED => SessionInput::Disconnected,
                kind::TIMEOUT => SessionInput::Timeout,
                kind::STREAM_INFO => {
                    SessionInput::StreamInfo(stream_info_arg(&value_arg::<Object>(
                        &values,
                        &mut next,
                        "an object",
                    )?)?)
                }
                kind::STREAM_INFO_FAILED => SessionInput::StreamInfoFailed {
                    error: string_arg(&values, &mut next)?,
                },
                kind::CONSUMER_STARTED => SessionInput::ConsumerStarted,
                kind::CONSUMER_FAILED => SessionInput::ConsumerFailed {
                    error: string_arg(&values, &mut next)?,
                },
                kind::CONSUMER_ENDED => SessionInput::ConsumerEnded,
                kind::RECHECK => SessionInput::Recheck,
                kind::REOPENED => SessionInput::Reopened,
                other => {
                    return Err(ReplicaError::InvalidArgument(format!(
                        "unknown input kind {other}"
                    ))
                    .into())
                }
            };
            inputs.push(input);
        }
        self.session_mut()?
            .handle_inputs(now(monotonic_ms, wall_ms), inputs);
        Ok(())
    }

    /// Every pending output as plain objects, oldest first. To carry out: `{type:
    /// "publish", id, msgId, frame, rows}`, `{type: "readStreamInfo"}`, `{type:
    /// "startConsumer", from}` (an ordered consumer delivering from sequence `from`), `{type:
    /// "stopConsumer"}`. To report: `{type: "drained", rows, frames, nullKeys, tables}`,
    /// `{type: "received", messages, batches, rowsChanged, remoteWon, localWon, own, parked,
    /// unparked, tables, drainedRows, drainedTables, cursor}`, `{type: "acked", frames}`,
    /// `{type: "databaseError", operation, error, retryInMs}`, `{type: "gap", expected, got}`
    /// (the consumer is restarted), `{type: "refused", why}` (once per reason), `{type:
    /// "fellBehind", cursor, first, last, firstTime}`, `{type: "consuming", from}`.
    #[wasm_bindgen(js_name = pollOutputs)]
    pub fn poll_outputs(&mut self) -> Result<Array, JsValue> {
        let session = self.session_mut()?;
        let out = Array::new();
        while let Some(output) = session.poll_output() {
            out.push(&output_to_js(output));
        }
        Ok(out)
    }

    /// Monotonic time (ms) at which the session wants a timeout input, if ever.
    #[wasm_bindgen(js_name = pollTimeout)]
    pub fn poll_timeout(&self) -> Result<Option<f64>, JsValue> {
        Ok(self
            .session()?
            .poll_timeout()
            .map(|t| t.as_secs_f64() * 1000.0))
    }

    /// Whether the host should hand over more stream messages now; otherwise it pauses
    /// delivery until a later call says so (a consumer runs and the inbox has room).
    #[wasm_bindgen(js_name = wantsMessages)]
    pub fn wants_messages(&self) -> Result<bool, JsValue> {
        Ok(self.session()?.wants_messages())
    }

    /// The replication status: `{connected, consuming, cursor, streamLastSeq, lag,
    /// fellBehind, refused, consumerError, inbox, inFlight, healthy, reasons}` (`refused`
    /// and `consumerError`: a sentence or `null`; `reasons`: why not healthy).
    pub fn status(&self) -> Result<JsValue, JsValue> {
        Ok(status_to_js(&self.session()?.status()))
    }

    /// The change stream is missing: `undefined` when this replica may create it (it applied
    /// nothing from a stream yet), else why not, which the status keeps as its refusal (and
    /// `pollOutputs` reports once).
    #[wasm_bindgen(js_name = missingStreamRefusal)]
    pub fn missing_stream_refusal(&mut self) -> Result<Option<String>, JsValue> {
        Ok(self.session_mut()?.refuse_missing_stream())
    }

    /// Last stream sequence applied or queued.
    pub fn cursor(&self) -> Result<f64, JsValue> {
        Ok(self.session()?.cursor().get() as f64)
    }

    /// Last stream sequence durably applied.
    #[wasm_bindgen(js_name = appliedCursor)]
    pub fn applied_cursor(&self) -> Result<f64, JsValue> {
        Ok(self.session()?.applied_cursor().get() as f64)
    }

    /// This replica's node id (hex).
    #[wasm_bindgen(js_name = nodeId)]
    pub fn node_id(&self) -> Result<String, JsValue> {
        Ok(self.session()?.node_id().to_string())
    }

    /// Names of the replicated tables.
    #[wasm_bindgen(js_name = replicatedTables)]
    pub fn replicated_tables(&self) -> Result<Array, JsValue> {
        Ok(convert::string_array(&self.session()?.replicated_tables()))
    }

    /// Publishes `sql` as a replicated schema migration (checked, tried on this database
    /// and rolled back, then written to the outbox); every replica, this one included,
    /// applies it once when it arrives from the stream. Returns `{id, baseVersion,
    /// statements, destructive}`; call `pollOutputs` afterwards (it is handed out for
    /// publishing at once).
    pub fn migrate(
        &mut self,
        sql: &str,
        allow_destructive: bool,
        monotonic_ms: f64,
        wall_ms: f64,
    ) -> Result<JsValue, JsValue> {
        if !self.conn()?.is_autocommit() {
            return Err(ReplicaError::InvalidArgument(
                "migrate() cannot run inside a transaction".into(),
            )
            .into());
        }
        let now = now(monotonic_ms, wall_ms);
        let published = self
            .session_mut()?
            .publish_migration(sql, allow_destructive, now.wall);
        self.hand_out_migration(now, published)
    }

    /// Hands a migration just written to the outbox out for publishing (`LocalWrite`) and
    /// describes it as `migrate` returns it.
    fn hand_out_migration(
        &mut self,
        now: Now,
        published: Result<PublishedMigration, PublishMigrationError>,
    ) -> Result<JsValue, JsValue> {
        let published = published.map_err(|e| match e {
            PublishMigrationError::Refused(e) => ReplicaError::Migration(e.to_string()),
            PublishMigrationError::Store(e) => ReplicaError::from(e),
        })?;
        self.session_mut()?
            .handle_input(now, SessionInput::LocalWrite);
        Ok(object(&[
            ("id", JsValue::from_str(&published.id)),
            ("baseVersion", num(published.base_version as f64)),
            ("statements", num(published.statements as f64)),
            ("destructive", JsValue::from_bool(published.destructive)),
        ]))
    }

    /// Publishes a replicated migration that switches how `table` merges: `mode`
    /// `"column"` (with `counters`, names of the table's counter columns) or `"row"`.
    /// Checked here first (the table must be replicated here and fit column merging, each
    /// counter a column outside its primary key); every replica, this one included, switches
    /// when it applies it from the stream, at the same point of the stream. Returns like
    /// `migrate` (look it up with `migrationVersion`), handed out like it.
    #[wasm_bindgen(js_name = mergeSwitch)]
    pub fn merge_switch(
        &mut self,
        table: &str,
        mode: &str,
        counters: JsValue,
        monotonic_ms: f64,
        wall_ms: f64,
    ) -> Result<JsValue, JsValue> {
        if !self.conn()?.is_autocommit() {
            return Err(ReplicaError::InvalidArgument(
                "migrate() cannot run inside a transaction".into(),
            )
            .into());
        }
        let counters = merge_switch_counters(&counters)?;
        let merge = match mode {
            "column" => Some(TableMerge { counters }),
            "row" if counters.is_empty() => None,
            "row" => {
                return Err(ReplicaError::InvalidArgument(
                    "merge switch: counters are for mode \"column\"; a table that merges by row has none"
                        .into(),
                )
                .into())
            }
            other => {
                return Err(ReplicaError::InvalidArgument(format!(
                    "merge switch: mode {other:?} is not \"column\" or \"row\""
                ))
                .into())
            }
        };
        let now = now(monotonic_ms, wall_ms);
        let published = self
            .session_mut()?
            .publish_merge_switch(table, merge.as_ref(), now.wall);
        self.hand_out_migration(now, published)
    }

    /// How each replicated table merges, as the database records it (a replicated merge
    /// switch changes it): `{ table: { mode: "row" | "column", counters: [names] } }`.
    #[wasm_bindgen(js_name = mergeModes)]
    pub fn merge_modes(&self) -> Result<JsValue, JsValue> {
        let modes = recorded_merge_modes(self.conn()?).map_err(ReplicaError::from)?;
        let out = Object::new();
        for (table, merge) in modes {
            let (mode, counters) = match &merge {
                Some(m) => ("column", m.counters.as_slice()),
                None => ("row", &[][..]),
            };
            Reflect::set(
                &out,
                &JsValue::from_str(&table),
                &object(&[
                    ("mode", mode.into()),
                    ("counters", convert::string_array(counters).into()),
                ]),
            )?;
        }
        Ok(out.into())
    }

    /// The version under which the migration with this id (as `migrate` returned it) was
    /// applied here; 0 when it was not (yet).
    #[wasm_bindgen(js_name = migrationVersion)]
    pub fn migration_version(&self, id: &str) -> Result<f64, JsValue> {
        let migrations = self.session()?.migrations().map_err(ReplicaError::from)?;
        Ok(migrations
            .iter()
            .find(|m| hex(&m.id) == id)
            .map_or(0.0, |m| m.version as f64))
    }

    /// Why the migration with this id is parked here, if it is.
    #[wasm_bindgen(js_name = migrationParked)]
    pub fn migration_parked(&self, id: &str) -> Result<Option<String>, JsValue> {
        let parked = self.session()?.parked().map_err(ReplicaError::from)?;
        Ok(parked
            .into_iter()
            .find_map(|p| match wire::decode_message(&p.frame) {
                Ok(wire::Message::Migration(m)) if hex(&m.id) == id => Some(p.reason),
                _ => None,
            }))
    }

    /// The local schema: `{fingerprint, migrationVersion, parkedMigrations, parkedByTable}`
    /// where `parkedByTable` maps a table name (`""`: none) to its parked messages.
    #[wasm_bindgen(js_name = schemaStatus)]
    pub fn schema_status(&self) -> Result<JsValue, JsValue> {
        let session = self.session()?;
        let status = session.schema_status().map_err(ReplicaError::from)?;
        let by_table = Object::new();
        for (table, count) in session.parked_by_table().map_err(ReplicaError::from)? {
            Reflect::set(&by_table, &JsValue::from_str(&table), &num(count as f64))?;
        }
        Ok(object(&[
            ("fingerprint", JsValue::from_str(&status.fingerprint)),
            ("migrationVersion", num(status.migration_version as f64)),
            ("parkedMigrations", num(status.parked_migrations as f64)),
            ("parkedByTable", by_table.into()),
        ]))
    }

    /// Discards the parked changes for `table` (a table dropped on purpose) in one
    /// transaction and returns how many parked messages held changes for it (removed, or kept
    /// without them when they also held other tables' changes; those are retried at once).
    /// Refused (`InvalidArgumentError`) when the table exists here unless `force`, and for a
    /// name that is neither a table here nor has anything parked. Discarded changes never come
    /// back, even if the table is created later.
    #[wasm_bindgen(js_name = discardParked)]
    pub fn discard_parked(&mut self, table: &str, force: bool) -> Result<f64, JsValue> {
        if !self.conn()?.is_autocommit() {
            return Err(ReplicaError::InvalidArgument(
                "discardParked() cannot run inside a transaction".into(),
            )
            .into());
        }
        let discarded = self
            .session_mut()?
            .discard_parked(table, force)
            .map_err(|e| match e {
                DiscardError::Store(e) => ReplicaError::from(e),
                DiscardError::TableExists { table, messages } => {
                    ReplicaError::InvalidArgument(format!(
                        "table {table} exists here, so its {messages} parked message(s) wait for \
                         a column or a primary key this replica lacks, and discarding them loses \
                         those changes; migrate to apply them, or pass {{ force: true }}"
                    ))
                }
                e => ReplicaError::InvalidArgument(e.to_string()),
            })?;
        Ok(discarded.affected() as f64)
    }

    /// Makes the database apply the change stream from its first message, whatever stream
    /// that is (one deleted and created again on purpose, or a missing one this replica may
    /// then create): the cursor goes back to 0 and the recorded stream is forgotten. Returns
    /// the cursor given up. The session is rebuilt over the database: its outbox is handed
    /// out again (message ids make a second publish harmless); feed `Reopened` next. Refused
    /// while a consumer delivers the stream (the replica refuses nothing) and inside a
    /// transaction.
    #[wasm_bindgen(js_name = adoptStream)]
    pub fn adopt_stream(&mut self, monotonic_ms: f64, wall_ms: f64) -> Result<f64, JsValue> {
        if !self.conn()?.is_autocommit() {
            return Err(ReplicaError::InvalidArgument(
                "adoptStream() cannot run inside a transaction".into(),
            )
            .into());
        }
        if self.session()?.status().consuming {
            return Err(ReplicaError::InvalidArgument(
                "adoptStream() is for a replica that refuses its change stream or finds it missing \
                 (status().streamRefused); this one is consuming the stream"
                    .into(),
            )
            .into());
        }
        let given_up = self.session()?.applied_cursor().get();
        let mut forgotten = Ok(());
        self.reopen_store(monotonic_ms, wall_ms, |conn, _| {
            forgotten = stream_identity::forget_stream(&conn);
            Ok(conn)
        })?;
        forgotten.map_err(ReplicaError::from)?;
        Ok(given_up as f64)
    }

    /// Counters: `{outboxFrames, outboxRows, parked, logPending, cursor, appliedCursor,
    /// inbox, inFlight, migrationVersion, schemaFingerprint}`.
    pub fn counters(&self) -> Result<JsValue, JsValue> {
        let session = self.session()?;
        let (frames, rows) = session.outbox_depth().map_err(ReplicaError::from)?;
        let parked = session.parked_count().map_err(ReplicaError::from)?;
        let log = session.log_depth().map_err(ReplicaError::from)?;
        let schema = session.schema_status().map_err(ReplicaError::from)?;
        let status = session.status();
        Ok(object(&[
            ("migrationVersion", num(schema.migration_version as f64)),
            ("schemaFingerprint", JsValue::from_str(&schema.fingerprint)),
            ("outboxFrames", num(frames as f64)),
            ("outboxRows", num(rows as f64)),
            ("parked", num(parked as f64)),
            ("logPending", num(log as f64)),
            ("cursor", num(session.cursor().get() as f64)),
            ("appliedCursor", num(status.cursor as f64)),
            ("inbox", num(status.inbox as f64)),
            ("inFlight", num(status.in_flight as f64)),
        ]))
    }

    /// Highest outbox id waiting for an ack (0 when the outbox is empty).
    #[wasm_bindgen(js_name = outboxLastId)]
    pub fn outbox_last_id(&self) -> Result<f64, JsValue> {
        Ok(self.outbox_id_range()?.1 as f64)
    }

    /// Lowest outbox id waiting for an ack (0 when the outbox is empty).
    #[wasm_bindgen(js_name = outboxFirstId)]
    pub fn outbox_first_id(&self) -> Result<f64, JsValue> {
        Ok(self.outbox_id_range()?.0 as f64)
    }

    /// Rows changed through this connection since it opened, triggers included (a host
    /// compares it around `query` to notice writes such as `INSERT ... RETURNING`).
    #[wasm_bindgen(js_name = totalChanges)]
    pub fn total_changes(&self) -> Result<f64, JsValue> {
        Ok(self.conn()?.total_changes() as f64)
    }

    /// Whether the connection is inside an explicit transaction.
    #[wasm_bindgen(js_name = inTransaction)]
    pub fn in_transaction(&self) -> Result<bool, JsValue> {
        Ok(!self.conn()?.is_autocommit())
    }

    /// Runs SQL. With `params` (array or object) `sql` must be one statement; without, it
    /// may hold several. Returns `{changes, lastInsertRowid}`.
    ///
    /// When a statement changes the schema outside a transaction (or a transaction that
    /// did commits), the session is fed a local write before the next statement runs, so new
    /// tables get their capture triggers before they are written to: call `pollOutputs`
    /// afterwards. Rows written in the same transaction that creates their table are not
    /// captured.
    pub fn exec(
        &mut self,
        sql: &str,
        params: JsValue,
        monotonic_ms: f64,
        wall_ms: f64,
    ) -> Result<JsValue, JsValue> {
        self.session()?;
        let mut changes = 0u64;
        if params.is_undefined() || params.is_null() {
            for statement in split_statements(sql) {
                let conn = self.conn()?;
                let mut batch = rusqlite::Batch::new(conn, statement);
                while let Some(mut stmt) = batch.next().map_err(ReplicaError::from)? {
                    convert::bind(&mut stmt, &JsValue::UNDEFINED)?;
                    changes += run_statement(conn, &mut stmt)?;
                }
                self.capture_new_schema(monotonic_ms, wall_ms)?;
            }
        } else {
            let conn = self.conn()?;
            let mut stmt = conn.prepare_cached(sql).map_err(ReplicaError::from)?;
            convert::bind(&mut stmt, &params)?;
            changes += run_statement(conn, &mut stmt)?;
            drop(stmt);
            self.capture_new_schema(monotonic_ms, wall_ms)?;
        }
        let rowid = self.conn()?.last_insert_rowid();
        Ok(object(&[
            ("changes", num(changes as f64)),
            (
                "lastInsertRowid",
                convert::to_js(rusqlite::types::ValueRef::Integer(rowid)),
            ),
        ]))
    }

    /// Runs one statement and returns its rows as plain objects keyed by column name.
    pub fn query(&self, sql: &str, params: JsValue) -> Result<Array, JsValue> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(sql).map_err(ReplicaError::from)?;
        convert::bind(&mut stmt, &params)?;
        let names: Vec<JsValue> = stmt.column_names().map(JsValue::from_str).collect();
        let out = Array::new();
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next().map_err(ReplicaError::from)? {
            out.push(&convert::row_object(&names, row)?.into());
        }
        Ok(out)
    }

    /// Whether the database holds nothing a snapshot restore could lose: nothing applied
    /// from the stream, nothing waiting to be published or captured, and no rows in any
    /// replicated table (tables without rows may exist).
    #[wasm_bindgen(js_name = isEmpty)]
    pub fn is_empty(&self) -> Result<bool, JsValue> {
        let session = self.session()?;
        if session.cursor() != StreamSeq::ZERO {
            return Ok(false);
        }
        let (frames, _) = session.outbox_depth().map_err(ReplicaError::from)?;
        if frames > 0 || session.log_depth().map_err(ReplicaError::from)? > 0 {
            return Ok(false);
        }
        let conn = self.conn()?;
        for table in session.replicated_tables() {
            let any: bool = conn
                .query_row(
                    &format!("SELECT EXISTS (SELECT 1 FROM {})", quote(&table)),
                    [],
                    |r| r.get(0),
                )
                .map_err(ReplicaError::from)?;
            if any {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Replaces the database with a snapshot (`framed`: the bytes of a `.hlsnap` object, as
    /// the sidecar uploads them) and returns the stream sequence it covers. The node id
    /// stays; the incarnation is new (`random`: 8 random bytes); this node's own messages up
    /// to `replayOwnUntil` are applied, not skipped. Only for an empty database
    /// ([`Replica::is_empty`]); when the snapshot is unusable the database is unchanged. The
    /// session is rebuilt over the restored database: feed `Reopened` next, and it consumes
    /// from the sequence after the covered one.
    #[wasm_bindgen(js_name = restoreSnapshot)]
    pub fn restore_snapshot(
        &mut self,
        framed: &[u8],
        replay_own_until: f64,
        random: &[u8],
        monotonic_ms: f64,
        wall_ms: f64,
    ) -> Result<f64, JsValue> {
        if !self.is_empty()? {
            return Err(
                ReplicaError::Storage("a snapshot only replaces an empty database".into()).into(),
            );
        }
        let random: [u8; 8] = random
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ReplicaError::InvalidArgument("random must hold 8 bytes".into()))?;
        let replay_own_until = StreamSeq::new(seq_arg(replay_own_until, "replayOwnUntil")?);
        let (header, bytes) = harmonylite_core::snapshot::unframe_bytes(framed)
            .map_err(|e| ReplicaError::Storage(format!("the snapshot is damaged: {e}")))?;
        let local = self
            .session()?
            .node_local_for_restore(u64::from_le_bytes(random));
        // Prepare the copy in memory, then copy it page by page into the replica's own file
        // (any VFS): the database is only touched once the copy is known to be good.
        let mut copy = Connection::open_in_memory()
            .map_err(|e| ReplicaError::Storage(format!("opening the snapshot: {e}")))?;
        let size = bytes.len();
        copy.deserialize_read_exact(rusqlite::MAIN_DB, &bytes[..], size, false)
            .map_err(|e| ReplicaError::Storage(format!("loading the snapshot: {e}")))?;
        // Refused before the database is touched, as opening it afterwards would be.
        if let Some(merge) = &self.merge {
            check_snapshot_merge(&copy, merge)?;
        }
        install_node_local(&mut copy, &local, header.covered_seq, replay_own_until)
            .map_err(ReplicaError::from)?;
        self.reopen_store(monotonic_ms, wall_ms, |mut conn, options| {
            options.incarnation = local.incarnation;
            // One step copies every page; no pauses (a pause would sleep, which wasm cannot).
            rusqlite::backup::Backup::new(&copy, &mut conn)
                .and_then(|b| b.step(-1).map(|_| ()))
                .map_err(|e| {
                    ReplicaError::Storage(format!(
                        "copying the snapshot into the database: {e} (reopen the replica)"
                    ))
                })?;
            Ok(conn)
        })?;
        Ok(header.covered_seq.get() as f64)
    }

    /// Closes the database (a memory database is gone afterwards). Every later call fails
    /// with `ReplicaClosedError`.
    pub fn close(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.into_db().into_connection().close();
        }
        if let Some(name) = self.memory_name.take() {
            remove_memory_database(&name);
        }
    }

    /// Whether [`Replica::close`] was called.
    #[wasm_bindgen(js_name = isClosed)]
    pub fn is_closed(&self) -> bool {
        self.session.is_none()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.close();
    }
}

/// A merge switch's `counters` argument: an array of column names (or nothing).
fn merge_switch_counters(value: &JsValue) -> Result<Vec<String>, ReplicaError> {
    if value.is_undefined() || value.is_null() {
        return Ok(Vec::new());
    }
    let bad = || {
        ReplicaError::InvalidArgument(
            "merge switch: counters must be an array of column names".into(),
        )
    };
    value
        .dyn_ref::<Array>()
        .ok_or_else(bad)?
        .iter()
        .map(|v| v.as_string().filter(|s| !s.is_empty()).ok_or_else(bad))
        .collect()
}

/// Refuses a snapshot that merges a table otherwise than the `merge` option says (opening
/// the restored database with that option would be refused, the database already replaced).
fn check_snapshot_merge(copy: &Connection, merge: &MergeConfig) -> Result<(), ReplicaError> {
    for (table, recorded) in recorded_merge_modes(copy).map_err(ReplicaError::from)? {
        let configured = merge.table(&table);
        let same = match (&recorded, configured) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.counters.len() == b.counters.len() && a.counters.iter().all(|c| b.is_counter(c))
            }
            _ => false,
        };
        if !same {
            return Err(ReplicaError::InvalidArgument(format!(
                "table {table:?} merges by {} in the snapshot but the options say {}; every \
                 replica must merge it the same way: set the merge option to match (or leave \
                 it out to follow the database)",
                column_merge::describe(recorded.as_ref()),
                column_merge::describe(configured)
            )));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The inbox prefix a scoped replica of user `sub` (its token's `sub`) must connect with.
#[wasm_bindgen(js_name = scopeClientInboxPrefix)]
pub fn scope_client_inbox_prefix(sub: &str) -> String {
    harmonylite_core::scope::Subjects::client_inbox_prefix(sub)
}

/// Where a scoped replica's feed delivers (its feed request names `replica`).
#[wasm_bindgen(js_name = scopeFeedDeliverSubject)]
pub fn scope_feed_deliver_subject(sub: &str, replica: &str) -> String {
    harmonylite_core::scope::Subjects::feed_deliver_subject(sub, replica)
}
