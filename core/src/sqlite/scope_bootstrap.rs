//! Scoped bootstrap: a new scoped replica (a user's browser) gets the current state of its
//! partitions from any full replica instead of the whole-database snapshot, then consumes
//! its feed from the stream sequence that state covers.
//!
//! **Export** ([`export_partitions`], [`Store::export_partitions`], on a full replica). One
//! *page* is read in one read transaction, so it is one consistent state of the database at
//! the cursor read in that same transaction (`covered`). It holds, in sections ordered by
//! table name:
//!
//! - for each partitioned table of the rules (rows section): the rows whose partition columns
//!   equal one of the requested partitions (`WHERE col IS ? OR …` on the application's
//!   table, in key order), with their row versions. **Give each partition column an index**
//!   (`CREATE INDEX notes_owner ON notes(owner_id)`): with it, a partition of 10k rows in a
//!   1M-row table is read in milliseconds; without it every bootstrap scans the table;
//! - for the same table (tombstones section): the tombstones of the keys whose partition in
//!   the registry (`__hl_partitions`: the accepted partition, else the locally registered
//!   one; indexed) is one of the requested partitions;
//! - for each shared table: every row version, live rows with their rows and tombstones;
//! - each table's schema (column names, key columns, fingerprint), as in [`TableSchema`].
//!
//! Hidden tables are never exported. A row the replica has not captured yet (no version) is
//! left out: it reaches the scoped replica through the stream once captured.
//!
//! **Paging.** A page stops before it exceeds `max_bytes` (its postcard encoding; keep it
//! under the NATS server's `max_payload`, 1 MiB by default) and then carries `next`, the
//! position to ask for the next page from ([`ExportPosition`], passed back opaquely as
//! [`ExportPosition::to_token`] in [`BootstrapRequest::after`]). Each page is its own read
//! transaction and may be answered by another full replica (requests go to a queue group),
//! so pages may cover different sequences. That is safe because every row only moves
//! forward under last-writer-wins: a page read later holds each row at a state at least as
//! new as at the smallest covered sequence, so the importer moves its cursor to the
//! **smallest** `covered` of all pages, and the stream from there re-delivers whatever
//! changed in between (stale messages lose by LWW, as always).
//!
//! **Import** ([`Store::import_partitions`], on the scoped replica). Each page is merged in
//! one write transaction by the catch-up rule ([`super::catch_up`]): the local change log is
//! drained first (capture before apply), the apply marker is set so nothing merged is
//! captured again, and an incoming row version replaces the local row only where it wins
//! ([`incoming_wins`]); a winning tombstone deletes the row. The replica's own unsent
//! writes carry newer versions and survive. The smallest covered sequence seen so far is
//! kept in `__hl_meta` (the first page resets it); the last page moves the cursor there,
//! never backwards. Importing a page twice changes nothing the second time.
//!
//! **Protocol** (the sidecar's responder, `host-native/src/auth/bootstrap.rs`): a JSON
//! [`BootstrapRequest`] to [`crate::scope::Subjects::bootstrap_request`], answered with a
//! postcard [`BootstrapReply`]. docs/snapshots.md ("Scoped bootstrap") has the whole flow.

use std::collections::BTreeSet;

use rusqlite::{params_from_iter, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::apply::TableStatements;
use super::install::table_columns;
use super::snapshot::table_exists;
use super::tables::ShapeMismatch;
use super::{meta, set_applying, Store};
use crate::capture::names::{self, quote};
use crate::capture::TableInfo;
use crate::change::{StreamSeq, TableSchema};
use crate::error::{ApplyError, Context, StoreError};
use crate::hlc::{Hlc, NTP64};
use crate::merge::incoming_wins;
use crate::scope::{Partition, ScopeRules, TableScope};
use crate::value::Value;

/// `__hl_meta` key of an import in progress: the smallest covered sequence of its pages.
const IMPORT_COVERED: &str = "scope_bootstrap_covered";
/// Room left in a page for its envelope (reply tag, covered, partitions, next position).
const PAGE_OVERHEAD: usize = 4096;
/// Registry entries or version rows a page examines at most without exporting them (bounds
/// one read transaction when a partition has many live rows but few tombstones).
const MAX_EXAMINED: usize = 200_000;

/// A scoped replica's bootstrap request, sent as JSON to
/// [`crate::scope::Subjects::bootstrap_request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRequest {
    /// The app's token (JWT): the answering node verifies it and exports the partitions its
    /// claims grant.
    pub token: String,
    /// Where to continue: the previous page's `next` ([`ExportPosition::to_token`]); absent
    /// for the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Largest reply the client accepts (bytes); the node also keeps under the server's
    /// `max_payload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u32>,
    /// A refetch instead of a bootstrap: just these rows' current versions, those the token
    /// may see ([`super::scope_refetch`]); at most
    /// [`super::scope_refetch::MAX_REFETCH_KEYS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<RefetchKey>>,
}

