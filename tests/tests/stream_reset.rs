//! A change stream that JetStream lost (its store wiped) and that was created again: nodes
//! that consumed the old one refuse the new one loudly instead of silently skipping its
//! first messages, a restarted node does not create a fresh stream itself, and
//! `--adopt-stream` lets an operator move a node onto the new stream on purpose.

use std::time::Duration;

use harmonylite_core::value::Value;
use harmonylite_tests::*;

const SCHEMA: &str = "CREATE TABLE items(id TEXT PRIMARY KEY, name TEXT);";
const CONVERGE: Duration = Duration::from_secs(30);

fn ids(node: &Node) -> Vec<String> {
    dump(&node.db, "items")
        .into_iter()
        .map(|row| match &row[0] {
            Value::Text(id) => id.clone(),
            other => panic!("expected a text id, got {other:?}"),
        })
        .collect()
}

fn consumer_error(node: &Node) -> String {
    node.health()
        .and_then(|(_, body)| body["consumer_error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn a_re_created_stream_is_refused_until_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = ExternalNats::start(&dir.path().join("nats"));
    let mut a = Node::new(dir.path(), "a", SCHEMA, &external_toml(&nats.url(), 1));
    let mut b = Node::new(dir.path(), "b", SCHEMA, &external_toml(&nats.url(), 2));
    a.start();
    b.start();
    a.wait_healthy(CONVERGE);
    b.wait_healthy(CONVERGE);
    for k in 0..5 {
        a.app()
            .execute("INSERT INTO items VALUES (?1, 'old')", [format!("old-{k}")])
            .unwrap();
    }
    wait_converged(&[&a, &b], "items", CONVERGE, |rows| rows.len() == 5);

    // JetStream loses everything: same server, empty store.
    nats.stop();
    std::fs::remove_dir_all(dir.path().join("nats/store")).unwrap();
    nats.restart();

    // A node restarted now has applied messages of the lost stream: it waits for the
    // stream and says why, instead of creating an empty one.
    b.stop();
    let before_restart = b.log().len();
    b.start();
    b.wait_for_log("does not exist, but this replica has applied", CONVERGE);
    assert!(!b.log()[before_restart..].contains("consuming the change stream"));

    // A node with a new database (cursor 0) may create the stream, and writes to it.
    let mut c = Node::new(dir.path(), "c", SCHEMA, &external_toml(&nats.url(), 3));
    c.start();
    c.wait_healthy(CONVERGE);
    for k in 0..3 {
        c.app()
            .execute("INSERT INTO items VALUES (?1, 'new')", [format!("new-{k}")])
            .unwrap();
    }
    // `a` kept running through the loss: it sees a different stream and refuses it, with
    // the reason in its health report, and applies none of the new stream's messages.
    assert!(
        wait_until(Duration::from_secs(60), || consumer_error(&a)
            .contains("deleted and created again")),
        "a did not refuse the re-created stream:\n{}",
        a.log_tail()
    );
    assert_ne!(a.health().map(|(code, _)| code), Some(200));
    assert!(consumer_error(&a).contains("--adopt-stream"));
    // `b` finds the stream now but it is not the one its cursor counts in either.
    assert!(
        wait_until(Duration::from_secs(60), || {
            let why = consumer_error(&b);
            why.contains("deleted and created again") || why.contains("ends at sequence")
        }),
        "b did not refuse the re-created stream:\n{}",
        b.log_tail()
    );
    assert!(ids(&a).iter().all(|id| id.starts_with("old-")));
    assert!(ids(&b).iter().all(|id| id.starts_with("old-")));

    // A write made on `a` while it refuses to consume is still published: publishing does
    // not depend on the cursor.
    a.app()
        .execute("INSERT INTO items VALUES ('during', 'a')", [])
        .unwrap();
    assert!(
        wait_until(CONVERGE, || ids(&c).contains(&"during".to_string())),
        "c did not get a's write:\n{}",
        a.log_tail()
    );

    // --adopt-stream refuses while the sidecar runs, then moves `a` onto the new stream.
    assert!(!a.run_command(&["--adopt-stream"], &[], CONVERGE));
    assert!(a
        .log()
        .contains("stop the application and harmonylite first"));
    a.stop();
    assert!(a.run_command(&["--adopt-stream"], &[], CONVERGE));
    a.start();
    a.wait_healthy(CONVERGE);
    assert!(
        wait_until(CONVERGE, || (0..3)
            .all(|k| ids(&a).contains(&format!("new-{k}")))),
        "a did not apply the new stream after --adopt-stream:\n{}",
        a.log_tail()
    );
    // Its old rows are untouched.
    assert!((0..5).all(|k| ids(&a).contains(&format!("old-{k}"))));
}
