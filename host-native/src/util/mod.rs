//! Small helpers with no replication rule in them: randomness, wall-clock milliseconds,
//! directory fsync.

use std::path::Path;

use anyhow::Context as _;
use harmonylite_core::hlc::NodeId;

pub mod db_lock;
pub mod failpoint;

/// A random non-zero node id.
pub fn random_node_id() -> anyhow::Result<NodeId> {
    loop {
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| anyhow::anyhow!("no randomness for a node id: {e}"))?;
        if let Some(id) = NodeId::from_u128(u128::from_le_bytes(bytes)) {
            return Ok(id);
        }
    }
}

/// A random `u64` (incarnations).
pub fn random_u64() -> anyhow::Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
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
pub fn sync_dir(path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}
