//! Small helpers with no replication rule in them: randomness, wall-clock milliseconds,
//! directory fsync, and how the library's errors print ([`error`]).

use std::path::Path;

use harmonylite_core::hlc::NodeId;

pub mod db_lock;
pub mod error;
pub mod failpoint;

pub use error::UtilError;

/// A random non-zero node id.
pub fn random_node_id() -> Result<NodeId, UtilError> {
    loop {
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes).map_err(|source| UtilError::NoRandomness {
            purpose: "a node id",
            source,
        })?;
        if let Some(id) = NodeId::from_u128(u128::from_le_bytes(bytes)) {
            return Ok(id);
        }
    }
}

/// A random `u64` (incarnations).
pub fn random_u64() -> Result<u64, UtilError> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|source| UtilError::NoRandomness {
        purpose: "an incarnation",
        source,
    })?;
    Ok(u64::from_le_bytes(bytes))
}

/// Wall-clock time as Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Fsyncs the directory that holds `path` (so a rename or removal in it is durable).
pub fn sync_dir(path: &Path) -> Result<(), UtilError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| UtilError::SyncDir {
            dir: dir.to_owned(),
            source,
        })
}
