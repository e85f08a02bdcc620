//! `--adopt-stream`: the next start applies the change stream from its first message.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use harmonylite_core::sqlite::meta;
use harmonylite_core::sqlite::stream_identity;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// `--adopt-stream`: makes this database apply the change stream from its first message at
/// the next start, whatever stream that is ([`stream_identity::forget_stream`]). Returns the
/// cursor given up. Refuses while another process (the application, a running sidecar) has
/// the database open: a running sidecar would write its own cursor back.
pub fn adopt_stream(db_path: &Path) -> anyhow::Result<u64> {
    anyhow::ensure!(
        db_path.is_file(),
        "--adopt-stream: the database {} does not exist",
        db_path.display()
    );
    if let Some(holder) = crate::util::db_lock::other_connection(db_path)
        .with_context(|| format!("reading the locks on {}", db_path.display()))?
    {
        anyhow::bail!(
            "--adopt-stream: {} is open in another connection ({holder}): stop the application and harmonylite first",
            db_path.display()
        );
    }
    let mut conn = Connection::open_with_flags(
        db_path,
        OpenFlags::default().difference(OpenFlags::SQLITE_OPEN_CREATE),
    )
    .with_context(|| format!("opening {}", db_path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let cursor = meta::get_i64(&tx, meta::keys::CURSOR)
        .ok()
        .flatten()
        .with_context(|| {
            format!(
                "--adopt-stream: {} has no harmonylite metadata; nothing to adopt",
                db_path.display()
            )
        })?;
    stream_identity::forget_stream(&tx)?;
    tx.commit()
        .with_context(|| format!("committing --adopt-stream on {}", db_path.display()))?;
    Ok(cursor.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats::stream_identity::{refusal, StreamFacts};

    const CREATED: i64 = 1_795_706_470_000_000_000;

    #[test]
    fn adopting_resets_the_cursor_and_records_the_next_stream() {
        let dir = std::env::temp_dir().join(format!("hl-adopt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.db");
        let _ = std::fs::remove_file(&path);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE __hl_meta(key TEXT PRIMARY KEY, value)")
                .unwrap();
            meta::set(&conn, meta::keys::CURSOR, 42_i64).unwrap();
            let old = StreamFacts {
                created_ns: CREATED,
                last_seq: 42,
            };
            assert_eq!(refusal(&conn, "s", 42, old).unwrap(), None);
        }
        assert_eq!(adopt_stream(&path).unwrap(), 42);
        let conn = Connection::open(&path).unwrap();
        assert_eq!(meta::get_i64(&conn, meta::keys::CURSOR).unwrap(), Some(0));
        let new = StreamFacts {
            created_ns: CREATED + 9,
            last_seq: 2,
        };
        assert_eq!(refusal(&conn, "s", 0, new).unwrap(), None);
        drop(conn);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn adopting_needs_a_harmonylite_database() {
        let missing = std::env::temp_dir().join("hl-adopt-missing/app.db");
        let err = adopt_stream(&missing).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
