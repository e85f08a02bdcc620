//! Scope routing on real SQLite files: a captured transaction is split by route (each
//! partition's rows on its own subject, shared and hidden tables on theirs), deletes follow
//! the row's partition, and a full replica applies the routed groups of one source batch
//! atomically, only once every frame is here.

use std::path::Path;

use harmonylite_core::change::StreamSeq;
use harmonylite_core::hlc::NodeId;
use harmonylite_core::report::{Inbound, OutboxFrame};
use harmonylite_core::scope::{ScopeRules, Subjects};
use harmonylite_core::sqlite::{Store, StoreOptions};
use harmonylite_core::wire::{self, Message};
use rusqlite::Connection;

#[path = "common/scopes.rs"]
mod scopes;
use scopes::{now, rules, user};

const SCHEMA: &str = "CREATE TABLE notes(id TEXT PRIMARY KEY, owner_id TEXT, body TEXT);
    CREATE TABLE tags(id INTEGER PRIMARY KEY, name TEXT);
    CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT);";

fn open(path: &Path, node: u128, scopes: ScopeRules, max_frame: usize) -> Store {
    let mut options = StoreOptions::new(NodeId::from_u128(node).unwrap());
    options.scopes = scopes;
    options.max_frame = max_frame;
    options.compression = wire::Compression::None;
    Store::open(Connection::open(path).unwrap(), options).unwrap()
}

fn app(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    conn
}

/// Drains and takes every outbox frame (as if JetStream acked them).
fn publish(store: &mut Store) -> Vec<OutboxFrame> {
    store.drain().unwrap();
    let frames = store.outbox_after(0, 10_000).unwrap();
    let ids: Vec<i64> = frames.iter().map(|f| f.id).collect();
    store.outbox_remove(&ids).unwrap();
    frames
}

fn subjects(frames: &[OutboxFrame]) -> Vec<String> {
    let s = Subjects::new("app");
    let mut out: Vec<String> = frames
        .iter()
        .map(|f| s.for_suffix(f.subject.as_deref()))
        .collect();
    out.dedup();
    out
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn one_transaction_is_split_by_route_and_applied_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let a_app = app(&a_path);
    let b_app = app(&b_path);
    let mut a = open(&a_path, 1, rules(), 1 << 20);
    let mut b = open(&b_path, 2, rules(), 1 << 20);

    a_app
        .execute_batch(
            "BEGIN;
             INSERT INTO notes VALUES ('n1', 'u1', 'one'), ('n2', 'u2', 'two'), ('n3', 'a.b c', 'three');
             INSERT INTO tags VALUES (1, 'red');
             INSERT INTO audit VALUES (1, 'created');
             COMMIT;",
        )
        .unwrap();
    let frames = publish(&mut a);
    assert_eq!(
        subjects(&frames),
        [
            "app.p.user.tu1.f.tnotes",
            "app.p.user.tu2.f.tnotes",
            "app.p.user.x612e622063.f.tnotes",
            "app.shared.ttags",
            "app.1"
        ]
    );
    assert!(frames
        .iter()
        .all(|f| matches!(wire::decode_message(&f.frame), Ok(Message::Routed(_)))));

    // Every frame but the last: nothing is applied yet (the source batch stays whole).
    let inbound: Vec<Inbound> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| Inbound {
            seq: StreamSeq::new(i as u64 + 1),
            frame: f.frame.clone(),
            subject: None,
        })
        .collect();
    let (last, first) = inbound.split_last().unwrap();
    b.receive(now(), first).unwrap();
    assert_eq!(count(&b_app, "SELECT count(*) FROM notes"), 0);
    assert_eq!(count(&b_app, "SELECT count(*) FROM tags"), 0);
    b.receive(now(), std::slice::from_ref(last)).unwrap();
    assert_eq!(count(&b_app, "SELECT count(*) FROM notes"), 3);
    assert_eq!(count(&b_app, "SELECT count(*) FROM tags"), 1);
    assert_eq!(count(&b_app, "SELECT count(*) FROM audit"), 1);
    assert_eq!(b.cursor(), StreamSeq::new(frames.len() as u64));

    // A delete on b (which learned the row's partition from the stream) and an update that
    // moves a row on a: each travels on the partition of the row's image, and the move
    // leaves a moved-out marker on the old partition's subject.
    b_app
        .execute("DELETE FROM notes WHERE id = 'n1'", [])
        .unwrap();
    assert_eq!(subjects(&publish(&mut b)), ["app.p.user.tu1.f.tnotes"]);
    a_app
        .execute("UPDATE notes SET owner_id = 'u9' WHERE id = 'n2'", [])
        .unwrap();
    assert_eq!(
        subjects(&publish(&mut a)),
        ["app.p.user.tu2.f.tnotes", "app.p.user.tu9.f.tnotes"]
    );
    a_app
        .execute("DELETE FROM notes WHERE id = 'n2'", [])
        .unwrap();
    assert_eq!(subjects(&publish(&mut a)), ["app.p.user.tu9.f.tnotes"]);
}

