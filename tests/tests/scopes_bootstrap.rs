//! Scoped bootstrap with real sidecars (issue 18, point 5): a 3-node embedded cluster with
//! scopes on, notes of several users written by the application (some deleted), a stream
//! that no longer holds the first user's history; a browser-like `async-nats` client with
//! the user's token asks any node for its partition page by page, imports the pages into a
//! fresh scoped core store and holds exactly its rows, the shared rows and its tombstones,
//! with a cursor between the last write before the request and the stream's end. A request
//! with a bad token is refused with the reason.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harmonylite_core::hlc::{NodeId, NTP64};
use harmonylite_core::scope::{ScopeRules, Subjects, Writer};
use harmonylite_core::sqlite::scope_bootstrap::{
    BootstrapReply, BootstrapRequest, PartitionExport,
};
use harmonylite_core::sqlite::{Store, StoreOptions};
use harmonylite_tests::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rusqlite::Connection;
use serde_json::json;

const SCHEMA: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, owner_id TEXT, body TEXT);\
                      CREATE INDEX notes_owner ON notes(owner_id);\
                      CREATE TABLE tags(id INTEGER PRIMARY KEY, name TEXT);\
                      CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT);";
const START: Duration = Duration::from_secs(60);
const AUDIENCE: &str = "notes-app";
const PREFIX: &str = "harmonylite-change-log";
const SECRET: &str = "an HS256 secret shared with the app";
/// Stream retention in messages: small, so the first user's writes are gone.
const MAX_ENTRIES: u64 = 40;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn ntp_now() -> NTP64 {
    harmonylite_core::hlc::ntp64_from_unix_millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

fn token(sub: &str, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "aud": AUDIENCE, "exp": unix_now() + 600, "iat": unix_now()}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// The `[scopes]` sections (notes by `owner_id` from `sub`, tags shared, audit hidden) with
/// an HS256 secret and a new callout account seed in `dir`.
fn scopes_toml(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let seed_file = dir.join("callout.nk");
    let account = nkeys::KeyPair::new_account();
    std::fs::write(&seed_file, format!("{}\n", account.seed().unwrap())).unwrap();
    let secret_file = dir.join("hs256.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    format!(
        "[scopes]\nshared = [\"tags\"]\n[[scopes.partition]]\nname = \"user\"\nclaims = [\"sub\"]\ntables = {{ notes = \"owner_id\" }}\n[scopes.auth]\naudience = \"{AUDIENCE}\"\ncallout_seed_file = {:?}\nhs256_secret_file = {:?}\n",
        seed_file.display().to_string(),
        secret_file.display().to_string()
    )
}

/// The rules the sidecars run with.
fn rules() -> ScopeRules {
    harmonylite_tests::notes_scope_rules()
}

/// A fresh scoped replica's store (what a browser holds).
fn scoped_store(path: &PathBuf) -> (Store, Connection) {
    let app = Connection::open(path).unwrap();
    app.execute_batch(SCHEMA).unwrap();
    let mut options = StoreOptions::new(NodeId::from_u128(0xb0b).unwrap());
    options.scopes = rules();
    options.writer = Writer::Scoped;
    (
        Store::open(Connection::open(path).unwrap(), options).unwrap(),
        app,
    )
}

fn health(node: &Node) -> serde_json::Value {
    node.health().expect("health answers").1
}

fn seq(node: &Node, key: &str) -> u64 {
    health(node)[key].as_u64().unwrap()
}

/// Waits until every node has applied the whole stream; returns the stream's last sequence.
fn settled(nodes: &[Node]) -> u64 {
    let mut last = 0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let seen: Vec<(u64, u64)> = nodes
                .iter()
                .map(|n| (seq(n, "cursor"), seq(n, "stream_last_seq")))
                .collect();
            last = seen[0].1;
            last > 0 && seen.iter().all(|&(c, l)| c == last && l == last)
        }),
        "the nodes do not settle"
    );
    last
}

