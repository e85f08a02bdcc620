//! `--cleanup`: removes every harmonylite object from the database.

use std::time::Duration;

use anyhow::{Context, Result};
use harmonylite_core::sqlite::{uninstall, Store};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tracing::field::display;
use tracing::{info, Span};

use crate::config::Config;

/// `--cleanup`: drops every internal object from the database in one transaction.
pub fn cleanup(config: &Config) -> Result<()> {
    let path = &config.db_path;
    anyhow::ensure!(
        path.is_file(),
        "--cleanup: the database {} does not exist",
        path.display()
    );
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::default().difference(OpenFlags::SQLITE_OPEN_CREATE),
    )
    .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    if let Some(id) = Store::stored_node_id(&conn)? {
        Span::current().record("node_id", display(id));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let removed = uninstall(&tx)?;
    tx.commit()
        .with_context(|| format!("committing the cleanup of {}", path.display()))?;
    if removed.is_empty() {
        info!(db = %path.display(), "no harmonylite objects found; nothing removed");
    } else {
        info!(db = %path.display(), count = removed.len(), ?removed, "removed harmonylite objects");
    }
    Ok(())
}
