//! Executing capture, drain and apply on a `rusqlite::Connection` (feature `sqlite`).
//!
//! [`Store`] owns one connection to the replicated database: the host's, separate from the
//! application's. Every operation is one `BEGIN IMMEDIATE` transaction, so an application
//! writer waits at most one such transaction (its busy timeout covers it) and never sees a
//! partial state. The connection is synchronous: hosts give it its own thread (native) or
//! call it between awaits (wasm).

mod apply;
mod busy;
pub mod catch_up;
mod cells;
mod drain;
mod failure;
mod inbox;
mod install;
pub mod merge_switch;
pub mod meta;
pub mod migrate;
mod outbox;
pub mod parked;
mod refusal;
mod routing;
mod row_io;
pub mod scope_bootstrap;
mod scope_check;
pub mod scope_refetch;
mod session;
pub mod snapshot;
pub mod stream_identity;
mod tables;

use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

pub use catch_up::{CatchUp, CatchUpError, CatchUpReport};
pub use inbox::{ParkedMessage, SCOPED_PART_WINDOW};
pub use install::{recorded_merge_modes, uninstall, InstallReport};
pub use migrate::{AppliedMigration, SchemaStatus};
pub use parked::{DiscardError, Discarded, ParkedTable};
pub use refusal::PartitionChange;

use crate::capture::names::{self, quote};
use crate::change::{BatchSeq, StreamSeq};
use crate::error::{ApplyError, Context, StoreError};
use crate::hlc::{Clock, NodeId, NTP64};
use crate::migration::MigrationError;
use crate::report::{Applied, DrainReport, Inbound, OutboxFrame, Parked, ReceiveReport};
use crate::wire::{self, Compression, Message, MessageV1, MigrationV1};
use apply::ApplyFailure;
use tables::Tables;

/// How a store behaves.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// This replica's id (hosts read [`Store::stored_node_id`], else configure or generate one).
    pub node_id: NodeId,
    /// Tables never replicated.
    pub exclude_tables: Vec<String>,
    /// Write captured batches to the outbox (`false`: local writes stay local).
    pub publish: bool,
    /// Compression of published batches.
    pub compression: Compression,
    /// Largest frame to publish (the stream's payload limit); bigger batches are split.
    pub max_frame: usize,
    /// Remote timestamps further ahead of local time than this are refused.
    pub max_clock_ahead: Duration,
    /// How long the store's connection waits for the application's write lock.
    pub busy_timeout: Duration,
    /// Incarnation to record when the database has none yet (fresh randomness from the host;
    /// see [`meta::keys::INCARNATION`]).
    pub incarnation: u64,
    /// Scope rules (off by default): when on, captured batches are split by route and each
    /// frame carries its subject (see [`crate::scope`]).
    pub scopes: crate::scope::ScopeRules,
    /// Who this replica is on partition subjects: a full node (default) or a scoped replica.
    pub writer: crate::scope::Writer,
    /// A scoped replica: the partitions its token grants, as its feed named them (`None`:
    /// not known yet, taken from the database if it stored them). Writes outside them are
    /// refused at drain instead of published (see `sqlite::refusal`).
    pub partitions: Option<Vec<crate::scope::Partition>>,
    /// Tables that merge by column and their counters (`None`: as the database records,
    /// tables it does not know by row). A table keeps the mode it was first registered
    /// with; opening with options that say another is [`StoreError::Config`]: switching is
    /// a replicated migration ([`Store::publish_merge_switch`]).
    pub merge: Option<crate::column_merge::MergeConfig>,
}

impl StoreOptions {
    /// Defaults for `node_id`: publish, LZ4, 1 MiB frames, 5 min clock bound, 5 s busy wait,
    /// an incarnation derived from the node id (hosts should pass randomness instead).
    pub fn new(node_id: NodeId) -> Self {
        StoreOptions {
            node_id,
            exclude_tables: Vec::new(),
            publish: true,
            compression: Compression::Lz4,
            max_frame: 1024 * 1024,
            max_clock_ahead: Clock::DEFAULT_MAX_AHEAD,
            busy_timeout: Duration::from_secs(5),
            incarnation: node_id.as_u128() as u64 ^ (node_id.as_u128() >> 64) as u64,
            scopes: crate::scope::ScopeRules::default(),
            writer: crate::scope::Writer::Full,
            partitions: None,
            merge: None,
        }
    }
}

/// Refuses column merging on a table scoped replicas see: their bootstrap and refusal paths
/// carry row images only (not built yet), so only hidden tables may merge by column.
fn check_merge_scopes(tables: &Tables, options: &StoreOptions) -> Result<(), StoreError> {
    if !options.scopes.is_enabled() {
        return Ok(());
    }
    for table in tables.iter().filter(|t| t.merge.is_some()) {
        let name = table.info.name.to_lowercase();
        if !matches!(
            options.scopes.table_scope(&name),
            crate::scope::TableScope::Hidden
        ) {
            return Err(StoreError::Config(format!(
                "table {:?} merges by column and scoped replicas see it; with [scopes] on, \
                 only tables hidden from scoped replicas may merge by column (for now)",
                table.info.name
            )));
        }
    }
    Ok(())
}

/// Why a receive transaction stopped.
enum ReceiveError {
    /// The database failed; retry later.
    Store(StoreError),
    /// A message was refused half-way; run the transaction again with savepoints.
    NeedsSavepoints,
}

impl From<StoreError> for ReceiveError {
    fn from(e: StoreError) -> Self {
        ReceiveError::Store(e)
    }
}

enum Outcome {
    Applied(Applied),
    Own,
    PartStored,
    Migration(MigrationV1),
    /// A scoped replica's change, refused (by every full replica alike).
    Refused(Option<NodeId>, scope_check::Verdict),
    /// A refusal notice: on a scoped replica, its own refused writes (returned to the
    /// accepted state) and the rows queued for a refetch; elsewhere nothing.
    Notice(Vec<crate::report::RefusedWrite>, u64),
}

