//! A SQLite VFS whose clock the test controls, so that the capture triggers'
//! `julianday('now')` reads simulated (and skewed) time.
//!
//! Each [`SimClock`] registers its own VFS: a copy of the default VFS whose
//! `xCurrentTimeInt64`/`xCurrentTime` return the clock's value. An application connection
//! opened with [`SimClock::vfs_name`] records writes at the simulated time.

use std::collections::HashMap;
use std::ffi::{c_int, CString};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::ffi;

/// Julian day number of the Unix epoch, in milliseconds.
const UNIX_EPOCH_JULIAN_MS: i64 = 210_866_760_000_000;

fn registry() -> &'static Mutex<HashMap<usize, Arc<AtomicI64>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<usize, Arc<AtomicI64>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn clock_of(vfs: *mut ffi::sqlite3_vfs) -> i64 {
    registry()
        .lock()
        .unwrap()
        .get(&(vfs as usize))
        .map(|c| c.load(Ordering::SeqCst))
        .expect("simulated VFS is registered")
}

unsafe extern "C" fn current_time_int64(
    vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite passes a valid output pointer.
    unsafe { *out = UNIX_EPOCH_JULIAN_MS + clock_of(vfs) };
    ffi::SQLITE_OK
}

unsafe extern "C" fn current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    // SAFETY: SQLite passes a valid output pointer.
    unsafe { *out = (UNIX_EPOCH_JULIAN_MS + clock_of(vfs)) as f64 / 86_400_000.0 };
    ffi::SQLITE_OK
}

/// A settable clock (Unix milliseconds) seen by connections opened with its VFS.
pub struct SimClock {
    name: String,
    millis: Arc<AtomicI64>,
}

impl SimClock {
    /// Registers a new VFS reading this clock, starting at `unix_millis`.
    pub fn new(unix_millis: i64) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!("hl-sim-{}", COUNTER.fetch_add(1, Ordering::SeqCst));
        let millis = Arc::new(AtomicI64::new(unix_millis));
        // SAFETY: the default VFS is static; we copy it and register a leaked copy whose
        // name and clock functions are ours. All other methods ignore the VFS pointer's
        // identity (they read pAppData, which is copied unchanged).
        unsafe {
            let base = ffi::sqlite3_vfs_find(std::ptr::null());
            assert!(!base.is_null(), "no default SQLite VFS");
            let mut vfs: ffi::sqlite3_vfs = *base;
            vfs.zName = CString::new(name.clone()).unwrap().into_raw();
            vfs.pNext = std::ptr::null_mut();
            vfs.xCurrentTime = Some(current_time);
            if vfs.iVersion >= 2 {
                vfs.xCurrentTimeInt64 = Some(current_time_int64);
            }
            let vfs = Box::into_raw(Box::new(vfs));
            registry()
                .lock()
                .unwrap()
                .insert(vfs as usize, millis.clone());
            assert_eq!(ffi::sqlite3_vfs_register(vfs, 0), ffi::SQLITE_OK);
        }
        SimClock { name, millis }
    }

    /// The VFS name to open connections with.
    pub fn vfs_name(&self) -> &str {
        &self.name
    }

    /// Sets the clock.
    pub fn set(&self, unix_millis: i64) {
        self.millis.store(unix_millis, Ordering::SeqCst);
    }
}
