//! The replicated tables known to a store, with the SQL each one needs.

use std::collections::HashMap;

use crate::capture::names::{self, quote};
use crate::capture::TableInfo;
use crate::column_merge::TableMerge;

/// A replicated table: its registry id, shape and prepared SQL text.
#[derive(Debug, Clone)]
pub struct RegisteredTable {
    /// Id in `__hl_tables` (numbers its version table and triggers).
    pub id: i64,
    /// The table's shape.
    pub info: TableInfo,
    /// Fingerprint of `info`.
    pub fingerprint: u32,
    /// `SELECT <value columns> FROM t WHERE <key> ` (row image at drain).
    pub select_row: String,
    /// `DELETE FROM t WHERE <key>`.
    pub delete_row: String,
    /// `SELECT hlc FROM version WHERE <key>`.
    pub select_version: String,
    /// Upsert of `(key, hlc, deleted)` into the version table.
    pub upsert_version: String,
    /// How the table merges: `None` by row, `Some` by column (see [`crate::column_merge`]).
    pub merge: Option<ColumnMerge>,
}

/// The SQL and column facts of a table that merges by column.
#[derive(Debug, Clone)]
pub struct ColumnMerge {
    /// Its configuration.
    pub config: TableMerge,
    /// Whether each value column (in `value_columns` order) is a counter.
    pub counter: Vec<bool>,
    /// Each counter's default, as an integer (0 for other columns, and for a default that
    /// is not a constant integer): its value when a delete hid its base.
    pub default: Vec<i64>,
    /// `SELECT state FROM cells WHERE <key slots>`.
    pub select_state: String,
    /// Upsert of `(key, state)` into the state table.
    pub upsert_state: String,
    /// `SELECT hlc, deleted FROM version WHERE <key slots>`.
    pub select_version: String,
    /// Upsert of the whole row (key, then every value column).
    pub upsert_all: String,
}

/// Why another copy of a table does not fit the one here ([`RegisteredTable::shape_mismatch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeMismatch {
    /// The primary keys differ; this table's key columns.
    Key {
        /// Key columns here.
        ours: Vec<String>,
    },
    /// A column the other copy has and this table lacks.
    MissingColumn(String),
}

impl RegisteredTable {
    /// How another copy of this table (its key columns and value columns, by name) fails to
    /// fit it: a different primary key, or a column this table lacks. `None`: it fits.
    pub fn shape_mismatch(
        &self,
        key_columns: &[String],
        value_columns: &[String],
    ) -> Option<ShapeMismatch> {
        let ours = self.info.key_names();
        let same_key = ours.len() == key_columns.len()
            && ours
                .iter()
                .zip(key_columns)
                .all(|(a, b)| same_identifier(a, b));
        if !same_key {
            return Some(ShapeMismatch::Key { ours });
        }
        value_columns
            .iter()
            .find(|c| {
                !self
                    .info
                    .value_columns
                    .iter()
                    .any(|l| same_identifier(&l.name, c))
            })
            .map(|missing| ShapeMismatch::MissingColumn(missing.clone()))
    }