#[test]
fn large_routed_batches_are_chunked_and_reassembled() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let a_app = app(&a_path);
    let b_app = app(&b_path);
    let mut a = open(&a_path, 1, rules(), 2048);
    let mut b = open(&b_path, 2, rules(), 2048);
    a_app.execute_batch("BEGIN").unwrap();
    for i in 0..300 {
        a_app
            .execute(
                "INSERT INTO notes VALUES (?1, ?2, ?3)",
                rusqlite::params![format!("n{i}"), format!("u{}", i % 3), "x".repeat(60)],
            )
            .unwrap();
    }
    a_app.execute_batch("COMMIT").unwrap();
    let frames = publish(&mut a);
    assert!(frames.len() > 6, "{} frames", frames.len());
    assert_eq!(subjects(&frames).len(), 3);
    // Delivered in reverse: the batch still applies once, when the last frame arrives.
    let inbound: Vec<Inbound> = frames
        .iter()
        .rev()
        .enumerate()
        .map(|(i, f)| Inbound {
            seq: StreamSeq::new(i as u64 + 1),
            frame: f.frame.clone(),
            subject: None,
        })
        .collect();
    for (i, message) in inbound.iter().enumerate() {
        b.receive(now(), std::slice::from_ref(message)).unwrap();
        let expected = if i + 1 == inbound.len() { 300 } else { 0 };
        assert_eq!(count(&b_app, "SELECT count(*) FROM notes"), expected);
    }
}

#[test]
fn rows_written_before_scopes_were_on_route_their_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let a_app = app(&path);
    {
        let mut before = open(&path, 1, ScopeRules::default(), 1 << 20);
        a_app
            .execute("INSERT INTO notes VALUES ('n1', 'u1', 'old')", [])
            .unwrap();
        let frames = publish(&mut before);
        assert_eq!(subjects(&frames), ["app.1"]);
        assert!(frames
            .iter()
            .all(|f| matches!(wire::decode_message(&f.frame), Ok(Message::V1(_)))));
    }
    let mut after = open(&path, 1, rules(), 1 << 20);
    a_app
        .execute("DELETE FROM notes WHERE id = 'n1'", [])
        .unwrap();
    assert_eq!(subjects(&publish(&mut after)), ["app.p.user.tu1.f.tnotes"]);
    // Only hidden tables: a plain unscoped batch, readable by builds without scopes.
    a_app
        .execute("INSERT INTO audit VALUES (2, 'x')", [])
        .unwrap();
    let frames = publish(&mut after);
    assert_eq!(subjects(&frames), ["app.1"]);
    assert!(matches!(
        wire::decode_message(&frames[0].frame),
        Ok(Message::V1(_))
    ));
}

/// A stream in miniature that keeps each message's subject, as JetStream does.
#[derive(Default)]
struct Stream {
    messages: Vec<Inbound>,
}

impl Stream {
    /// Publishes `store`'s pending writes on the subjects they name, or all on `forced`.
    fn publish(&mut self, store: &mut Store, forced: Option<&str>) {
        for frame in publish(store) {
            let subject = forced.map(str::to_owned).or(frame.subject.clone());
            self.messages.push(Inbound {
                seq: StreamSeq::new(self.messages.len() as u64 + 1),
                frame: frame.frame,
                subject: Some(subject.unwrap_or_else(|| "1".into())),
            });
        }
    }

    /// Delivers everything after the store's cursor; returns the refusals.
    fn deliver(&self, store: &mut Store) -> Vec<harmonylite_core::report::Refused> {
        let after = store.cursor().get() as usize;
        store
            .receive(now(), &self.messages[after..])
            .unwrap()
            .refused
    }
}

