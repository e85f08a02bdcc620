//! Installing and removing the capture scheme on a database.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, Connection, OptionalExtension};

use super::tables::{RegisteredTable, Tables};
use crate::capture::ddl;
use crate::capture::names::{self, quote};
use crate::capture::schema::{skip_reason, ColumnInfo, SkipReason, TableInfo};
use crate::column_merge::{self, MergeConfig, TableMerge};
use crate::error::{Context, StoreError};

/// What an install found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallReport {
    /// Replicated tables, by name.
    pub replicated: Vec<String>,
    /// User tables that are not replicated, with the reason (internal tables omitted).
    pub skipped: Vec<(String, SkipReason)>,
    /// Tables whose triggers were (re)created by this install.
    pub triggers_rebuilt: Vec<String>,
    /// Tables that stopped being replicated (dropped or excluded) and were cleaned up.
    pub removed: Vec<String>,
    /// Tables renamed by the application since the last install: (old name, new name).
    /// Their registry entry, versions and pending log entries follow the new name.
    pub renamed: Vec<(String, String)>,
    /// Tables whose existing rows were queued for capture because capture started on them
    /// after the application had written (a table created or re-created while running).
    pub seeded: Vec<String>,
}

/// Creates missing internal tables, registers every replicated table, and makes each one's
/// version table and triggers current. Idempotent; runs inside the caller's transaction.
///
/// The first install on a database captures nothing that is already there. Later installs
/// (the application created, altered, renamed or dropped tables while running) queue the
/// current rows of every table whose capture triggers are new (a created or re-created
/// table), since the application may have written to it before the triggers existed; a
/// renamed table keeps its registry id, versions and pending changes.
///
/// `seed = false` skips queueing rows (after a replicated migration: every replica creates
/// the same rows itself).
///
/// A newly registered table merges as `merge` says (by row when it says nothing). A table
/// registered earlier merges as it was registered; with `strict` (opening a store) a given
/// `merge` must say the same ([`StoreError::Config`] otherwise: replicas would disagree).
/// Switching is a replicated migration ([`switch_merge`]), after which the install runs
/// without `strict`.
pub fn install(
    conn: &Connection,
    exclude: &[String],
    merge: Option<&MergeConfig>,
    strict: bool,
    seed: bool,
) -> Result<(Tables, InstallReport), StoreError> {
    let first_install = !object_exists(conn, "table", names::TABLES)?;
    conn.execute_batch(&ddl::internal_tables())
        .context("creating internal tables")?;
    if !column_exists(conn, names::PARKED, "tbl")? {
        conn.execute_batch(&ddl::add_parked_table_column())
            .context("adding the table column to the parked messages")?;
    }
    for (table, column, definition) in ddl::ADDED_COLUMNS {
        if !column_exists(conn, table, column)? {
            conn.execute_batch(&ddl::add_column(table, definition))
                .context(format!("adding column {column} to {table}"))?;
        }
    }
    super::routing::create_registry(conn)?;
    super::refusal::create_tables(conn)?;
    let mut report = InstallReport::default();
    let mut slots = log_key_slots(conn)?;
    let mut registered = registered_tables(conn)?;
    follow_renames(conn, &mut registered, &mut report)?;
    let mut tables = Tables::default();
    let mut seen = HashSet::new();

    for (name, list_type) in user_tables(conn)? {
        if let Some(reason) = skip_reason(&name, &list_type, exclude) {
            if !matches!(reason, SkipReason::SqliteInternal | SkipReason::Harmonylite) {
                report.skipped.push((name, reason));
            }
            continue;
        }
        let info = match TableInfo::from_columns(&name, table_columns(conn, &name)?) {
            Ok(info) => info,
            Err(reason) => {
                report.skipped.push((name, reason));
                continue;
            }
        };
        let key_count = info.key_columns.len() as i64;
        let fingerprint = info.fingerprint() as i64;
        let recorded = match registered.get(&name) {
            Some(&(id, _, _)) => Some(recorded_merge(conn, id)?),
            None => None,
        };
        if let (true, Some(recorded), Some(merge)) = (strict, &recorded, merge) {
            let configured = merge.table(&name);
            if !same_merge(recorded.as_ref(), configured) {
                return Err(StoreError::Config(format!(
                    "table {name:?} merges by {} in this database but the options say {}; \
                     every replica must merge it the same way: set the options to match, or \
                     switch the whole cluster with a replicated migration (`harmonylite \
                     migrate --merge`, see docs/column-merge.md)",
                    column_merge::describe(recorded.as_ref()),
                    column_merge::describe(configured),
                )));
            }
        }
        let configured = match recorded {
            Some(recorded) => recorded,
            None => merge.and_then(|m| m.table(&name)).cloned(),
        };
        let configured = configured.as_ref();
        let counters = match configured {
            Some(config) => Some(counter_indexes(&info, config)?),
            None => None,
        };
        let id = match registered.get(&name) {
            Some(&(id, old_key_count, old_fingerprint)) => {
                if old_key_count != key_count {
                    // The primary key itself changed: old versions cannot be matched.
                    conn.execute_batch(&format!(
                        "DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {};",
                        quote(&names::version_table(id)),
                        quote(&names::cells_table(id))
                    ))
                    .context(format!("resetting versions of {name:?} after a key change"))?;
                }
                if old_key_count != key_count || old_fingerprint != fingerprint {
                    conn.execute(
                        &format!(
                            "UPDATE {} SET key_count = ?1, fingerprint = ?2 WHERE id = ?3",
                            quote(names::TABLES)
                        ),
                        params![key_count, fingerprint, id],
                    )
                    .context(format!("updating registry entry of {name:?}"))?;
                }
                id
            }
            None => {
                conn.execute(
                    &format!(
                        "INSERT INTO {}(name, key_count, fingerprint) VALUES (?1, ?2, ?3)",
                        quote(names::TABLES)
                    ),
                    params![name, key_count, fingerprint],
                )
                .context(format!("registering table {name:?}"))?;
                conn.last_insert_rowid()
            }
        };
        while slots < info.key_columns.len() {
            conn.execute_batch(&ddl::add_log_slot(slots))
                .context("widening the change log")?;
            slots += 1;
        }
        record_merge(conn, id, configured)?;
        conn.execute_batch(&ddl::version_table(id, &info))
            .context(format!("creating the version table of {name:?}"))?;
        let wanted = match &counters {
            Some(counters) => {
                conn.execute_batch(&ddl::cells_table(id, &info))
                    .context(format!("creating the column-merge state of {name:?}"))?;
                ddl::create_column_triggers(id, &info, counters)
            }
            None => ddl::create_triggers(id, &info),
        };
        match ensure_triggers(conn, id, &info, wanted)? {
            Triggers::Current => {}
            Triggers::Rebuilt => report.triggers_rebuilt.push(name.clone()),
            Triggers::Created => {
                report.triggers_rebuilt.push(name.clone());
                if seed && !first_install {
                    conn.execute_batch(&ddl::seed_log(id, &info))
                        .context(format!("queueing the existing rows of {name:?}"))?;
                    report.seeded.push(name.clone());
                }
            }
        }
        seen.insert(name.clone());
        report.replicated.push(name);
        let defaults = match configured {
            Some(config) => Some(counter_defaults(conn, &info, config)?),
            None => None,
        };
        let table = RegisteredTable::new(id, info);
        tables.insert(match (configured, defaults) {
            (Some(config), Some(defaults)) => table.merging_by_column(config.clone(), defaults),
            _ => table,
        });
    }

    for (name, (id, _, _)) in registered {
        if !seen.contains(&name) {
            forget_table(conn, id)?;
            report.removed.push(name);
        }
    }
    report.replicated.sort();
    tables.set_excluded(exclude);
    Ok((tables, report))
}