/// Why [`Store::publish_migration`] published nothing.
#[derive(Debug, thiserror::Error)]
pub enum PublishMigrationError {
    /// The SQL breaks a migration rule or fails on this database.
    #[error(transparent)]
    Refused(#[from] MigrationError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A migration [`Store::publish_migration`] put in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedMigration {
    /// Its id (hex of the 24-byte HLC), as `__hl_migrations.id` will show it.
    pub id: String,
    /// Migration version this replica had applied when publishing.
    pub base_version: u64,
    /// Statements it holds.
    pub statements: usize,
    /// Whether it contains destructive statements.
    pub destructive: bool,
}

/// A replicated database: capture installed, versions, outbox, cursor.
pub struct Store {
    conn: Connection,
    clock: Clock,
    options: StoreOptions,
    schema: Schema,
    cursor: StreamSeq,
    next_batch: u64,
    replay_own_until: StreamSeq,
    id_prefix: String,
    /// A migration was published since the last drain: the next drain reports
    /// `outbox_grew` so the engine hands it out.
    outbox_grew: bool,
    /// Schema fingerprint and the `PRAGMA schema_version` it was computed at.
    fingerprint: std::cell::RefCell<Option<(i64, String)>>,
}

impl Store {
    /// Takes over `conn`: sets WAL mode and connection pragmas, installs capture (idempotent)
    /// and loads the node's metadata.
    pub fn open(mut conn: Connection, options: StoreOptions) -> Result<Self, StoreError> {
        busy::wait_for_locks(&mut conn, options.busy_timeout)
            .context("setting the busy handler")?;
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .context("switching to WAL mode")?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; PRAGMA recursive_triggers = OFF;")
            .context("setting connection pragmas")?;
        conn.set_prepared_statement_cache_capacity(512);
        let mut store = Store {
            clock: Clock::new(options.node_id, NTP64(0), options.max_clock_ahead),
            conn,
            options,
            schema: Schema::default(),
            cursor: StreamSeq::ZERO,
            next_batch: 1,
            replay_own_until: StreamSeq::ZERO,
            id_prefix: String::new(),
            outbox_grew: false,
            fingerprint: Default::default(),
        };
        let tx = store
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting the install transaction")?;
        let (tables, report) = install::install(
            &tx,
            &store.options.exclude_tables,
            store.options.merge.as_ref(),
            true,
            true,
        )?;
        check_merge_scopes(&tables, &store.options)?;
        if store.options.writer == crate::scope::Writer::Scoped {
            // A scoped replica keeps the rules a full node gave it, for offline starts.
            if store.options.scopes.is_enabled() {
                let doc = postcard::to_allocvec(&store.options.scopes.to_doc())
                    .map_err(|e| StoreError::Corrupt(format!("encoding scope rules: {e}")))?;
                meta::set(&tx, meta::keys::SCOPE_RULES, &doc[..])?;
            } else if let Some(doc) = Store::stored_scope_rules(&tx)? {
                store.options.scopes = crate::scope::ScopeRules::from_doc(doc)
                    .map_err(|e| StoreError::Corrupt(format!("stored scope rules: {e}")))?;
            }
            match &store.options.partitions {
                Some(partitions) => store_partitions(&tx, partitions)?,
                None => store.options.partitions = stored_partitions(&tx)?,
            }
        }
        if store.options.scopes.is_enabled() {
            routing::register_existing_rows(&tx, &tables, &store.options.scopes)?;
        }
        meta::set(
            &tx,
            meta::keys::NODE_ID,
            &store.options.node_id.to_bytes()[..],
        )?;
        let clock = meta::get_i64(&tx, meta::keys::CLOCK)?.unwrap_or(0) as u64;
        store.cursor = StreamSeq::new(meta::get_i64(&tx, meta::keys::CURSOR)?.unwrap_or(0) as u64);
        store.next_batch = meta::get_i64(&tx, meta::keys::NEXT_BATCH)?.unwrap_or(1) as u64;
        store.replay_own_until =
            StreamSeq::new(meta::get_i64(&tx, meta::keys::REPLAY_OWN_UNTIL)?.unwrap_or(0) as u64);
        let incarnation = match meta::get_i64(&tx, meta::keys::INCARNATION)? {
            Some(stored) => stored as u64,
            None => {
                meta::set(
                    &tx,
                    meta::keys::INCARNATION,
                    store.options.incarnation as i64,
                )?;
                store.options.incarnation
            }
        };
        store.id_prefix = format!("{}-{incarnation:x}", store.options.node_id);
        let slots = install::log_key_slots(&tx)?;
        let version = schema_version(&tx)?;
        tx.commit().context("committing the install")?;
        store.clock = Clock::new(
            store.options.node_id,
            NTP64(clock),
            store.options.max_clock_ahead,
        );
        store.schema = Schema {
            tables,
            slots,
            version,
            install_report: report,
        };
        Ok(store)
    }

    /// The scope rules a scoped replica stored ([`Store::open`] with `writer = Scoped` and no
    /// rules in its options uses them), if any.
    pub fn stored_scope_rules(
        conn: &Connection,
    ) -> Result<Option<crate::scope::ScopeRulesDoc>, StoreError> {
        if !install::object_exists(conn, "table", names::META)? {
            return Ok(None);
        }
        meta::get_blob(conn, meta::keys::SCOPE_RULES)?
            .map(|bytes| {
                postcard::from_bytes(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("stored scope rules: {e}")))
            })
            .transpose()
    }

    /// The node id recorded in a database by an earlier run, if any.
    pub fn stored_node_id(conn: &Connection) -> Result<Option<NodeId>, StoreError> {
        let exists: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [names::META],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .context("looking for harmonylite metadata")?;
        if !exists {
            return Ok(None);
        }
        let bytes = meta::get_blob(conn, meta::keys::NODE_ID)?;
        Ok(bytes
            .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
            .and_then(NodeId::from_bytes))
    }

    /// This replica's node id.
    pub fn node_id(&self) -> NodeId {
        self.options.node_id
    }

