//! The schema commands: `--migrate` (publish a replicated migration and wait until this node
//! applied it), `--schema-status` (print the local schema fingerprint, migration version
//! and parked messages) and `--parked` (list parked messages by table; with `--discard`,
//! discard a dropped table's parked changes).
//!
//! `--migrate` opens the database next to a possibly running sidecar: it writes the
//! migration to the outbox in one `BEGIN IMMEDIATE` transaction, the sidecar publishes it
//! with its next drain, and every replica (this one included) applies it when it arrives
//! from the stream. `--parked --discard` likewise deletes in one `BEGIN IMMEDIATE`
//! transaction next to the running sidecar, which re-reads its parked counts (health,
//! metrics) from the database after every drain. Nothing here talks to NATS.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use harmonylite_core::hlc::ntp64_from_unix;
use harmonylite_core::sqlite::{
    migrate, parked, snapshot, DiscardError, PublishMigrationError, Store,
};
use rusqlite::{Connection, OpenFlags};

use crate::config::Config;

/// How long `--migrate` waits for the local sidecar to apply the migration.
pub const APPLY_WAIT: Duration = Duration::from_secs(30);

/// `--migrate FILE`: checks and publishes the migration, then waits (up to [`APPLY_WAIT`])
/// until this node applied it.
pub fn migrate(config: &Config, file: &Path, allow_destructive: bool) -> Result<()> {
    let sql = std::fs::read_to_string(file)
        .with_context(|| format!("--migrate: reading {}", file.display()))?;
    let path = &config.db_path;
    anyhow::ensure!(
        path.is_file(),
        "--migrate: the database {} does not exist (start harmonylite on it once first)",
        path.display()
    );
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::default().difference(OpenFlags::SQLITE_OPEN_CREATE),
    )
    .with_context(|| format!("opening {}", path.display()))?;
    let node_id = match Store::stored_node_id(&conn)? {
        Some(id) => id,
        None => config.node_id.context(
            "--migrate: this database has no node id yet; start harmonylite on it once first \
             (or set node_id)",
        )?,
    };
    let mut store = Store::open(conn, config.store_options(node_id))
        .with_context(|| format!("opening {}", path.display()))?;
    let now = ntp64_from_unix(SystemTime::now().duration_since(UNIX_EPOCH)?);
    let published = match store.publish_migration(&sql, allow_destructive, now) {
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
    let deadline = Instant::now() + APPLY_WAIT;
    loop {
        let applied = store
            .migrations()?
            .into_iter()
            .find(|m| hex(&m.id) == published.id);
        if let Some(m) = applied {
            println!(
                "migration {} applied here as version {} (stream sequence {})",
                file.display(),
                m.version,
                m.stream_seq
            );
            return Ok(());
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
                "--migrate: the migration was published but this node could not apply it (parked at \
                 stream sequence {}): {}",
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
            println!("migration {} queued (id {})", file.display(), published.id);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--schema-status`: prints the schema fingerprint, migration version, applied migrations
/// and parked messages by table, reading the database only.
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
    for (table, count) in migrate::parked_by_table(&conn)? {
        let table = if table.is_empty() { "-" } else { &table };
        println!("parked {table} {count}");
    }
    Ok(())
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
