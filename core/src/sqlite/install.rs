//! Installing and removing the capture scheme on a database.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, Connection, OptionalExtension};

use super::tables::{RegisteredTable, Tables};
use crate::capture::ddl;
use crate::capture::names::{self, quote};
use crate::capture::schema::{skip_reason, ColumnInfo, SkipReason, TableInfo};
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
}

/// Creates missing internal tables, registers every replicated table, and makes each one's
/// version table and triggers current. Idempotent; runs inside the caller's transaction.
pub fn install(
    conn: &Connection,
    exclude: &[String],
) -> Result<(Tables, InstallReport), StoreError> {
    conn.execute_batch(&ddl::internal_tables())
        .context("creating internal tables")?;
    let mut report = InstallReport::default();
    let mut slots = log_key_slots(conn)?;
    let registered = registered_tables(conn)?;
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
        let id = match registered.get(&name) {
            Some(&(id, old_key_count, old_fingerprint)) => {
                if old_key_count != key_count {
                    // The primary key itself changed: old versions cannot be matched.
                    conn.execute_batch(&format!(
                        "DROP TABLE IF EXISTS {};",
                        quote(&names::version_table(id))
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
        conn.execute_batch(&ddl::version_table(id, &info))
            .context(format!("creating the version table of {name:?}"))?;
        if ensure_triggers(conn, id, &info)? {
            report.triggers_rebuilt.push(name.clone());
        }
        seen.insert(name.clone());
        report.replicated.push(name);
        tables.insert(RegisteredTable::new(id, info));
    }

    for (name, (id, _, _)) in registered {
        if !seen.contains(&name) {
            forget_table(conn, id)?;
            report.removed.push(name);
        }
    }
    report.replicated.sort();
    Ok((tables, report))
}

/// Creates the table's triggers unless identical ones exist; returns whether it wrote any.
fn ensure_triggers(conn: &Connection, id: i64, info: &TableInfo) -> Result<bool, StoreError> {
    let wanted = ddl::create_triggers(id, info);
    let names = names::triggers(id);
    let mut current = true;
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
    }
    if current {
        return Ok(false);
    }
    conn.execute_batch(&ddl::drop_triggers(id))
        .context(format!("dropping old triggers of {:?}", info.name))?;
    for sql in &wanted {
        conn.execute_batch(sql)
            .context(format!("creating triggers of {:?}", info.name))?;
    }
    Ok(true)
}

/// Removes every internal object of a table that is no longer replicated.
fn forget_table(conn: &Connection, id: i64) -> Result<(), StoreError> {
    conn.execute_batch(&format!(
        "{drop_triggers} DROP TABLE IF EXISTS {version}; DELETE FROM {tables} WHERE id = {id}; \
         DELETE FROM {log} WHERE tbl = {id};",
        drop_triggers = ddl::drop_triggers(id),
        version = quote(&names::version_table(id)),
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

fn table_columns(conn: &Connection, table: &str) -> Result<Vec<ColumnInfo>, StoreError> {
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