/// What [`ensure_triggers`] found.
enum Triggers {
    /// Identical triggers existed.
    Current,
    /// Some existed but differed (an altered table); replaced.
    Rebuilt,
    /// None existed (a new or re-created table); created.
    Created,
}

/// Creates the table's triggers (`wanted`) unless identical ones exist.
fn ensure_triggers(
    conn: &Connection,
    id: i64,
    info: &TableInfo,
    wanted: [String; 3],
) -> Result<Triggers, StoreError> {
    let names = names::triggers(id);
    let mut current = true;
    let mut any = false;
    for (name, sql) in names.iter().zip(&wanted) {
        let existing: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .context("reading existing triggers")?;
        current &= existing.as_deref() == Some(sql.as_str());
        any |= existing.is_some();
    }
    if current {
        return Ok(Triggers::Current);
    }
    conn.execute_batch(&ddl::drop_triggers(id))
        .context(format!("dropping old triggers of {:?}", info.name))?;
    for sql in &wanted {
        conn.execute_batch(sql)
            .context(format!("creating triggers of {:?}", info.name))?;
    }
    Ok(if any {
        Triggers::Rebuilt
    } else {
        Triggers::Created
    })
}

/// The indexes (into `value_columns`) of a column-merge table's counters, checking that the
/// table fits column merging.
pub(super) fn counter_indexes(
    info: &TableInfo,
    config: &TableMerge,
) -> Result<Vec<usize>, StoreError> {
    if info.value_columns.len() > ddl::MAX_COLUMN_MERGE_COLUMNS {
        return Err(StoreError::Config(format!(
            "table {:?} has {} columns besides its primary key; a table that merges by column \
             may have at most {}",
            info.name,
            info.value_columns.len(),
            ddl::MAX_COLUMN_MERGE_COLUMNS
        )));
    }
    config
        .counters
        .iter()
        .map(|counter| {
            info.value_columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(counter))
                .ok_or_else(|| {
                    StoreError::Config(format!(
                        "counter {}.{counter}: table {:?} has no such column outside its \
                         primary key",
                        info.name, info.name
                    ))
                })
        })
        .collect()
}