/// One row a scoped replica asks for again: its table and its key as
/// [`RefetchKey::new`] encodes it (hex of postcard), opaque to the JavaScript between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefetchKey {
    /// The table.
    pub table: String,
    /// The key's values, encoded.
    pub key: String,
}

impl RefetchKey {
    /// A request entry for `key` of `table`.
    pub fn new(table: &str, key: &[Value]) -> Self {
        RefetchKey {
            table: table.to_owned(),
            key: hex_postcard(key),
        }
    }

    /// The key's values back; `None` when malformed.
    pub fn key_values(&self) -> Option<Vec<Value>> {
        from_hex_postcard(&self.key)
    }
}

/// A full replica's answer to a [`BootstrapRequest`], postcard-encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BootstrapReply {
    /// Refused: the token is not valid, the request is malformed, or this node cannot
    /// answer now (ask again).
    Refused {
        /// Why (never the token).
        reason: String,
    },
    /// One page of the export.
    Page(PartitionExport),
}

impl BootstrapReply {
    /// The postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding into a Vec cannot fail")
    }

    /// Reads [`BootstrapReply::encode`] back.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// Which part of a table a page position is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Section {
    /// A partitioned table's live rows of the partitions, by key.
    Rows,
    /// A partitioned table's tombstones of the partitions, by encoded registry key.
    Tombstones,
    /// A shared table's row versions (live rows and tombstones), by key.
    Shared,
}

/// Where a page starts: a section of a table, after a key (`None`: at its start). Sections
/// are ordered by (table, section), so any full replica can continue another's export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportPosition {
    /// The table (lowercase).
    pub table: String,
    /// The section.
    pub section: Section,
    /// The last key exported or examined (a key for rows, `[Blob(registry key)]` for
    /// tombstones).
    pub after: Option<Vec<Value>>,
}

impl ExportPosition {
    /// An opaque text form (hex of postcard), for [`BootstrapRequest::after`].
    pub fn to_token(&self) -> String {
        hex_postcard(self)
    }

    /// Reads [`ExportPosition::to_token`] back.
    pub fn from_token(token: &str) -> Option<Self> {
        from_hex_postcard(token)
    }
}

/// A value as hex of its postcard encoding: opaque text a client passes back.
fn hex_postcard<T: Serialize + ?Sized>(value: &T) -> String {
    crate::scope::hex(&postcard::to_allocvec(value).expect("encoding into a Vec cannot fail"))
}

/// Reads [`hex_postcard`] back; `None` when malformed.
fn from_hex_postcard<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    postcard::from_bytes(&crate::scope::unhex(text)?).ok()
}

/// One page of a scoped export (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionExport {
    /// The exported partitions ([`Partition::token`]).
    pub partitions: Vec<String>,
    /// The stream sequence this page's state covers (the exporter's cursor in the same read
    /// transaction).
    pub covered: u64,
    /// Where this page started (`None`: the first page).
    pub start: Option<ExportPosition>,
    /// The tables of this page, with their rows.
    pub tables: Vec<ExportTable>,
    /// Where the next page starts (`None`: this is the last page).
    pub next: Option<ExportPosition>,
}

/// One table's rows in a page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportTable {
    /// The table's shape on the exporter (values are sent by column name).
    pub schema: TableSchema,
    /// Its rows.
    pub rows: Vec<ExportRow>,
}

