//! Whether another connection has the database open, read from SQLite's own locks.
//!
//! Every connection to a WAL-mode database holds a shared POSIX lock on the "DMS" byte of
//! the `-shm` file from its first statement until it closes; a connection inside a
//! transaction on a rollback-journal database holds a lock in the database file's lock
//! range. The kernel keeps POSIX locks per file, so they are visible from every process,
//! container and PID namespace that shares the volume, where `/proc` shows only this
//! namespace's processes.
//!
//! Limits, stated in docs/snapshots.md: a connection opened but not used yet holds no lock;
//! locks on network file systems are as good as the server's. This process's own locks
//! never count (POSIX locks do not conflict within a process), and opening and closing the
//! files to probe them releases this process's locks on them: call [`other_connection`]
//! only while this process has no connection to the database.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

/// Offset of the `-shm` byte every WAL connection holds a shared lock on (SQLite's
/// `UNIX_SHM_DMS`: `(22 + SQLITE_SHM_NLOCK) * 4 + SQLITE_SHM_NLOCK`).
const SHM_DMS_BYTE: i64 = 128;
/// SQLite's `PENDING_BYTE`: the start of the database file's lock range.
const PENDING_BYTE: i64 = 0x4000_0000;
/// Pending, reserved and shared bytes (`2 + SHARED_SIZE`).
const DB_LOCK_BYTES: i64 = 2 + 510;

/// A lock held by another connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The file the lock is on.
    pub file: PathBuf,
    /// The holder's process id as this PID namespace sees it (None: a process this
    /// namespace cannot see, e.g. the application in another container).
    pub pid: Option<i32>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "process {pid} holds a lock on {}", self.file.display()),
            None => write!(
                f,
                "a process in another PID namespace (another container) holds a lock on {}",
                self.file.display()
            ),
        }
    }
}

/// The first lock another process holds on the database's `-shm` or lock range, if any.
pub fn other_connection(db_path: &Path) -> std::io::Result<Option<Holder>> {
    let shm = with_suffix(db_path, "-shm");
    if let Some(holder) = probe(&shm, SHM_DMS_BYTE, 1)? {
        return Ok(Some(holder));
    }
    probe(db_path, PENDING_BYTE, DB_LOCK_BYTES)
}

/// Asks the kernel whether a write lock on `len` bytes at `start` of `path` would conflict
/// with another process's lock (`F_GETLK`); a missing file has no locks.
fn probe(path: &Path, start: i64, len: i64) -> std::io::Result<Option<Holder>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = start;
    lock.l_len = len;
    fcntl(&file, FcntlArg::F_GETLK(&mut lock)).map_err(std::io::Error::from)?;
    if lock.l_type == libc::F_UNLCK as libc::c_short {
        return Ok(None);
    }
    Ok(Some(Holder {
        file: path.to_owned(),
        pid: (lock.l_pid > 0).then_some(lock.l_pid),
    }))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A Python process holding a connection open after one read (the way an application
    /// keeps its connection), optionally in a PID namespace of its own.
    fn hold_open(db: &Path, own_namespace: bool) -> Child {
        let script = format!(
            "import sqlite3, sys, time\nc = sqlite3.connect({:?})\nc.execute('SELECT count(*) FROM t').fetchall()\nprint('open', flush=True)\ntime.sleep(60)\n",
            db.display().to_string()
        );
        let mut command = if own_namespace {
            let mut c = Command::new("unshare");
            c.args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "python3",
                "-c",
                &script,
            ]);
            c
        } else {
            let mut c = Command::new("python3");
            c.args(["-c", &script]);
            c
        };
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (and unshare) must be installed for this test");
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut out, &mut buf).expect("the holder printed 'open'");
        child
    }

    fn database(dir: &Path) -> PathBuf {
        let db = dir.join("app.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);",
        )
        .unwrap();
        drop(conn);
        db
    }

    fn stop(mut child: Child) {
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn an_open_connection_in_another_process_is_seen_and_its_close_too() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path());
        assert_eq!(other_connection(&db).unwrap(), None);
        let child = hold_open(&db, false);
        let holder = other_connection(&db)
            .unwrap()
            .expect("the open connection is seen");
        assert_eq!(holder.pid, Some(child.id() as i32));
        stop(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while other_connection(&db).unwrap().is_some() {
            assert!(Instant::now() < deadline, "the lock outlived its process");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_connection_in_another_pid_namespace_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path());
        let child = hold_open(&db, true);
        let holder = other_connection(&db).unwrap();
        stop(child);
        let holder = holder.expect("a connection in another PID namespace is seen");
        assert!(holder.file.ends_with("app.db-shm"), "{holder}");
    }

    #[test]
    fn this_process_own_connection_is_not_another() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path());
        assert_eq!(other_connection(&db).unwrap(), None);
        assert_eq!(
            other_connection(&dir.path().join("missing.db")).unwrap(),
            None
        );
    }
}