/// Each value column's default as a counter's integer (0 for plain columns, and when the
/// default is not a constant that reads as an integer), in `value_columns` order.
fn counter_defaults(
    conn: &Connection,
    info: &TableInfo,
    config: &TableMerge,
) -> Result<Vec<i64>, StoreError> {
    info.value_columns
        .iter()
        .map(|c| {
            if !config.is_counter(&c.name) {
                return Ok(0);
            }
            let default: Option<String> = conn
                .query_row(
                    "SELECT dflt_value FROM pragma_table_info(?1) WHERE name = ?2",
                    [&info.name, &c.name],
                    |r| r.get(0),
                )
                .optional()
                .context(format!("reading the default of {}.{}", info.name, c.name))?
                .flatten();
            let Some(default) = default else {
                return Ok(0);
            };
            // A constant default evaluates the same everywhere; anything else counts as 0.
            let value: Option<crate::value::Value> = conn
                .query_row(&format!("SELECT ({default})"), [], |r| r.get(0))
                .ok();
            Ok(value.map_or(0, |v| column_merge::counter_integer(&v)))
        })
        .collect()
}

/// How table `id` merges according to the registry (`None`: by row).
pub(super) fn recorded_merge(conn: &Connection, id: i64) -> Result<Option<TableMerge>, StoreError> {
    let (merge, counters): (Option<String>, Option<Vec<u8>>) = conn
        .query_row(
            &format!(
                "SELECT merge, counters FROM {} WHERE id = ?1",
                quote(names::TABLES)
            ),
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .context("reading a table's merge mode")?;
    decode_merge(&id.to_string(), merge, counters)
}

/// A registry entry's merge mode from its `merge` and `counters` columns.
fn decode_merge(
    table: &str,
    merge: Option<String>,
    counters: Option<Vec<u8>>,
) -> Result<Option<TableMerge>, StoreError> {
    match merge.as_deref() {
        None => Ok(None),
        Some("column") => {
            let counters = match counters {
                Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| {
                    StoreError::Corrupt(format!("counters of table {table} in the registry: {e}"))
                })?,
                None => Vec::new(),
            };
            Ok(Some(TableMerge { counters }))
        }
        Some(other) => Err(StoreError::Corrupt(format!(
            "merge mode {other:?} of table {table} in the registry"
        ))),
    }
}

