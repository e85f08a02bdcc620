//! DDL of the capture scheme, as pure functions returning SQL text.
//!
//! The triggers run inside the *application's* SQLite, which may be as old as 3.35 and may
//! run with `PRAGMA trusted_schema=OFF`. So they use only plain `INSERT ... VALUES/SELECT`,
//! `julianday('now')` and reads of our own tables: no functions of ours, no virtual tables,
//! no syntax newer than 3.35. Each trigger records *which row* changed (table id and key
//! values) and the write's wall-clock time in Unix milliseconds; the row image is read when
//! the log is drained. While an apply transaction holds a row in `__hl_applying`, the
//! triggers record nothing (echo suppression).

use super::names::{self, quote};
use super::schema::{affinity, TableInfo};

/// Initial number of key slots in the log (grown with `ALTER TABLE` for wider keys).
pub const INITIAL_KEY_SLOTS: usize = 4;

/// SQL expression for "now" in Unix milliseconds, valid in SQLite ≥ 3.35 and in triggers
/// under `trusted_schema=OFF`.
pub const WALL_CLOCK_MILLIS: &str =
    "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)";

/// The internal tables, created if missing.
pub fn internal_tables() -> String {
    let slots: Vec<String> = (0..INITIAL_KEY_SLOTS).map(names::key_slot).collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {meta}(key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {tables}(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, \
key_count INTEGER NOT NULL, fingerprint INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS {log}(seq INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, \
wall INTEGER NOT NULL, {slots});
CREATE TABLE IF NOT EXISTS {outbox}(id INTEGER PRIMARY KEY, batch_seq INTEGER NOT NULL, \
part INTEGER NOT NULL, parts INTEGER NOT NULL, rows INTEGER NOT NULL, frame BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS {applying}(marker INTEGER);
CREATE TABLE IF NOT EXISTS {parts}(origin BLOB NOT NULL, batch_seq INTEGER NOT NULL, \
part INTEGER NOT NULL, parts INTEGER NOT NULL, compression INTEGER NOT NULL, body BLOB NOT NULL, \
PRIMARY KEY(origin, batch_seq, part)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {parked}(stream_seq INTEGER PRIMARY KEY, frame BLOB NOT NULL, \
kind TEXT NOT NULL, reason TEXT NOT NULL, parked_at INTEGER NOT NULL, \
attempts INTEGER NOT NULL DEFAULT 0, tbl TEXT);
CREATE TABLE IF NOT EXISTS {migrations}(version INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, \
origin BLOB NOT NULL, stream_seq INTEGER NOT NULL, destructive INTEGER NOT NULL, \
sql TEXT NOT NULL, applied_at INTEGER NOT NULL);",
        meta = quote(names::META),
        tables = quote(names::TABLES),
        log = quote(names::LOG),
        slots = slots.join(", "),
        outbox = quote(names::OUTBOX),
        applying = quote(names::APPLYING),
        parts = quote(names::PARTS),
        parked = quote(names::PARKED),
        migrations = quote(names::MIGRATIONS),
    )
}

/// Columns added to internal tables after their first release, as `(table, column,
/// definition)`: a database created by an older build gets each one that is missing.
pub const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // The subject (after the prefix) of a frame routed by scope; NULL: unscoped.
    (names::OUTBOX, "subject", "subject TEXT"),
    // A frame's own JetStream message id (a refusal notice's, the same on every full
    // replica); NULL: `<node>-<incarnation>-<batch>-<part>`.
    (names::OUTBOX, "msg_id", "msg_id TEXT"),
    // The index of a routed frame's group's first frame; NULL for a plain batch part.
    (names::PARTS, "grp", "grp INTEGER"),
    // The subject (after the prefix) a routed frame arrived on.
    (names::PARTS, "subject", "subject TEXT"),
    // The stream sequence a scoped replica's frame arrived at (its incomplete batches are
    // forgotten after `inbox::SCOPED_PART_WINDOW` messages).
    (names::PARTS, "seq", "seq INTEGER"),
    // How a table merges: NULL by row, 'column' by column.
    (names::TABLES, "merge", "merge TEXT"),
    // A column-merge table's counter columns, as postcard-encoded names.
    (names::TABLES, "counters", "counters BLOB"),
    // What a column-merge table's log entry records (see `create_column_triggers`); NULL
    // for a row-merge table's.
    (names::LOG, "cols", "cols INTEGER"),
    // A counter entry's change of the counter.
    (names::LOG, "delta", "delta INTEGER"),
];

/// Log `cols` of a column-merge table's INSERT: every column written.
pub const LOG_COLS_ALL: i64 = -1;
/// Log `cols` of a column-merge table's DELETE.
pub const LOG_COLS_DELETE: i64 = -2;
/// Most value columns a column-merge table may have (one bit each in the log's `cols`).
pub const MAX_COLUMN_MERGE_COLUMNS: usize = 62;

/// `ALTER TABLE … ADD COLUMN` for one of [`ADDED_COLUMNS`].
pub fn add_column(table: &str, definition: &str) -> String {
    format!("ALTER TABLE {} ADD COLUMN {definition}", quote(table))
}

/// Adds the `tbl` column (table a parked message concerns) to a parked table created by a
/// build before it.
pub fn add_parked_table_column() -> String {
    format!("ALTER TABLE {} ADD COLUMN tbl TEXT", quote(names::PARKED))
}

/// Log entries for every current row of table `id`: used when capture starts on a table the
/// application created (or re-created) while running, whose rows were written before its
/// triggers existed.
pub fn seed_log(id: i64, table: &TableInfo) -> String {
    let slots: Vec<String> = (0..table.key_columns.len()).map(names::key_slot).collect();
    let keys: Vec<String> = table.key_columns.iter().map(|c| quote(&c.name)).collect();
    format!(
        "INSERT INTO {}(tbl, wall, {}) SELECT {id}, {WALL_CLOCK_MILLIS}, {} FROM {}",
        quote(names::LOG),
        slots.join(", "),
        keys.join(", "),
        quote(&table.name)
    )
}

/// Adds key slot `n` to the log.
pub fn add_log_slot(n: usize) -> String {
    format!(
        "ALTER TABLE {} ADD COLUMN {}",
        quote(names::LOG),
        names::key_slot(n)
    )
}

/// The version table of table `id`: one row per key ever written, with the HLC of the last
/// write (24-byte BLOB, ordered like the HLC) and whether it was a delete. Key slots get the
/// affinity of the user's key columns, so stored keys compare equal to the table's.
pub fn version_table(id: i64, table: &TableInfo) -> String {
    keyed_table(
        &names::version_table(id),
        table,
        "hlc BLOB NOT NULL, deleted INTEGER NOT NULL",
    )
}

/// `CREATE TABLE IF NOT EXISTS name(<key slots>, <columns>, PRIMARY KEY(<key slots>))
/// WITHOUT ROWID`, the key slots with the affinity of `table`'s key columns.
fn keyed_table(name: &str, table: &TableInfo, columns: &str) -> String {
    let slots: Vec<String> = table
        .key_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} {}", names::key_slot(i), affinity(&c.decl_type)))
        .collect();
    let key: Vec<String> = (0..table.key_columns.len()).map(names::key_slot).collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {}({}, {columns}, PRIMARY KEY({})) WITHOUT ROWID",
        quote(name),
        slots.join(", "),
        key.join(", ")
    )
}

