//! The schema commands: `--migrate` (publish a replicated migration and wait until this node
//! applied it), `--merge` (the same for a migration that switches how a table merges),
//! `--schema-status` (print the local schema fingerprint, migration version, merge modes
//! and parked messages) and `--parked` (list parked messages by table; with `--discard`,
//! discard a dropped table's parked changes).
//!
//! `--migrate` and `--merge` open the database next to a possibly running sidecar: they
//! write the migration to the outbox in one `BEGIN IMMEDIATE` transaction, the sidecar
//! publishes it with its next drain, and every replica (this one included) applies it when
//! it arrives from the stream. `--parked --discard` likewise deletes in one `BEGIN IMMEDIATE`
//! transaction next to the running sidecar, which re-reads its parked counts (health,
//! metrics) from the database after every drain. Nothing here talks to NATS.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use harmonylite_core::column_merge::{describe, TableMerge};
use harmonylite_core::error::StoreError;
use harmonylite_core::hlc::ntp64_from_unix;
use harmonylite_core::sqlite::{
    migrate, parked, snapshot, AppliedMigration, DiscardError, PublishMigrationError,
    PublishedMigration, Store, StoreOptions,
};
use rusqlite::{Connection, OpenFlags};

use crate::config::cli::MergeSwitch;
use crate::config::{Config, MergeSection};

/// How long `--migrate` and `--merge` wait for the local sidecar to apply the migration.
pub const APPLY_WAIT: Duration = Duration::from_secs(30);

/// `--migrate FILE`: checks and publishes the migration, then waits (up to [`APPLY_WAIT`])
/// until this node applied it.
pub fn migrate(config: &Config, file: &Path, allow_destructive: bool) -> Result<()> {
    let sql = std::fs::read_to_string(file)
        .with_context(|| format!("--migrate: reading {}", file.display()))?;
    let mut store = open_store(config, "--migrate", |options| options)?;
    let published = match store.publish_migration(&sql, allow_destructive, now()?) {
        Ok(published) => published,
        Err(PublishMigrationError::Refused(e)) => {
            bail!("--migrate: {} refused: {e}", file.display())
        }
        Err(PublishMigrationError::Store(e)) => return Err(e.into()),
    };
    tracing::info!(
        id = %published.id,
        statements = published.statements,
        destructive = published.destructive,
        base_version = published.base_version,
        "migration {} queued for publishing",
        file.display()
    );
    match wait_applied(&store, &published, "--migrate")? {
        Some(m) => println!(
            "migration {} applied here as version {} (stream sequence {})",
            file.display(),
            m.version,
            m.stream_seq
        ),
        None => println!("migration {} queued (id {})", file.display(), published.id),
    }
    Ok(())
}

/// `--merge TABLE=MODE`: publishes the replicated migration that switches how the table
/// merges ([`Store::publish_merge_switch`]), then waits (up to [`APPLY_WAIT`]) until this
/// node applied it. Nothing is published when the table already merges that way here.
///
/// An operator may edit `[merge]` before or after switching (every node's must match the
/// database before that node restarts; the command says what to write): when this node's
/// `[merge]` disagrees with the database already, the database is opened as it records
/// each table's mode instead (a table capture has not registered yet is then registered by
/// row, as the sidecar with this `[merge]` would refuse to start anyway).
pub fn merge(config: &Config, switch: &MergeSwitch) -> Result<()> {
    let mut store = match open_store(config, "--merge", |options| options) {
        Ok(store) => store,
        Err(e) if matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Config(_))) => {
            tracing::info!(
                "this node's [merge] disagrees with its database ({e:#}); opening it as the \
                 database records each table's mode"
            );
            open_store(config, "--merge", |options| StoreOptions {
                merge: None,
                ..options
            })?
        }
        Err(e) => return Err(e),
    };
    let modes = store.merge_modes();
    let Some((table, current)) = modes
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(&switch.table))
    else {
        let names: Vec<&str> = modes.iter().map(|(name, _)| name.as_str()).collect();
        bail!(
            "--merge {switch}: table {:?} is not replicated here (replicated tables: {})",
            switch.table,
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    };
    let wanted = switch.merge.as_ref();
    if same_merge(current.as_ref(), wanted) {
        println!(
            "table {table} already merges by {} here: nothing to publish",
            describe(wanted)
        );
        print_merge_hint(config, table, wanted);
        return Ok(());
    }
    let published = match store.publish_merge_switch(table, wanted, now()?) {
        Ok(published) => published,
        Err(PublishMigrationError::Refused(e)) => bail!("--merge {switch} refused: {e}"),
        Err(PublishMigrationError::Store(e)) => return Err(e.into()),
    };
    tracing::info!(
        id = %published.id,
        table = %table,
        from = %describe(current.as_ref()),
        to = %describe(wanted),
        "merge switch queued for publishing"
    );
    match wait_applied(&store, &published, "--merge")? {
        Some(m) => println!(
            "table {table} merges by {} here from migration version {} (stream sequence {}); \
             every replica switches when it applies it",
            describe(wanted),
            m.version,
            m.stream_seq
        ),
        None => println!(
            "merge switch of table {table} to {} queued (id {})",
            describe(wanted),
            published.id
        ),
    }
    print_merge_hint(config, table, wanted);
    Ok(())
}

