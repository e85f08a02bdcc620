//! The verdict of a run. After every fault is healed and the nodes converged, the checker
//! reads the whole change stream (every batch every node published) and compares:
//!
//! - every node with every other, table by table, user tables and row-version tables (the wasm
//!   replica, when the run has one, is one more node, read through its driver: [`Db`]);
//! - every node with an LWW model folded from the stream with `harmonylite_core::merge`, using
//!   the HLC each change carries (the one the origin derived from the write's capture time),
//!   so the model needs no guess about clocks;
//! - the history with the stream: for every node and row, the last acknowledged write of that
//!   node (or a later write whose commit failed) is the node's latest published change of that
//!   row. Earlier writes may have been coalesced into it by a drain, which is "superseded".
//!   With the model check this proves each acknowledged write is present or superseded by a
//!   later write to the same row;
//! - no write published twice: one (origin, row, HLC) never appears in two different batches,
//!   and a re-sent part never differs from the first copy.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use harmonylite_core::hlc::Hlc;
use harmonylite_core::merge::{LwwModel, VersionedRow};
use harmonylite_core::value::Value;
use harmonylite_core::wire::{decode_batch, decode_frame};
use rusqlite::Connection;

use super::history::{Outcome, Record};
use super::wasm::WasmReplica;
use super::workload::TABLES;

/// Rows of one table: primary key → columns by name.
pub type TableRows = BTreeMap<Value, BTreeMap<String, Value>>;

/// One replica whose tables the checker reads: a native node's database file, or the wasm
/// replica's in-memory database (through its driver).
#[derive(Clone, Copy)]
pub enum Db<'a> {
    /// A native node's database file.
    File(&'a Path),
    /// The wasm replica.
    Wasm(&'a WasmReplica),
}

impl Db<'_> {
    /// Every row of `table`, or an error text.
    pub fn dump_table(&self, table: &str) -> Result<TableRows, String> {
        match self {
            Db::File(db) => dump_table(db, table),
            Db::Wasm(w) => w
                .query(&format!("SELECT * FROM \"{table}\""), &[])?
                .into_iter()
                .map(|row| {
                    let key = row.first().ok_or("a row without columns")?.1.clone();
                    Ok((key, row.into_iter().collect()))
                })
                .collect(),
        }
    }

    /// The row versions of `table`: key → (HLC bytes, deleted).
    pub fn dump_versions(&self, table: &str) -> Result<BTreeMap<Value, (Vec<u8>, bool)>, String> {
        match self {
            Db::File(db) => dump_versions(db, table),
            Db::Wasm(w) => {
                let id = match w
                    .query("SELECT id FROM __hl_tables WHERE name = ?", &[table])?
                    .first()
                    .and_then(|row| row.first())
                {
                    Some((_, Value::Integer(id))) => *id,
                    _ => return Err(format!("{table} not registered on the wasm replica")),
                };
                w.query(&format!("SELECT k0, hlc, deleted FROM \"__hl_v{id}\""), &[])?
                    .into_iter()
                    .map(|row| match row.as_slice() {
                        [(_, key), (_, Value::Blob(hlc)), (_, Value::Integer(deleted))] => {
                            Ok((key.clone(), (hlc.clone(), *deleted != 0)))
                        }
                        other => Err(format!("unexpected version row {other:?}")),
                    })
                    .collect()
            }
        }
    }

    /// Rows still waiting in the capture log and outbox, and parked messages.
    pub fn pending(&self) -> Result<(i64, i64, i64), String> {
        match self {
            Db::File(db) => pending(db),
            Db::Wasm(w) => {
                let rows = w.query(
                    "SELECT (SELECT count(*) FROM __hl_log), (SELECT count(*) FROM __hl_outbox), (SELECT count(*) FROM __hl_parked)",
                    &[],
                )?;
                match rows.first().map(|r| r.as_slice()) {
                    Some(
                        [(_, Value::Integer(log)), (_, Value::Integer(outbox)), (_, Value::Integer(parked))],
                    ) => Ok((*log, *outbox, *parked)),
                    other => Err(format!("unexpected counts {other:?}")),
                }
            }
        }
    }

    /// Messages parked here: how many, and the first few as `stream_seq N, kind K, table T:
    /// reason`.
    pub fn parked(&self) -> Result<(i64, Vec<String>), String> {
        const FIRST: &str = "SELECT stream_seq, kind, coalesce(tbl, '?'), reason FROM __hl_parked ORDER BY stream_seq LIMIT 5";
        let rows: Vec<Vec<Value>> = match self {
            Db::File(db) => {
                let conn = Connection::open(db).map_err(|e| e.to_string())?;
                conn.busy_timeout(Duration::from_secs(5))
                    .map_err(|e| e.to_string())?;
                let mut stmt = conn.prepare(FIRST).map_err(|e| e.to_string())?;
                let rows = stmt
                    .query_map([], |r| (0..4).map(|i| r.get::<_, Value>(i)).collect())
                    .map_err(|e| e.to_string())?
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
                rows
            }
            Db::Wasm(w) => w
                .query(FIRST, &[])?
                .into_iter()
                .map(|row| row.into_iter().map(|(_, v)| v).collect())
                .collect(),
        };
        let (_, _, count) = self.pending()?;
        let text = |v: &Value| match v {
            Value::Text(t) => t.clone(),
            other => format!("{other:?}"),
        };
        let shown = rows
            .iter()
            .map(|r| match r.as_slice() {
                [seq, kind, table, reason] => format!(
                    "stream_seq {}, kind {}, table {}: {}",
                    text(seq),
                    text(kind),
                    text(table),
                    text(reason)
                ),
                other => format!("{other:?}"),
            })
            .collect();
        Ok((count, shown))
    }

    /// How failures name it.
    pub fn label(&self, i: usize) -> String {
        match self {
            Db::File(_) => format!("node {i}"),
            Db::Wasm(w) => match w.index() {
                Some(index) => format!("the wasm replica (node {index})"),
                None => "the wasm replica".into(),
            },
        }
    }
}