/// A scoped replica with the rules; `partitions`: the users whose partitions its feed named
/// (`None`: not learned yet, or as stored).
fn open_scoped_replica(path: &Path, node: u128, partitions: Option<&[&str]>) -> Store {
    let mut options = StoreOptions::new(NodeId::from_u128(node).unwrap());
    options.scopes = rules();
    options.writer = harmonylite_core::scope::Writer::Scoped;
    options.partitions = partitions.map(|subs| subs.iter().map(|u| user(u)).collect());
    Store::open(Connection::open(path).unwrap(), options).unwrap()
}

fn notes(conn: &Connection) -> Vec<(String, String, String)> {
    conn.prepare("SELECT id, owner_id, body FROM notes ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn every_full_replica_refuses_the_same_out_of_scope_writes() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = ["f1", "f2", "c"]
        .iter()
        .map(|n| dir.path().join(format!("{n}.db")))
        .collect();
    let apps: Vec<Connection> = paths.iter().map(|p| app(p)).collect();
    let mut f1 = open(&paths[0], 1, rules(), 1 << 20);
    let mut f2 = open(&paths[1], 2, rules(), 1 << 20);
    let mut client = open_scoped_replica(&paths[2], 3, None);
    let mut stream = Stream::default();

    // A full node writes u2's note; its own message counts once it is in the stream.
    apps[0]
        .execute("INSERT INTO notes VALUES ('n3', 'u2', 'theirs')", [])
        .unwrap();
    stream.publish(&mut f1, None);
    assert!(stream.deliver(&mut f1).is_empty());
    assert!(stream.deliver(&mut f2).is_empty());

    // u1's client: its own note, on its own subject: accepted.
    apps[2]
        .execute("INSERT INTO notes VALUES ('n1', 'u1', 'mine')", [])
        .unwrap();
    stream.publish(&mut client, None);
    assert_eq!(
        stream.messages.last().unwrap().subject.as_deref(),
        Some("p.user.tu1.c.tnotes")
    );
    // A row of u2's, published on u1's subject (all NATS lets u1 publish on): refused.
    apps[2]
        .execute("INSERT INTO notes VALUES ('n2', 'u2', 'forged')", [])
        .unwrap();
    stream.publish(&mut client, Some("p.user.tu1.c.tnotes"));
    // u2's note taken over: the row claims u1, but the key was given to u2: refused.
    apps[2]
        .execute("INSERT INTO notes VALUES ('n3', 'u1', 'stolen')", [])
        .unwrap();
    stream.publish(&mut client, None);

    let refused_1 = stream.deliver(&mut f1);
    let refused_2 = stream.deliver(&mut f2);
    let reasons: Vec<&str> = refused_1.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(refused_1.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("belongs to partition user='u2'"),
        "{reasons:?}"
    );
    assert!(
        reasons[0].contains("subject names user='u1'"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("the key belongs to partition user='u2'"),
        "{reasons:?}"
    );
    assert_eq!(refused_1[1].table, "notes");
    assert_eq!(refused_1[1].key, "[Text(\"n3\")]");
    assert_eq!(
        refused_1, refused_2,
        "every full replica reaches the same verdicts"
    );
    let expected = vec![
        ("n1".to_owned(), "u1".to_owned(), "mine".to_owned()),
        ("n3".to_owned(), "u2".to_owned(), "theirs".to_owned()),
    ];
    assert_eq!(notes(&apps[0]), expected);
    assert_eq!(notes(&apps[1]), expected);
}

#[test]
fn a_scoped_frame_never_completes_a_full_nodes_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let a_app = app(&a_path);
    let b_app = app(&b_path);
    let mut a = open(&a_path, 1, rules(), 2048);
    let mut b = open(&b_path, 2, rules(), 2048);
    a_app.execute_batch("BEGIN").unwrap();
    for i in 0..100 {
        a_app
            .execute(
                "INSERT INTO notes VALUES (?1, 'u1', ?2)",
                rusqlite::params![format!("n{i}"), "x".repeat(60)],
            )
            .unwrap();
    }
    a_app.execute_batch("COMMIT").unwrap();
    let mut stream = Stream::default();
    stream.publish(&mut a, None);
    assert!(stream.messages.len() > 2);
    // All but the last of the same frames, replayed by a client on its own subject ahead of
    // the real ones: they wait apart from the full node's, so they neither complete its
    // batch nor block it, and the full node's batch applies once, as a full node's.
    let mut forged: Vec<Inbound> = stream
        .messages
        .iter()
        .map(|m| Inbound {
            subject: Some("p.user.tu1.c.tnotes".into()),
            ..m.clone()
        })
        .collect();
    forged.pop();
    let real = std::mem::take(&mut stream.messages);
    stream.messages = forged.into_iter().chain(real).collect();
    for (i, m) in stream.messages.iter_mut().enumerate() {
        m.seq = StreamSeq::new(i as u64 + 1);
    }
    let refused = stream.deliver(&mut b);
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(count(&b_app, "SELECT count(*) FROM notes"), 100);
}

#[test]
fn a_replica_with_other_scope_rules_parks_routed_messages_until_the_rules_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let a_app = app(&a_path);
    let b_app = app(&b_path);
    let mut a = open(&a_path, 1, rules(), 1 << 20);
    let other = ScopeRules::new(rules().rules().to_vec(), [], ["tags".to_owned()]).unwrap();
    assert_ne!(other.fingerprint(), rules().fingerprint());
    let mut b = open(&b_path, 2, other, 1 << 20);
    a_app
        .execute("INSERT INTO notes VALUES ('n1', 'u1', 'one')", [])
        .unwrap();
    let mut stream = Stream::default();
    stream.publish(&mut a, None);
    let report = b.receive(now(), &stream.messages).unwrap();
    assert_eq!(report.parked.len(), 1);
    assert_eq!(
        report.parked[0].kind,
        harmonylite_core::report::ParkReason::ScopeRules
    );
    assert!(
        report.parked[0].reason.contains("scope rules differ"),
        "{}",
        report.parked[0].reason
    );
    assert_eq!(count(&b_app, "SELECT count(*) FROM notes"), 0);
    drop(b);
    // The operator makes the rules agree and restarts the node: the message applies.
    let mut b = open(&b_path, 2, rules(), 1 << 20);
    let retried = b.retry_parked(now()).unwrap();
    assert_eq!(retried.unparked, 1);
    assert_eq!(count(&b_app, "SELECT count(*) FROM notes"), 1);
}

