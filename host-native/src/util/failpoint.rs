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
//!
//! Failure points make a step fail a number of times, the way a JetStream 503, "no
//! responders" or a leader election makes it fail: `HARMONYLITE_FAIL_AT=<name>:<count>[,…]`.
//!
//! | name | what fails |
//! | --- | --- |
//! | `stream-info` | reading the change stream's bounds (start-up, restore, catch-up) |
//! | `snapshot-store` | opening the snapshot store |
//! | `snapshot-list` | listing the snapshots in the store |

use std::collections::HashMap;
use std::sync::Mutex;

/// The environment variable that arms a failpoint.
pub const ENV: &str = "HARMONYLITE_PAUSE_AT";
/// The environment variable that arms failure points.
pub const FAIL_ENV: &str = "HARMONYLITE_FAIL_AT";

/// Failures injected so far, by failure point.
static INJECTED: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

/// Fails while the failure point `name` has failures left (see the module docs); `Ok`
/// otherwise.
pub fn inject(name: &str) -> Result<(), crate::util::UtilError> {
    let Ok(armed) = std::env::var(FAIL_ENV) else {
        return Ok(());
    };
    let Some(count) = armed.split(',').find_map(|entry| {
        let (point, count) = entry.split_once(':')?;
        (point.trim() == name).then(|| count.trim().parse::<u32>().ok())?
    }) else {
        return Ok(());
    };
    let mut injected = INJECTED.lock().expect("failpoint lock");
    let done = injected
        .get_or_insert_with(HashMap::new)
        .entry(name.to_owned())
        .or_insert(0);
    if *done >= count {
        return Ok(());
    }
    *done += 1;
    Err(crate::util::UtilError::Injected {
        name: name.to_owned(),
        done: *done,
        count,
    })
}

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