/// The column-merge state table of table `id`: one row per key, with the postcard-encoded
/// [`crate::column_merge::ColumnRow`] (column versions, counter bases and totals).
pub fn cells_table(id: i64, table: &TableInfo) -> String {
    keyed_table(&names::cells_table(id), table, "state BLOB NOT NULL")
}

/// Drops the triggers of table `id` (if present).
pub fn drop_triggers(id: i64) -> String {
    names::triggers(id)
        .iter()
        .map(|t| format!("DROP TRIGGER IF EXISTS {};", quote(t)))
        .collect()
}

/// The pieces every capture trigger of a table is built from.
struct TriggerParts {
    /// The quoted table name.
    target: String,
    /// The key slot columns of the log.
    slots: Vec<String>,
    /// `OLD.k IS NOT NEW.k OR …`: the UPDATE changed the primary key.
    key_changed: String,
    /// `WHEN NOT EXISTS (SELECT 1 FROM __hl_applying)`: capture off while applying.
    when: String,
}

impl TriggerParts {
    fn new(table: &TableInfo) -> Self {
        TriggerParts {
            target: quote(&table.name),
            slots: (0..table.key_columns.len()).map(names::key_slot).collect(),
            key_changed: table
                .key_columns
                .iter()
                .map(|c| format!("OLD.{0} IS NOT NEW.{0}", quote(&c.name)))
                .collect::<Vec<_>>()
                .join(" OR "),
            when: format!("WHEN NOT EXISTS (SELECT 1 FROM {})", quote(names::APPLYING)),
        }
    }

    /// `INSERT INTO __hl_log(<columns>, k0, …)`.
    fn log_insert(&self, columns: &str) -> String {
        format!(
            "INSERT INTO {}({columns}, {})",
            quote(names::LOG),
            self.slots.join(", ")
        )
    }
}

