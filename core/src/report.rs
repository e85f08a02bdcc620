//! Plain data exchanged between the engine and a database: messages in, frames out, and
//! what each operation did.

use std::collections::BTreeSet;

use crate::change::{BatchSeq, StreamSeq};
use crate::hlc::NodeId;

/// One message taken from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Its stream sequence.
    pub seq: StreamSeq,
    /// The frame as received.
    pub frame: Vec<u8>,
    /// The subject it arrived on, after `<prefix>.` (`None`: not known, as from a host
    /// that does not pass subjects, or a parked message retried; treated as a full node's).
    /// A scoped replica's subject (`scope::Writer::Scoped`) makes a full replica validate it.
    pub subject: Option<String>,
}

/// What a drain captured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Row changes captured (after coalescing).
    pub rows: usize,
    /// Log entries consumed.
    pub log_entries: usize,
    /// Log entries of rows whose primary key contains NULL: consumed but not replicated
    /// (SQLite lets such rows share a key, so replicas cannot match them).
    pub null_keys: usize,
    /// The batch written to the outbox, if any.
    pub batch_seq: Option<BatchSeq>,
    /// Frames written to the outbox.
    pub frames: usize,
    /// Tables with captured changes.
    pub tables: Vec<String>,
    /// The database schema changed since the store last looked (the application's DDL or
    /// a migration): parked messages may apply now.
    pub schema_changed: bool,
    /// Frames reached the outbox outside this drain (a migration published through
    /// `Store::publish_migration`, possibly by another process): publish them.
    pub outbox_grew: bool,
    /// When the oldest captured write was made (Unix ms, the capture trigger's wall clock):
    /// hosts measure commit -> captured from it.
    pub oldest_write_unix_ms: Option<i64>,
    /// A scoped replica's writes it refused itself instead of publishing them (a partition
    /// its token does not grant, a shared or hidden table), returned to the accepted state.
    pub refused_writes: Vec<RefusedWrite>,
}

/// What a receive did.
#[derive(Debug, Clone, Default)]
pub struct ReceiveReport {
    /// Local changes drained first.
    pub drained: DrainReport,
    /// Row-level counts of everything applied.
    pub applied: Applied,
    /// Batches applied.
    pub batches: u64,
    /// This node's own messages, skipped.
    pub own: u64,
    /// Parts of multi-part batches stored to wait for the rest.
    pub parts_stored: u64,
    /// Messages at or below the cursor, ignored.
    pub already_seen: u64,
    /// Messages parked instead of applied.
    pub parked: Vec<Parked>,
    /// Scoped replicas' messages refused for breaking their scope (dropped, here and on
    /// every full replica).
    pub refused: Vec<Refused>,
    /// On a scoped replica: its own writes the full replicas refused (a notice came back),
    /// returned to the accepted state.
    pub reverted: Vec<RefusedWrite>,
    /// On a scoped replica: rows queued to be fetched again (its own refused writes, and
    /// rows of other replicas' refused batches it held).
    pub refetch_queued: u64,
    /// Parked messages that now applied (retries only).
    pub unparked: u64,
    /// Replicated migrations applied.
    pub migrations: u64,
    /// The cursor after this receive.
    pub cursor: StreamSeq,
}

/// A scoped replica's message that every full replica refused (see `sqlite::scope_check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its stream position.
    pub seq: StreamSeq,
    /// The replica that published it, when the message says.
    pub origin: Option<NodeId>,
    /// The table of the first offending row ("" when the message was not a batch).
    pub table: String,
    /// That row's key, as text.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// One row a scoped replica wrote that the cluster does not accept. Its local copy was
/// removed (no delete is replicated) and is fetched again from a full node
/// (`Store::refetch_keys`), so it returns to the state the cluster accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedWrite {
    /// The table.
    pub table: String,
    /// The row's primary-key values.
    pub key: Vec<crate::value::Value>,
    /// Why it was refused.
    pub reason: String,
}