fn rows(conn: &Connection, sql: &str) -> Vec<(i64, String)> {
    conn.prepare(sql)
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn notes(conn: &Connection, filter: &str) -> Vec<(i64, String)> {
    rows(
        conn,
        &format!("SELECT id, owner_id || ':' || body FROM notes {filter} ORDER BY id"),
    )
}

fn tags(conn: &Connection) -> Vec<(i64, String)> {
    rows(conn, "SELECT id, name FROM tags ORDER BY id")
}

fn tombstones(conn: &Connection, table: &str) -> Vec<i64> {
    let id: i64 = conn
        .query_row("SELECT id FROM __hl_tables WHERE name = ?1", [table], |r| {
            r.get(0)
        })
        .unwrap();
    conn.prepare(&format!(
        "SELECT k0 FROM __hl_v{id} WHERE deleted ORDER BY k0"
    ))
    .unwrap()
    .query_map([], |r| r.get(0))
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Asks for every page of the token's partitions; returns the pages and the bytes received.
async fn bootstrap(
    client: &async_nats::Client,
    subjects: &Subjects,
    token: &str,
) -> Result<(Vec<PartitionExport>, usize), String> {
    let mut pages: Vec<PartitionExport> = Vec::new();
    let mut bytes = 0;
    loop {
        let request = BootstrapRequest {
            token: token.to_owned(),
            after: pages
                .last()
                .and_then(|p| p.next.as_ref())
                .map(|p| p.to_token()),
            // Small pages, so paging is exercised.
            max_bytes: Some(16 * 1024),
            keys: None,
        };
        let reply = client
            .request(
                subjects.bootstrap_request(),
                serde_json::to_vec(&request).unwrap().into(),
            )
            .await
            .map_err(|e| format!("request: {e}"))?;
        bytes += reply.payload.len();
        match BootstrapReply::decode(&reply.payload).expect("a bootstrap reply") {
            BootstrapReply::Refused { reason } => return Err(reason),
            BootstrapReply::Page(page) => {
                let done = page.next.is_none();
                pages.push(page);
                if done {
                    return Ok((pages, bytes));
                }
            }
        }
    }
}

#[test]
fn a_scoped_client_bootstraps_exactly_its_partition_after_its_history_left_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let scopes = scopes_toml(&dir.path().join("keys"));
    let ports = cluster_ports(3);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let cluster = embedded_cluster_toml(&ports, i, i as u64 + 1).replace(
                "[replication_log]\n",
                &format!("[replication_log]\nmax_entries = {MAX_ENTRIES}\n"),
            );
            Node::new(
                dir.path(),
                &format!("node{}", i + 1),
                SCHEMA,
                &format!("{cluster}{scopes}"),
            )
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    for node in &mut nodes {
        node.wait_healthy(START);
    }

    // The application writes u1's notes first (some deleted), other users' and shared
    // rows, and a hidden table's.
    let app = nodes[0].app();
    for i in 1..=30 {
        app.execute(
            "INSERT INTO notes VALUES (?1, 'u1', ?2)",
            rusqlite::params![i, format!("u1 note {i} {}", "x".repeat(400))],
        )
        .unwrap();
    }
    // Published before they are deleted: a row inserted and deleted within one capture
    // never had a partition anyone saw, and its delete travels unscoped.
    settled(&nodes);
    app.execute_batch(
        "DELETE FROM notes WHERE id IN (4, 17);
         UPDATE notes SET body = 'u1 edited' WHERE id = 9;
         INSERT INTO tags VALUES (1, 'red'), (2, 'green'), (3, 'blue');
         DELETE FROM tags WHERE id = 2;
         INSERT INTO audit VALUES (1, 'hidden');",
    )
    .unwrap();
    let u1_written = settled(&nodes);

    // Then enough other writes, one by one, that the stream no longer holds u1's history.
    let mut next_id = 1000;
    while seq(&nodes[0], "stream_last_seq") < u1_written + MAX_ENTRIES + 5 {
        let owner = if next_id % 2 == 0 { "u2" } else { "u3" };
        app.execute(
            "INSERT INTO notes VALUES (?1, ?2, ?3)",
            rusqlite::params![next_id, owner, format!("other user {}", "y".repeat(400))],
        )
        .unwrap();
        if next_id % 5 == 0 {
            app.execute("DELETE FROM notes WHERE id = ?1", [next_id - 1])
                .unwrap();
        }
        next_id += 1;
        std::thread::sleep(Duration::from_millis(40));
    }
    let before = settled(&nodes);
    // Discard-old retention of MAX_ENTRIES messages: the first retained sequence is past
    // every message of u1's.
    assert!(before - MAX_ENTRIES + 1 > u1_written);

    let subjects = Subjects::new(PREFIX);
    let bad_token = token("u2", "not the app's secret");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (pages, bytes) = runtime.block_on(async {
        let client = async_nats::ConnectOptions::with_token(token("u1", SECRET))
            .custom_inbox_prefix(Subjects::client_inbox_prefix("u1"))
            .connection_timeout(Duration::from_secs(10))
            .connect(format!("nats://127.0.0.1:{}", ports[1].0))
            .await
            .unwrap();
        let answer = bootstrap(&client, &subjects, &token("u1", SECRET))
            .await
            .unwrap();

        // A request whose token does not verify (another secret), and one that is not a
        // bootstrap request, are refused with the reason.
        let refused = bootstrap(&client, &subjects, &bad_token).await.unwrap_err();
        assert!(refused.contains("signature does not verify"), "{refused}");
        let reply = client
            .request(subjects.bootstrap_request(), "{}".into())
            .await
            .unwrap();
        match BootstrapReply::decode(&reply.payload).unwrap() {
            BootstrapReply::Refused { reason } => {
                assert!(reason.contains("not a bootstrap request"), "{reason}")
            }
            other => panic!("a malformed request got {other:?}"),
        }
        answer
    });
    let after = seq(&nodes[0], "stream_last_seq");
    assert!(pages.len() > 1, "paged: {} page(s)", pages.len());

    let scoped_path = dir.path().join("browser.db");
    let (mut scoped, browser) = scoped_store(&scoped_path);
    for page in &pages {
        scoped.import_partitions(page, ntp_now()).unwrap();
    }
    let full = nodes[0].app();
    assert_eq!(notes(&browser, ""), notes(&full, "WHERE owner_id = 'u1'"));
    assert_eq!(notes(&browser, "").len(), 28);
    assert!(notes(&browser, "WHERE owner_id <> 'u1'").is_empty());
    assert_eq!(tags(&browser), tags(&full));
    let hidden: i64 = browser
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(hidden, 0);
    assert_eq!(tombstones(&browser, "notes"), [4, 17]);
    assert_eq!(tombstones(&browser, "tags"), [2]);
    let covered = scoped.cursor().get();
    assert!(
        (before..=after).contains(&covered),
        "covered {covered} not in {before}..={after}"
    );
    // Only u1's partition travelled: other users' notes outweigh u1's, yet the pages hold
    // little more than u1's notes.
    let size = |filter: &str| -> usize {
        full.query_row(
            &format!("SELECT sum(length(body)) FROM notes WHERE {filter}"),
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as usize
    };
    let (mine, others) = (size("owner_id = 'u1'"), size("owner_id <> 'u1'"));
    assert!(others > mine, "{others} <= {mine}");
    assert!(
        bytes >= mine && bytes < mine + 4 * 1024,
        "{bytes} bytes for {mine} bytes of u1's notes"
    );

    let logs: String = nodes.iter().map(Node::log).collect();
    assert!(
        logs.contains("refused a scoped bootstrap request: the token's signature does not verify"),
        "some node logs the refusal"
    );
    let signature = bad_token.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature), "a log holds the token");
}
