//! Named pause points for crash tests: a test arms one with the environment variable
//! `HARMONYLITE_PAUSE_AT=<name>`; the sidecar then logs `paused at failpoint <name>` when it
//! gets there and stops making progress, so the test can `kill -9` it at exactly that point.
//! Unarmed (always, outside tests), a failpoint costs one environment lookup.
//!
//! | name | where |
//! | --- | --- |
//! | `restore-download` | after the first chunk of a snapshot download reached the temporary file |
//! | `restore-swap` | the restored file is complete and journaled, the old `-wal`/`-shm` are gone, before the rename |
//! | `snapshot-upload` | after the first chunk of a snapshot upload was sent |

/// The environment variable that arms a failpoint.
pub const ENV: &str = "HARMONYLITE_PAUSE_AT";

/// Whether the failpoint `name` is armed.
pub fn is_armed(name: &str) -> bool {
    std::env::var(ENV).is_ok_and(|armed| armed == name)
}

/// Pauses forever if the failpoint `name` is armed; returns at once otherwise.
pub async fn pause(name: &str) {
    if is_armed(name) {
        tracing::warn!("paused at failpoint {name} ({ENV})");
        std::future::pending::<()>().await;
    }
}

/// [`pause`] for blocking code (a thread of its own).
pub fn pause_blocking(name: &str) {
    if is_armed(name) {
        tracing::warn!("paused at failpoint {name} ({ENV})");
        loop {
            std::thread::park();
        }
    }
}
