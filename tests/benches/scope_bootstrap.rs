//! Scoped bootstrap: a new scoped replica whose partition holds 10,000 rows of a
//! 1,000,000-row database asks a sidecar for it on loopback and imports it. Prints the time
//! from the first request to the last page imported (goal: ≤ 1 s), split into requests
//! (the node's export plus the transfer) and import, and the bytes received against the
//! partition's own size (goal: only that partition).
//!
//! The database: `notes(id INTEGER PRIMARY KEY, owner_id TEXT, body TEXT)` with an index
//! on `owner_id`, 1M rows of 100-byte bodies, user `target` owning 10k of them (spread over
//! the key range) and 990 other users the rest; 100 of the target's rows and 1,000 others
//! deleted (tombstones); a shared `tags` table of 100 rows. One sidecar (release build,
//! embedded nats-server, scopes on) serves it; the client is `async-nats` with the user's
//! HS256 token and pages of the server's `max_payload` (1 MiB), importing into a fresh
//! scoped core store on disk.
//!
//! `cargo bench -p harmonylite-tests --bench scope_bootstrap`; `HL_BENCH_ROWS` and
//! `HL_BENCH_PARTITION_ROWS` override the sizes, `HL_BENCH_ROUNDS` (3) the rounds (each
//! into a fresh scoped store; the figures are printed per round and as the median).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harmonylite_core::hlc::{ntp64_from_unix, NodeId, NTP64};
use harmonylite_core::scope::{ScopeRules, Subjects, Writer};
use harmonylite_core::sqlite::scope_bootstrap::{BootstrapReply, BootstrapRequest};
use harmonylite_core::sqlite::{Store, StoreOptions};
use harmonylite_tests::*;
use rusqlite::Connection;
use serde_json::json;

const SCHEMA: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, owner_id TEXT, body TEXT);
    CREATE INDEX notes_owner ON notes(owner_id);
    CREATE TABLE tags(id INTEGER PRIMARY KEY, name TEXT);";
const AUDIENCE: &str = "bench-app";
const SECRET: &str = "bench secret";
const BODY: usize = 100;

fn now() -> NTP64 {
    ntp64_from_unix(SystemTime::now().duration_since(UNIX_EPOCH).unwrap())
}

/// The rules the sidecars run with.
fn rules() -> ScopeRules {
    harmonylite_tests::notes_scope_rules()
}

fn options(node: u128, writer: Writer) -> StoreOptions {
    let mut options = StoreOptions::new(NodeId::from_u128(node).unwrap());
    options.scopes = rules();
    options.writer = writer;
    options
}