/// One row version: a live row with its values, or a tombstone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRow {
    /// Primary-key values, in `key_columns` order.
    pub key: Vec<Value>,
    /// The row version (an encoded [`Hlc`]).
    pub hlc: [u8; Hlc::LEN],
    /// `Some(values)` in `value_columns` order for a live row, `None` for a tombstone.
    pub values: Option<Vec<Value>>,
}

/// How importing a page moves the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// A new replica's bootstrap: the last page moves the cursor to the smallest covered
    /// sequence, never backwards.
    Bootstrap,
    /// A replica whose token now grants more partitions takes all of them again: the last
    /// page puts the cursor at the smallest covered sequence even when that is behind it,
    /// so the new partitions' messages after it are delivered (the others again, harmlessly).
    Rebootstrap,
    /// Refetched rows ([`super::scope_refetch`]): the cursor does not move.
    Refetch,
}

/// Why an import page was not merged.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The database failed; retry the page (see [`StoreError::is_transient`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The page cannot be merged into this database (a table's key or columns differ).
    #[error("the bootstrap page cannot be merged into this database: {0}")]
    Refused(String),
}

/// What importing one page did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Row versions in the page.
    pub rows: u64,
    /// Of them, tombstones.
    pub tombstones: u64,
    /// Rows the page's version won (written or deleted here).
    pub remote_won: u64,
    /// Rows whose local version is newer (an own write, or a later stream message).
    pub local_won: u64,
    /// Rows already at the page's version.
    pub unchanged: u64,
    /// Tables of the page that do not exist here, with their row counts (not merged).
    pub skipped_tables: Vec<(String, u64)>,
    /// Local writes captured before merging.
    pub local_rows_captured: u64,
    /// The last page is in: the cursor is at `covered` (or was already past it).
    pub finished: bool,
    /// The smallest covered sequence of the pages so far (the cursor's target).
    pub covered: u64,
    /// The cursor after the page.
    pub cursor: u64,
}

/// A table the export reads.
pub(super) struct SourceTable {
    /// Lowercase name (the section key).
    pub(super) folded: String,
    pub(super) info: TableInfo,
    pub(super) version_table: String,
    /// Id in the table registry (numbers its version table).
    pub(super) id: i64,
    pub(super) fingerprint: u32,
    pub(super) scope: Scope,
}

/// How a source table is exported.
pub(super) enum Scope {
    /// Partition columns and the requested partitions' values (each as many as columns).
    Partitioned {
        columns: Vec<String>,
        values: Vec<Vec<Value>>,
        tokens: Vec<String>,
    },
    Shared,
}

/// Exports one page of `partitions` (and the shared tables of `rules`) from the database on
/// `conn`, starting at `after`, at most about `max_bytes` encoded (at least one row). One
/// read transaction; `conn` must not be inside a transaction. Partitions of rules `rules`
/// does not have are ignored.
pub fn export_partitions(
    conn: &Connection,
    rules: &ScopeRules,
    partitions: &[Partition],
    after: Option<&ExportPosition>,
    max_bytes: usize,
) -> Result<PartitionExport, StoreError> {
    let tx = conn
        .unchecked_transaction()
        .context("starting a bootstrap export")?;
    if !table_exists(&tx, names::META)? {
        return Err(StoreError::Corrupt(
            "the database has no harmonylite metadata yet".into(),
        ));
    }
    let covered = meta::get_i64(&tx, meta::keys::CURSOR)?.unwrap_or(0) as u64;
    let tables = source_tables(&tx, rules, partitions)?;
    let mut page = PartitionExport {
        partitions: partitions.iter().map(Partition::token).collect(),
        covered,
        start: after.cloned(),
        tables: Vec::new(),
        next: None,
    };
    let mut budget = Budget {
        limit: max_bytes.saturating_sub(PAGE_OVERHEAD).max(1),
        used: 0,
        rows: 0,
    };
    let mut sections: Vec<(usize, Section)> = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        match table.scope {
            Scope::Partitioned { .. } => {
                sections.push((i, Section::Rows));
                sections.push((i, Section::Tombstones));
            }
            Scope::Shared => sections.push((i, Section::Shared)),
        }
    }
    for (i, section) in sections {
        let table = &tables[i];
        let resume = match after {
            Some(p) => match (table.folded.as_str(), section).cmp(&(p.table.as_str(), p.section)) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => p.after.as_deref(),
                std::cmp::Ordering::Greater => None,
            },
            None => None,
        };
        let mut out = ExportTable {
            schema: TableSchema {
                name: table.info.name.clone(),
                fingerprint: table.fingerprint,
                key_columns: table.info.key_names(),
                value_columns: table
                    .info
                    .value_columns
                    .iter()
                    .map(|c| c.name.clone())
                    .collect(),
            },
            rows: Vec::new(),
        };
        budget.used += out
            .schema
            .key_columns
            .iter()
            .chain(&out.schema.value_columns)
            .map(|c| c.len() + 5)
            .sum::<usize>()
            + table.info.name.len()
            + 20;
        let stopped = match section {
            Section::Rows => export_rows(&tx, table, resume, &mut budget, &mut out)?,
            Section::Tombstones => export_tombstones(&tx, table, resume, &mut budget, &mut out)?,
            Section::Shared => export_shared(&tx, table, resume, &mut budget, &mut out)?,
        };
        if !out.rows.is_empty() {
            // Sections of one table follow each other: merge them into one entry.
            match page.tables.last_mut() {
                Some(last) if last.schema.name == out.schema.name => {
                    last.rows.append(&mut out.rows)
                }
                _ => page.tables.push(out),
            }
        }
        if let Progress::Full(after) = stopped {
            page.next = Some(ExportPosition {
                table: table.folded.clone(),
                section,
                after,
            });
            break;
        }
    }
    drop(tx);
    Ok(page)
}

