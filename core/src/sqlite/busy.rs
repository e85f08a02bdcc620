//! Waiting for the application's locks.
//!
//! SQLite's built-in busy timeout sleeps 1, 2, 5, 10 ... ms between attempts, so a store that
//! starts a transaction while the application commits waits at least a millisecond, and under
//! a steady stream of application writes it keeps losing the race. Natively the store polls
//! every 100 µs for the first 5 ms, then every millisecond, until the configured timeout.

use std::time::Duration;

use rusqlite::Connection;

#[cfg(not(target_family = "wasm"))]
mod native {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// The longest busy timeout any store in this process asked for, in milliseconds
    /// (SQLite's busy handler is a plain function, so the timeout cannot be captured).
    static TIMEOUT_MS: AtomicU64 = AtomicU64::new(5_000);

    pub fn set_timeout(timeout: Duration) {
        TIMEOUT_MS.fetch_max(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// Called by SQLite with the number of earlier attempts; `true` means "try again".
    pub fn handler(attempts: i32) -> bool {
        const FAST: i32 = 50;
        let waited_ms = if attempts < FAST {
            attempts as u64 / 10
        } else {
            5 + (attempts - FAST) as u64
        };
        if waited_ms >= TIMEOUT_MS.load(Ordering::Relaxed) {
            return false;
        }
        let pause = if attempts < FAST {
            Duration::from_micros(100)
        } else {
            Duration::from_millis(1)
        };
        std::thread::sleep(pause);
        true
    }
}

/// Makes `conn` retry locked operations for up to `timeout`.
pub fn wait_for_locks(conn: &mut Connection, timeout: Duration) -> rusqlite::Result<()> {
    #[cfg(not(target_family = "wasm"))]
    {
        native::set_timeout(timeout);
        conn.busy_handler(Some(native::handler))
    }
    #[cfg(target_family = "wasm")]
    {
        // One connection per database in a wasm replica: nothing to wait for, and no sleep.
        conn.busy_timeout(timeout)
    }
}