#[test]
fn a_scoped_replica_keeps_the_rules_it_was_given_for_offline_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let c_app = app(&path);
    {
        let store = open_scoped_replica(&path, 3, None);
        assert_eq!(store.options().scopes, rules());
    }
    assert_eq!(
        Store::stored_scope_rules(&c_app).unwrap(),
        Some(rules().to_doc())
    );
    // Offline: opened without rules, it routes by the stored ones.
    let mut options = StoreOptions::new(NodeId::from_u128(3).unwrap());
    options.writer = harmonylite_core::scope::Writer::Scoped;
    let mut store = Store::open(Connection::open(&path).unwrap(), options).unwrap();
    c_app
        .execute("INSERT INTO notes VALUES ('n1', 'u1', 'offline')", [])
        .unwrap();
    assert_eq!(subjects(&publish(&mut store)), ["app.p.user.tu1.c.tnotes"]);
}

#[test]
fn a_scoped_replica_applies_the_groups_it_receives_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (f_path, c_path) = (dir.path().join("f.db"), dir.path().join("c.db"));
    let f_app = app(&f_path);
    let c_app = app(&c_path);
    let mut full = open(&f_path, 1, rules(), 2048);
    let mut client = open_scoped_replica(&c_path, 3, None);
    f_app.execute_batch("BEGIN").unwrap();
    for i in 0..60 {
        f_app
            .execute(
                "INSERT INTO notes VALUES (?1, ?2, ?3)",
                rusqlite::params![
                    format!("n{i}"),
                    if i % 2 == 0 { "u1" } else { "u2" },
                    "x".repeat(60)
                ],
            )
            .unwrap();
    }
    f_app.execute_batch("COMMIT").unwrap();
    let mut stream = Stream::default();
    stream.publish(&mut full, None);
    // The feed of u1: only u1's frames (several: its group is chunked), in stream order.
    let feed: Vec<Inbound> = stream
        .messages
        .iter()
        .filter(|m| m.subject.as_deref() == Some("p.user.tu1.f.tnotes"))
        .cloned()
        .collect();
    assert!(feed.len() > 1, "u1's group spans several frames");
    assert!(feed.len() < stream.messages.len());
    let report = client.receive(now(), &feed).unwrap();
    assert!(report.parked.is_empty(), "{:?}", report.parked);
    assert_eq!(
        count(&c_app, "SELECT count(*) FROM notes WHERE owner_id = 'u1'"),
        30
    );
    assert_eq!(count(&c_app, "SELECT count(*) FROM notes"), 30);
    assert_eq!(client.cursor(), feed.last().unwrap().seq);
}