    /// The options the store runs with.
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// Changes the largest frame written to the outbox from now on (hosts learn the server's
    /// payload limit after connecting).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.options.max_frame = max_frame;
    }

    /// The store's connection. Native hosts use it for reads and snapshots; in-process hosts
    /// (the wasm replica) also run the application's SQL on it: those writes fire the
    /// capture triggers like any other application write.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// What the last install found.
    pub fn install_report(&self) -> &InstallReport {
        &self.schema.install_report
    }

    /// Names of the replicated tables.
    pub fn replicated_tables(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .schema
            .tables
            .iter()
            .map(|t| t.info.name.clone())
            .collect();
        names.sort();
        names
    }

    /// Last applied stream sequence.
    pub fn cursor(&self) -> StreamSeq {
        self.cursor
    }

    /// The clock's last time.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Captures pending local writes into the outbox, in one transaction.
    pub fn drain(&mut self) -> Result<DrainReport, StoreError> {
        let saved = self.next_batch;
        let result = self.drain_tx();
        if result.is_err() {
            self.next_batch = saved;
        }
        result
    }

    fn drain_tx(&mut self) -> Result<DrainReport, StoreError> {
        // No read-only pre-check: a drain right after a file notification must wait for the
        // application's commit that raised it, and the write lock is exactly that wait.
        let (tx, mut report) = begin_captured(
            &mut self.conn,
            &mut self.schema,
            &mut self.clock,
            &self.options,
            &mut self.next_batch,
            "a drain",
        )?;
        tx.commit().context("committing a drain")?;
        report.outbox_grew |= std::mem::take(&mut self.outbox_grew);
        Ok(report)
    }

    /// Applies messages from the stream in order, in one transaction: drains local writes
    /// first, then applies each message not yet seen (parking those that cannot apply) and
    /// advances the cursor to the last one.
    pub fn receive(
        &mut self,
        now: NTP64,
        messages: &[Inbound],
    ) -> Result<ReceiveReport, StoreError> {
        let (saved_batch, saved_cursor) = (self.next_batch, self.cursor);
        let result = match self.receive_tx(now, messages, false) {
            Err(ReceiveError::NeedsSavepoints) => {
                self.next_batch = saved_batch;
                self.cursor = saved_cursor;
                self.receive_tx(now, messages, true)
            }
            other => other,
        };
        let result = result.map_err(|e| match e {
            ReceiveError::Store(e) => e,
            ReceiveError::NeedsSavepoints => unreachable!("savepoints were used"),
        });
        if result.is_err() {
            self.next_batch = saved_batch;
            self.cursor = saved_cursor;
        }
        self.follow_merge_switches(matches!(&result, Ok(r) if r.migrations > 0))?;
        result
    }

    /// After migrations applied (and committed), makes this store's own `merge` options say
    /// what the database now records, so that reopening with [`Store::options`] is not
    /// refused after a merge switch ([`merge_switch`]).
    pub(super) fn follow_merge_switches(
        &mut self,
        migrations_applied: bool,
    ) -> Result<(), StoreError> {
        if let (true, Some(merge)) = (migrations_applied, self.options.merge.as_mut()) {
            for (table, mode) in install::recorded_merge_modes(&self.conn)? {
                merge.set(&table, mode);
            }
        }
        Ok(())
    }

    /// One receive transaction. Without `savepoints`, a message SQLite refuses half-way
    /// (`ApplyError::Rejected`) aborts the whole transaction with
    /// [`ReceiveError::NeedsSavepoints`], and the caller runs it again with a savepoint
    /// around each message, so that one is parked and the others apply. Every other refusal
    /// happens before the message writes anything, so the fast path parks it directly.
    fn receive_tx(
        &mut self,
        now: NTP64,
        messages: &[Inbound],
        savepoints: bool,
    ) -> Result<ReceiveReport, ReceiveError> {
        let mut report = ReceiveReport::default();
        if messages.iter().all(|m| m.seq <= self.cursor) {
            report.already_seen = messages.len() as u64;
            report.cursor = self.cursor;
            return Ok(report);
        }
        let (tx, drained) = begin_captured(
            &mut self.conn,
            &mut self.schema,
            &mut self.clock,
            &self.options,
            &mut self.next_batch,
            "an apply",
        )?;
        report.drained = drained;
        set_applying(&tx, true)?;
        for message in messages {
            if message.seq <= self.cursor {
                report.already_seen += 1;
                continue;
            }
            if savepoints {
                tx.execute_batch("SAVEPOINT hl_message")
                    .context("starting a message savepoint")?;
            }
            let mut park_frame = None;
            match receive_one(
                &tx,
                &self.schema.tables,
                &mut self.clock,
                &self.options,
                self.replay_own_until,
                message,
                now,
                &mut park_frame,
            ) {
                Ok(outcome) => {
                    if savepoints {
                        tx.execute_batch("RELEASE hl_message")
                            .context("releasing a message savepoint")?;
                    }
                    match outcome {
                        Outcome::Applied(applied) => {
                            report.batches += 1;
                            report.applied.add(applied);
                        }
                        Outcome::Own => report.own += 1,
                        Outcome::PartStored => report.parts_stored += 1,
                        Outcome::Refused(origin, verdict) => {
                            report
                                .refused
                                .push(verdict.into_refused(message.seq, origin));
                            // Its notice waits in the outbox: publish it now.
                            report.drained.outbox_grew = true;
                        }
                        Outcome::Notice(reverted, queued) => {
                            report.reverted.extend(reverted);
                            report.refetch_queued += queued;
                        }
                        Outcome::Migration(migration) => {
                            match run_migration(
                                &tx,
                                &mut self.schema,
                                &self.options,
                                message.seq,
                                &migration,
                                now,
                            )? {
                                Ok(true) => {
                                    report.migrations += 1;
                                    report.drained.schema_changed = true;
                                }
                                Ok(false) => report.already_seen += 1,
                                Err(error) => park_failed_migration(
                                    &tx,
                                    message,
                                    &error,
                                    now,
                                    &mut report.parked,
                                )?,
                            }
                        }
                    }
                }
                Err(ApplyFailure::Park(ApplyError::Rejected { .. })) if !savepoints => {
                    return Err(ReceiveError::NeedsSavepoints);
                }
                Err(ApplyFailure::Park(error)) => {
                    let frame = park_frame.as_deref().unwrap_or(&message.frame);
                    if savepoints {
                        tx.execute_batch("ROLLBACK TO hl_message; RELEASE hl_message")
                            .context("rolling back a refused message")?;
                        refold_after_rollback(&tx, &self.options, frame)?;
                    }
                    let reason = error.to_string();
                    inbox::park(
                        &tx,
                        message.seq,
                        frame,
                        error.kind(),
                        &reason,
                        error.table(),
                        unix_millis(now),
                    )?;
                    report.parked.push(Parked {
                        seq: message.seq,
                        kind: error.kind(),
                        reason,
                    });
                }
                Err(ApplyFailure::Store(e)) => return Err(e.into()),
            }
            self.cursor = message.seq;
        }
        set_applying(&tx, false)?;
        meta::set(&tx, meta::keys::CURSOR, self.cursor.get() as i64)?;
        meta::set(&tx, meta::keys::CLOCK, self.clock.last().as_u64() as i64)?;
        tx.commit().context("committing an apply")?;
        report.cursor = self.cursor;
        Ok(report)
    }

    /// Publishes a replicated migration that switches how `table` merges (`merge`: by
    /// column with its counters; `None`: by row), see [`merge_switch`]. Refused when the
    /// table is not replicated here or does not fit column merging. Every replica switches
    /// when it applies the migration; the nodes' options must then say the same before
    /// they are restarted.
    pub fn publish_merge_switch(
        &mut self,
        table: &str,
        merge: Option<&crate::column_merge::TableMerge>,
        now: NTP64,
    ) -> Result<PublishedMigration, PublishMigrationError> {
        let registered = self.schema.tables.by_name(table).ok_or_else(|| {
            MigrationError::Invalid(format!("table {table:?} is not replicated here"))
        })?;
        if let Some(merge) = merge {
            install::counter_indexes(&registered.info, merge)
                .map_err(|e| MigrationError::Invalid(e.to_string()))?;
        }
        let name = registered.info.name.clone();
        self.publish_migration(&merge_switch::sql(&name, merge), false, now)
    }

    /// How each replicated table merges: `None` by row, `Some` by column with its counters.
    pub fn merge_modes(&self) -> Vec<(String, Option<crate::column_merge::TableMerge>)> {
        let mut modes: Vec<_> = self
            .schema
            .tables
            .iter()
            .map(|t| {
                (
                    t.info.name.clone(),
                    t.merge.as_ref().map(|m| m.config.clone()),
                )
            })
            .collect();
        modes.sort_by(|a, b| a.0.cmp(&b.0));
        modes
    }

    /// Checks `sql` as a replicated migration ([`crate::migration::check`]), tries it on
    /// this database (rolled back) and writes it to the outbox, in one transaction. This
    /// replica applies it like every other one: when it comes back from the stream.
    /// `now` is the wall-clock time (it stamps the migration's id).
    pub fn publish_migration(
        &mut self,
        sql: &str,
        allow_destructive: bool,
        now: NTP64,
    ) -> Result<PublishedMigration, PublishMigrationError> {
        let summary = crate::migration::check(sql, allow_destructive)?;
        let saved = (self.next_batch, self.clock.clone());
        let result = self.publish_migration_tx(sql, &summary, now);
        if result.is_err() {
            (self.next_batch, self.clock) = saved;
        }
        result
    }

    fn publish_migration_tx(
        &mut self,
        sql: &str,
        summary: &crate::migration::MigrationSummary,
        now: NTP64,
    ) -> Result<PublishedMigration, PublishMigrationError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting a migration publish")?;
        tx.execute_batch("SAVEPOINT hl_dry_run")
            .context("starting a migration dry run")?;
        set_applying(&tx, true)?;
        install::drop_column_merge_triggers(&tx, &self.schema.tables)?;
        let tried = tx.execute_batch(sql);
        tx.execute_batch("ROLLBACK TO hl_dry_run; RELEASE hl_dry_run")
            .context("rolling back a migration dry run")?;
        if let Err(e) = tried {
            return Err(MigrationError::Invalid(e.to_string()).into());
        }
        let base_version = migrate::version(&tx)?;
        let id = self.clock.stamp_local_write(now);
        let frame = wire::encode_frame(&Message::Migration(MigrationV1 {
            origin: self.options.node_id,
            id: id.to_bytes().to_vec(),
            base_version,
            destructive: summary.destructive,
            sql: sql.to_owned(),
        }));
        if frame.len() > self.options.max_frame {
            return Err(MigrationError::Invalid(format!(
                "the migration takes {} bytes, more than the stream's payload limit of {}",
                frame.len(),
                self.options.max_frame
            ))
            .into());
        }
        adopt_stored_batch(&tx, &mut self.next_batch)?;
        let seq = BatchSeq::new(self.next_batch);
        let subject = self
            .options
            .scopes
            .is_enabled()
            .then(|| crate::scope::SCHEMA_SUFFIX.to_owned());
        outbox::push(&tx, seq, 0, &[(subject, frame)])?;
        self.next_batch += 1;
        meta::set(&tx, meta::keys::NEXT_BATCH, self.next_batch as i64)?;
        meta::set(&tx, meta::keys::CLOCK, self.clock.last().as_u64() as i64)?;
        tx.commit().context("committing a migration publish")?;
        self.outbox_grew = true;
        Ok(PublishedMigration {
            id: crate::scope::hex(&id.to_bytes()),
            base_version,
            statements: summary.statements,
            destructive: summary.destructive,
        })
    }

    /// The local schema's fingerprint, migration version and parked migrations.
    /// Cheap enough to call after every operation: the fingerprint is recomputed only when
    /// `PRAGMA schema_version` moved.
    pub fn schema_status(&self) -> Result<SchemaStatus, StoreError> {
        let cookie = schema_version(&self.conn)?;
        let cached = self.fingerprint.borrow().clone();
        let fingerprint = match cached {
            Some((at, fingerprint)) if at == cookie => fingerprint,
            _ => {
                let fingerprint = migrate::fingerprint(&self.conn)?;
                *self.fingerprint.borrow_mut() = Some((cookie, fingerprint.clone()));
                fingerprint
            }
        };
        Ok(SchemaStatus {
            fingerprint,
            migration_version: migrate::version(&self.conn)?,
            parked_migrations: migrate::parked_count(&self.conn)?,
        })
    }

    /// Migrations applied here, in version order.
    pub fn migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        migrate::list(&self.conn)
    }

    /// Parked message counts by table (`""`: messages about no single table).
    pub fn parked_by_table(&self) -> Result<Vec<(String, u64)>, StoreError> {
        inbox::parked_by_table(&self.conn)
    }

    /// Retries every parked message (oldest first), in one transaction; those that apply now
    /// are removed from the parked table, the others keep their place with a new reason.
    pub fn retry_parked(&mut self, now: NTP64) -> Result<ReceiveReport, StoreError> {
        let saved_batch = self.next_batch;
        let result = self.retry_parked_tx(now);
        if result.is_err() {
            self.next_batch = saved_batch;
        }
        self.follow_merge_switches(matches!(&result, Ok(r) if r.migrations > 0))?;
        result
    }

    fn retry_parked_tx(&mut self, now: NTP64) -> Result<ReceiveReport, StoreError> {
        let mut report = ReceiveReport {
            cursor: self.cursor,
            ..Default::default()
        };
        if inbox::parked_count(&self.conn)? == 0 {
            return Ok(report);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting a retry of parked messages")?;
        // Read inside the write transaction: another connection (`harmonylite parked
        // --discard`) may have removed some since the count above, and retrying a message
        // read before would apply, or park again, what it discarded.
        let parked = inbox::parked(&tx)?;
        self.schema.sync(&tx, &self.options, true)?;
        report.drained = drain_in(
            &tx,
            &self.schema,
            &mut self.clock,
            &self.options,
            &mut self.next_batch,
        )?;
        set_applying(&tx, true)?;
        for p in parked {
            tx.execute_batch("SAVEPOINT hl_message")
                .context("starting a message savepoint")?;
            let message = Inbound {
                seq: p.seq,
                frame: p.frame,
                subject: None,
            };
            let mut park_frame = None;
            // Own messages never reach the parked table, so never skip by origin here.
            match receive_one(
                &tx,
                &self.schema.tables,
                &mut self.clock,
                &self.options,
                StreamSeq::new(u64::MAX),
                &message,
                now,
                &mut park_frame,
            ) {
                Ok(outcome) => {
                    tx.execute_batch("RELEASE hl_message")
                        .context("releasing a message savepoint")?;
                    inbox::unpark(&tx, message.seq)?;
                    report.unparked += 1;
                    match outcome {
                        Outcome::Applied(applied) => {
                            report.batches += 1;
                            report.applied.add(applied);
                        }
                        Outcome::Migration(migration) => {
                            // Unparked above; parked again below if it still fails.
                            match run_migration(
                                &tx,
                                &mut self.schema,
                                &self.options,
                                message.seq,
                                &migration,
                                now,
                            )? {
                                Ok(applied) => report.migrations += u64::from(applied),
                                Err(error) => {
                                    park_failed_migration(
                                        &tx,
                                        &message,
                                        &error,
                                        now,
                                        &mut report.parked,
                                    )?;
                                    report.unparked -= 1;
                                }
                            }
                        }
                        // Retried messages have no subject, so they are never refused, and
                        // a notice without its subject is not acted on.
                        Outcome::Own
                        | Outcome::PartStored
                        | Outcome::Refused(..)
                        | Outcome::Notice(..) => {}
                    }
                }
                Err(ApplyFailure::Park(error)) => {
                    tx.execute_batch("ROLLBACK TO hl_message; RELEASE hl_message")
                        .context("rolling back a refused message")?;
                    let reason = error.to_string();
                    inbox::park(
                        &tx,
                        message.seq,
                        &message.frame,
                        error.kind(),
                        &reason,
                        error.table(),
                        unix_millis(now),
                    )?;
                    report.parked.push(Parked {
                        seq: message.seq,
                        kind: error.kind(),
                        reason,
                    });
                }
                Err(ApplyFailure::Store(e)) => return Err(e),
            }
        }
        set_applying(&tx, false)?;
        meta::set(&tx, meta::keys::CLOCK, self.clock.last().as_u64() as i64)?;
        tx.commit()
            .context("committing a retry of parked messages")?;
        Ok(report)
    }

    /// Outbox frames with an id greater than `after`, oldest first.
    pub fn outbox_after(&self, after: i64, limit: usize) -> Result<Vec<OutboxFrame>, StoreError> {
        outbox::after(&self.conn, after, limit, &self.id_prefix)
    }

    /// Removes frames JetStream acknowledged.
    pub fn outbox_remove(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction()
            .context("starting an outbox cleanup")?;
        outbox::remove(&tx, ids)?;
        tx.commit().context("committing an outbox cleanup")
    }

    /// Frames and row changes waiting in the outbox.
    pub fn outbox_depth(&self) -> Result<(u64, u64), StoreError> {
        outbox::depth(&self.conn)
    }

    /// Pending change-log entries not yet drained.
    pub fn log_depth(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT count(*) FROM {}", quote(names::LOG)),
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .context("measuring the change log")
    }

    /// Whether the change log holds anything to drain.
    pub fn has_pending_log(&self) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM {})",
                quote(names::LOG)
            ))
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .context("checking the change log")
    }

    /// Parked messages, oldest first.
    pub fn parked(&self) -> Result<Vec<ParkedMessage>, StoreError> {
        inbox::parked(&self.conn)
    }

    /// Number of parked messages.
    pub fn parked_count(&self) -> Result<u64, StoreError> {
        inbox::parked_count(&self.conn)
    }

    /// Parked message counts by table, with whether each table exists here.
    pub fn parked_tables(&self) -> Result<Vec<ParkedTable>, StoreError> {
        parked::tables(&self.conn)
    }

    /// Discards the parked changes for `table` in one transaction (see [`parked::discard`]):
    /// refused when the table exists here unless `force`, and for a name that is neither a
    /// table here nor has anything parked. Removed changes never come back, even if the
    /// table is created later.
    pub fn discard_parked(&mut self, table: &str, force: bool) -> Result<Discarded, DiscardError> {
        parked::discard(&mut self.conn, table, force)
    }

    /// Gives the connection back (e.g. to close it).
    pub fn into_connection(self) -> Connection {
        self.conn
    }
}