/// One published row change, decoded from the stream.
#[derive(Debug, Clone)]
pub struct StreamChange {
    /// History node index of the origin (native node `node_id - 1`, or an incarnation of the
    /// wasm replica), from the origins given to [`read_stream`].
    pub origin: usize,
    /// The origin's batch sequence.
    pub batch_seq: u64,
    /// Stream sequence of the batch's last part.
    pub stream_seq: u64,
    /// HLC of the write.
    pub hlc: Hlc,
    /// Table name.
    pub table: String,
    /// Primary key.
    pub key: Value,
    /// Image, or `None` for a delete.
    pub image: Option<BTreeMap<String, Value>>,
}

/// Everything in the stream.
#[derive(Debug, Default)]
pub struct StreamContent {
    /// Row changes of complete batches, in stream order.
    pub changes: Vec<StreamChange>,
    /// Messages read.
    pub messages: u64,
    /// Parts that appeared more than once with the same bytes (re-sent after JetStream's
    /// duplicate window; harmless).
    pub resent_parts: u64,
    /// Problems: undecodable messages, parts re-sent with different bytes.
    pub problems: Vec<String>,
}

/// Every row of `table` in `db`, or an error text.
pub fn dump_table(db: &Path, table: &str) -> Result<TableRows, String> {
    let conn = Connection::open(db).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM \"{table}\""))
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let rows = stmt
        .query_map([], |r| {
            let mut m = BTreeMap::new();
            for (i, n) in names.iter().enumerate() {
                m.insert(n.clone(), r.get::<_, Value>(i)?);
            }
            Ok((r.get::<_, Value>(0)?, m))
        })
        .map_err(|e| e.to_string())?
        .collect::<Result<TableRows, _>>()
        .map_err(|e| e.to_string())?;
    Ok(rows)
}

