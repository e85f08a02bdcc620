//! Typed access to the `__hl_meta` key/value table.

use rusqlite::{params, Connection, OptionalExtension};

use crate::capture::names::{self, quote};
use crate::error::{Context, StoreError};

/// Keys of `__hl_meta`.
pub mod keys {
    /// This replica's node id (16-byte BLOB). Node-local: never taken from a snapshot.
    pub const NODE_ID: &str = "node_id";
    /// Last applied stream sequence (INTEGER).
    pub const CURSOR: &str = "cursor";
    /// Next batch sequence this node will publish (INTEGER). Node-local.
    pub const NEXT_BATCH: &str = "next_batch";
    /// Random id of this database's node-local state (hex INTEGER), part of every message id.
    /// Batch sequences restart at 1 when node-local state is lost (a deleted database, a
    /// restore from another node's snapshot); a new incarnation keeps their message ids from
    /// colliding with earlier ones inside JetStream's duplicate window. Node-local.
    pub const INCARNATION: &str = "incarnation";
    /// Id the next outbox frame gets (INTEGER). Ids are never reused, so a publisher that
    /// handed out frames up to id N can ask for "everything after N". Node-local.
    pub const NEXT_OUTBOX_ID: &str = "next_outbox_id";
    /// Last HLC time issued or observed (INTEGER, NTP64 bits).
    pub const CLOCK: &str = "clock";
    /// This node's own messages up to this stream sequence are applied, not skipped (set
    /// after a restore from another node's snapshot).
    pub const REPLAY_OWN_UNTIL: &str = "replay_own_until";
    /// Creation time (INTEGER, Unix nanoseconds) of the change stream the cursor counts in
    /// ([`crate::sqlite::stream_identity`]).
    pub const STREAM_CREATED: &str = "stream_created_ns";
    /// Fingerprint of the scope rules whose partitions the registry holds for every row
    /// (see `sqlite::routing::register_existing_rows`).
    pub const SCOPES_FINGERPRINT: &str = "scopes_fingerprint";
    /// A scoped replica's scope rules as a full node last gave them (postcard of
    /// `scope::ScopeRulesDoc`), so it routes its writes the same way offline.
    pub const SCOPE_RULES: &str = "scope_rules";
    /// The partitions a scoped replica's token grants, as its feed last named them
    /// (partition tokens, one per line), so it refuses writes outside them offline too.
    pub const SCOPE_PARTITIONS: &str = "scope_partitions";
}

/// Reads an integer meta value.
pub fn get_i64(conn: &Connection, key: &str) -> Result<Option<i64>, StoreError> {
    conn.query_row(
        &format!("SELECT value FROM {} WHERE key = ?1", quote(names::META)),
        [key],
        |row| row.get::<_, i64>(0),
    )
    .optional()
    .context(format!("reading {key} from {}", names::META))
}

/// Reads a BLOB meta value.
pub fn get_blob(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    conn.query_row(
        &format!("SELECT value FROM {} WHERE key = ?1", quote(names::META)),
        [key],
        |row| row.get::<_, Vec<u8>>(0),
    )
    .optional()
    .context(format!("reading {key} from {}", names::META))
}

/// Writes a meta value.
pub fn set(conn: &Connection, key: &str, value: impl rusqlite::ToSql) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO {}(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        quote(names::META)
    ))
    .and_then(|mut stmt| stmt.execute(params![key, value]))
    .context(format!("writing {key} to {}", names::META))?;
    Ok(())
}