/// What the store knows of the local schema: the captured tables, the change log's key
/// slots, the `PRAGMA schema_version` they were read at and what the install that read them
/// found.
#[derive(Default)]
struct Schema {
    tables: Tables,
    slots: usize,
    version: i64,
    install_report: InstallReport,
}

impl Schema {
    /// Reinstalls capture when the schema changed since last seen (a table created, altered
    /// or dropped by the application, or a migration); `seed` chooses whether rows of newly
    /// captured tables are queued for publishing. Returns whether it changed.
    fn sync(
        &mut self,
        conn: &Connection,
        options: &StoreOptions,
        seed: bool,
    ) -> Result<bool, StoreError> {
        let current = schema_version(conn)?;
        if current == self.version {
            return Ok(false);
        }
        let (tables, install_report) = install::install(
            conn,
            &options.exclude_tables,
            options.merge.as_ref(),
            false,
            seed,
        )?;
        check_merge_scopes(&tables, options)?;
        self.tables = tables;
        self.install_report = install_report;
        self.slots = install::log_key_slots(conn)?;
        self.version = schema_version(conn)?;
        Ok(true)
    }
}

/// The step of a merge-switch migration (see [`merge_switch`]): records the table's new
/// mode and reinstalls capture with it. `Err`: the switch does not fit this database (the
/// caller rolls the migration back and parks it).
fn switch_merge(
    tx: &Connection,
    schema: &mut Schema,
    options: &StoreOptions,
    table: &str,
    merge: Option<&crate::column_merge::TableMerge>,
) -> Result<Result<(), String>, StoreError> {
    if !install::switch_merge(tx, table, merge)? {
        return Ok(Err(format!(
            "the merge switch names table {table:?}, which is not replicated here"
        )));
    }
    schema.version = i64::MIN;
    match schema.sync(tx, options, false) {
        Ok(_) => Ok(Ok(())),
        Err(StoreError::Config(message)) => Ok(Err(message)),
        Err(e) => Err(e),
    }
}