/// How each replicated table merges according to the registry (`None`: by row), by name,
/// without writing anything: tables that still exist; none before capture was installed;
/// every one by row in a database from before column merging.
pub fn recorded_merge_modes(
    conn: &Connection,
) -> Result<Vec<(String, Option<TableMerge>)>, StoreError> {
    if !object_exists(conn, "table", names::TABLES)? {
        return Ok(Vec::new());
    }
    let modes = if column_exists(conn, names::TABLES, "merge")? {
        "merge, counters"
    } else {
        "NULL, NULL"
    };
    let rows: Vec<(String, Option<String>, Option<Vec<u8>>)> = conn
        .prepare(&format!(
            "SELECT name, {modes} FROM {} WHERE name IN \
             (SELECT name FROM sqlite_schema WHERE type = 'table') ORDER BY name",
            quote(names::TABLES)
        ))
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .context("reading the merge modes in the table registry")?;
    rows.into_iter()
        .map(|(table, merge, counters)| {
            let merge = decode_merge(&table, merge, counters)?;
            Ok((table, merge))
        })
        .collect()
}

/// Records how table `id` merges in the registry.
fn record_merge(conn: &Connection, id: i64, merge: Option<&TableMerge>) -> Result<(), StoreError> {
    let (mode, counters) = match merge {
        None => (None, None),
        Some(m) => (
            Some("column"),
            Some(postcard::to_allocvec(&m.counters).expect("strings encode")),
        ),
    };
    conn.execute(
        &format!(
            "UPDATE {} SET merge = ?1, counters = ?2 WHERE id = ?3 \
             AND (merge IS NOT ?1 OR counters IS NOT ?2)",
            quote(names::TABLES)
        ),
        params![mode, counters, id],
    )
    .context("recording a table's merge mode")?;
    Ok(())
}

/// Whether two merge configurations of a table are the same (counters in any order, ASCII
/// case ignored).
fn same_merge(a: Option<&TableMerge>, b: Option<&TableMerge>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.counters.len() == b.counters.len() && a.counters.iter().all(|c| b.is_counter(c))
        }
        _ => false,
    }
}

/// Switches how `table` merges in the registry, dropping its column-merge state when it
/// goes back to row merging: the replicated migration's step (the caller then installs
/// again with the new configuration). Returns whether the table is registered.
pub fn switch_merge(
    conn: &Connection,
    table: &str,
    merge: Option<&TableMerge>,
) -> Result<bool, StoreError> {
    let id: Option<i64> = conn
        .query_row(
            &format!(
                "SELECT id FROM {} WHERE name = ?1 COLLATE NOCASE",
                quote(names::TABLES)
            ),
            [table],
            |r| r.get(0),
        )
        .optional()
        .context("looking a table up in the registry")?;
    let Some(id) = id else {
        return Ok(false);
    };
    record_merge(conn, id, merge)?;
    if merge.is_none() {
        conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS {}",
            quote(&names::cells_table(id))
        ))
        .context("dropping a table's column-merge state")?;
    }
    Ok(true)
}

/// Drops the capture triggers of the tables that merge by column, inside the caller's
/// transaction: they name every value column, and SQLite refuses to drop a column a trigger
/// names. A replicated migration runs its SQL without them; the install that follows it
/// creates them again (without queueing rows).
pub(super) fn drop_column_merge_triggers(
    conn: &Connection,
    tables: &Tables,
) -> Result<(), StoreError> {
    for table in tables.iter().filter(|t| t.merge.is_some()) {
        conn.execute_batch(&ddl::drop_triggers(table.id))
            .context(format!(
                "setting aside the capture triggers of {:?} for a migration",
                table.info.name
            ))?;
    }
    Ok(())
}

