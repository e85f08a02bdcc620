//! The schema model of a user table, built from what `PRAGMA table_xinfo` and
//! `PRAGMA table_list` report, and the rules deciding which tables are replicated.

use std::fmt;

/// One column as `PRAGMA table_xinfo` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Declared type, as written (may be empty).
    pub decl_type: String,
    /// 1-based position in the primary key, 0 when not a key column.
    pub pk: u32,
    /// `hidden` of `table_xinfo`: 0 normal, 1 hidden (virtual tables), 2/3 generated.
    pub hidden: u32,
}

/// A user table's replicated shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Table name (unquoted).
    pub name: String,
    /// Primary-key columns in key order.
    pub key_columns: Vec<ColumnInfo>,
    /// Other stored, non-generated columns, in table order.
    pub value_columns: Vec<ColumnInfo>,
}

impl TableInfo {
    /// Builds the model from `table_xinfo` rows; `Err` when the table cannot be replicated.
    pub fn from_columns(name: &str, columns: Vec<ColumnInfo>) -> Result<Self, SkipReason> {
        let stored: Vec<ColumnInfo> = columns.into_iter().filter(|c| c.hidden == 0).collect();
        let mut key_columns: Vec<ColumnInfo> =
            stored.iter().filter(|c| c.pk > 0).cloned().collect();
        if key_columns.is_empty() {
            return Err(SkipReason::NoPrimaryKey);
        }
        key_columns.sort_by_key(|c| c.pk);
        let value_columns = stored.into_iter().filter(|c| c.pk == 0).collect();
        Ok(TableInfo {
            name: name.to_owned(),
            key_columns,
            value_columns,
        })
    }

    /// Key column names in key order.
    pub fn key_names(&self) -> Vec<String> {
        self.key_columns.iter().map(|c| c.name.clone()).collect()
    }

    /// Value column names in table order.
    pub fn value_names(&self) -> Vec<String> {
        self.value_columns.iter().map(|c| c.name.clone()).collect()
    }

    /// Fingerprint of the replicated shape: CRC-32 of the key and value column names and
    /// declared types, in order. Equal fingerprints mean the same columns.
    pub fn fingerprint(&self) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        for (tag, columns) in [(b'k', &self.key_columns), (b'v', &self.value_columns)] {
            for c in columns {
                hasher.update(&[tag]);
                hasher.update(c.name.as_bytes());
                hasher.update(&[0]);
                hasher.update(c.decl_type.to_ascii_uppercase().as_bytes());
                hasher.update(&[0]);
            }
        }
        hasher.finalize()
    }
}

/// Why a table is not replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Internal to SQLite (`sqlite_%`).
    SqliteInternal,
    /// One of ours (`__hl_%`).
    Harmonylite,
    /// A virtual table (its contents live elsewhere).
    Virtual,
    /// A shadow table of a virtual table (e.g. FTS5's `%_data`).
    Shadow,
    /// Named in the exclude list.
    Excluded,
    /// Declares no primary key: rowids differ between replicas, so rows cannot be matched.
    NoPrimaryKey,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::SqliteInternal => "SQLite internal table",
            SkipReason::Harmonylite => "harmonylite internal table",
            SkipReason::Virtual => "virtual table",
            SkipReason::Shadow => "shadow table of a virtual table",
            SkipReason::Excluded => "listed in exclude_tables",
            SkipReason::NoPrimaryKey => {
                "no declared PRIMARY KEY (rowids are node-local, so its rows cannot be matched \
                 across replicas); add a PRIMARY KEY to replicate it"
            }
        })
    }
}

/// Decides from `PRAGMA table_list`'s `type` column and the name whether a table is a
/// candidate for replication (`None`) or skipped (`Some(reason)`), before looking at columns.
pub fn skip_reason(name: &str, list_type: &str, exclude: &[String]) -> Option<SkipReason> {
    if name.starts_with("sqlite_") {
        Some(SkipReason::SqliteInternal)
    } else if super::names::is_internal(name) {
        Some(SkipReason::Harmonylite)
    } else if list_type == "virtual" {
        Some(SkipReason::Virtual)
    } else if list_type == "shadow" {
        Some(SkipReason::Shadow)
    } else if exclude.iter().any(|e| e.eq_ignore_ascii_case(name)) {
        Some(SkipReason::Excluded)
    } else {
        None
    }
}

/// SQLite's column affinity for a declared type (rules of section 3.1 of "Datatypes In
/// SQLite"), as the keyword to declare a column with the same affinity.
pub fn affinity(decl_type: &str) -> &'static str {
    let t = decl_type.to_ascii_uppercase();
    if t.contains("INT") {
        "INTEGER"
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        "TEXT"
    } else if t.contains("BLOB") || t.is_empty() {
        "BLOB"
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        "REAL"
    } else {
        "NUMERIC"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, pk: u32) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            decl_type: ty.into(),
            pk,
            hidden: 0,
        }
    }

    #[test]
    fn affinity_follows_sqlite_rules() {
        assert_eq!(affinity("BIGINT"), "INTEGER");
        assert_eq!(affinity("varchar(20)"), "TEXT");
        assert_eq!(affinity(""), "BLOB");
        assert_eq!(affinity("DOUBLE PRECISION"), "REAL");
        assert_eq!(affinity("DECIMAL(10,5)"), "NUMERIC");
        assert_eq!(affinity("CHARINT"), "INTEGER");
    }

    #[test]
    fn composite_keys_follow_key_order_and_generated_columns_are_dropped() {
        let mut generated = col("g", "INT", 0);
        generated.hidden = 3;
        let t = TableInfo::from_columns(
            "t",
            vec![
                col("b", "TEXT", 2),
                col("v", "", 0),
                col("a", "INT", 1),
                generated,
            ],
        )
        .unwrap();
        assert_eq!(t.key_names(), vec!["a", "b"]);
        assert_eq!(t.value_names(), vec!["v"]);
    }

    #[test]
    fn tables_without_a_key_are_refused() {
        assert_eq!(
            TableInfo::from_columns("t", vec![col("x", "", 0)]),
            Err(SkipReason::NoPrimaryKey)
        );
    }

    #[test]
    fn fingerprint_changes_with_columns() {
        let a = TableInfo::from_columns("t", vec![col("id", "INT", 1), col("v", "", 0)]).unwrap();
        let b = TableInfo::from_columns("t", vec![col("id", "INT", 1), col("w", "", 0)]).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}