/// Applies a migration inside the receive transaction `tx` (whose apply marker is set):
/// `Ok(true)` applied, `Ok(false)` applied before (same id), `Err` not applied here
/// (failed, or an earlier migration is parked) — the caller parks it. After it applies,
/// capture is brought up to date so later messages in the same transaction see the
/// new schema.
fn run_migration(
    tx: &rusqlite::Transaction<'_>,
    schema: &mut Schema,
    options: &StoreOptions,
    seq: StreamSeq,
    migration: &MigrationV1,
    now: NTP64,
) -> Result<Result<bool, ApplyError>, StoreError> {
    if migrate::is_applied(tx, &migration.id)? {
        return Ok(Ok(false));
    }
    if let Some(first) = migrate::first_parked_migration(tx)? {
        if first < seq {
            return Ok(Err(ApplyError::Migration(format!(
                "waiting for the migration parked at stream sequence {first}, which must \
                 apply first"
            ))));
        }
    }
    tx.execute_batch("SAVEPOINT hl_migration")
        .context("starting a migration savepoint")?;
    install::drop_column_merge_triggers(tx, &schema.tables)?;
    schema.version = i64::MIN;
    let applied = match migrate::apply(tx, seq, migration, unix_millis(now))? {
        Ok(version) => match merge_switch::parse(&migration.sql) {
            Some((table, merge)) => {
                switch_merge(tx, schema, options, &table, merge.as_ref())?.map(|()| version)
            }
            None => Ok(version),
        },
        Err(message) => Err(message),
    };
    match applied {
        Ok(_version) => {
            tx.execute_batch("RELEASE hl_migration")
                .context("releasing a migration savepoint")?;
            // Rows the migration created exist on every replica: not queued for publishing.
            schema.sync(tx, options, false)?;
            Ok(Ok(true))
        }
        Err(message) => {
            tx.execute_batch("ROLLBACK TO hl_migration; RELEASE hl_migration")
                .context("rolling back a failed migration")?;
            Ok(Err(ApplyError::Migration(message)))
        }
    }
}

