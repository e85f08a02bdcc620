//! Change detection: file-system notifications on the database and its WAL.
//!
//! Any write by the application touches the `-wal` file (WAL mode) or the database file
//! (rollback journal), so a notification on either means "drain soon". Notifications are
//! coalesced: however many arrive, the driver sees one pending signal. The engine's
//! `polling_interval` drain is the fallback where notifications are unavailable (some network
//! file systems) or lost.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

/// Watches a database file; [`DbWatcher::changed`] resolves after the next change.
pub struct DbWatcher {
    _watcher: notify::RecommendedWatcher,
    signal: Arc<Notify>,
}

impl DbWatcher {
    /// Starts watching `db_path` and its `-wal` companion (by watching their directory).
    pub fn new(db_path: &Path) -> notify::Result<Self> {
        let signal = Arc::new(Notify::new());
        let names: Vec<PathBuf> = ["", "-wal"]
            .iter()
            .map(|suffix| {
                let mut name = db_path.file_name().unwrap_or_default().to_os_string();
                name.push(suffix);
                PathBuf::from(name)
            })
            .collect();
        let notify_signal = signal.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                tracing::trace!(?event, "file event");
                if !matches!(
                    event.kind,
                    notify::EventKind::Modify(_) | notify::EventKind::Create(_)
                ) {
                    return;
                }
                let relevant = event.paths.iter().any(|p| {
                    p.file_name()
                        .is_some_and(|n| names.iter().any(|w| w.as_os_str() == n))
                });
                if relevant {
                    notify_signal.notify_one();
                }
            })?;
        let dir = match db_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(DbWatcher {
            _watcher: watcher,
            signal,
        })
    }

    /// Resolves once a change happened since the last call (immediately if one is pending).
    pub async fn changed(&self) {
        self.signal.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_write_to_the_wal_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        std::fs::write(&db, b"").unwrap();
        let watcher = DbWatcher::new(&db).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(dir.path().join("app.db-wal"), b"frame").unwrap();
        tokio::time::timeout(Duration::from_secs(2), watcher.changed())
            .await
            .expect("a change notification within 2 s");
        // Let the rest of that write's events arrive, and consume their signal.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = tokio::time::timeout(Duration::from_millis(100), watcher.changed()).await;
        std::fs::write(dir.path().join("unrelated.txt"), b"x").unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), watcher.changed())
                .await
                .is_err(),
            "unrelated files must not signal"
        );
    }
}
