//! Prometheus metrics: names, recording, and the `/metrics` endpoint.
//!
//! Every name starts with the configured namespace (default `harmonylite`):
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `<ns>_drained_rows_total` | counter | local row changes captured |
//! | `<ns>_published_frames_total` | counter | frames JetStream acknowledged |
//! | `<ns>_applied_batches_total` | counter | remote batches applied |
//! | `<ns>_applied_rows_total` | counter | rows changed by remote batches |
//! | `<ns>_conflicts_total{winner="local"\|"remote"}` | counter | row conflicts and who won |
//! | `<ns>_parked_total{kind}` | counter | messages parked, by reason kind |
//! | `<ns>_refused_changes_total{table}` | counter | scoped replicas' messages refused for writing outside their scope (dropped on every full replica) |
//! | `<ns>_parked_messages` | gauge | messages currently parked |
//! | `<ns>_parked_table_messages{table}` | gauge | messages currently parked, by the table they are about (`""`: none) |
//! | `<ns>_migration_version` | gauge | version of the last replicated migration applied here |
//! | `<ns>_parked_migrations` | gauge | replicated migrations parked here |
//! | `<ns>_outbox_frames` | gauge | frames waiting for an ack |
//! | `<ns>_lag_messages` | gauge | stream messages not applied yet |
//! | `<ns>_nats_connected` | gauge | 1 when connected |
//! | `<ns>_apply_seconds` | histogram | duration of one apply transaction |
//! | `<ns>_hop_seconds{hop}` | histogram | one hop of commit -> visible elsewhere ([`Hop`]): `commit_to_notice`, `notice_to_captured`, `captured_to_acked` on the writing node; `stored_to_delivered`, `delivered_to_applied` on the receiving node |
//! | `<ns>_database_errors_total{operation,kind}` | counter | failed database operations (retried), by kind (`busy`, `disk_full`, `io`, `read_only`, `corrupt`, `other`) |
//! | `<ns>_snapshots_total` | counter | snapshots this node took and stored |
//! | `<ns>_restores_total{reason="missing"\|"damaged"\|"behind"}` | counter | restores from a snapshot |
//! | `<ns>_snapshot_bytes_total{direction="upload"\|"download"}` | counter | framed snapshot bytes sent and received |
//! | `<ns>_snapshot_seconds{operation="take"\|"restore"}` | histogram | duration of taking + storing a snapshot, of a restore |
//! | `<ns>_snapshot_failures_total{operation="take"\|"restore"}` | counter | snapshots that could not be taken, restores that failed |
//! | `<ns>_snapshot_covered_seq` | gauge | stream sequence the last snapshot taken or restored here covers |
//! | `<ns>_auth_callouts_total{outcome}` | counter | scoped clients' connection attempts this node answered through NATS auth callout: `accepted`, or why refused (`expired`, `bad_signature`, `wrong_audience`, ...) |
//! | `<ns>_scope_feeds_total{outcome}` | counter | scoped clients' feed requests this node answered: `started`, why the token was refused (as above), `bad_request`, `bad_reply`, `error` |

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harmonylite_core::engine::ReceiveSummary;
use harmonylite_core::error::DatabaseErrorKind;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::ops::error::OpsError;

/// Records the sidecar's metrics under a namespace.
#[derive(Clone)]
pub struct Metrics {
    namespace: String,
    /// Tables with a parked-messages gauge, so a table whose count fell to 0 is set to 0.
    parked_tables: Arc<Mutex<BTreeSet<String>>>,
}