/// Tells the operator what every node's `[merge]` must say now that `table` merges as
/// `merge` (a node whose `[merge]` disagrees with its database refuses to start).
fn print_merge_hint(config: &Config, table: &str, merge: Option<&TableMerge>) {
    let Some(section) = &config.merge else {
        println!(
            "this configuration has no [merge] section, so nodes keep what their database \
             records; a [merge] section, on any node, must say:"
        );
        print_merge_section(&merge_section_with(&MergeSection::default(), table, merge));
        return;
    };
    let agrees = section
        .config()
        .is_ok_and(|c| same_merge(c.table(table), merge));
    if !agrees {
        tracing::warn!(
            table,
            "this node's [merge] section disagrees with the table's new mode: change it on \
             every node before restarting that node (a node refuses to start otherwise)"
        );
        println!("before restarting each node, change its [merge] section to:");
        print_merge_section(&merge_section_with(section, table, merge));
    }
}

fn print_merge_section(section: &MergeSection) {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("[merge]");
    println!("column = [{}]", list(&section.column));
    println!("counters = [{}]", list(&section.counters));
}

/// `section` with `table` merging as `merge` instead of as it says.
fn merge_section_with(
    section: &MergeSection,
    table: &str,
    merge: Option<&TableMerge>,
) -> MergeSection {
    let mut column: Vec<String> = section
        .column
        .iter()
        .filter(|t| !t.eq_ignore_ascii_case(table))
        .cloned()
        .collect();
    let mut counters: Vec<String> = section
        .counters
        .iter()
        .filter(|c| {
            c.split_once('.')
                .is_none_or(|(t, _)| !t.eq_ignore_ascii_case(table))
        })
        .cloned()
        .collect();
    if let Some(merge) = merge {
        column.push(table.to_owned());
        counters.extend(merge.counters.iter().map(|c| format!("{table}.{c}")));
    }
    MergeSection { column, counters }
}

/// Whether two merge modes of a table are the same (counters in any order, ASCII case
/// ignored).
fn same_merge(a: Option<&TableMerge>, b: Option<&TableMerge>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.counters.len() == b.counters.len() && a.counters.iter().all(|c| b.is_counter(c))
        }
        _ => false,
    }
}

/// The wall-clock time that stamps a migration's id.
fn now() -> Result<harmonylite_core::hlc::NTP64> {
    Ok(ntp64_from_unix(
        SystemTime::now().duration_since(UNIX_EPOCH)?,
    ))
}