/// The row versions of `table` in `db`: key → (HLC bytes, deleted).
pub fn dump_versions(db: &Path, table: &str) -> Result<BTreeMap<Value, (Vec<u8>, bool)>, String> {
    let conn = Connection::open(db).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let id: i64 = conn
        .query_row("SELECT id FROM __hl_tables WHERE name = ?1", [table], |r| {
            r.get(0)
        })
        .map_err(|e| format!("{table} not registered: {e}"))?;
    let mut stmt = conn
        .prepare(&format!("SELECT k0, hlc, deleted FROM \"__hl_v{id}\""))
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, Value>(0)?, (r.get(1)?, r.get::<_, i64>(2)? != 0)))
        })
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    Ok(rows)
}

/// Rows still waiting in a node's capture log and outbox, and parked messages.
pub fn pending(db: &Path) -> Result<(i64, i64, i64), String> {
    let conn = Connection::open(db).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let count = |t: &str| {
        conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .map_err(|e| e.to_string())
    };
    Ok((
        count("__hl_log")?,
        count("__hl_outbox")?,
        count("__hl_parked")?,
    ))
}

/// Whether every node holds the same user tables and nothing is left to publish.
pub fn converged(dbs: &[Db]) -> bool {
    let settled = dbs.iter().all(|db| {
        db.pending()
            .is_ok_and(|(log, outbox, _)| log == 0 && outbox == 0)
    });
    settled
        && TABLES.iter().all(|table| {
            let dumps: Vec<_> = dbs.iter().map(|db| db.dump_table(table)).collect();
            dumps.iter().all(|d| d.is_ok()) && dumps.windows(2).all(|w| w[0] == w[1])
        })
}