/// Takes the stored batch counter when another process (a `harmonylite migrate` run next
/// to the sidecar) advanced it; returns whether it did.
fn adopt_stored_batch(conn: &Connection, next_batch: &mut u64) -> Result<bool, StoreError> {
    match meta::get_i64(conn, meta::keys::NEXT_BATCH)? {
        Some(stored) if stored as u64 > *next_batch => {
            *next_batch = stored as u64;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Stores a scoped replica's partitions ([`meta::keys::SCOPE_PARTITIONS`]).
fn store_partitions(
    conn: &Connection,
    partitions: &[crate::scope::Partition],
) -> Result<(), StoreError> {
    let tokens: Vec<String> = partitions.iter().map(|p| p.token()).collect();
    meta::set(
        conn,
        meta::keys::SCOPE_PARTITIONS,
        tokens.join("\n").into_bytes(),
    )
}

/// A scoped replica's stored partitions, if it ever learned them.
fn stored_partitions(
    conn: &Connection,
) -> Result<Option<Vec<crate::scope::Partition>>, StoreError> {
    let Some(bytes) = meta::get_blob(conn, meta::keys::SCOPE_PARTITIONS)? else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes)
        .map_err(|e| StoreError::Corrupt(format!("stored scope partitions: {e}")))?;
    text.split('\n')
        .filter(|t| !t.is_empty())
        .map(|t| {
            crate::scope::Partition::from_token(t).ok_or_else(|| {
                StoreError::Corrupt(format!("stored scope partition {t:?} is not a partition"))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row("PRAGMA schema_version", [], |r| r.get(0))
        .context("reading the schema version")
}

fn set_applying(conn: &Connection, on: bool) -> Result<(), StoreError> {
    let sql = if on {
        format!("INSERT INTO {} VALUES (1)", quote(names::APPLYING))
    } else {
        format!("DELETE FROM {}", quote(names::APPLYING))
    };
    conn.prepare_cached(&sql)
        .and_then(|mut s| s.execute([]))
        .context("setting the apply marker")?;
    Ok(())
}

/// Starts a write transaction that first brings the schema up to date and captures the
/// application's pending writes (capture before apply: nothing merged in afterwards is taken
/// for a local write, and no local write is lost under it). The drain's report says whether
/// the schema changed.
fn begin_captured<'c>(
    conn: &'c mut Connection,
    schema: &mut Schema,
    clock: &mut Clock,
    options: &StoreOptions,
    next_batch: &mut u64,
    what: &str,
) -> Result<(rusqlite::Transaction<'c>, DrainReport), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context(format!("starting {what}"))?;
    let schema_changed = schema.sync(&tx, options, true)?;
    let mut report = drain_in(&tx, schema, clock, options, next_batch)?;
    report.schema_changed |= schema_changed;
    Ok((tx, report))
}

/// Drains the log inside `conn`'s transaction and, when publishing, writes the batch to the
/// outbox.
fn drain_in(
    conn: &Connection,
    schema: &Schema,
    clock: &mut Clock,
    options: &StoreOptions,
    next_batch: &mut u64,
) -> Result<DrainReport, StoreError> {
    let outbox_grew = adopt_stored_batch(conn, next_batch)?;
    if options.writer == crate::scope::Writer::Scoped && !options.scopes.is_enabled() {
        // A scoped replica that has not learned the cluster's scope rules yet cannot route
        // its writes: they wait in the change log until it has.
        return Ok(DrainReport {
            outbox_grew,
            ..Default::default()
        });
    }
    let drained = drain::drain(conn, &schema.tables, schema.slots, clock)?;
    let mut report = DrainReport {
        outbox_grew,
        rows: drained.batch.len(),
        log_entries: drained.log_entries,
        null_keys: drained.null_keys,
        oldest_write_unix_ms: drained.oldest_write_unix_ms,
        tables: drained
            .batch
            .tables
            .iter()
            .map(|t| t.name.clone())
            .collect(),
        ..Default::default()
    };
    if drained.log_entries == 0 {
        return Ok(report);
    }
    let batch = drained.batch;
    if options.publish && !batch.is_empty() {
        let seq = BatchSeq::new(*next_batch);
        let mut rows = batch.len();
        if validates_scopes(options) {
            scope_check::remember_own(conn, &options.scopes, options.node_id, seq, &batch)?;
        }
        let mut groups = if options.scopes.is_enabled() {
            routing::route(conn, &options.scopes, batch)?
        } else {
            vec![(crate::scope::Route::Unscoped, batch)]
        };
        if let (crate::scope::Writer::Scoped, Some(partitions)) =
            (options.writer, &options.partitions)
        {
            let (kept, refused) =
                refusal::refuse_unwritable(conn, &schema.tables, partitions, groups)?;
            groups = kept;
            rows -= refused.len();
            report.refused_writes = refused;
        }
        if !groups.is_empty() {
            let frames = match encode_for_outbox(options, seq, groups) {
                Ok(frames) => frames,
                Err(e) => return Err(StoreError::Corrupt(format!("encoding a batch: {e}"))),
            };
            outbox::push(conn, seq, rows, &frames)?;
            *next_batch += 1;
            meta::set(conn, meta::keys::NEXT_BATCH, *next_batch as i64)?;
            report.batch_seq = Some(seq);
            report.frames = frames.len();
        }
    }
    meta::set(conn, meta::keys::CLOCK, clock.last().as_u64() as i64)?;
    Ok(report)
}

/// A drained batch's frames with their subjects, from its route groups
/// ([`routing::route`]): one plain unscoped batch when every row is unscoped (always with
/// scopes off), else routed frames.
fn encode_for_outbox(
    options: &StoreOptions,
    seq: BatchSeq,
    groups: Vec<(crate::scope::Route, crate::change::Batch)>,
) -> Result<Vec<SubjectFrame>, wire::WireError> {
    if let [(crate::scope::Route::Unscoped, batch)] = groups.as_slice() {
        return Ok(wire::encode_batch(
            options.node_id,
            seq,
            batch,
            options.compression,
            options.max_frame,
        )?
        .into_iter()
        .map(|f| (None, f))
        .collect());
    }
    let (routes, batches): (Vec<_>, Vec<_>) = groups.into_iter().unzip();
    let frames = wire::encode_routed_batch(
        options.node_id,
        seq,
        options.scopes.fingerprint(),
        &batches,
        options.compression,
        options.max_frame,
    )?;
    Ok(frames
        .into_iter()
        .map(|(group, frame)| {
            let route: &crate::scope::Route = &routes[group];
            let subject = match route {
                crate::scope::Route::Unscoped => None,
                route => Some(route.subject_suffix(options.writer)),
            };
            (subject, frame)
        })
        .collect())
}

/// A frame and its subject after the prefix (`None`: unscoped).
type SubjectFrame = (Option<String>, Vec<u8>);

/// Decodes one message and applies it (or stores its part, or skips it as our own, or, on a
/// full replica with scopes on, refuses a scoped replica's change that breaks its scope).
#[allow(clippy::too_many_arguments)]
fn receive_one(
    conn: &Connection,
    tables: &Tables,
    clock: &mut Clock,
    options: &StoreOptions,
    replay_own_until: StreamSeq,
    message: &Inbound,
    now: NTP64,
    park_frame: &mut Option<Vec<u8>>,
) -> Result<Outcome, ApplyFailure> {
    let node = options.node_id;
    let decoded = wire::decode_message(&message.frame);
    if let Ok(Message::Routed(part)) = &decoded {
        let ours = options.scopes.fingerprint();
        if ours != 0 && part.rules != ours {
            return Err(ApplyFailure::Park(ApplyError::ScopeRules {
                origin: part.origin.to_string(),
                theirs: part.rules,
                ours,
            }));
        }
    }
    if validates_scopes(options)
        && scope_check::is_scoped_subject(message.subject.as_deref(), &options.scopes)
    {
        return receive_scoped(
            conn, tables, clock, options, message, decoded, now, park_frame,
        );
    }
    let part = match decoded {
        Ok(Message::V1(part)) => part,
        // Migrations apply on every replica, their origin included.
        Ok(Message::Migration(migration)) => return Ok(Outcome::Migration(migration)),
        Ok(Message::Refused(notice)) => {
            let (reverted, queued) =
                refusal::receive_notice(conn, tables, options, message, &notice)?;
            return Ok(Outcome::Notice(reverted, queued));
        }
        Ok(Message::Routed(part)) => {
            if part.origin == node && message.seq > replay_own_until {
                return own_message(conn, options, part.batch_seq);
            }
            let reassembled = !routed_whole(options, &part);
            let Some(groups) = routed_groups(conn, options, part.clone(), message, false)? else {
                return Ok(Outcome::PartStored);
            };
            let batch = decode_groups(&groups).map_err(ApplyFailure::Park)?;
            if reassembled {
                *park_frame = Some(single_frame(part.origin, part.batch_seq, &batch)?);
            }
            return apply_trusted(conn, tables, clock, options, part.origin, &batch, now);
        }
        Ok(Message::Cells(_)) => unreachable!("decode_message unwraps column-change frames"),
        Err(e) => return Err(ApplyFailure::Park(e.into())),
    };
    if part.origin == node && message.seq > replay_own_until {
        return own_message(conn, options, part.batch_seq);
    }
    let MessageV1 {
        origin,
        batch_seq,
        compression,
        ..
    } = part;
    let body = if part.parts == 1 {
        part.body
    } else {
        match inbox::add_part(conn, &part)? {
            None => return Ok(Outcome::PartStored),
            Some(body) => {
                *park_frame = Some(wire::encode_frame(&Message::V1(MessageV1 {
                    origin,
                    batch_seq,
                    part: 0,
                    parts: 1,
                    compression,
                    body: body.clone(),
                })));
                body
            }
        }
    };
    let batch = wire::decode_batch(compression, &body)
        .map_err(|e| ApplyFailure::Park(ApplyError::Wire(e)))?;
    apply_trusted(conn, tables, clock, options, origin, &batch, now)
}

/// Whether this replica validates scoped replicas' changes: a full replica with scopes on.
fn validates_scopes(options: &StoreOptions) -> bool {
    options.scopes.is_enabled() && options.writer == crate::scope::Writer::Full
}

/// Our own message, back from the stream: its effects are here already; with scopes on,
/// its partitioned upserts now count in the accepted registry.
fn own_message(
    conn: &Connection,
    options: &StoreOptions,
    batch_seq: BatchSeq,
) -> Result<Outcome, ApplyFailure> {
    if validates_scopes(options) {
        scope_check::own_message_seen(conn, batch_seq)?;
    }
    Ok(Outcome::Own)
}

/// Applies a batch whose changes need no validation (a full node's, or any batch on a
/// replica that does not validate), recording its partitions first.
#[allow(clippy::too_many_arguments)]
fn apply_trusted(
    conn: &Connection,
    tables: &Tables,
    clock: &mut Clock,
    options: &StoreOptions,
    origin: NodeId,
    batch: &crate::change::Batch,
    now: NTP64,
) -> Result<Outcome, ApplyFailure> {
    if validates_scopes(options) {
        scope_check::accept(conn, &options.scopes, origin, batch)?;
    }
    let applied = apply::apply_batch(conn, tables, clock, origin, batch, now)?;
    if options.scopes.is_enabled() {
        routing::register_applied(conn, tables, &options.scopes, origin, batch)?;
    }
    Ok(Outcome::Applied(applied))
}

/// A scoped replica's message on a full replica: refused unless every group keeps to the
/// partition its subject names (see [`scope_check`]); accepted ones apply like any batch.
#[allow(clippy::too_many_arguments)]
fn receive_scoped(
    conn: &Connection,
    tables: &Tables,
    clock: &mut Clock,
    options: &StoreOptions,
    message: &Inbound,
    decoded: Result<Message, wire::WireError>,
    now: NTP64,
    park_frame: &mut Option<Vec<u8>>,
) -> Result<Outcome, ApplyFailure> {
    let refuse = |origin: Option<NodeId>, verdict: scope_check::Verdict| {
        Ok(Outcome::Refused(origin, verdict))
    };
    let part = match decoded {
        Ok(Message::Routed(part)) => part,
        Ok(_) => {
            return refuse(
                None,
                scope_check::Verdict::message("a scoped replica may publish only routed batches"),
            )
        }
        Err(e) => {
            return refuse(
                None,
                scope_check::Verdict::message(format!("undecodable message: {e}")),
            )
        }
    };
    let (origin, batch_seq, reassembled) =
        (part.origin, part.batch_seq, !routed_whole(options, &part));
    let Some(groups) = routed_groups(conn, options, part, message, true)? else {
        return Ok(Outcome::PartStored);
    };
    let mut checked = Vec::with_capacity(groups.len());
    for (subject, compression, body) in groups {
        match wire::decode_batch(compression, &body) {
            Ok(batch) => checked.push((subject, batch)),
            Err(e) => {
                return refuse(
                    Some(origin),
                    scope_check::Verdict::message(format!("undecodable batch: {e}")),
                )
            }
        }
    }
    if let Err(verdict) = scope_check::check(conn, &options.scopes, &checked)? {
        refusal::publish_notice(
            conn,
            &options.scopes,
            message.subject.as_deref(),
            origin,
            batch_seq,
            &verdict.reason,
            &checked,
        )?;
        return refuse(Some(origin), verdict);
    }
    let batch = crate::change::Batch::merge(checked.into_iter().map(|(_, b)| b).collect());
    if reassembled {
        *park_frame = Some(single_frame(origin, batch_seq, &batch)?);
    }
    apply_trusted(conn, tables, clock, options, origin, &batch, now)
}

/// A routed batch's groups (subject, compression, body) once every frame is here (`None`:
/// this frame was stored to wait for the rest). A full replica waits for the whole batch; a
/// scoped replica, which receives only its routes, for this frame's group. A scoped
/// replica's frames wait apart from full nodes' (`scoped`), so a forged origin cannot
/// complete a full node's batch.
fn routed_groups(
    conn: &Connection,
    options: &StoreOptions,
    part: wire::RoutedPart,
    message: &Inbound,
    scoped: bool,
) -> Result<Option<inbox::GroupBodies>, StoreError> {
    let group_only = options.writer == crate::scope::Writer::Scoped;
    if routed_whole(options, &part) {
        return Ok(Some(vec![(
            message.subject.clone(),
            part.compression,
            part.body,
        )]));
    }
    inbox::add_routed_part(
        conn,
        &part,
        message.seq,
        message.subject.as_deref(),
        scoped,
        group_only,
    )
}

/// Whether a routed frame is all this replica waits for: its batch's only frame, or, on a
/// scoped replica, its group's only frame.
fn routed_whole(options: &StoreOptions, part: &wire::RoutedPart) -> bool {
    if options.writer == crate::scope::Writer::Scoped {
        part.group_frames == 1
    } else {
        part.is_whole()
    }
}

/// Decodes route groups and joins them into one batch.
fn decode_groups(groups: &inbox::GroupBodies) -> Result<crate::change::Batch, ApplyError> {
    let batches = groups
        .iter()
        .map(|(_, compression, body)| wire::decode_batch(*compression, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::change::Batch::merge(batches))
}

/// A reassembled batch as one plain single-part frame (what is parked for it).
fn single_frame(
    origin: NodeId,
    batch_seq: BatchSeq,
    batch: &crate::change::Batch,
) -> Result<Vec<u8>, ApplyFailure> {
    let body = postcard::to_allocvec(batch).map_err(|e| {
        ApplyFailure::Park(ApplyError::Wire(wire::WireError::Malformed(e.to_string())))
    })?;
    Ok(wire::encode_frame(&Message::V1(MessageV1 {
        origin,
        batch_seq,
        part: 0,
        parts: 1,
        compression: wire::Compression::None,
        body,
    })))
}

/// After a message's savepoint was rolled back to park it, records its partitions in the
/// accepted registry again: acceptance belongs to its stream position, whatever happened
/// when applying it, so every replica's registry stays the same.
fn refold_after_rollback(
    conn: &Connection,
    options: &StoreOptions,
    frame: &[u8],
) -> Result<(), StoreError> {
    if !validates_scopes(options) {
        return Ok(());
    }
    let decoded = match wire::decode_message(frame) {
        Ok(Message::V1(m)) if m.parts == 1 => Some((m.origin, m.compression, m.body)),
        Ok(Message::Routed(m)) if m.is_whole() => Some((m.origin, m.compression, m.body)),
        _ => None,
    };
    if let Some((origin, compression, body)) = decoded {
        if let Ok(batch) = wire::decode_batch(compression, &body) {
            scope_check::accept(conn, &options.scopes, origin, &batch)?;
        }
    }
    Ok(())
}

/// Parks the message of a migration that failed on this database (kind `migration`, no
/// table) and records it in `parked`.
fn park_failed_migration(
    tx: &Connection,
    message: &Inbound,
    error: &ApplyError,
    now: NTP64,
    parked: &mut Vec<Parked>,
) -> Result<(), StoreError> {
    let reason = error.to_string();
    inbox::park(
        tx,
        message.seq,
        &message.frame,
        error.kind(),
        &reason,
        None,
        unix_millis(now),
    )?;
    parked.push(Parked {
        seq: message.seq,
        kind: error.kind(),
        reason,
    });
    Ok(())
}

fn unix_millis(now: NTP64) -> i64 {
    now.to_duration().as_millis() as i64
}

impl crate::engine::Database for Store {
    type Error = StoreError;

    fn drain(&mut self) -> Result<DrainReport, StoreError> {
        Store::drain(self)
    }

    fn receive(&mut self, now: NTP64, messages: &[Inbound]) -> Result<ReceiveReport, StoreError> {
        Store::receive(self, now, messages)
    }

    fn retry_parked(&mut self, now: NTP64) -> Result<ReceiveReport, StoreError> {
        Store::retry_parked(self, now)
    }

    fn outbox_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<crate::report::OutboxFrame>, StoreError> {
        Store::outbox_after(self, after, limit)
    }

    fn outbox_remove(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        Store::outbox_remove(self, ids)
    }

    fn parked_count(&self) -> Result<u64, StoreError> {
        Store::parked_count(self)
    }

    fn cursor(&self) -> StreamSeq {
        Store::cursor(self)
    }

    fn node_id(&self) -> NodeId {
        Store::node_id(self)
    }

    fn check_stream(
        &mut self,
        stream_name: &str,
        cursor: u64,
        facts: crate::session::StreamFacts,
    ) -> Result<crate::session::StreamVerdict, StoreError> {
        stream_identity::check(self.connection(), stream_name, cursor, facts)
    }

    fn set_max_frame(&mut self, bytes: usize) {
        Store::set_max_frame(self, bytes)
    }

    fn error_kind(error: &StoreError) -> crate::error::DatabaseErrorKind {
        error.kind()
    }
}