#[test]
fn a_scoped_replicas_incomplete_batch_is_forgotten_after_a_window_of_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (f_path, c_path) = (dir.path().join("f.db"), dir.path().join("c.db"));
    let _f_app = app(&f_path);
    let c_app = app(&c_path);
    let mut full = open(&f_path, 1, rules(), 1 << 20);
    let mut options = StoreOptions::new(NodeId::from_u128(3).unwrap());
    options.scopes = rules();
    options.writer = harmonylite_core::scope::Writer::Scoped;
    options.max_frame = 2048;
    options.compression = wire::Compression::None;
    let mut client = Store::open(Connection::open(&c_path).unwrap(), options).unwrap();
    let mut batch = |first: i64| {
        c_app.execute_batch("BEGIN").unwrap();
        for i in first..first + 40 {
            c_app
                .execute(
                    "INSERT INTO notes VALUES (?1, 'u1', ?2)",
                    rusqlite::params![format!("n{i}"), "x".repeat(60)],
                )
                .unwrap();
        }
        c_app.execute_batch("COMMIT").unwrap();
        publish(&mut client)
    };
    let first = batch(0);
    let second = batch(100);
    assert!(first.len() > 1 && second.len() > 1);
    let on_subject = |f: &OutboxFrame, seq: u64| Inbound {
        seq: StreamSeq::new(seq),
        frame: f.frame.clone(),
        subject: f.subject.clone(),
    };
    let parts = |store: &Store| count(store.connection(), "SELECT count(*) FROM __hl_parts");
    // One frame of the first batch, then nothing more of it for more than the window.
    full.receive(now(), &[on_subject(&first[0], 1)]).unwrap();
    assert_eq!(parts(&full), 1);
    let late = 2 + harmonylite_core::sqlite::SCOPED_PART_WINDOW;
    full.receive(now(), &[on_subject(&second[0], late)])
        .unwrap();
    assert_eq!(
        parts(&full),
        1,
        "the first batch's part is forgotten, the second's kept"
    );
    // The rest of the second batch completes it as usual.
    let rest: Vec<Inbound> = second[1..]
        .iter()
        .enumerate()
        .map(|(i, f)| on_subject(f, late + 1 + i as u64))
        .collect();
    let report = full.receive(now(), &rest).unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(parts(&full), 0);
    assert_eq!(
        count(
            full.connection(),
            "SELECT count(*) FROM notes WHERE id >= 'n100'"
        ),
        40
    );
}

impl Stream {
    /// Delivers to a scoped replica of `subs` what its feed would (its partitions, the
    /// shared tables), after its cursor; returns its reverted writes.
    fn feed(
        &self,
        store: &mut Store,
        subs: &[&str],
    ) -> Vec<harmonylite_core::report::RefusedWrite> {
        let after = store.cursor().get() as usize;
        let mine: Vec<Inbound> = self.messages[after..]
            .iter()
            .filter(|m| {
                let s = m.subject.as_deref().unwrap_or("1");
                s.starts_with("shared.")
                    || subs
                        .iter()
                        .any(|u| s.starts_with(&format!("p.{}.", user(u).token())))
            })
            .cloned()
            .collect();
        if mine.is_empty() {
            return Vec::new();
        }
        store.receive(now(), &mine).unwrap().reverted
    }
}

