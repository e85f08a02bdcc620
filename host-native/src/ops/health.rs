//! The health endpoint: the node's replication state as JSON, 200 when healthy, else 503.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

/// The replication state reported by the health endpoint.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Status {
    /// This node's id (hex).
    pub node_id: String,
    /// Whether the NATS connection is up.
    pub nats_connected: bool,
    /// Last stream sequence applied here.
    pub cursor: u64,
    /// Last sequence in the stream, as last seen.
    pub stream_last_seq: u64,
    /// Messages in the stream not applied here yet.
    pub lag: u64,
    /// Frames waiting for a JetStream ack.
    pub outbox_depth: u64,
    /// Row changes waiting for a JetStream ack.
    pub outbox_rows: u64,
    /// Messages parked (not applicable here yet).
    pub parked: u64,
    /// Parked messages by the table they are about (`""`: about no single table, e.g. a
    /// migration or an undecodable frame).
    pub parked_by_table: BTreeMap<String, u64>,
    /// CRC-32 of the application's schema (hex): equal on two nodes means the same schema.
    pub schema_fingerprint: String,
    /// Version of the last replicated migration applied here (0: none).
    pub migration_version: u64,
    /// Replicated migrations parked here (failed, or waiting behind one that failed).
    pub parked_migrations: u64,
    /// When a remote batch was last applied (Unix ms), if ever.
    pub last_apply_unix_ms: Option<u64>,
    /// The stream no longer holds messages this node needs (restore from a snapshot).
    pub fell_behind: bool,
    /// Why the stream consumer cannot start (e.g. a NATS permission refused), while it
    /// cannot; the node is unhealthy meanwhile.
    pub consumer_error: Option<String>,
    /// Why this node's `[scopes]` rules are known to differ from another node's (a message
    /// was parked for it); the node is unhealthy meanwhile.
    pub scope_rules: Option<String>,
    /// Whether local writes are published.
    pub publish: bool,
    /// Whether remote changes are applied.
    pub replicate: bool,
    /// A restore from a snapshot is in progress (start-up, missing or damaged database).
    pub restoring: bool,
    /// Why a restore or catch-up cannot go on right now (e.g. another connection holds the
    /// database that must be replaced, or no snapshot covers the stream yet).
    pub waiting: Option<String>,
    /// A catch-up in place in progress (this node fell behind the stream's retention).
    pub catching_up: Option<CatchUpStatus>,
    /// The last snapshot this node took, since it started.
    pub last_snapshot: Option<SnapshotStatus>,
    /// The restore this node did at start, if any.
    pub last_restore: Option<SnapshotStatus>,
    /// Connected, consuming the stream (when replicating), not restoring and not behind the
    /// stream's retention.
    pub healthy: bool,
}

/// A snapshot taken or restored, as the health endpoint reports it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// Its name in the store.
    pub name: String,
    /// The stream sequence it covers.
    pub covered_seq: u64,
    /// Framed bytes uploaded or downloaded.
    pub bytes: u64,
    /// How long it took (ms).
    pub duration_ms: u64,
    /// When it finished (Unix ms).
    pub at_unix_ms: u64,
    /// Why (restores only: `missing`, `damaged`, `behind`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A catch-up in place, as the health endpoint reports it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CatchUpStatus {
    /// `fetching` (finding and downloading a snapshot), `merging` or `waiting` (to retry).
    pub stage: String,
    /// The snapshot being merged.
    pub snapshot: Option<String>,
    /// The stream sequence it covers.
    pub covered_seq: Option<u64>,
    /// Row versions merged so far.
    pub rows_read: u64,
    /// Row versions to merge.
    pub rows_total: u64,
}

/// Shared, updated by the driver, read by the endpoint.
pub type SharedStatus = Arc<Mutex<Status>>;

/// Serves `GET <path>` on `bind` with the current status.
pub async fn serve(
    bind: SocketAddr,
    path: &str,
    status: SharedStatus,
) -> Result<(), crate::ops::OpsError> {
    let app = axum::Router::new().route(
        path,
        axum::routing::get(move || {
            let status = status.lock().expect("status lock").clone();
            async move {
                let code = if status.healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, Json(status))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|source| crate::ops::OpsError::Bind {
            section: "[health_check]",
            bind,
            source,
        })?;
    tracing::info!(%bind, path, "serving health checks");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("health endpoint stopped: {e}");
        }
    });
    Ok(())
}