/// The tables to export, ordered by lowercase name: partitioned tables with at least one
/// requested partition, and shared tables, that are replicated here.
pub(super) fn source_tables(
    conn: &Connection,
    rules: &ScopeRules,
    partitions: &[Partition],
) -> Result<Vec<SourceTable>, StoreError> {
    let registry: Vec<(i64, String)> = conn
        .prepare(&format!("SELECT id, name FROM {}", quote(names::TABLES)))
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .context("reading the table registry")?;
    let mut out = Vec::new();
    for (id, name) in registry {
        let folded = name.to_lowercase();
        let scope = match rules.table_scope(&folded) {
            TableScope::Hidden => continue,
            TableScope::Shared => Scope::Shared,
            TableScope::Partitioned { rule, columns } => {
                let mine: Vec<&Partition> = partitions
                    .iter()
                    .filter(|p| p.rule == rule.name && p.values.len() == columns.len())
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                Scope::Partitioned {
                    columns: columns.to_vec(),
                    values: mine.iter().map(|p| p.values.clone()).collect(),
                    tokens: mine.iter().map(|p| p.token()).collect(),
                }
            }
        };
        let version_table = names::version_table(id);
        if !table_exists(conn, &version_table)? || !table_exists(conn, &name)? {
            continue;
        }
        let Ok(info) = TableInfo::from_columns(&name, table_columns(conn, &name)?) else {
            continue;
        };
        out.push(SourceTable {
            id,
            folded,
            fingerprint: info.fingerprint(),
            info,
            version_table,
            scope,
        });
    }
    out.sort_by(|a, b| a.folded.cmp(&b.folded));
    Ok(out)
}

/// An upper bound of a value's postcard size.
fn value_size(value: &Value) -> usize {
    match value {
        Value::Null => 1,
        Value::Integer(_) => 11,
        Value::Real(_) => 9,
        Value::Text(t) => 6 + t.len(),
        Value::Blob(b) => 6 + b.len(),
    }
}

fn row_size(row: &ExportRow) -> usize {
    let values = row
        .values
        .as_ref()
        .map_or(0, |v| 5 + v.iter().map(value_size).sum::<usize>());
    Hlc::LEN + 1 + 5 + row.key.iter().map(value_size).sum::<usize>() + values
}

/// How full a page is.
struct Budget {
    /// Bytes a page may hold (estimated from above).
    limit: usize,
    /// Bytes used so far.
    used: usize,
    /// Rows in the page so far.
    rows: usize,
}