/// Fills the node's database (schema already there): rows first, then capture installed
/// (which registers every row's partition), versions written directly, then deletes
/// captured as an application's would be.
fn build(db: &Path, rows: u64, partition_rows: u64) {
    let stride = rows / partition_rows;
    {
        let conn = Connection::open(db).unwrap();
        conn.execute_batch("PRAGMA synchronous = OFF").unwrap();
        conn.execute(
            "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < ?1)
             INSERT INTO notes SELECT i,
               CASE WHEN i % ?2 = 0 THEN 'target' ELSE 'user' || (i % 990) END,
               substr(hex(randomblob(?3)), 1, ?3) FROM r",
            rusqlite::params![rows as i64, stride as i64, BODY as i64],
        )
        .unwrap();
        conn.execute(
            "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 100)
             INSERT INTO tags SELECT i, 'tag ' || i FROM r",
            [],
        )
        .unwrap();
    }
    let store = Store::open(Connection::open(db).unwrap(), options(1, Writer::Full)).unwrap();
    let conn = store.connection();
    let node = NodeId::from_u128(1).unwrap().to_bytes();
    let node_hex: String = node.iter().map(|b| format!("{b:02x}")).collect();
    let base = now().as_u64() - 10_000_000_000;
    for (table, id) in [("notes", 1), ("tags", 2)] {
        let registered: i64 = conn
            .query_row("SELECT id FROM __hl_tables WHERE name = ?1", [table], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(registered, id, "{table}'s registry id");
        conn.execute(
            &format!(
                "INSERT INTO __hl_v{id}(k0, hlc, deleted)
                 SELECT id, unhex(printf('%016x', ?1 + id) || ?2), 0 FROM {table}"
            ),
            rusqlite::params![base as i64, node_hex],
        )
        .unwrap();
    }
    let mut store = store;
    let app = Connection::open(db).unwrap();
    app.execute(
        "DELETE FROM notes WHERE id IN (SELECT id FROM notes WHERE owner_id = 'target' LIMIT 100)",
        [],
    )
    .unwrap();
    app.execute(
        "DELETE FROM notes WHERE id IN (SELECT id FROM notes WHERE owner_id = 'user7' LIMIT 1000)",
        [],
    )
    .unwrap();
    store.drain().unwrap();
    drop(store);
    app.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
}

struct Round {
    total: Duration,
    requests: Duration,
    import: Duration,
    bytes: usize,
    pages: usize,
    rows: u64,
}

async fn round(url: &str, dir: &Path, n: usize) -> Round {
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "target", "aud": AUDIENCE, "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let client = async_nats::ConnectOptions::with_token(token.clone())
        .custom_inbox_prefix(Subjects::client_inbox_prefix("target"))
        .connect(url)
        .await
        .unwrap();
    let path = dir.join(format!("scoped-{n}.db"));
    let app = Connection::open(&path).unwrap();
    app.execute_batch(SCHEMA).unwrap();
    let mut store = Store::open(
        Connection::open(&path).unwrap(),
        options(100 + n as u128, Writer::Scoped),
    )
    .unwrap();
    let subject = Subjects::new("harmonylite-change-log").bootstrap_request();
    let started = Instant::now();
    let (mut requests, mut import) = (Duration::ZERO, Duration::ZERO);
    let (mut bytes, mut pages, mut rows) = (0, 0, 0);
    let mut after = None;
    loop {
        let asked = Instant::now();
        let request = BootstrapRequest {
            token: token.clone(),
            after: after.take(),
            max_bytes: None,
            keys: None,
        };
        let reply = client
            .request(
                subject.clone(),
                serde_json::to_vec(&request).unwrap().into(),
            )
            .await
            .unwrap();
        requests += asked.elapsed();
        bytes += reply.payload.len();
        let page = match BootstrapReply::decode(&reply.payload).unwrap() {
            BootstrapReply::Page(page) => page,
            BootstrapReply::Refused { reason } => panic!("refused: {reason}"),
        };
        let imported = Instant::now();
        let report = store.import_partitions(&page, now()).unwrap();
        import += imported.elapsed();
        pages += 1;
        rows += report.rows;
        match page.next {
            Some(next) => after = Some(next.to_token()),
            None => break,
        }
    }
    let total = started.elapsed();
    let held: i64 = app
        .query_row(
            "SELECT count(*) FROM notes WHERE owner_id = 'target'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let others: i64 = app
        .query_row(
            "SELECT count(*) FROM notes WHERE owner_id <> 'target'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(others, 0);
    assert!(held > 0);
    Round {
        total,
        requests,
        import,
        bytes,
        pages,
        rows,
    }
}

fn main() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let rows = env("HL_BENCH_ROWS", 1_000_000);
    let partition_rows = env("HL_BENCH_PARTITION_ROWS", 10_000);
    let rounds = env("HL_BENCH_ROUNDS", 3) as usize;
    if std::env::var_os("HL_SIDECAR_PROFILE").is_none() {
        std::env::set_var("HL_SIDECAR_PROFILE", "release");
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let seed_file = keys.join("callout.nk");
    std::fs::write(
        &seed_file,
        format!("{}\n", nkeys::KeyPair::new_account().seed().unwrap()),
    )
    .unwrap();
    let secret_file = keys.join("hs256.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let port = free_port();
    let mut node = Node::new(
        dir.path(),
        "full",
        SCHEMA,
        &format!(
            "node_id = 1\n[nats]\nbind_address = \"127.0.0.1:{port}\"\n[snapshot]\ninterval = 0\nevery_messages = 0\n[scopes]\nshared = [\"tags\"]\n[[scopes.partition]]\nname = \"user\"\nclaims = [\"sub\"]\ntables = {{ notes = \"owner_id\" }}\n[scopes.auth]\naudience = \"{AUDIENCE}\"\ncallout_seed_file = {:?}\nhs256_secret_file = {:?}\n",
            seed_file.display().to_string(),
            secret_file.display().to_string()
        ),
    );
    let built = Instant::now();
    build(&node.db, rows, partition_rows);
    let db_bytes = std::fs::metadata(&node.db).unwrap().len();
    println!(
        "database: {rows} rows ({partition_rows} of the partition, 100 of them deleted), {:.0} MB, built in {:.1} s",
        db_bytes as f64 / 1e6,
        built.elapsed().as_secs_f64()
    );
    node.start();
    node.wait_healthy(Duration::from_secs(120));
    let partition_bytes: i64 = Connection::open(&node.db)
        .unwrap()
        .query_row(
            "SELECT sum(length(body) + length(owner_id) + 8) FROM notes WHERE owner_id = 'target'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut results = Vec::new();
    for n in 0..rounds {
        let r = runtime.block_on(round(&url, dir.path(), n));
        println!(
            "round {}: bootstrap {:.0} ms (requests {:.0} ms, import {:.0} ms); {} pages, {} row versions, {:.2} MB received (the partition's rows: {:.2} MB of values)",
            n + 1,
            r.total.as_secs_f64() * 1e3,
            r.requests.as_secs_f64() * 1e3,
            r.import.as_secs_f64() * 1e3,
            r.pages,
            r.rows,
            r.bytes as f64 / 1e6,
            partition_bytes as f64 / 1e6
        );
        results.push(r);
    }
    results.sort_by_key(|r| r.total);
    let median = &results[results.len() / 2];
    println!(
        "scoped bootstrap of {partition_rows} rows in a {rows}-row database: median {:.0} ms (goal ≤ 1000 ms), {:.2} MB transferred",
        median.total.as_secs_f64() * 1e3,
        median.bytes as f64 / 1e6
    );
    node.stop();
}