impl Metrics {
    /// Metrics under `namespace`; recording goes to whatever recorder is installed (none:
    /// recording is a no-op).
    pub fn new(namespace: &str) -> Self {
        Metrics {
            namespace: namespace.to_string(),
            parked_tables: Arc::default(),
        }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.namespace)
    }

    /// Local changes captured.
    pub fn drained(&self, rows: usize) {
        metrics::counter!(self.name("drained_rows_total")).increment(rows as u64);
    }

    /// One hop of commit -> visible elsewhere took `seconds`.
    pub fn hop(&self, hop: Hop, seconds: f64) {
        metrics::histogram!(self.name("hop_seconds"), "hop" => hop.as_str()).record(seconds);
    }

    /// Frames acknowledged by JetStream.
    pub fn published(&self, frames: usize) {
        metrics::counter!(self.name("published_frames_total")).increment(frames as u64);
    }

    /// One apply transaction and what it did.
    pub fn received(&self, summary: &ReceiveSummary, took: Duration) {
        metrics::counter!(self.name("applied_batches_total")).increment(summary.batches);
        metrics::counter!(self.name("applied_rows_total")).increment(summary.rows_changed);
        metrics::counter!(self.name("conflicts_total"), "winner" => "remote")
            .increment(summary.remote_won);
        metrics::counter!(self.name("conflicts_total"), "winner" => "local")
            .increment(summary.local_won);
        for parked in &summary.parked {
            metrics::counter!(self.name("parked_total"), "kind" => parked.kind.as_str())
                .increment(1);
        }
        for refused in &summary.refused {
            metrics::counter!(self.name("refused_changes_total"), "table" => refused.table.clone())
                .increment(1);
        }
        metrics::histogram!(self.name("apply_seconds")).record(took.as_secs_f64());
    }

    /// Current gauges.
    pub fn gauges(&self, outbox_frames: u64, lag: u64, parked: u64, connected: bool) {
        metrics::gauge!(self.name("outbox_frames")).set(outbox_frames as f64);
        metrics::gauge!(self.name("lag_messages")).set(lag as f64);
        metrics::gauge!(self.name("parked_messages")).set(parked as f64);
        metrics::gauge!(self.name("nats_connected")).set(if connected { 1.0 } else { 0.0 });
    }

    /// Parked messages by table, the migration version and parked migrations.
    pub fn schema(
        &self,
        parked_by_table: &[(String, u64)],
        migration_version: u64,
        parked_migrations: u64,
    ) {
        let mut known = self.parked_tables.lock().expect("metrics lock");
        for table in known.iter() {
            if !parked_by_table.iter().any(|(t, _)| t == table) {
                metrics::gauge!(self.name("parked_table_messages"), "table" => table.clone())
                    .set(0.0);
            }
        }
        for (table, count) in parked_by_table {
            metrics::gauge!(self.name("parked_table_messages"), "table" => table.clone())
                .set(*count as f64);
            known.insert(table.clone());
        }
        metrics::gauge!(self.name("migration_version")).set(migration_version as f64);
        metrics::gauge!(self.name("parked_migrations")).set(parked_migrations as f64);
    }

    /// A snapshot taken and stored.
    pub fn snapshot_taken(&self, bytes: u64, took: Duration, covered_seq: u64) {
        metrics::counter!(self.name("snapshots_total")).increment(1);
        metrics::counter!(self.name("snapshot_bytes_total"), "direction" => "upload")
            .increment(bytes);
        metrics::histogram!(self.name("snapshot_seconds"), "operation" => "take")
            .record(took.as_secs_f64());
        metrics::gauge!(self.name("snapshot_covered_seq")).set(covered_seq as f64);
    }

    /// A restore from a snapshot.
    pub fn restored(&self, reason: &'static str, bytes: u64, took: Duration, covered_seq: u64) {
        metrics::counter!(self.name("restores_total"), "reason" => reason).increment(1);
        metrics::counter!(self.name("snapshot_bytes_total"), "direction" => "download")
            .increment(bytes);
        metrics::histogram!(self.name("snapshot_seconds"), "operation" => "restore")
            .record(took.as_secs_f64());
        metrics::gauge!(self.name("snapshot_covered_seq")).set(covered_seq as f64);
    }

    /// A snapshot that could not be taken (`"take"`) or a failed restore (`"restore"`).
    pub fn snapshot_failed(&self, operation: &'static str) {
        metrics::counter!(self.name("snapshot_failures_total"), "operation" => operation)
            .increment(1);
    }

    /// One auth callout request answered (`"accepted"` or the refusal's kind).
    pub fn auth_callout(&self, outcome: &'static str) {
        metrics::counter!(self.name("auth_callouts_total"), "outcome" => outcome).increment(1);
    }

    /// One scoped feed request answered (`"started"` or why not).
    pub fn scope_feed(&self, outcome: &'static str) {
        metrics::counter!(self.name("scope_feeds_total"), "outcome" => outcome).increment(1);
    }

    /// A failed database operation.
    pub fn database_error(&self, operation: &'static str, kind: DatabaseErrorKind) {
        metrics::counter!(self.name("database_errors_total"), "operation" => operation, "kind" => kind.as_str())
            .increment(1);
    }
}