impl Budget {
    /// Adds `row` to `out` unless the page is full (a page's first row always fits);
    /// returns whether it was added.
    fn push(&mut self, out: &mut ExportTable, row: ExportRow) -> bool {
        let size = row_size(&row);
        if self.rows > 0 && self.used + size > self.limit {
            return false;
        }
        self.used += size;
        self.rows += 1;
        out.rows.push(row);
        true
    }
}

/// Where a section stopped.
enum Progress {
    /// It is exported to its end.
    Done,
    /// The page is full: resume after this key (None: at the section's start).
    Full(Option<Vec<Value>>),
}

pub(super) fn hlc_bytes(bytes: Vec<u8>) -> Result<[u8; Hlc::LEN], StoreError> {
    Hlc::from_bytes(&bytes).map_err(|e| StoreError::Corrupt(format!("row version: {e}")))?;
    <[u8; Hlc::LEN]>::try_from(bytes.as_slice())
        .map_err(|_| StoreError::Corrupt("row version of a wrong length".into()))
}

/// `(a, b) > (?n, ?n+1)` over `columns`, numbering parameters from `first`.
fn after_clause(columns: &[String], first: usize) -> String {
    format!(
        "({}) > ({})",
        columns.join(", "),
        (first..first + columns.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Rows of the partitions, in key order, after `resume`. Returns the last key exported when
/// the page filled up (None: the section is done).
fn export_rows(
    tx: &Connection,
    table: &SourceTable,
    resume: Option<&[Value]>,
    budget: &mut Budget,
    out: &mut ExportTable,
) -> Result<Progress, StoreError> {
    let Scope::Partitioned {
        columns, values, ..
    } = &table.scope
    else {
        return Ok(Progress::Done);
    };
    let keys: Vec<String> = table
        .info
        .key_columns
        .iter()
        .map(|c| format!("t.{}", quote(&c.name)))
        .collect();
    let mut params: Vec<Value> = Vec::new();
    let mut any = Vec::new();
    for partition in values {
        let all: Vec<String> = columns
            .iter()
            .zip(partition)
            .map(|(column, value)| {
                params.push(value.clone());
                format!("t.{} IS ?{}", quote(column), params.len())
            })
            .collect();
        any.push(format!("({})", all.join(" AND ")));
    }
    let mut filter = format!("({})", any.join(" OR "));
    if let Some(after) = resume {
        filter.push_str(" AND ");
        filter.push_str(&after_clause(&keys, params.len() + 1));
        params.extend(after.iter().cloned());
    }
    let join = (0..keys.len())
        .map(|i| format!("v.{} = {}", names::key_slot(i), keys[i]))
        .collect::<Vec<_>>()
        .join(" AND ");
    let value_list: String = table
        .info
        .value_columns
        .iter()
        .map(|c| format!(", t.{}", quote(&c.name)))
        .collect();
    let sql = format!(
        "SELECT {}, v.hlc, v.deleted{value_list} FROM {} t LEFT JOIN {} v ON {join} \
         WHERE {filter} ORDER BY {}",
        keys.join(", "),
        quote(&table.info.name),
        quote(&table.version_table),
        keys.join(", "),
    );
    let what = format!("exporting the rows of {:?}", table.info.name);
    let mut stmt = tx.prepare(&sql).context(&what)?;
    let mut rows = stmt.query(params_from_iter(params.iter())).context(&what)?;
    let n = keys.len();
    let width = table.info.value_columns.len();
    let mut examined = 0;
    let mut last: Option<Vec<Value>> = resume.map(<[Value]>::to_vec);
    while let Some(row) = rows.next().context(&what)? {
        let read = |i: usize| row.get::<_, Value>(i).context(&what);
        let key: Vec<Value> = (0..n).map(read).collect::<Result<_, _>>()?;
        let hlc: Option<Vec<u8>> = row.get(n).context(&what)?;
        let deleted: Option<bool> = row.get(n + 1).context(&what)?;
        examined += 1;
        let (Some(hlc), Some(false)) = (hlc, deleted) else {
            // Not captured yet (no version, or a stale tombstone under a re-inserted row):
            // the stream brings it once captured.
            if examined >= MAX_EXAMINED {
                return Ok(Progress::Full(Some(key)));
            }
            last = Some(key);
            continue;
        };
        let values: Vec<Value> = (n + 2..n + 2 + width).map(read).collect::<Result<_, _>>()?;
        let export = ExportRow {
            key: key.clone(),
            hlc: hlc_bytes(hlc)?,
            values: Some(values),
        };
        if !budget.push(out, export) {
            return Ok(Progress::Full(last));
        }
        last = Some(key);
    }
    Ok(Progress::Done)
}

/// Tombstones of the partitions' keys (by the registry), in encoded-key order.
fn export_tombstones(
    tx: &Connection,
    table: &SourceTable,
    resume: Option<&[Value]>,
    budget: &mut Budget,
    out: &mut ExportTable,
) -> Result<Progress, StoreError> {
    let Scope::Partitioned { tokens, .. } = &table.scope else {
        return Ok(Progress::Done);
    };
    let mut params: Vec<Value> = vec![Value::Text(table.folded.clone())];
    let list: Vec<String> = tokens
        .iter()
        .map(|t| {
            params.push(Value::Text(t.clone()));
            format!("?{}", params.len())
        })
        .collect();
    let mut sql = format!(
        "SELECT key FROM {} WHERE tbl = ?1 AND coalesce(accepted, part) IN ({})",
        quote(names::PARTITIONS),
        list.join(", ")
    );
    if let Some([Value::Blob(after)]) = resume {
        params.push(Value::Blob(after.clone()));
        sql.push_str(&format!(" AND key > ?{}", params.len()));
    }
    sql.push_str(" ORDER BY key");
    let what = format!("exporting the tombstones of {:?}", table.info.name);
    let n = table.info.key_columns.len();
    let slot_match = (0..n)
        .map(|i| format!("{} = ?{}", names::key_slot(i), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ");
    let mut version = tx
        .prepare(&format!(
            "SELECT hlc FROM {} WHERE {slot_match} AND deleted",
            quote(&table.version_table)
        ))
        .context(&what)?;
    let mut stmt = tx.prepare(&sql).context(&what)?;
    let mut rows = stmt.query(params_from_iter(params.iter())).context(&what)?;
    let mut examined = 0;
    let mut last: Option<Vec<Value>> = resume.map(<[Value]>::to_vec);
    while let Some(row) = rows.next().context(&what)? {
        let encoded: Vec<u8> = row.get(0).context(&what)?;
        examined += 1;
        let key: Vec<Value> = postcard::from_bytes(&encoded).map_err(|e| {
            StoreError::Corrupt(format!("the partition registry holds a malformed key: {e}"))
        })?;
        if key.len() == n {
            let hlc: Option<Vec<u8>> = version
                .query_row(params_from_iter(key.iter()), |r| r.get(0))
                .optional()
                .context(&what)?;
            if let Some(hlc) = hlc {
                let export = ExportRow {
                    key,
                    hlc: hlc_bytes(hlc)?,
                    values: None,
                };
                if !budget.push(out, export) {
                    return Ok(Progress::Full(last));
                }
            }
        }
        let here = vec![Value::Blob(encoded)];
        if examined >= MAX_EXAMINED {
            return Ok(Progress::Full(Some(here)));
        }
        last = Some(here);
    }
    Ok(Progress::Done)
}

/// Every row version of a shared table, in key order.
fn export_shared(
    tx: &Connection,
    table: &SourceTable,
    resume: Option<&[Value]>,
    budget: &mut Budget,
    out: &mut ExportTable,
) -> Result<Progress, StoreError> {
    let n = table.info.key_columns.len();
    let slots: Vec<String> = (0..n)
        .map(|i| format!("v.{}", names::key_slot(i)))
        .collect();
    let join = table
        .info
        .key_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("t.{} = v.{}", quote(&c.name), names::key_slot(i)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let value_list: String = table
        .info
        .value_columns
        .iter()
        .map(|c| format!(", t.{}", quote(&c.name)))
        .collect();
    let filter = match resume {
        Some(_) => format!("WHERE {}", after_clause(&slots, 1)),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {}, v.hlc, v.deleted, t.{} IS NOT NULL{value_list} FROM {} v LEFT JOIN {} t \
         ON {join} {filter} ORDER BY {}",
        slots.join(", "),
        quote(&table.info.key_columns[0].name),
        quote(&table.version_table),
        quote(&table.info.name),
        slots.join(", "),
    );
    let what = format!("exporting the shared table {:?}", table.info.name);
    let mut stmt = tx.prepare(&sql).context(&what)?;
    let mut rows = stmt
        .query(params_from_iter(resume.unwrap_or(&[]).iter()))
        .context(&what)?;
    let width = table.info.value_columns.len();
    let mut examined = 0;
    let mut last: Option<Vec<Value>> = resume.map(<[Value]>::to_vec);
    while let Some(row) = rows.next().context(&what)? {
        let read = |i: usize| row.get::<_, Value>(i).context(&what);
        let key: Vec<Value> = (0..n).map(read).collect::<Result<_, _>>()?;
        let hlc: Vec<u8> = row.get(n).context(&what)?;
        let deleted: bool = row.get(n + 1).context(&what)?;
        let present: bool = row.get(n + 2).context(&what)?;
        examined += 1;
        if !deleted && !present {
            // Deleted here and not captured yet: the delete comes through the stream.
            if examined >= MAX_EXAMINED {
                return Ok(Progress::Full(Some(key)));
            }
            last = Some(key);
            continue;
        }
        let values = if deleted {
            None
        } else {
            Some(
                (n + 3..n + 3 + width)
                    .map(read)
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let export = ExportRow {
            key: key.clone(),
            hlc: hlc_bytes(hlc)?,
            values,
        };
        if !budget.push(out, export) {
            return Ok(Progress::Full(last));
        }
        last = Some(key);
    }
    Ok(Progress::Done)
}

impl Store {
    /// Exports one page of `partitions` (see [`export_partitions`]) from this store's
    /// database, in one read transaction.
    pub fn export_partitions(
        &self,
        rules: &ScopeRules,
        partitions: &[Partition],
        after: Option<&ExportPosition>,
        max_bytes: usize,
    ) -> Result<PartitionExport, StoreError> {
        export_partitions(&self.conn, rules, partitions, after, max_bytes)
    }

    /// Merges one page of a scoped export into this database, in one write transaction (see
    /// the module docs). Import the pages in order, from the first; the last one moves the
    /// cursor. A failed page changes nothing and may be imported again.
    pub fn import_partitions(
        &mut self,
        page: &PartitionExport,
        now: NTP64,
    ) -> Result<ImportReport, ImportError> {
        self.import_page(page, now, ImportMode::Bootstrap)
    }

    /// Merges one page as [`Store::import_partitions`] does, moving the cursor as `mode`
    /// says.
    pub fn import_page(
        &mut self,
        page: &PartitionExport,
        now: NTP64,
        mode: ImportMode,
    ) -> Result<ImportReport, ImportError> {
        let saved = (self.next_batch, self.cursor, self.clock.clone());
        let result = self.import_tx(page, now, mode);
        match result {
            Ok(report) => {
                let _ = self
                    .conn
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                Ok(report)
            }
            Err(e) => {
                (self.next_batch, self.cursor, self.clock) = saved;
                Err(e)
            }
        }
    }

    fn import_tx(
        &mut self,
        page: &PartitionExport,
        now: NTP64,
        mode: ImportMode,
    ) -> Result<ImportReport, ImportError> {
        let mut report = ImportReport::default();
        let (tx, drained) = super::begin_captured(
            &mut self.conn,
            &mut self.schema,
            &mut self.clock,
            &self.options,
            &mut self.next_batch,
            "a bootstrap import",
        )?;
        report.local_rows_captured = drained.rows as u64;
        if drained.outbox_grew || drained.batch_seq.is_some() {
            self.outbox_grew = true;
        }
        set_applying(&tx, true)?;
        let mut skipped = BTreeSet::new();
        for table in &page.tables {
            let Some(here) = self.schema.tables.by_name(&table.schema.name) else {
                if skipped.insert(table.schema.name.clone()) {
                    report
                        .skipped_tables
                        .push((table.schema.name.clone(), table.rows.len() as u64));
                }
                continue;
            };
            check_shape(here, &table.schema)?;
            let partition = match self.options.scopes.table_scope(&table.schema.name) {
                TableScope::Partitioned { rule, columns } => Some((rule.name.clone(), columns)),
                _ => None,
            };
            let upsert_sql = here.upsert_row_sql(&table.schema.value_columns);
            let mut st = TableStatements::prepare(&tx, here, &upsert_sql).map_err(failure)?;
            for row in &table.rows {
                report.rows += 1;
                if row.values.is_none() {
                    report.tombstones += 1;
                }
                if row.key.len() != table.schema.key_columns.len()
                    || row.key.iter().any(|v| matches!(v, Value::Null))
                    || row
                        .values
                        .as_ref()
                        .is_some_and(|v| v.len() != table.schema.value_columns.len())
                {
                    return Err(ImportError::Refused(format!(
                        "a row of {:?} does not match its columns",
                        table.schema.name
                    )));
                }
                let hlc = Hlc::from_bytes(&row.hlc)
                    .map_err(|e| ImportError::Refused(format!("a row version: {e}")))?;
                let stored = st.read_version(&row.key)?;
                if !incoming_wins(hlc, stored) {
                    if stored == Some(hlc) {
                        report.unchanged += 1;
                    } else {
                        report.local_won += 1;
                    }
                    continue;
                }
                report.remote_won += 1;
                st.write_winner(here, &row.key, row.values.as_deref(), hlc)
                    .map_err(failure)?;
                if let (Some((rule, columns)), Some(values)) = (&partition, &row.values) {
                    // A later local delete of the row is routed to its partition.
                    let values = columns
                        .iter()
                        .map(|c| {
                            super::scope_check::column_value(&table.schema, &row.key, values, c)
                        })
                        .collect();
                    super::routing::register(
                        &tx,
                        &table.schema.name.to_lowercase(),
                        &row.key,
                        &Partition {
                            rule: rule.clone(),
                            values,
                        },
                    )?;
                }
                // Versions the cluster accepted: never refuse them for being ahead.
                let _ = self.clock.observe(hlc, now);
            }
        }
        let covered = match (&page.start, meta::get_i64(&tx, IMPORT_COVERED)?) {
            (Some(_), Some(earlier)) => (earlier as u64).min(page.covered),
            _ => page.covered,
        };
        report.covered = covered;
        if mode == ImportMode::Refetch {
            report.finished = true;
        } else if page.next.is_none() {
            let covered = StreamSeq::new(covered);
            if covered > self.cursor || mode == ImportMode::Rebootstrap {
                self.cursor = covered;
            }
            meta::set(&tx, meta::keys::CURSOR, self.cursor.get() as i64)?;
            tx.execute(
                &format!("DELETE FROM {} WHERE key = ?1", quote(names::META)),
                [IMPORT_COVERED],
            )
            .context("finishing a bootstrap import")?;
            report.finished = true;
        } else {
            meta::set(&tx, IMPORT_COVERED, covered as i64)?;
        }
        report.cursor = self.cursor.get();
        set_applying(&tx, false)?;
        meta::set(&tx, meta::keys::CLOCK, self.clock.last().as_u64() as i64)?;
        tx.commit().context("committing a bootstrap import")?;
        Ok(report)
    }
}

/// Refuses a table whose key differs, or that lacks one of the page's columns.
fn check_shape(
    here: &super::tables::RegisteredTable,
    schema: &TableSchema,
) -> Result<(), ImportError> {
    match here.shape_mismatch(&schema.key_columns, &schema.value_columns) {
        None => Ok(()),
        Some(ShapeMismatch::Key { ours }) => Err(ImportError::Refused(format!(
            "table {:?} has the primary key {:?} in the page and {ours:?} here",
            schema.name, schema.key_columns
        ))),
        Some(ShapeMismatch::MissingColumn(missing)) => Err(ImportError::Refused(format!(
            "table {:?} has a column {missing:?} in the page that it lacks here",
            schema.name
        ))),
    }
}

fn failure(f: super::apply::ApplyFailure) -> ImportError {
    match f {
        super::apply::ApplyFailure::Store(e) => ImportError::Store(e),
        super::apply::ApplyFailure::Park(ApplyError::Rejected { table, source }) => {
            ImportError::Refused(format!("SQLite refused a row of {table:?}: {source}"))
        }
        super::apply::ApplyFailure::Park(e) => ImportError::Refused(e.to_string()),
    }
}