/// Follows tables the application renamed: SQLite moves a table's triggers with it, so an
/// insert trigger `__hl_t<id>_insert` now on a table with another name than registered means
/// table `id` was renamed. Its registry entry takes the new name (keeping the id, versions
/// and pending log entries).
fn follow_renames(
    conn: &Connection,
    registered: &mut HashMap<String, (i64, i64, i64)>,
    report: &mut InstallReport,
) -> Result<(), StoreError> {
    let owners: Vec<(String, String)> = conn
        .prepare(
            "SELECT name, tbl_name FROM sqlite_schema WHERE type = 'trigger' \
             AND name GLOB '__hl_t[0-9]*_insert'",
        )
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        })
        .context("listing capture triggers")?;
    for (trigger, owner) in owners {
        let Some(id) = trigger
            .strip_prefix("__hl_t")
            .and_then(|rest| rest.strip_suffix("_insert"))
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        let Some(old) = registered
            .iter()
            .find(|(_, &(rid, _, _))| rid == id)
            .map(|(name, _)| name.clone())
        else {
            continue;
        };
        if old == owner || registered.contains_key(&owner) {
            continue;
        }
        conn.execute(
            &format!(
                "UPDATE {} SET name = ?1 WHERE id = ?2",
                quote(names::TABLES)
            ),
            params![owner, id],
        )
        .context(format!("renaming registry entry {old:?} to {owner:?}"))?;
        let entry = registered.remove(&old).expect("found above");
        registered.insert(owner.clone(), entry);
        report.renamed.push((old, owner));
    }
    Ok(())
}

pub(super) fn object_exists(conn: &Connection, kind: &str, name: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = ?1 AND name = ?2",
        [kind, name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .context(format!("looking for {name}"))
}

pub(super) fn column_exists(
    conn: &Connection,
    table: &str,
    column: &str,
) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .context(format!("inspecting {table}"))
}

/// Removes every internal object of a table that is no longer replicated.
fn forget_table(conn: &Connection, id: i64) -> Result<(), StoreError> {
    conn.execute_batch(&format!(
        "{drop_triggers} DROP TABLE IF EXISTS {version}; DROP TABLE IF EXISTS {cells}; \
         DELETE FROM {tables} WHERE id = {id}; DELETE FROM {log} WHERE tbl = {id};",
        drop_triggers = ddl::drop_triggers(id),
        version = quote(&names::version_table(id)),
        cells = quote(&names::cells_table(id)),
        tables = quote(names::TABLES),
        log = quote(names::LOG),
    ))
    .context("removing a table that is no longer replicated")
}

/// Drops every internal object (tables, triggers, indexes) and leaves user data untouched.
pub fn uninstall(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut objects: Vec<(String, String)> = conn
        .prepare("SELECT type, name FROM sqlite_schema WHERE substr(name, 1, 5) = ?1 AND type IN ('table', 'trigger', 'view')")
        .and_then(|mut s| {
            s.query_map([names::PREFIX], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        })
        .context("listing internal objects")?;
    // Triggers first: they reference the log.
    objects.sort_by_key(|(kind, _)| kind != "trigger");
    let mut dropped = Vec::new();
    for (kind, name) in objects {
        let keyword = match kind.as_str() {
            "trigger" => "TRIGGER",
            "view" => "VIEW",
            _ => "TABLE",
        };
        conn.execute_batch(&format!("DROP {keyword} IF EXISTS {}", quote(&name)))
            .context(format!("dropping {name}"))?;
        dropped.push(name);
    }
    Ok(dropped)
}

fn user_tables(conn: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    conn.prepare("SELECT name, type FROM pragma_table_list WHERE schema = 'main' AND type IN ('table', 'virtual', 'shadow') ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .context("listing tables")
}

pub(super) fn table_columns(conn: &Connection, table: &str) -> Result<Vec<ColumnInfo>, StoreError> {
    conn.prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1)")
        .and_then(|mut s| {
            s.query_map([table], |r| {
                Ok(ColumnInfo {
                    name: r.get(0)?,
                    decl_type: r.get(1)?,
                    pk: r.get(2)?,
                    hidden: r.get(3)?,
                })
            })?
            .collect()
        })
        .context(format!("reading columns of {table:?}"))
}

fn registered_tables(conn: &Connection) -> Result<HashMap<String, (i64, i64, i64)>, StoreError> {
    conn.prepare(&format!(
        "SELECT name, id, key_count, fingerprint FROM {}",
        quote(names::TABLES)
    ))
    .and_then(|mut s| {
        s.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))?
            .collect()
    })
    .context("reading the table registry")
}

/// Number of key slot columns the log has.
pub fn log_key_slots(conn: &Connection) -> Result<usize, StoreError> {
    let count: i64 = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info(?1) WHERE name GLOB 'k[0-9]*'",
            [names::LOG],
            |r| r.get(0),
        )
        .context("inspecting the change log")?;
    Ok(count as usize)
}
