//! [`Replica`]: the engine and its store, driven from JavaScript.

use std::time::Duration;

use harmonylite_core::capture::names::{self, quote};
use harmonylite_core::change::StreamSeq;
use harmonylite_core::engine::{Engine, EngineConfig, Event, Input, Now, Output};
use harmonylite_core::hlc::ntp64_from_unix;
use harmonylite_core::report::Inbound;
use harmonylite_core::sqlite::snapshot::{install_node_local, NodeLocal};
use harmonylite_core::sqlite::stream_identity::{self, StreamFacts};
use harmonylite_core::sqlite::{DiscardError, PublishMigrationError, Store, StoreOptions};
use harmonylite_core::wire;
use js_sys::{Array, Object, Reflect, Uint8Array};
use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::{Connection, OpenFlags};
use sqlite_wasm_rs::vfs::memvfs::MemVfsUtil;
use sqlite_wasm_rs::vfs::VfsFilesManager;
use wasm_bindgen::prelude::*;

use crate::convert;
use crate::error::ReplicaError;
use crate::options::{ReplicaOptions, Storage};

/// Input kinds of [`Replica::handle_inputs`], one byte each.
mod kind {
    pub const LOCAL_WRITE: u8 = 0;
    pub const MESSAGE: u8 = 1;
    pub const ACKED: u8 = 2;
    pub const PUBLISH_FAILED: u8 = 3;
    pub const CONNECTED: u8 = 4;
    pub const DISCONNECTED: u8 = 5;
    pub const TIMEOUT: u8 = 6;
}

/// VFS name of the OPFS pool.
const OPFS_VFS: &str = "harmonylite-opfs";

/// A replicated SQLite database and its replication engine.
///
/// Drive it like every harmonylite host: feed inputs with `handleInputs`, then carry out
/// everything `pollOutputs` returns, then call `handleInputs` with a timeout input once the
/// monotonic time passes `pollTimeout()`. All SQL runs synchronously on the calling thread.
#[wasm_bindgen]
pub struct Replica {
    engine: Option<Engine<Store>>,
    /// The engine's settings (a restore builds a new engine with them).
    engine_config: EngineConfig,
    /// Name of the memory database to remove at close (memory storage only).
    memory_name: Option<String>,
    /// Schema version capture was last brought up to date for.
    schema_seen: i64,
}

