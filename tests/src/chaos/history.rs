//! What happened during a run: every application transaction (node, wall-clock times, the
//! row images it left) and every fault, in the order they were recorded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use harmonylite_core::value::Value;

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// One row written by a transaction: its table, primary key and image after the write
/// (`None`: deleted), columns by name.
#[derive(Debug, Clone, PartialEq)]
pub struct RowWrite {
    /// Table name.
    pub table: String,
    /// Primary-key value (the chaos tables have one key column).
    pub key: Value,
    /// The row after the transaction, or `None` when it deleted the row.
    pub image: Option<BTreeMap<String, Value>>,
}

/// How a transaction ended, as the application saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `COMMIT` returned OK: the write must survive (present or superseded).
    Acknowledged,
    /// `COMMIT` itself failed: SQLite rolls back, but the checker accepts either outcome.
    Uncertain,
}

/// One application transaction.
#[derive(Debug, Clone)]
pub struct Commit {
    /// Index of the node it ran on.
    pub node: usize,
    /// Wall time just before `BEGIN`.
    pub begin_ms: i64,
    /// Wall time just after `COMMIT` returned.
    pub end_ms: i64,
    /// The last image of each row it wrote, in write order.
    pub writes: Vec<RowWrite>,
    /// Whether it was acknowledged.
    pub outcome: Outcome,
}

/// One fault injected or healed.
#[derive(Debug, Clone)]
pub struct FaultEvent {
    /// Wall time.
    pub at_ms: i64,
    /// Description (`kill9 sidecar 2`, `heal partition` ...).
    pub what: String,
}

/// The shared, append-only record of a run.
#[derive(Debug, Clone, Default)]
pub struct History {
    inner: Arc<Mutex<Record>>,
}

/// The record itself.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Application transactions in the order they finished.
    pub commits: Vec<Commit>,
    /// Faults in the order they happened.
    pub faults: Vec<FaultEvent>,
    /// Transactions that failed before `COMMIT` (rolled back, nothing to check).
    pub failed: u64,
}

impl History {
    /// Appends a transaction.
    pub fn commit(&self, commit: Commit) {
        self.inner.lock().unwrap().commits.push(commit);
    }

    /// Counts a transaction that failed before its commit.
    pub fn failed(&self) {
        self.inner.lock().unwrap().failed += 1;
    }

    /// Appends a fault event now.
    pub fn fault(&self, what: String) {
        self.inner.lock().unwrap().faults.push(FaultEvent {
            at_ms: now_ms(),
            what,
        });
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Record {
        self.inner.lock().unwrap().clone()
    }
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => (*i).into(),
        Value::Real(r) => (*r).into(),
        Value::Text(t) => t.clone().into(),
        Value::Blob(b) => serde_json::json!({ "blob": b }),
    }
}

impl Record {
    /// The record as JSON lines: one object per commit and per fault, in time order.
    pub fn to_json_lines(&self, seed: u64) -> String {
        let mut lines =
            vec![serde_json::json!({ "seed": seed, "failed_before_commit": self.failed })];
        for c in &self.commits {
            let writes: Vec<_> = c
                .writes
                .iter()
                .map(|w| {
                    serde_json::json!({
                        "table": w.table,
                        "key": value_json(&w.key),
                        "image": w.image.as_ref().map(|m| m.iter().map(|(k, v)| (k.clone(), value_json(v))).collect::<serde_json::Map<_, _>>()),
                    })
                })
                .collect();
            lines.push(serde_json::json!({
                "commit": { "node": c.node, "begin_ms": c.begin_ms, "end_ms": c.end_ms,
                            "acknowledged": c.outcome == Outcome::Acknowledged, "writes": writes }
            }));
        }
        for f in &self.faults {
            lines.push(serde_json::json!({ "fault": { "at_ms": f.at_ms, "what": f.what } }));
        }
        let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        out.push(String::new());
        out.join("\n")
    }
}