/// Counts of one applied batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Changes to rows this replica had no version of.
    pub new_rows: u64,
    /// Changes that replaced an older local version (conflicts the remote side won).
    pub remote_won: u64,
    /// Changes older than the local version (conflicts the local side won), not applied.
    pub local_won: u64,
    /// Changes already applied before (same HLC), ignored.
    pub duplicates: u64,
    /// Changes to tables this replica excludes from replication (`exclude_tables`), skipped.
    pub excluded: u64,
    /// Tables whose rows changed.
    pub tables: BTreeSet<String>,
}

impl Applied {
    /// Adds another batch's counts.
    pub fn add(&mut self, other: Applied) {
        self.new_rows += other.new_rows;
        self.remote_won += other.remote_won;
        self.local_won += other.local_won;
        self.duplicates += other.duplicates;
        self.excluded += other.excluded;
        self.tables.extend(other.tables);
    }

    /// Rows whose content changed.
    pub fn rows_changed(&self) -> u64 {
        self.new_rows + self.remote_won
    }
}

/// One frame waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxFrame {
    /// Row id in the outbox (publish order).
    pub id: i64,
    /// Batch the frame belongs to.
    pub batch_seq: BatchSeq,
    /// Part index within the batch.
    pub part: u32,
    /// Number of parts of the batch.
    pub parts: u32,
    /// Row changes in the batch (on part 0; 0 on the other parts).
    pub rows: u64,
    /// The encoded frame.
    pub frame: Vec<u8>,
    /// Its subject after the prefix; `None`: the unscoped subject.
    pub subject: Option<String>,
    /// JetStream de-duplication id: `<node>-<incarnation>-<batch>-<part>`, unique for every
    /// frame this database ever publishes (see `sqlite::meta::keys::INCARNATION`).
    pub msg_id: String,
}

/// Why a message was parked: the kind of `ApplyError`, stored in the parked table by its
/// stable name ([`ParkReason::as_str`]) and counted by it in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParkReason {
    /// The frame uses a wire version this build does not know.
    Version,
    /// The frame or batch does not decode.
    Decode,
    /// A table this replica does not have or does not replicate.
    UnknownTable,
    /// A column the local table lacks.
    UnknownColumn,
    /// The sender's primary key differs from this replica's.
    KeyMismatch,
    /// A timestamp too far in the future.
    Clock,
    /// SQLite refused the change because of the data (constraint, type).
    Rejected,
    /// A replicated migration failed here or waits behind one that did.
    Migration,
    /// The publisher's scope rules differ from this replica's.
    ScopeRules,
    /// The publisher merges a table by column and this replica by row.
    MergeMode,
    /// A name this build does not know (written by a newer build).
    Unknown,
}

impl ParkReason {
    /// Every reason this build writes.
    pub const ALL: [ParkReason; 10] = [
        ParkReason::Version,
        ParkReason::Decode,
        ParkReason::UnknownTable,
        ParkReason::UnknownColumn,
        ParkReason::KeyMismatch,
        ParkReason::Clock,
        ParkReason::Rejected,
        ParkReason::Migration,
        ParkReason::ScopeRules,
        ParkReason::MergeMode,
    ];

    /// The stable short name (parked table, metrics labels, JS events).
    pub const fn as_str(self) -> &'static str {
        match self {
            ParkReason::Version => "version",
            ParkReason::Decode => "decode",
            ParkReason::UnknownTable => "unknown_table",
            ParkReason::UnknownColumn => "unknown_column",
            ParkReason::KeyMismatch => "key_mismatch",
            ParkReason::Clock => "clock",
            ParkReason::Rejected => "rejected",
            ParkReason::Migration => "migration",
            ParkReason::ScopeRules => "scope_rules",
            ParkReason::MergeMode => "merge_mode",
            ParkReason::Unknown => "unknown",
        }
    }

    /// The reason named `name` ([`ParkReason::Unknown`] for a name this build does not write).
    pub fn from_name(name: &str) -> ParkReason {
        ParkReason::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .unwrap_or(ParkReason::Unknown)
    }
}

impl std::fmt::Display for ParkReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that was parked instead of applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// Its stream position.
    pub seq: StreamSeq,
    /// Why, by kind.
    pub kind: ParkReason,
    /// The full error message.
    pub reason: String,
}