/// Opens (creating if needed) the database named in `options` and installs change capture.
///
/// `options`: `{ name, storage?: "memory" | "opfs", opfsDirectory?, nodeId?, random,
/// publish?, excludeTables?, compression?: "lz4" | "none", pollingIntervalMs?,
/// publishWindow?, applyBatch?, parkedRetryIntervalMs?, maxClockAheadMs? }` where `random`
/// is a `Uint8Array` of at least 24 bytes from a cryptographic source (a new node id and
/// the incarnation of this database's node-local state).
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
    let store = Store::open(conn, store_options).map_err(ReplicaError::from)?;
    let schema_seen = Replica::schema_version(store.connection())?;
    Ok(Replica {
        engine: Some(Engine::new(store, options.engine.clone())),
        engine_config: options.engine.clone(),
        memory_name: (options.storage == Storage::Memory).then(|| options.name.clone()),
        schema_seen,
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

/// A plain object from key/value pairs.
fn object(entries: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in entries {
        let _ = Reflect::set(&o, &JsValue::from_str(k), v);
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

fn output_to_js(output: Output) -> JsValue {
    match output {
        Output::Publish(p) => object(&[
            ("type", "publish".into()),
            ("id", num(p.id as f64)),
            ("msgId", p.msg_id.into()),
            ("frame", Uint8Array::from(p.frame.as_slice()).into()),
            ("rows", num(p.rows as f64)),
        ]),
        Output::Event(Event::Drained(r)) => object(&[
            ("type", "drained".into()),
            ("rows", num(r.rows as f64)),
            ("frames", num(r.frames as f64)),
            ("nullKeys", num(r.null_keys as f64)),
            ("tables", convert::string_array(&r.tables).into()),
        ]),
        Output::Event(Event::Received(s)) => {
            let parked: Array = s
                .parked
                .iter()
                .map(|(seq, kind, reason)| {
                    object(&[
                        ("seq", num(seq.get() as f64)),
                        ("kind", (*kind).into()),
                        ("reason", reason.as_str().into()),
                    ])
                })
                .collect();
            object(&[
                ("type", "received".into()),
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
            ])
        }
        Output::Event(Event::Acked { frames }) => {
            object(&[("type", "acked".into()), ("frames", num(frames as f64))])
        }
        Output::Event(Event::DatabaseError {
            operation,
            error,
            retry_in,
        }) => object(&[
            ("type", "databaseError".into()),
            ("operation", operation.into()),
            ("error", error.into()),
            ("retryInMs", num(retry_in.as_secs_f64() * 1000.0)),
        ]),
    }
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
        let engine = self.engine_mut()?;
        engine.handle_input(now(monotonic_ms, wall_ms), Input::LocalWrite);
        self.schema_seen = Self::schema_version(self.conn()?)?;
        Ok(())
    }

    fn engine(&self) -> Result<&Engine<Store>, ReplicaError> {
        self.engine.as_ref().ok_or(ReplicaError::Closed)
    }

    fn engine_mut(&mut self) -> Result<&mut Engine<Store>, ReplicaError> {
        self.engine.as_mut().ok_or(ReplicaError::Closed)
    }

    fn conn(&self) -> Result<&Connection, ReplicaError> {
        Ok(self.engine()?.db().connection())
    }

    fn schema_version(conn: &Connection) -> Result<i64, ReplicaError> {
        Ok(conn
            .prepare_cached("PRAGMA schema_version")?
            .query_row([], |r| r.get(0))?)
    }

    fn outbox_bound(&self, aggregate: &str) -> Result<f64, ReplicaError> {
        let id: i64 = self.conn()?.query_row(
            &format!(
                "SELECT coalesce({aggregate}(id), 0) FROM {}",
                quote(names::OUTBOX)
            ),
            [],
            |r| r.get(0),
        )?;
        Ok(id as f64)
    }
}

#[wasm_bindgen]
impl Replica {
    /// Feeds inputs in order, then does the work that is due. `kinds[i]` is 0 local write,
    /// 1 stream message (`nums[i]` = stream sequence, payload = next entry of `frames`),
    /// 2 acked (`nums[i]` = outbox id), 3 publish failed (`nums[i]` = outbox id),
    /// 4 connected, 5 disconnected, 6 timeout.
    #[wasm_bindgen(js_name = handleInputs)]
    pub fn handle_inputs(
        &mut self,
        monotonic_ms: f64,
        wall_ms: f64,
        kinds: &[u8],
        nums: &[f64],
        frames: Array,
    ) -> Result<(), JsValue> {
        if nums.len() != kinds.len() {
            return Err(ReplicaError::InvalidArgument(
                "kinds and nums must have the same length".into(),
            )
            .into());
        }
        let mut inputs = Vec::with_capacity(kinds.len());
        let mut next_frame = 0u32;
        for (&k, &n) in kinds.iter().zip(nums) {
            let input = match k {
                kind::LOCAL_WRITE => Input::LocalWrite,
                kind::MESSAGE => {
                    let frame = frames
                        .get(next_frame)
                        .dyn_into::<Uint8Array>()
                        .map_err(|_| {
                            ReplicaError::InvalidArgument(format!(
                                "frames[{next_frame}] must be a Uint8Array"
                            ))
                        })?;
                    next_frame += 1;
                    Input::Message(Inbound {
                        seq: StreamSeq::new(seq_arg(n, "a stream sequence")?),
                        frame: frame.to_vec(),
                    })
                }
                kind::ACKED => Input::Acked {
                    id: seq_arg(n, "an outbox id")? as i64,
                },
                kind::PUBLISH_FAILED => Input::PublishFailed {
                    id: seq_arg(n, "an outbox id")? as i64,
                },
                kind::CONNECTED => Input::Connected,
                kind::DISCONNECTED => Input::Disconnected,
                kind::TIMEOUT => Input::Timeout,
                other => {
                    return Err(ReplicaError::InvalidArgument(format!(
                        "unknown input kind {other}"
                    ))
                    .into())
                }
            };
            inputs.push(input);
        }
        self.engine_mut()?
            .handle_inputs(now(monotonic_ms, wall_ms), inputs);
        Ok(())
    }

    /// Every pending output as plain objects, oldest first: `{type: "publish", id, msgId,
    /// frame, rows}`, `{type: "drained", rows, frames, nullKeys, tables}`, `{type:
    /// "received", messages, batches, rowsChanged, remoteWon, localWon, own, parked,
    /// unparked, tables, drainedRows, drainedTables, cursor}`, `{type: "acked", frames}`,
    /// `{type: "databaseError", operation, error, retryInMs}`.
    #[wasm_bindgen(js_name = pollOutputs)]
    pub fn poll_outputs(&mut self) -> Result<Array, JsValue> {
        let engine = self.engine_mut()?;
        let out = Array::new();
        while let Some(output) = engine.poll_output() {
            out.push(&output_to_js(output));
        }
        Ok(out)
    }

    /// Monotonic time (ms) at which the engine wants a timeout input, if ever.
    #[wasm_bindgen(js_name = pollTimeout)]
    pub fn poll_timeout(&self) -> Result<Option<f64>, JsValue> {
        Ok(self
            .engine()?
            .poll_timeout()
            .map(|t| t.as_secs_f64() * 1000.0))
    }

    /// Last stream sequence applied or queued: consume from the one after it.
    pub fn cursor(&self) -> Result<f64, JsValue> {
        Ok(self.engine()?.cursor().get() as f64)
    }

    /// Last stream sequence durably applied.
    #[wasm_bindgen(js_name = appliedCursor)]
    pub fn applied_cursor(&self) -> Result<f64, JsValue> {
        Ok(self.engine()?.applied_cursor().get() as f64)
    }

    /// Messages received but not applied yet.
    #[wasm_bindgen(js_name = inboxLen)]
    pub fn inbox_len(&self) -> Result<u32, JsValue> {
        Ok(self.engine()?.inbox_len() as u32)
    }

    /// This replica's node id (hex).
    #[wasm_bindgen(js_name = nodeId)]
    pub fn node_id(&self) -> Result<String, JsValue> {
        Ok(self.engine()?.db().node_id().to_string())
    }

    /// Names of the replicated tables.
    #[wasm_bindgen(js_name = replicatedTables)]
    pub fn replicated_tables(&self) -> Result<Array, JsValue> {
        Ok(convert::string_array(
            &self.engine()?.db().replicated_tables(),
        ))
    }

    /// Largest frame to write to the outbox from now on (the server's payload limit minus
    /// header room).
    #[wasm_bindgen(js_name = setMaxFrame)]
    pub fn set_max_frame(&mut self, bytes: u32) -> Result<(), JsValue> {
        self.engine_mut()?.db_mut().set_max_frame(bytes as usize);
        Ok(())
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
        let wall = ntp64_from_unix(Duration::from_secs_f64(wall_ms.max(0.0) / 1000.0));
        let engine = self.engine_mut()?;
        let published = engine
            .db_mut()
            .publish_migration(sql, allow_destructive, wall)
            .map_err(|e| match e {
                PublishMigrationError::Refused(e) => ReplicaError::Migration(e.to_string()),
                PublishMigrationError::Store(e) => ReplicaError::from(e),
            })?;
        engine.handle_input(now(monotonic_ms, wall_ms), Input::LocalWrite);
        Ok(object(&[
            ("id", JsValue::from_str(&published.id)),
            ("baseVersion", num(published.base_version as f64)),
            ("statements", num(published.statements as f64)),
            ("destructive", JsValue::from_bool(published.destructive)),
        ]))
    }

    /// The version under which the migration with this id (as `migrate` returned it) was
    /// applied here; 0 when it was not (yet).
    #[wasm_bindgen(js_name = migrationVersion)]
    pub fn migration_version(&self, id: &str) -> Result<f64, JsValue> {
        let migrations = self
            .engine()?
            .db()
            .migrations()
            .map_err(ReplicaError::from)?;
        Ok(migrations
            .iter()
            .find(|m| hex(&m.id) == id)
            .map_or(0.0, |m| m.version as f64))
    }

    /// Why the migration with this id is parked here, if it is.
    #[wasm_bindgen(js_name = migrationParked)]
    pub fn migration_parked(&self, id: &str) -> Result<Option<String>, JsValue> {
        let parked = self.engine()?.db().parked().map_err(ReplicaError::from)?;
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
        let store = self.engine()?.db();
        let status = store.schema_status().map_err(ReplicaError::from)?;
        let by_table = Object::new();
        for (table, count) in store.parked_by_table().map_err(ReplicaError::from)? {
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
        let engine = self.engine_mut()?;
        let discarded = engine
            .db_mut()
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
        if discarded.trimmed > 0 {
            // What is left of those messages may apply now.
            engine.retry_parked_soon();
        }
        Ok(discarded.affected() as f64)
    }

    /// Whether the change stream `stream` (created at `createdNs`, Unix nanoseconds, ending
    /// at `lastSeq`) is the one this database's cursor counts in: `undefined` if it is (the
    /// first stream seen is recorded), else why not and what to do. Consume nothing from a
    /// stream it refuses: its sequence numbers are not the ones the cursor counts.
    #[wasm_bindgen(js_name = checkStream)]
    pub fn check_stream(
        &mut self,
        stream: &str,
        created_ns: i64,
        last_seq: f64,
    ) -> Result<Option<String>, JsValue> {
        let facts = StreamFacts {
            created_ns,
            last_seq: seq_arg(last_seq, "lastSeq")?,
        };
        let cursor = self.engine()?.cursor().get();
        let how_to_adopt = "call adoptStream() (docs/js-api.md)";
        Ok(
            stream_identity::refusal(self.conn()?, stream, cursor, facts, how_to_adopt)
                .map_err(ReplicaError::from)?,
        )
    }

    /// Makes the database apply the change stream from its first message, whatever stream
    /// that is (one deleted and created again on purpose): the cursor goes back to 0 and the
    /// recorded stream is forgotten. Returns the cursor given up. The engine is rebuilt: its
    /// outbox is handed out again (message ids make a second publish harmless). Only while
    /// no consumer delivers messages and no transaction is open.
    #[wasm_bindgen(js_name = adoptStream)]
    pub fn adopt_stream(&mut self) -> Result<f64, JsValue> {
        if !self.conn()?.is_autocommit() {
            return Err(ReplicaError::InvalidArgument(
                "adoptStream() cannot run inside a transaction".into(),
            )
            .into());
        }
        let engine = self.engine.take().ok_or(ReplicaError::Closed)?;
        let store = engine.into_db();
        let given_up = store.cursor().get();
        let options = store.options().clone();
        let conn = store.into_connection();
        let forgotten = stream_identity::forget_stream(&conn);
        let store = Store::open(conn, options).map_err(|e| {
            ReplicaError::Storage(format!(
                "reopening the database after adoptStream(): {e} (reopen the replica)"
            ))
        })?;
        self.engine = Some(Engine::new(store, self.engine_config.clone()));
        forgotten.map_err(ReplicaError::from)?;
        Ok(given_up as f64)
    }

    /// Counters: `{outboxFrames, outboxRows, parked, logPending, cursor, appliedCursor,
    /// inbox, inFlight, migrationVersion, schemaFingerprint}`.
    pub fn counters(&self) -> Result<JsValue, JsValue> {
        let engine = self.engine()?;
        let store = engine.db();
        let (frames, rows) = store.outbox_depth().map_err(ReplicaError::from)?;
        let parked = store.parked_count().map_err(ReplicaError::from)?;
        let log = store.log_depth().map_err(ReplicaError::from)?;
        let schema = store.schema_status().map_err(ReplicaError::from)?;
        Ok(object(&[
            ("migrationVersion", num(schema.migration_version as f64)),
            ("schemaFingerprint", JsValue::from_str(&schema.fingerprint)),
            ("outboxFrames", num(frames as f64)),
            ("outboxRows", num(rows as f64)),
            ("parked", num(parked as f64)),
            ("logPending", num(log as f64)),
            ("cursor", num(engine.cursor().get() as f64)),
            ("appliedCursor", num(engine.applied_cursor().get() as f64)),
            ("inbox", num(engine.inbox_len() as f64)),
            ("inFlight", num(engine.in_flight() as f64)),
        ]))
    }

    /// Highest outbox id waiting for an ack (0 when the outbox is empty).
    #[wasm_bindgen(js_name = outboxLastId)]
    pub fn outbox_last_id(&self) -> Result<f64, JsValue> {
        Ok(self.outbox_bound("max")?)
    }

    /// Lowest outbox id waiting for an ack (0 when the outbox is empty).
    #[wasm_bindgen(js_name = outboxFirstId)]
    pub fn outbox_first_id(&self) -> Result<f64, JsValue> {
        Ok(self.outbox_bound("min")?)
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
    /// did commits), the engine is fed a local write before the next statement runs, so new
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
        self.engine()?;
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
        let engine = self.engine()?;
        let store = engine.db();
        if engine.cursor() != StreamSeq::ZERO {
            return Ok(false);
        }
        let (frames, _) = store.outbox_depth().map_err(ReplicaError::from)?;
        if frames > 0 || store.log_depth().map_err(ReplicaError::from)? > 0 {
            return Ok(false);
        }
        let conn = store.connection();
        for table in store.replicated_tables() {
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
    /// the sidecar uploads them) and returns the stream sequence it covers: consume from the
    /// one after it. The node id stays; the incarnation is new (`random`: 8 random bytes);
    /// this node's own messages up to `replayOwnUntil` are applied, not skipped. Only for an
    /// empty database ([`Replica::is_empty`]); on failure the database is unchanged.
    #[wasm_bindgen(js_name = restoreSnapshot)]
    pub fn restore_snapshot(
        &mut self,
        framed: &[u8],
        replay_own_until: f64,
        random: &[u8],
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
        let engine = self.engine()?;
        let store = engine.db();
        let local = NodeLocal {
            node_id: store.node_id(),
            incarnation: u64::from_le_bytes(random),
            next_batch: None,
            next_outbox_id: None,
            clock: Some(store.clock().last().as_u64()),
        };
        let mut options = store.options().clone();
        options.incarnation = local.incarnation;
        // Prepare the copy in memory, then copy it page by page into the replica's own file
        // (any VFS): the database is only touched once the copy is known to be good.
        let mut copy = Connection::open_in_memory()
            .map_err(|e| ReplicaError::Storage(format!("opening the snapshot: {e}")))?;
        let size = bytes.len();
        copy.deserialize_read_exact(rusqlite::MAIN_DB, &bytes[..], size, false)
            .map_err(|e| ReplicaError::Storage(format!("loading the snapshot: {e}")))?;
        install_node_local(&mut copy, &local, header.covered_seq, replay_own_until)
            .map_err(ReplicaError::from)?;
        let engine = self.engine.take().ok_or(ReplicaError::Closed)?;
        let mut conn = engine.into_db().into_connection();
        let copied = rusqlite::backup::Backup::new(&copy, &mut conn).and_then(|b| {
            // One step copies every page; no pauses (a pause would sleep, which wasm cannot).
            b.step(-1).map(|_| ())
        });
        let reopened = Store::open(conn, options.clone());
        let store = match (copied, reopened) {
            (Ok(()), Ok(store)) => store,
            (Err(e), _) => {
                return Err(ReplicaError::Storage(format!(
                    "copying the snapshot into the database: {e} (reopen the replica)"
                ))
                .into())
            }
            (Ok(()), Err(e)) => return Err(ReplicaError::from(e).into()),
        };
        self.schema_seen = Self::schema_version(store.connection())?;
        self.engine = Some(Engine::new(store, self.engine_config.clone()));
        Ok(header.covered_seq.get() as f64)
    }

    /// Closes the database (a memory database is gone afterwards). Every later call fails
    /// with `ReplicaClosedError`.
    pub fn close(&mut self) {
        if let Some(engine) = self.engine.take() {
            let _ = engine.into_db().into_connection().close();
            if let Some(name) = self.memory_name.take() {
                remove_memory_database(&name);
            }
        }
    }

    /// Whether [`Replica::close`] was called.
    #[wasm_bindgen(js_name = isClosed)]
    pub fn is_closed(&self) -> bool {
        self.engine.is_none()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.close();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