    /// Builds the SQL for a table.
    pub fn new(id: i64, info: TableInfo) -> Self {
        let table = quote(&info.name);
        let version = quote(&names::version_table(id));
        let key_match = info
            .key_columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} IS ?{}", quote(&c.name), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let slots: Vec<String> = (0..info.key_columns.len()).map(names::key_slot).collect();
        let slot_match = slots
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s} = ?{}", i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let selected = if info.value_columns.is_empty() {
            "1".to_string()
        } else {
            info.value_columns
                .iter()
                .map(|c| quote(&c.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let n = slots.len();
        let placeholders: Vec<String> = (1..=n + 2).map(|i| format!("?{i}")).collect();
        RegisteredTable {
            id,
            fingerprint: info.fingerprint(),
            select_row: format!("SELECT {selected} FROM {table} WHERE {key_match}"),
            delete_row: format!("DELETE FROM {table} WHERE {key_match}"),
            select_version: format!("SELECT hlc FROM {version} WHERE {slot_match}"),
            upsert_version: format!(
                "INSERT INTO {version}({}, hlc, deleted) VALUES ({}) \
                 ON CONFLICT({}) DO UPDATE SET hlc = excluded.hlc, deleted = excluded.deleted",
                slots.join(", "),
                placeholders.join(", "),
                slots.join(", ")
            ),
            info,
            merge: None,
        }
    }

    /// The same table merging by column as `config` says (its counters must be value
    /// columns, checked by the install), with its counters' defaults (`default`, in
    /// `value_columns` order).
    pub fn merging_by_column(mut self, config: TableMerge, default: Vec<i64>) -> Self {
        let cells = quote(&names::cells_table(self.id));
        let slots: Vec<String> = (0..self.info.key_columns.len())
            .map(names::key_slot)
            .collect();
        let slot_match = slots
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s} = ?{}", i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let placeholders: Vec<String> = (1..=slots.len() + 1).map(|i| format!("?{i}")).collect();
        self.merge = Some(ColumnMerge {
            counter: self
                .info
                .value_columns
                .iter()
                .map(|c| config.is_counter(&c.name))
                .collect(),
            default,
            select_state: format!("SELECT state FROM {cells} WHERE {slot_match}"),
            select_version: format!(
                "SELECT hlc, deleted FROM {} WHERE {slot_match}",
                quote(&names::version_table(self.id))
            ),
            upsert_all: self.upsert_row_sql(&self.info.value_names()),
            upsert_state: format!(
                "INSERT INTO {cells}({}, state) VALUES ({}) \
                 ON CONFLICT({}) DO UPDATE SET state = excluded.state",
                slots.join(", "),
                placeholders.join(", "),
                slots.join(", ")
            ),
            config,
        });
        self
    }

    /// Upsert of a row image given the sender's value column names (matched by name).
    pub fn upsert_row_sql(&self, value_columns: &[String]) -> String {
        let keys: Vec<String> = self
            .info
            .key_columns
            .iter()
            .map(|c| quote(&c.name))
            .collect();
        let values: Vec<String> = value_columns.iter().map(|c| quote(c)).collect();
        let all: Vec<&String> = keys.iter().chain(values.iter()).collect();
        let placeholders: Vec<String> = (1..=all.len()).map(|i| format!("?{i}")).collect();
        let action = if values.is_empty() {
            "NOTHING".to_string()
        } else {
            format!(
                "UPDATE SET {}",
                values
                    .iter()
                    .map(|v| format!("{v} = excluded.{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        format!(
            "INSERT INTO {}({}) VALUES ({}) ON CONFLICT({}) DO {action}",
            quote(&self.info.name),
            all.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            placeholders.join(", "),
            keys.join(", ")
        )
    }
}

/// The registry in memory: by id and by name.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    by_id: HashMap<i64, RegisteredTable>,
    by_name: HashMap<String, i64>,
    /// Names in `exclude_tables` (folded): their remote changes are skipped, not parked.
    excluded: Vec<String>,
}

impl Tables {
    /// Adds or replaces a table.
    pub fn insert(&mut self, table: RegisteredTable) {
        self.by_name.insert(fold(&table.info.name), table.id);
        self.by_id.insert(table.id, table);
    }

    /// Looks a table up by registry id.
    pub fn by_id(&self, id: i64) -> Option<&RegisteredTable> {
        self.by_id.get(&id)
    }

    /// Looks a table up by name, ignoring ASCII case as SQLite does.
    pub fn by_name(&self, name: &str) -> Option<&RegisteredTable> {
        self.by_name
            .get(&fold(name))
            .and_then(|id| self.by_id.get(id))
    }

    /// Records the tables this replica excludes from replication.
    pub fn set_excluded(&mut self, names: &[String]) {
        self.excluded = names.iter().map(|n| fold(n)).collect();
    }

    /// Whether `name` is excluded from replication here (ASCII case ignored, as SQLite does).
    pub fn is_excluded(&self, name: &str) -> bool {
        self.excluded.contains(&fold(name))
    }

    /// All tables, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &RegisteredTable> {
        self.by_id.values()
    }
}

/// SQLite's identifier comparison: ASCII letters fold to lower case, nothing else does.
pub fn fold(identifier: &str) -> String {
    identifier.to_ascii_lowercase()
}

/// Whether two identifiers name the same object in SQLite.
pub fn same_identifier(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}