/// The kind of a metric, for its description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric (name after the namespace), its kind and its `# HELP` text: the exporter
/// writes a HELP line only for a described metric.
const DESCRIPTIONS: [(&str, Kind, &str); 25] = [
    (
        "drained_rows_total",
        Kind::Counter,
        "Local row changes captured.",
    ),
    (
        "published_frames_total",
        Kind::Counter,
        "Frames JetStream acknowledged.",
    ),
    (
        "applied_batches_total",
        Kind::Counter,
        "Remote batches applied.",
    ),
    (
        "applied_rows_total",
        Kind::Counter,
        "Rows changed by remote batches.",
    ),
    (
        "conflicts_total",
        Kind::Counter,
        "Row conflicts, by the side whose write won.",
    ),
    (
        "parked_total",
        Kind::Counter,
        "Messages parked, by reason kind.",
    ),
    (
        "refused_changes_total",
        Kind::Counter,
        "Scoped replicas' messages refused for writing outside their scope, by table.",
    ),
    ("parked_messages", Kind::Gauge, "Messages currently parked."),
    (
        "parked_table_messages",
        Kind::Gauge,
        "Messages currently parked, by the table they are about (empty: none).",
    ),
    (
        "migration_version",
        Kind::Gauge,
        "Version of the last replicated migration applied here.",
    ),
    (
        "parked_migrations",
        Kind::Gauge,
        "Replicated migrations parked here.",
    ),
    (
        "outbox_frames",
        Kind::Gauge,
        "Frames waiting for a JetStream ack.",
    ),
    (
        "lag_messages",
        Kind::Gauge,
        "Stream messages not applied here yet.",
    ),
    (
        "nats_connected",
        Kind::Gauge,
        "1 while connected to NATS, else 0.",
    ),
    (
        "apply_seconds",
        Kind::Histogram,
        "Duration of one apply transaction.",
    ),
    (
        "hop_seconds",
        Kind::Histogram,
        "One hop of commit -> visible on another node, by hop: commit_to_notice, notice_to_captured, \
         captured_to_acked (writing node), stored_to_delivered, delivered_to_applied (receiving node).",
    ),
    (
        "database_errors_total",
        Kind::Counter,
        "Failed database operations (retried), by operation and kind.",
    ),
    (
        "snapshots_total",
        Kind::Counter,
        "Snapshots this node took and stored.",
    ),
    (
        "restores_total",
        Kind::Counter,
        "Restores from a snapshot, by reason.",
    ),
    (
        "snapshot_bytes_total",
        Kind::Counter,
        "Framed snapshot bytes uploaded and downloaded, by direction.",
    ),
    (
        "snapshot_seconds",
        Kind::Histogram,
        "Duration of taking and storing a snapshot, of a restore, by operation.",
    ),
    (
        "snapshot_failures_total",
        Kind::Counter,
        "Snapshots that could not be taken, restores that failed, by operation.",
    ),
    (
        "snapshot_covered_seq",
        Kind::Gauge,
        "Stream sequence the last snapshot taken or restored here covers.",
    ),
    (
        "auth_callouts_total",
        Kind::Counter,
        "Scoped clients' connection attempts answered through NATS auth callout, by outcome (accepted, or why refused).",
    ),
    (
        "scope_feeds_total",
        Kind::Counter,
        "Scoped clients' feed requests answered, by outcome (started, or why not).",
    ),
];

/// Describes every metric to the installed recorder, so each has a `# HELP` line.
fn describe(namespace: &str) {
    for (suffix, kind, help) in DESCRIPTIONS {
        let name = format!("{namespace}_{suffix}");
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Installs the Prometheus recorder (once per process) for metrics under `namespace` and
/// returns its handle.
pub fn install_recorder(namespace: &str) -> Result<PrometheusHandle, OpsError> {
    let handle = builder(namespace)
        .and_then(|b| b.install_recorder())
        .map_err(|e| OpsError::Recorder(e.to_string()))?;
    describe(namespace);
    Ok(handle)
}

/// The exporter with this crate's histogram buckets.
fn builder(namespace: &str) -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    let snapshot_buckets = [
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    ];
    // Fine enough around a millisecond to read a hop's p50 and p99 from the buckets.
    let hop_buckets = [
        0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
        0.015, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), &buckets)?
        .set_buckets_for_metric(
            Matcher::Full(format!("{namespace}_snapshot_seconds")),
            &snapshot_buckets,
        )?
        .set_buckets_for_metric(
            Matcher::Full(format!("{namespace}_hop_seconds")),
            &hop_buckets,
        )
}