/// Waits until [`converged`] holds twice in a row, one second apart; returns how long it took.
pub fn wait_converged(dbs: &[Db], timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if converged(dbs) {
            let at = start.elapsed();
            std::thread::sleep(Duration::from_secs(1));
            if converged(dbs) {
                return Some(at);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

/// Reads every message of `stream` from the nats-server listening on 127.0.0.1:4222 inside
/// network namespace `namespace` (the reading thread joins that namespace). `origins` maps
/// every node id that may publish to its history node index; any other origin is a problem.
pub fn read_stream(
    namespace: &str,
    stream: &str,
    origins: HashMap<u128, usize>,
) -> Result<StreamContent, String> {
    let namespace = namespace.to_string();
    let stream = stream.to_string();
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/var/run/netns/{namespace}"))
            .map_err(|e| format!("opening namespace {namespace}: {e}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("joining namespace {namespace}: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(read_stream_async(&stream, &origins))
    })
    .join()
    .map_err(|_| "stream reader panicked".to_string())?
}

async fn read_stream_async(
    name: &str,
    origins: &HashMap<u128, usize>,
) -> Result<StreamContent, String> {
    use async_nats::jetstream::consumer;
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .map_err(|e| format!("connecting to read the stream: {e}"))?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    let info = stream.info().await.map_err(|e| e.to_string())?;
    let last = info.state.last_sequence;
    let mut content = StreamContent::default();
    if info.state.messages == 0 {
        return Ok(content);
    }
    if info.state.first_sequence != 1 {
        content.problems.push(format!(
            "the stream starts at {}: early messages were dropped by retention",
            info.state.first_sequence
        ));
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut seen: HashMap<(u128, u64, u32), u64> = HashMap::new();
    let mut parts: HashMap<(u128, u64), BTreeMap<u32, Vec<u8>>> = HashMap::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .map_err(|_| {
            format!(
                "reading the stream stalled after {} messages",
                content.messages
            )
        })?
    {
        let message = message.map_err(|e| e.to_string())?;
        let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
        content.messages += 1;
        match decode_frame(&message.payload) {
            Err(e) => content
                .problems
                .push(format!("stream seq {seq}: undecodable: {e}")),
            Ok(m) => {
                let origin = m.origin.as_u128();
                let origin_index = origins.get(&origin).copied().unwrap_or_else(|| {
                    content
                        .problems
                        .push(format!("stream seq {seq}: unknown origin {origin:x}"));
                    usize::MAX
                });
                let id = (origin, m.batch_seq.get(), m.part);
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                m.body.hash(&mut hasher);
                let digest = hasher.finish();
                if let Some(previous) = seen.insert(id, digest) {
                    if previous == digest {
                        content.resent_parts += 1;
                    } else {
                        content.problems.push(format!(
                            "stream seq {seq}: part {id:?} re-sent with different bytes"
                        ));
                    }
                } else {
                    let batch = parts.entry((origin, m.batch_seq.get())).or_default();
                    batch.insert(m.part, m.body);
                    if batch.len() as u32 == m.parts {
                        let body: Vec<u8> = parts
                            .remove(&(origin, m.batch_seq.get()))
                            .unwrap()
                            .into_values()
                            .flatten()
                            .collect();
                        match decode_batch(m.compression, &body) {
                            Err(e) => content
                                .problems
                                .push(format!("stream seq {seq}: batch undecodable: {e}")),
                            Ok(batch) => {
                                for row in &batch.rows {
                                    let table = &batch.tables[row.table as usize];
                                    let image = row.values.as_ref().map(|values| {
                                        table
                                            .key_columns
                                            .iter()
                                            .zip(&row.key)
                                            .chain(table.value_columns.iter().zip(values))
                                            .map(|(n, v)| (n.clone(), v.clone()))
                                            .collect()
                                    });
                                    content.changes.push(StreamChange {
                                        origin: origin_index,
                                        batch_seq: m.batch_seq.get(),
                                        stream_seq: seq,
                                        hlc: row.hlc(m.origin),
                                        table: table.name.clone(),
                                        key: row.key[0].clone(),
                                        image,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        if seq >= last {
            break;
        }
    }
    if !parts.is_empty() {
        content
            .problems
            .push(format!("{} batches have missing parts", parts.len()));
    }
    Ok(content)
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Differences between nodes, or between a node and the model.
    pub divergences: Vec<String>,
    /// Acknowledged writes neither present nor superseded.
    pub lost_writes: Vec<String>,
    /// Writes published in two different batches, and stream problems.
    pub duplicates: Vec<String>,
}

impl Verdict {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.divergences.is_empty() && self.lost_writes.is_empty() && self.duplicates.is_empty()
    }
}

/// Checks the nodes' databases against each other, the stream and the history.
pub fn check(dbs: &[Db], stream: &StreamContent, record: &Record) -> Verdict {
    let mut verdict = Verdict::default();
    verdict.duplicates.extend(stream.problems.iter().cloned());

    // The model: LWW over every published change.
    let mut model = LwwModel::new();
    verdict.duplicates.extend(duplicate_writes(stream));
    for c in &stream.changes {
        model.merge(
            (c.table.clone(), vec![c.key.clone()]),
            VersionedRow {
                hlc: c.hlc,
                image: c.image.clone(),
            },
        );
    }

    // Nodes against node 0, and node 0 against the model.
    for table in TABLES {
        let dumps: Vec<_> = dbs.iter().map(|db| db.dump_table(table)).collect();
        let versions: Vec<_> = dbs.iter().map(|db| db.dump_versions(table)).collect();
        for (i, (rows, vers)) in dumps.iter().zip(&versions).enumerate() {
            match (rows, vers) {
                (Ok(rows), Ok(vers)) => {
                    if i > 0 {
                        if let (Ok(first), Ok(first_v)) = (&dumps[0], &versions[0]) {
                            let differing = rows
                                .iter()
                                .filter(|(k, v)| first.get(*k) != Some(*v))
                                .count()
                                + first.keys().filter(|k| !rows.contains_key(*k)).count();
                            let who = dbs[i].label(i);
                            if differing > 0 {
                                verdict.divergences.push(format!(
                                    "{table}: {who} differs from node 0 in {differing} rows"
                                ));
                            }
                            if vers != first_v {
                                verdict.divergences.push(format!(
                                    "{table}: row versions of {who} differ from node 0's"
                                ));
                            }
                        }
                    }
                }
                (Err(e), _) | (_, Err(e)) => verdict
                    .divergences
                    .push(format!("{table}: cannot read {}: {e}", dbs[i].label(i))),
            }
        }
        if let (Ok(rows), Ok(vers)) = (&dumps[0], &versions[0]) {
            let expected: TableRows = model
                .live_rows(table)
                .into_iter()
                .map(|(k, v)| (k[0].clone(), v))
                .collect();
            for key in expected.keys().chain(rows.keys()) {
                if expected.get(key) != rows.get(key) {
                    verdict.divergences.push(format!(
                        "{table}[{key:?}]: model {:?}, nodes {:?}",
                        expected.get(key),
                        rows.get(key)
                    ));
                }
            }
            for (key, (hlc, deleted)) in vers {
                match model.get(&(table.to_string(), vec![key.clone()])) {
                    Some(row) if row.hlc.to_bytes().as_slice() == hlc.as_slice()
                        && row.image.is_none() == *deleted => {}
                    other => verdict.divergences.push(format!(
                        "{table}[{key:?}]: version {} (deleted {deleted}) but the stream's winner is {other:?}",
                        hex(hlc)
                    )),
                }
            }
        }
    }

    verdict.lost_writes = lost_writes(stream, record);
    verdict
}

/// Per node and row: whether a write was acknowledged, the images the node's latest
/// published change may carry, and when the last acknowledged write returned.
type Acceptable = (bool, Vec<Option<BTreeMap<String, Value>>>, i64);

/// Acknowledged writes neither present in the stream nor superseded: for every node and row,
/// the node's last acknowledged write (or a later write whose commit failed) must be the
/// node's latest published change of that row (earlier writes may be coalesced into it).
pub fn lost_writes(stream: &StreamContent, record: &Record) -> Vec<String> {
    let mut lost = Vec::new();
    let mut latest: HashMap<(usize, String, Value), &StreamChange> = HashMap::new();
    for c in &stream.changes {
        let slot = latest
            .entry((c.origin, c.table.clone(), c.key.clone()))
            .or_insert(c);
        if c.hlc > slot.hlc {
            *slot = c;
        }
    }
    // Per node and row: the images a final published change may carry (the last acknowledged
    // write and any later write whose commit failed).
    let mut acceptable: HashMap<(usize, String, Value), Acceptable> = HashMap::new();
    for commit in &record.commits {
        for w in &commit.writes {
            let entry = acceptable
                .entry((commit.node, w.table.clone(), w.key.clone()))
                .or_insert((false, Vec::new(), 0));
            if commit.outcome == Outcome::Acknowledged {
                *entry = (true, vec![w.image.clone()], commit.end_ms);
            } else {
                entry.1.push(w.image.clone());
            }
        }
    }
    for ((node, table, key), (acked, images, at)) in &acceptable {
        if !acked {
            continue;
        }
        match latest.get(&(*node, table.clone(), key.clone())) {
            None => lost.push(format!(
                "{table}[{key:?}]: node {node}'s write acknowledged at {at} ms never reached the stream"
            )),
            Some(c) if !images.contains(&c.image) => lost.push(format!(
                "{table}[{key:?}]: node {node}'s last write (acknowledged at {at} ms) is {:?}, its last published change is {:?} (stream seq {})",
                images[0], c.image, c.stream_seq
            )),
            Some(_) => {}
        }
    }
    lost
}

/// Writes published twice: one (origin, row, HLC) in two different batches.
pub fn duplicate_writes(stream: &StreamContent) -> Vec<String> {
    let mut duplicates = Vec::new();
    let mut published: HashMap<(usize, String, Value, Hlc), u64> = HashMap::new();
    for c in &stream.changes {
        if let Some(batch) = published.insert(
            (c.origin, c.table.clone(), c.key.clone(), c.hlc),
            c.batch_seq,
        ) {
            if batch != c.batch_seq {
                duplicates.push(format!(
                    "node {} published {}[{:?}] at {:?} in batches {batch} and {}",
                    c.origin, c.table, c.key, c.hlc, c.batch_seq
                ));
            }
        }
    }
    duplicates
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::{Commit, RowWrite};
    use harmonylite_core::hlc::{NodeId, NTP64};

    fn image(id: &str, val: i64) -> Option<BTreeMap<String, Value>> {
        Some(
            [
                ("id".to_string(), Value::Text(id.into())),
                ("val".to_string(), Value::Integer(val)),
            ]
            .into_iter()
            .collect(),
        )
    }

    fn write(
        node: usize,
        id: &str,
        img: Option<BTreeMap<String, Value>>,
        outcome: Outcome,
    ) -> Commit {
        Commit {
            node,
            begin_ms: 0,
            end_ms: 1,
            writes: vec![RowWrite {
                table: "items".into(),
                key: Value::Text(id.into()),
                image: img,
            }],
            outcome,
        }
    }

    fn change(
        origin: usize,
        batch: u64,
        time: u64,
        id: &str,
        img: Option<BTreeMap<String, Value>>,
    ) -> StreamChange {
        StreamChange {
            origin,
            batch_seq: batch,
            stream_seq: batch,
            hlc: Hlc::new(NTP64(time), NodeId::from_u128(origin as u128 + 1).unwrap()),
            table: "items".into(),
            key: Value::Text(id.into()),
            image: img,
        }
    }

    fn record(commits: Vec<Commit>) -> Record {
        Record {
            commits,
            ..Default::default()
        }
    }

    #[test]
    fn a_published_last_write_is_not_lost_and_earlier_ones_may_be_coalesced() {
        let history = record(vec![
            write(0, "a", image("a", 1), Outcome::Acknowledged),
            write(0, "a", image("a", 2), Outcome::Acknowledged),
        ]);
        let stream = StreamContent {
            changes: vec![change(0, 1, 10, "a", image("a", 2))],
            ..Default::default()
        };
        assert_eq!(lost_writes(&stream, &history), Vec::<String>::new());
    }

    #[test]
    fn an_acknowledged_write_missing_from_the_stream_is_lost() {
        let history = record(vec![
            write(0, "a", image("a", 1), Outcome::Acknowledged),
            write(1, "b", None, Outcome::Acknowledged),
        ]);
        let stream = StreamContent {
            changes: vec![change(0, 1, 10, "a", image("a", 1))],
            ..Default::default()
        };
        let lost = lost_writes(&stream, &history);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].contains("never reached the stream"), "{lost:?}");
    }

    #[test]
    fn an_older_image_published_last_is_a_lost_write() {
        let history = record(vec![
            write(0, "a", image("a", 1), Outcome::Acknowledged),
            write(0, "a", image("a", 2), Outcome::Acknowledged),
        ]);
        let stream = StreamContent {
            changes: vec![
                change(0, 1, 10, "a", image("a", 2)),
                change(0, 2, 20, "a", image("a", 1)),
            ],
            ..Default::default()
        };
        assert_eq!(lost_writes(&stream, &history).len(), 1);
    }

    #[test]
    fn a_failed_commit_after_the_last_acknowledged_one_may_win_either_way() {
        let history = record(vec![
            write(0, "a", image("a", 1), Outcome::Acknowledged),
            write(0, "a", image("a", 9), Outcome::Uncertain),
        ]);
        for published in [1, 9] {
            let stream = StreamContent {
                changes: vec![change(0, 1, 10, "a", image("a", published))],
                ..Default::default()
            };
            assert!(lost_writes(&stream, &history).is_empty());
        }
    }

    #[test]
    fn one_write_in_two_batches_is_a_duplicate_but_a_resent_batch_is_not() {
        let resent = StreamContent {
            changes: vec![
                change(0, 1, 10, "a", image("a", 1)),
                change(0, 1, 10, "a", image("a", 1)),
            ],
            ..Default::default()
        };
        assert!(duplicate_writes(&resent).is_empty());
        let twice = StreamContent {
            changes: vec![
                change(0, 1, 10, "a", image("a", 1)),
                change(0, 2, 10, "a", image("a", 1)),
            ],
            ..Default::default()
        };
        assert_eq!(duplicate_writes(&twice).len(), 1);
    }
}