fn tags(conn: &Connection) -> Vec<(i64, String)> {
    conn.prepare("SELECT id, name FROM tags ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_refused_write_returns_to_the_accepted_state_on_its_writer() {
    use harmonylite_core::sqlite::scope_refetch::export_keys;
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = ["f1", "f2", "c"]
        .iter()
        .map(|n| dir.path().join(format!("{n}.db")))
        .collect();
    let apps: Vec<Connection> = paths.iter().map(|p| app(p)).collect();
    let mut f1 = open(&paths[0], 1, rules(), 1 << 20);
    let mut f2 = open(&paths[1], 2, rules(), 1 << 20);
    let mut client = open_scoped_replica(&paths[2], 3, Some(&["u1"]));
    // u1's other device reads the same partition.
    let other_path = dir.path().join("c2.db");
    let other_app = app(&other_path);
    let mut other = open_scoped_replica(&other_path, 4, Some(&["u1"]));
    let mut stream = Stream::default();

    // A full node writes u2's note and a shared tag; u1's replica gets the tag only.
    apps[0]
        .execute_batch(
            "INSERT INTO notes VALUES ('n3', 'u2', 'theirs'); INSERT INTO tags VALUES (1, 'red');",
        )
        .unwrap();
    stream.publish(&mut f1, None);
    stream.deliver(&mut f1);
    stream.deliver(&mut f2);
    assert!(stream.feed(&mut client, &["u1"]).is_empty());
    assert_eq!(tags(&apps[2]), [(1, "red".to_owned())]);

    // Writes the replica may not make are refused before they are published: a shared
    // table, another user's partition. Its own note goes out.
    apps[2]
        .execute_batch(
            "BEGIN; UPDATE tags SET name = 'mine now' WHERE id = 1;
             INSERT INTO notes VALUES ('n4', 'u2', 'for u2');
             INSERT INTO notes VALUES ('n1', 'u1', 'mine'); COMMIT;",
        )
        .unwrap();
    let drained = client.drain().unwrap();
    let refused: Vec<(String, String)> = drained
        .refused_writes
        .iter()
        .map(|r| (r.table.clone(), format!("{:?}", r.key)))
        .collect();
    assert_eq!(
        refused,
        [
            ("tags".to_owned(), "[Integer(1)]".to_owned()),
            ("notes".to_owned(), "[Text(\"n4\")]".to_owned())
        ]
    );
    assert!(drained.refused_writes[0].reason.contains("shared"));
    assert!(drained.refused_writes[1]
        .reason
        .contains("not one this replica's token grants"));
    assert!(
        tags(&apps[2]).is_empty(),
        "the refused tag is gone until refetched"
    );
    assert_eq!(
        notes(&apps[2]),
        [("n1".to_owned(), "u1".to_owned(), "mine".to_owned())]
    );
    stream.publish(&mut client, None);
    assert_eq!(
        stream.messages.last().unwrap().subject.as_deref(),
        Some("p.user.tu1.c.tnotes"),
        "only the note it may write is published"
    );

    // A takeover of u2's key passes the local check (the replica cannot see u2's rows) and
    // is refused by every full node, which publish the same notice.
    apps[2]
        .execute("INSERT INTO notes VALUES ('n3', 'u1', 'stolen')", [])
        .unwrap();
    stream.publish(&mut client, None);
    // u1's other device applies it from their shared subject before any full node judged it.
    assert!(stream.feed(&mut other, &["u1"]).is_empty());
    assert!(notes(&other_app).iter().any(|n| n.2 == "stolen"));
    assert_eq!(stream.deliver(&mut f1).len(), 1);
    assert_eq!(stream.deliver(&mut f2).len(), 1);
    let notice_1 = f1.outbox_after(0, 10).unwrap();
    let notice_2 = f2.outbox_after(0, 10).unwrap();
    assert_eq!(notice_1.len(), 1);
    assert_eq!(
        (notice_1[0].msg_id.as_str(), notice_1[0].subject.as_deref()),
        (notice_2[0].msg_id.as_str(), notice_2[0].subject.as_deref()),
        "every full node publishes the same notice"
    );
    assert_eq!(notice_1[0].frame, notice_2[0].frame);
    assert_eq!(notice_1[0].subject.as_deref(), Some("p.user.tu1.f.tnotes"));
    stream.publish(&mut f1, None);
    stream.publish(&mut f2, None);

    // The writer reverts once (the second copy changes nothing); others ignore it.
    let reverted = stream.feed(&mut client, &["u1"]);
    assert_eq!(reverted.len(), 1, "{reverted:?}");
    assert_eq!(reverted[0].table, "notes");
    assert_eq!(
        reverted[0].key,
        [harmonylite_core::value::Value::Text("n3".into())]
    );
    assert!(reverted[0].reason.contains("belongs to partition"));
    assert_eq!(
        notes(&apps[2]),
        [("n1".to_owned(), "u1".to_owned(), "mine".to_owned())]
    );
    assert!(stream.deliver(&mut f1).is_empty());
    assert_eq!(notes(&apps[0])[1].2, "theirs");
    // The other device forgets the refused row too (silently: not its write) and queues it.
    assert!(stream.feed(&mut other, &["u1"]).is_empty());
    assert!(
        !notes(&other_app).iter().any(|n| n.0 == "n3"),
        "{:?}",
        notes(&other_app)
    );
    assert_eq!(other.refetch_keys().unwrap().len(), 1);

    // The refetch brings back what the replica may see, at the accepted version: the tag;
    // the takeover and the other user's note stay gone. The cursor does not move.
    let mut keys = client.refetch_keys().unwrap();
    keys.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    assert_eq!(keys.len(), 3, "{keys:?}");
    let cursor = client.cursor();
    let page = export_keys(f1.connection(), &rules(), &[user("u1")], &keys).unwrap();
    let exported: usize = page.tables.iter().map(|t| t.rows.len()).sum();
    assert_eq!(
        exported, 1,
        "only the shared tag is visible to u1: {page:?}"
    );
    client.import_refetched(&page, &keys, now()).unwrap();
    assert_eq!(client.cursor(), cursor);
    assert!(client.refetch_keys().unwrap().is_empty());
    assert_eq!(tags(&apps[2]), [(1, "red".to_owned())]);
    assert_eq!(
        notes(&apps[2]),
        [("n1".to_owned(), "u1".to_owned(), "mine".to_owned())]
    );
    // Nothing of this is replicated: the replica's outbox is empty.
    client.drain().unwrap();
    assert!(client.outbox_after(0, 10).unwrap().is_empty());
}

#[test]
fn a_partition_the_token_no_longer_grants_is_forgotten_locally() {
    let dir = tempfile::tempdir().unwrap();
    let (f_path, c_path) = (dir.path().join("f.db"), dir.path().join("c.db"));
    let (f_app, c_app) = (app(&f_path), app(&c_path));
    let mut full = open(&f_path, 1, rules(), 1 << 20);
    let mut client = open_scoped_replica(&c_path, 3, Some(&["u1", "u9"]));
    let mut stream = Stream::default();
    f_app
        .execute_batch(
            "INSERT INTO notes VALUES ('a', 'u1', 'one'), ('b', 'u9', 'nine'), ('c', 'u9', 'gone');
             DELETE FROM notes WHERE id = 'c';",
        )
        .unwrap();
    stream.publish(&mut full, None);
    stream.feed(&mut client, &["u1", "u9"]);
    assert_eq!(notes(&c_app).len(), 2);

    let change = client.adopt_partitions(vec![user("u1")]).unwrap();
    assert_eq!(change.lost, [user("u9")]);
    assert!(change.gained.is_empty());
    assert!(change.known_before);
    assert_eq!(change.rows_forgotten, 1);
    assert_eq!(
        notes(&c_app),
        [("a".to_owned(), "u1".to_owned(), "one".to_owned())]
    );
    client.drain().unwrap();
    assert!(
        client.outbox_after(0, 10).unwrap().is_empty(),
        "forgetting is not a delete to replicate"
    );
    assert_eq!(notes(&f_app).len(), 2, "the full node keeps u9's rows");

    // A write made for u9 while its loss was not known yet waits in the outbox: once the
    // token drops u9 it cannot be published, so the whole batch is refused here.
    drop(client);
    let mut client = open_scoped_replica(&c_path, 3, Some(&["u1", "u9"]));
    c_app
        .execute_batch(
            "BEGIN; INSERT INTO notes VALUES ('d', 'u9', 'late'); INSERT INTO notes VALUES ('e', 'u1', 'same tx'); COMMIT;",
        )
        .unwrap();
    client.drain().unwrap();
    assert_eq!(client.outbox_after(0, 10).unwrap().len(), 2);
    let change = client.adopt_partitions(vec![user("u1")]).unwrap();
    let refused: Vec<String> = change
        .refused_writes
        .iter()
        .map(|w| format!("{:?}", w.key))
        .collect();
    assert_eq!(
        refused,
        ["[Text(\"d\")]", "[Text(\"e\")]"],
        "{:?}",
        change.refused_writes
    );
    assert!(change.refused_writes[0]
        .reason
        .contains("no longer grants partition user='u9'"));
    assert!(client.outbox_after(0, 10).unwrap().is_empty());
    assert_eq!(
        notes(&c_app),
        [("a".to_owned(), "u1".to_owned(), "one".to_owned())],
        "the refused transaction's rows are gone until refetched"
    );
    assert_eq!(client.refetch_keys().unwrap().len(), 2);

    // Stored for offline starts; a new partition is reported as gained.
    drop(client);
    let mut reopened = open_scoped_replica(&c_path, 3, None);
    assert_eq!(reopened.scope_partitions(), Some(&[user("u1")][..]));
    let change = reopened
        .adopt_partitions(vec![user("u5"), user("u1")])
        .unwrap();
    assert_eq!(change.gained, [user("u5")]);
    assert!(change.lost.is_empty());
}

#[test]
fn a_moved_row_leaves_its_old_partitions_replicas_and_a_scoped_writer_may_move_between_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(format!("{n}.db"));
    let (f_app, u1_app, u2_app, both_app) = (
        app(&path("f")),
        app(&path("u1")),
        app(&path("u2")),
        app(&path("both")),
    );
    let mut full = open(&path("f"), 1, rules(), 1 << 20);
    let mut u1 = open_scoped_replica(&path("u1"), 3, Some(&["u1"]));
    let mut u2 = open_scoped_replica(&path("u2"), 4, Some(&["u2"]));
    let mut both = open_scoped_replica(&path("both"), 5, Some(&["u1", "u2"]));
    let mut stream = Stream::default();
    let feed_all = |stream: &Stream, u1: &mut Store, u2: &mut Store, both: &mut Store| {
        assert!(stream.feed(u1, &["u1"]).is_empty());
        assert!(stream.feed(u2, &["u2"]).is_empty());
        assert!(stream.feed(both, &["u1", "u2"]).is_empty());
    };
    let ids = |conn: &Connection| {
        notes(conn)
            .into_iter()
            .map(|n| format!("{}:{}", n.0, n.1))
            .collect::<Vec<_>>()
    };

    // A full node's move of k1 from u1 to u2: u1's replica drops it, u2's gets it, the
    // replica of both keeps it (the marker is older than the move, whichever comes first).
    f_app
        .execute_batch("INSERT INTO notes VALUES ('k1', 'u1', 'one'), ('k2', 'u1', 'two')")
        .unwrap();
    stream.publish(&mut full, None);
    stream.deliver(&mut full);
    feed_all(&stream, &mut u1, &mut u2, &mut both);
    assert_eq!(ids(&u1_app), ["k1:u1", "k2:u1"]);
    f_app
        .execute("UPDATE notes SET owner_id = 'u2' WHERE id = 'k1'", [])
        .unwrap();
    stream.publish(&mut full, None);
    stream.deliver(&mut full);
    feed_all(&stream, &mut u1, &mut u2, &mut both);
    assert_eq!(
        ids(&u1_app),
        ["k2:u1"],
        "the old partition's replica drops the moved row"
    );
    assert_eq!(ids(&u2_app), ["k1:u2"]);
    assert_eq!(ids(&both_app), ["k1:u2", "k2:u1"]);
    assert_eq!(ids(&f_app), ["k1:u2", "k2:u1"]);

    // A scoped replica granted both partitions moves k2 from u1 to u2: every full node
    // accepts it (its marker on u1's own subject proves it may write there).
    both_app
        .execute("UPDATE notes SET owner_id = 'u2' WHERE id = 'k2'", [])
        .unwrap();
    stream.publish(&mut both, None);
    assert!(stream.deliver(&mut full).is_empty(), "the move was refused");
    feed_all(&stream, &mut u1, &mut u2, &mut both);
    assert_eq!(ids(&f_app), ["k1:u2", "k2:u2"]);
    assert!(ids(&u1_app).is_empty());
    assert_eq!(ids(&u2_app), ["k1:u2", "k2:u2"]);

    // u2's replica may not move a row into u1's partition, and publishes nothing of it (no
    // marker that would delete k1 from u2's partition everywhere).
    u2_app
        .execute("UPDATE notes SET owner_id = 'u1' WHERE id = 'k1'", [])
        .unwrap();
    let drained = u2.drain().unwrap();
    assert_eq!(
        drained.refused_writes.len(),
        1,
        "{:?}",
        drained.refused_writes
    );
    assert!(u2.outbox_after(0, 10).unwrap().is_empty());
    assert_eq!(ids(&f_app), ["k1:u2", "k2:u2"]);

    // A replica of u1 alone moving a row in u2's partition into its own: a takeover, refused
    // by the full node (it carries no marker on u2's subject, which it may not write).
    u1_app
        .execute("INSERT INTO notes VALUES ('k1', 'u1', 'mine now')", [])
        .unwrap();
    stream.publish(&mut u1, None);
    let refused = stream.deliver(&mut full);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(ids(&f_app), ["k1:u2", "k2:u2"]);
}