/// The hops of a change from a commit on one node to its apply on another. Each is timed
/// where it happens; a hop across nodes uses both nodes' wall clocks (the same clock on one
/// host, as in the benchmark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// The application's commit (the capture trigger's wall clock, ms) to the moment the
    /// sidecar noticed it (file notification, its re-check, or the polling timer).
    CommitToNotice,
    /// Noticed to captured into the outbox (the drain transaction committed).
    NoticeToCaptured,
    /// Captured to JetStream's publish acknowledgement of the frame.
    CapturedToAcked,
    /// Stored in the stream (JetStream's timestamp) to delivered to this node's consumer.
    StoredToDelivered,
    /// Delivered to applied and committed here.
    DeliveredToApplied,
}

impl Hop {
    /// The `hop` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Hop::CommitToNotice => "commit_to_notice",
            Hop::NoticeToCaptured => "notice_to_captured",
            Hop::CapturedToAcked => "captured_to_acked",
            Hop::StoredToDelivered => "stored_to_delivered",
            Hop::DeliveredToApplied => "delivered_to_applied",
        }
    }
}

/// Serves `GET /metrics` on `bind` until the process ends.
pub async fn serve(bind: SocketAddr, handle: PrometheusHandle) -> Result<(), OpsError> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move { handle.render() }),
    );
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|source| OpsError::Bind {
            section: "[prometheus]",
            bind,
            source,
        })?;
    tracing::info!(%bind, "serving Prometheus metrics at /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A histogram named in full gets its own buckets, not the `seconds` suffix's.
    #[test]
    fn hops_and_snapshots_have_their_own_buckets() {
        let recorder = builder("hl").unwrap().build_recorder();
        let handle = recorder.handle();
        let metrics = Metrics::new("hl");
        metrics::with_local_recorder(&recorder, || {
            metrics.hop(Hop::NoticeToCaptured, 0.0006);
            metrics::histogram!("hl_snapshot_seconds").record(3.0);
            metrics::histogram!("hl_apply_seconds").record(0.002);
        });
        let text = handle.render();
        for bucket in [
            "hl_hop_seconds_bucket{hop=\"notice_to_captured\",le=\"0.00075\"} 1",
            "hl_snapshot_seconds_bucket{le=\"1800\"} 1",
            "hl_apply_seconds_bucket{le=\"0.0025\"} 1",
        ] {
            assert!(text.contains(bucket), "no {bucket} in:\n{text}");
        }
        assert!(!text.contains("hl_apply_seconds_bucket{le=\"0.00075\"}"));
    }

    /// The names recorded in this file (`self.name("…")`) with the macro's kind, and the
    /// names in the module documentation's table: both equal the described ones.
    #[test]
    fn every_metric_is_described_and_documented() {
        let source = include_str!("metrics.rs");
        let code = source.split("\n#[cfg(test)]").next().unwrap();
        let mut recorded = BTreeSet::new();
        for (kind, macro_name) in [
            (Kind::Counter, "counter!("),
            (Kind::Gauge, "gauge!("),
            (Kind::Histogram, "histogram!("),
        ] {
            for rest in code.split(macro_name).skip(1) {
                if let Some(rest) = rest.trim_start().strip_prefix("self.name(\"") {
                    let name = rest.split('"').next().unwrap();
                    recorded.insert((name.to_owned(), kind));
                }
            }
        }
        let described: BTreeSet<(String, Kind)> = DESCRIPTIONS
            .iter()
            .map(|(name, kind, _)| ((*name).to_owned(), *kind))
            .collect();
        assert_eq!(recorded, described, "recorded vs described metrics");
        let documented: BTreeSet<String> = code
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `<ns>_"))
            .map(|l| l.split(['`', '{']).next().unwrap().to_owned())
            .collect();
        let names: BTreeSet<String> = described.into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            documented, names,
            "module documentation vs described metrics"
        );
        for (name, _, help) in DESCRIPTIONS {
            assert!(
                help.ends_with('.') && !help.contains('\n'),
                "{name}: {help:?}"
            );
        }
    }
}
