//! One stored snapshot as every store names it: `<stream>/<covered seq>-<taken at ms>-<node>.hlsnap`.

use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::NodeId;

/// File name extension of a stored snapshot.
pub const EXTENSION: &str = "hlsnap";
/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its name in the store (see the module docs).
    pub name: String,
    /// The last stream sequence it covers.
    pub covered_seq: StreamSeq,
    /// When it was taken (Unix ms, the taker's clock).
    pub taken_at_ms: u64,
    /// The node that took it.
    pub taken_by: NodeId,
    /// Framed size in bytes (0 when the store does not say).
    pub size: u64,
}

impl SnapshotInfo {
    /// A new snapshot of `stream`'s replica state.
    pub fn new(stream: &str, covered_seq: StreamSeq, taken_at_ms: u64, taken_by: NodeId) -> Self {
        SnapshotInfo {
            name: format!(
                "{stream}/{:020}-{taken_at_ms:013}-{taken_by}.{EXTENSION}",
                covered_seq.get()
            ),
            covered_seq,
            taken_at_ms,
            taken_by,
            size: 0,
        }
    }

    /// Parses a name of `stream` (None: another stream's, or not a snapshot).
    pub fn parse(stream: &str, name: &str) -> Option<Self> {
        let rest = name.strip_prefix(stream)?.strip_prefix('/')?;
        let rest = rest.strip_suffix(EXTENSION)?.strip_suffix('.')?;
        let mut parts = rest.splitn(3, '-');
        let covered: u64 = parts.next()?.parse().ok()?;
        let at: u64 = parts.next()?.parse().ok()?;
        let node: NodeId = parts.next()?.parse().ok()?;
        let info = SnapshotInfo::new(stream, StreamSeq::new(covered), at, node);
        (info.name == name).then_some(info)
    }

    /// Sort key: covered sequence, then time taken.
    pub fn key(&self) -> (u64, u64) {
        (self.covered_seq.get(), self.taken_at_ms)
    }
}