/// Opens the existing database as a store with the configuration's options (changed by
/// `options`), for `command`.
fn open_store(
    config: &Config,
    command: &str,
    options: impl FnOnce(StoreOptions) -> StoreOptions,
) -> Result<Store> {
    let path = &config.db_path;
    anyhow::ensure!(
        path.is_file(),
        "{command}: the database {} does not exist (start harmonylite on it once first)",
        path.display()
    );
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::default().difference(OpenFlags::SQLITE_OPEN_CREATE),
    )
    .with_context(|| format!("opening {}", path.display()))?;
    let node_id = match Store::stored_node_id(&conn)? {
        Some(id) => id,
        None => config.node_id.with_context(|| {
            format!(
                "{command}: this database has no node id yet; start harmonylite on it once \
                 first (or set node_id)"
            )
        })?,
    };
    Store::open(conn, options(config.store_options(node_id)))
        .with_context(|| format!("opening {}", path.display()))
}

/// Waits (up to [`APPLY_WAIT`]) until this node applied `published`: `Some` once it did,
/// `None` (with a warning) when its sidecar did not within the wait, an error when the
/// migration came back and this node parked it.
fn wait_applied(
    store: &Store,
    published: &PublishedMigration,
    command: &str,
) -> Result<Option<AppliedMigration>> {
    let deadline = Instant::now() + APPLY_WAIT;
    loop {
        let applied = store
            .migrations()?
            .into_iter()
            .find(|m| hex(&m.id) == published.id);
        if applied.is_some() {
            return Ok(applied);
        }
        if let Some(p) = store.parked()?.into_iter().find(|p| {
            p.kind == harmonylite_core::report::ParkReason::Migration && {
                matches!(
                    harmonylite_core::wire::decode_message(&p.frame),
                    Ok(harmonylite_core::wire::Message::Migration(m)) if hex(&m.id) == published.id
                )
            }
        }) {
            bail!(
                "{command}: the migration was published but this node could not apply it \
                 (parked at stream sequence {}): {}",
                p.seq,
                p.reason
            );
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "the migration is in the outbox but this node's sidecar did not apply it within \
                 {} s (is it running?); it is published and applied when the sidecar runs",
                APPLY_WAIT.as_secs()
            );
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--schema-status`: prints the schema fingerprint, migration version, applied migrations,
/// each replicated table's merge mode (`merge <table> row`, `merge <table> column`,
/// `merge <table> column counters=<c1>,<c2>`) and parked messages by table, reading the
/// database only.
pub fn print_status(config: &Config) -> Result<()> {
    let path = &config.db_path;
    let conn = snapshot::open_read_only(&path.to_string_lossy())
        .with_context(|| format!("--schema-status: opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let status = migrate::status(&conn)?;
    println!("schema_fingerprint {}", status.fingerprint);
    println!("migration_version {}", status.migration_version);
    println!("parked_migrations {}", status.parked_migrations);
    for m in migrate::list_if_installed(&conn)? {
        let first_line = m.sql.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        println!(
            "migration {} seq {}{} {}",
            m.version,
            m.stream_seq,
            if m.destructive { " destructive" } else { "" },
            first_line.trim()
        );
    }
    for (table, merge) in merge_modes(&conn)? {
        match merge {
            None => println!("merge {table} row"),
            Some(m) if m.counters.is_empty() => println!("merge {table} column"),
            Some(m) => println!("merge {table} column counters={}", m.counters.join(",")),
        }
    }
    for (table, count) in migrate::parked_by_table(&conn)? {
        let table = if table.is_empty() { "-" } else { &table };
        println!("parked {table} {count}");
    }
    Ok(())
}

/// How each replicated table merges, read from the registry without writing (a [`Store`]
/// would install capture).
fn merge_modes(conn: &Connection) -> Result<Vec<(String, Option<TableMerge>)>> {
    Ok(harmonylite_core::sqlite::recorded_merge_modes(conn)?)
}

/// `--parked`: lists parked messages by table, reading the database only; with `discard`,
/// discards that table's parked changes instead (refused when the table exists here unless
/// `force`). `json` prints one JSON object.
pub fn parked(config: &Config, discard: Option<&str>, force: bool, json: bool) -> Result<()> {
    match discard {
        None => print_parked(config, json),
        Some(table) => discard_parked(config, table, force, json),
    }
}

fn print_parked(config: &Config, json: bool) -> Result<()> {
    let path = &config.db_path;
    let conn = snapshot::open_read_only(&path.to_string_lossy())
        .with_context(|| format!("--parked: opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let tables = parked::tables(&conn)?;
    let total: u64 = tables.iter().map(|t| t.messages).sum();
    if json {
        let rows: Vec<serde_json::Value> = tables
            .iter()
            .map(|t| {
                serde_json::json!({
                    "table": t.table,
                    "messages": t.messages,
                    "exists": t.exists,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "parked": total, "tables": rows }));
        return Ok(());
    }
    if tables.is_empty() {
        println!("no parked messages");
        return Ok(());
    }
    let width = tables
        .iter()
        .map(|t| t.table.len())
        .chain([5])
        .max()
        .unwrap_or(5);
    println!("{:<width$}  {:>8}  HERE", "TABLE", "MESSAGES");
    for t in &tables {
        let (name, here, note) = if t.table.is_empty() {
            (
                "-",
                "",
                "not about one table (a migration, an unreadable message)".to_owned(),
            )
        } else if t.exists {
            (
                t.table.as_str(),
                "yes",
                "waiting for a column or a primary key this node lacks".to_owned(),
            )
        } else {
            (
                t.table.as_str(),
                "no",
                format!(
                    "waiting for the table; if it was dropped on purpose: harmonylite parked --discard {} --config …",
                    t.table
                ),
            )
        };
        println!("{name:<width$}  {:>8}  {here:<4}  {note}", t.messages);
    }
    println!("{total} parked message(s)");
    Ok(())
}

fn discard_parked(config: &Config, table: &str, force: bool, json: bool) -> Result<()> {
    let path = &config.db_path;
    anyhow::ensure!(
        path.is_file(),
        "--discard: the database {} does not exist",
        path.display()
    );
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::default().difference(OpenFlags::SQLITE_OPEN_CREATE),
    )
    .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(DISCARD_BUSY_WAIT)?;
    let discarded = match parked::discard(&mut conn, table, force) {
        Ok(discarded) => discarded,
        Err(DiscardError::TableExists { table, messages }) => bail!(
            "--discard: table {table} exists here, so its {messages} parked message(s) wait for              a column or a primary key this node lacks, and discarding them loses those changes.              Give this node the column (a migration) to apply them, or add --force to discard              them anyway"
        ),
        Err(DiscardError::Store(e)) => return Err(e.into()),
        Err(e) => bail!("--discard: {e}"),
    };
    tracing::info!(
        table,
        messages = discarded.messages,
        trimmed = discarded.trimmed,
        changes = discarded.changes,
        "discarded parked changes"
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "table": table,
                "messages": discarded.messages,
                "trimmed": discarded.trimmed,
                "changes": discarded.changes,
            })
        );
    } else {
        println!(
            "discarded {} parked message(s) for table {table} ({} row change(s))",
            discarded.messages, discarded.changes
        );
        if discarded.trimmed > 0 {
            println!(
                "{} parked message(s) also held changes for other tables: kept without {table}'s                  changes, retried every cleanup_interval",
                discarded.trimmed
            );
        }
    }
    Ok(())
}

/// How long `--discard` waits for the application's or the sidecar's write lock.
const DISCARD_BUSY_WAIT: Duration = Duration::from_secs(30);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use harmonylite_core::column_merge::MergeConfig;
    use harmonylite_core::hlc::NodeId;

    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// A database with three replicated tables, `notes` merging by column and `stock` by
    /// column with two counters, and the configuration of its node.
    fn database(dir: &Path, merge_section: &str) -> Config {
        let db = dir.join("app.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);
             CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, body TEXT);
             CREATE TABLE stock(id INTEGER PRIMARY KEY, qty INTEGER, reserved INTEGER);",
        )
        .unwrap();
        let mut options = StoreOptions::new(NodeId::from_u128(7).unwrap());
        options.merge = Some(
            MergeConfig::new(
                &strings(&["notes"]),
                &strings(&["stock.qty", "stock.reserved"]),
            )
            .unwrap(),
        );
        drop(Store::open(conn, options).unwrap());
        Config::from_toml_str(
            &format!(
                "db_path = {:?}\nnode_id = 7\n{merge_section}",
                db.display().to_string()
            ),
            "test.toml",
        )
        .unwrap()
    }

    #[test]
    fn schema_status_reads_each_tables_merge_mode_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let config = database(dir.path(), "");
        let conn = snapshot::open_read_only(&config.db_path.to_string_lossy()).unwrap();
        let modes = merge_modes(&conn).unwrap();
        assert_eq!(
            modes,
            [
                ("items".to_owned(), None),
                ("notes".to_owned(), Some(TableMerge::default())),
                (
                    "stock".to_owned(),
                    Some(TableMerge {
                        counters: strings(&["qty", "reserved"])
                    })
                ),
            ]
        );
        // The same as the store says.
        let store = open_store(&config, "test", |o| o).unwrap();
        assert_eq!(store.merge_modes(), modes);
        // A dropped table is no longer listed; a database without capture lists nothing.
        store
            .connection()
            .execute_batch("DROP TABLE items")
            .unwrap();
        assert_eq!(merge_modes(&conn).unwrap().len(), 2);
        let empty = Connection::open_in_memory().unwrap();
        assert!(merge_modes(&empty).unwrap().is_empty());
        print_status(&config).unwrap();
    }

    #[test]
    fn merge_refuses_an_unknown_table_and_publishes_nothing_for_the_current_mode() {
        let dir = tempfile::tempdir().unwrap();
        let config = database(dir.path(), "");
        let switch = |table: &str, merge: Option<TableMerge>| MergeSwitch {
            table: table.into(),
            merge,
        };
        let error = merge(&config, &switch("nope", None)).unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("\"nope\" is not replicated here")
                && message.contains("items, notes, stock"),
            "{message}"
        );
        // Already so (table name in another case, counters in another order): no migration.
        merge(&config, &switch("ITEMS", None)).unwrap();
        let counters = TableMerge {
            counters: strings(&["Reserved", "qty"]),
        };
        merge(&config, &switch("stock", Some(counters))).unwrap();
        let store = open_store(&config, "test", |o| o).unwrap();
        assert_eq!(store.outbox_depth().unwrap().0, 0, "nothing was published");
        // A [merge] that disagrees with the database (notes by row here) does not stop it.
        let disagreeing = Config {
            merge: Some(MergeSection::default()),
            ..config.clone()
        };
        assert!(open_store(&disagreeing, "test", |o| o).is_err());
        merge(&disagreeing, &switch("notes", Some(TableMerge::default()))).unwrap();
        assert_eq!(store.outbox_depth().unwrap().0, 0, "nothing was published");
        // A counter that is no column of the table: refused before publishing.
        let bad = TableMerge {
            counters: strings(&["nope"]),
        };
        let error = merge(&config, &switch("notes", Some(bad))).unwrap_err();
        assert!(format!("{error:#}").contains("refused"), "{error:#}");
        assert_eq!(store.outbox_depth().unwrap().0, 0, "nothing was published");
    }

    #[test]
    fn the_hint_rewrites_only_the_switched_tables_entries() {
        let section = MergeSection {
            column: strings(&["notes", "Stock", "log"]),
            counters: strings(&["stock.qty", "items.n"]),
        };
        let to_row = merge_section_with(&section, "stock", None);
        assert_eq!(to_row.column, strings(&["notes", "log"]));
        assert_eq!(to_row.counters, strings(&["items.n"]));
        let to_counters = merge_section_with(
            &section,
            "stock",
            Some(&TableMerge {
                counters: strings(&["qty", "reserved"]),
            }),
        );
        assert_eq!(to_counters.column, strings(&["notes", "log", "stock"]));
        assert_eq!(
            to_counters.counters,
            strings(&["items.n", "stock.qty", "stock.reserved"])
        );
        // What the hint prints parses back as the mode it names.
        let config = to_counters.config().unwrap();
        assert!(same_merge(
            config.table("stock"),
            Some(&TableMerge {
                counters: strings(&["reserved", "qty"])
            })
        ));
        assert!(same_merge(config.table("items"), config.table("ITEMS")));
        assert!(!same_merge(config.table("notes"), None));
    }
}