/// The key values of `row` (`NEW` or `OLD`), in key order.
fn keys(table: &TableInfo, row: &str) -> String {
    table
        .key_columns
        .iter()
        .map(|c| format!("{row}.{}", quote(&c.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The three capture triggers of table `id` (insert, update, delete), each one statement.
/// SQLite keeps this text verbatim in `sqlite_schema.sql`, which lets an install tell
/// whether a trigger is current.
pub fn create_triggers(id: i64, table: &TableInfo) -> [String; 3] {
    let [insert, update, delete] = names::triggers(id);
    let parts = TriggerParts::new(table);
    let log_insert = parts.log_insert("tbl, wall");
    let TriggerParts {
        target,
        key_changed,
        when,
        ..
    } = parts;
    let (new, old) = (keys(table, "NEW"), keys(table, "OLD"));
    [
        format!(
            "CREATE TRIGGER {} AFTER INSERT ON {target} {when} BEGIN\n  \
             {log_insert} VALUES ({id}, {WALL_CLOCK_MILLIS}, {new});\nEND",
            quote(&insert)
        ),
        format!(
            "CREATE TRIGGER {} AFTER UPDATE ON {target} {when} BEGIN\n  \
             {log_insert} SELECT {id}, {WALL_CLOCK_MILLIS}, {old} WHERE {key_changed};\n  \
             {log_insert} VALUES ({id}, {WALL_CLOCK_MILLIS}, {new});\nEND",
            quote(&update)
        ),
        format!(
            "CREATE TRIGGER {} AFTER DELETE ON {target} {when} BEGIN\n  \
             {log_insert} VALUES ({id}, {WALL_CLOCK_MILLIS}, {old});\nEND",
            quote(&delete)
        ),
    ]
}

/// The capture triggers of a table that merges by column, with counter columns `counters`
/// (indexes into `value_columns`). Besides the key, each log entry's `cols` says what
/// happened: [`LOG_COLS_ALL`] for an INSERT (every column written), [`LOG_COLS_DELETE`] for
/// a DELETE, and for an UPDATE a bit mask of the plain value columns it changed (bit `i`:
/// value column `i`). An UPDATE of a counter adds one entry per changed counter: `cols` is
/// its index and `delta` the change (NULL counts as 0, reals are truncated). Only `CASE`,
/// `CAST` and `IS NOT` are used, which SQLite ≥ 3.35 runs under `trusted_schema=OFF`.
pub fn create_column_triggers(id: i64, table: &TableInfo, counters: &[usize]) -> [String; 3] {
    let [insert, update, delete] = names::triggers(id);
    let parts = TriggerParts::new(table);
    let log_insert = parts.log_insert("tbl, wall, cols, delta");
    let TriggerParts {
        target,
        key_changed,
        when,
        ..
    } = parts;
    let mask_terms: Vec<String> = table
        .value_columns
        .iter()
        .enumerate()
        .filter(|(i, _)| !counters.contains(i))
        .map(|(i, c)| format!("((NEW.{0} IS NOT OLD.{0}) << {i})", quote(&c.name)))
        .collect();
    let mask = if mask_terms.is_empty() {
        "0".to_string()
    } else {
        mask_terms.join(" | ")
    };
    let integer = |row: &str, column: &str| {
        format!("CASE WHEN {row}.{column} IS NULL THEN 0 ELSE CAST({row}.{column} AS INTEGER) END")
    };
    let counter_entries: String = counters
        .iter()
        .map(|&i| {
            let column = quote(&table.value_columns[i].name);
            format!(
                "\n  {log_insert} SELECT {id}, {WALL_CLOCK_MILLIS}, {i}, {} - {}, {} \
                 WHERE NEW.{column} IS NOT OLD.{column} AND NOT ({key_changed});",
                integer("NEW", &column),
                integer("OLD", &column),
                keys(table, "NEW"),
            )
        })
        .collect();
    let (new, old) = (keys(table, "NEW"), keys(table, "OLD"));
    [
        format!(
            "CREATE TRIGGER {} AFTER INSERT ON {target} {when} BEGIN\n  \
             {log_insert} VALUES ({id}, {WALL_CLOCK_MILLIS}, {LOG_COLS_ALL}, NULL, {new});\nEND",
            quote(&insert)
        ),
        format!(
            "CREATE TRIGGER {} AFTER UPDATE ON {target} {when} BEGIN\n  \
             {log_insert} SELECT {id}, {WALL_CLOCK_MILLIS}, {LOG_COLS_DELETE}, NULL, {old} \
             WHERE {key_changed};\n  \
             {log_insert} VALUES ({id}, {WALL_CLOCK_MILLIS}, \
             CASE WHEN {key_changed} THEN {LOG_COLS_ALL} ELSE {mask} END, NULL, {new});\
             {counter_entries}\nEND",
            quote(&update)
        ),
        format!(
            "CREATE TRIGGER {} AFTER DELETE ON {target} {when} BEGIN\n  \
             {log_insert} VALUES ({id}, {WALL_CLOCK_MILLIS}, {LOG_COLS_DELETE}, NULL, {old});\nEND",
            quote(&delete)
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::schema::ColumnInfo;

    #[test]
    fn triggers_quote_every_identifier() {
        let t = TableInfo::from_columns(
            "my \"odd\" table",
            vec![ColumnInfo {
                name: "ké y".into(),
                decl_type: "TEXT".into(),
                pk: 1,
                hidden: 0,
            }],
        )
        .unwrap();
        let sql = create_triggers(3, &t).join(";\n");
        assert!(sql.contains(r#"ON "my ""odd"" table""#));
        assert!(sql.contains(r#"NEW."ké y""#));
        assert!(sql.contains(r#"OLD."ké y" IS NOT NEW."ké y""#));
        assert!(version_table(3, &t).contains("k0 TEXT"));
    }
}
