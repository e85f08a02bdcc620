//! Scoped subjects on a running cluster (issue 18, points 2 and 4), with real sidecars in a
//! 3-node embedded NATS cluster and an application process writing through one open
//! connection the whole time:
//!
//! - the cluster starts on the single subject, then each node is restarted with `[scopes]`
//!   on, one at a time: nothing acknowledged is lost or duplicated, every node converges,
//!   and the changes written afterwards travel on their partition's subject (read back by a
//!   scoped client holding a token for that partition, through the feed a full node makes
//!   for it);
//! - a scoped client that publishes rows of another partition on its own subject, or takes
//!   over a key another partition holds, is refused by every node alike; its own rows are
//!   applied everywhere.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures::StreamExt;
use harmonylite_core::change::BatchSeq;
use harmonylite_core::change::{Batch, RowChange, TableSchema};
use harmonylite_core::hlc::NodeId;
use harmonylite_core::scope::{FeedReply, FeedRequest, PartitionRule, ScopeRules, Subjects};
use harmonylite_core::value::Value;
use harmonylite_core::wire::{self, Compression};
use harmonylite_tests::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, origin TEXT, body BLOB);\
                      CREATE TABLE tags(id INTEGER PRIMARY KEY, name TEXT);";
const START: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(90);
const PREFIX: &str = "harmonylite-change-log";
const STREAM: &str = "harmonylite-changes-1";
const AUDIENCE: &str = "items-app";
const SECRET: &str = "the app's HS256 secret";

/// `[scopes]`: items partitioned by `origin`, granted by the token's `sub`.
fn scopes_toml(dir: &Path) -> String {
    let seed_file = dir.join("callout.nk");
    if !seed_file.exists() {
        let account = nkeys::KeyPair::new_account();
        std::fs::write(&seed_file, format!("{}\n", account.seed().unwrap())).unwrap();
        std::fs::write(dir.join("hs256.secret"), SECRET).unwrap();
    }
    format!(
        "[scopes]\n[[scopes.partition]]\nname = \"origin\"\nclaims = [\"sub\"]\ntables = {{ items = \"origin\" }}\n\
         [scopes.auth]\naudience = \"{AUDIENCE}\"\ncallout_seed_file = {:?}\nhs256_secret_file = {:?}\n",
        seed_file.display().to_string(),
        dir.join("hs256.secret").display().to_string()
    )
}

fn token(sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "aud": AUDIENCE, "exp": now + 600, "iat": now}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Connects as the scoped client of user `sub`, to the embedded server at `port`.
async fn scoped_client(port: u16, sub: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_token(token(sub))
        .custom_inbox_prefix(Subjects::client_inbox_prefix(sub))
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| panic!("scoped client {sub} could not connect: {e}"))
}

/// Every message the feed of scoped client `sub` delivers (its partitions', shared tables',
/// schema migrations'), as (subject, frame, `Nats-Msg-Id`), in stream order. Scoped clients hold no JetStream
/// API rights: a full node creates the feed on request, delivering into the client's inbox.
async fn read_all(
    client: &async_nats::Client,
    sub: &str,
) -> Vec<(String, Vec<u8>, Option<String>)> {
    let mut feed = client
        .subscribe(Subjects::feed_deliver_subject(sub, "5eed"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let request = FeedRequest {
        token: token(sub),
        replica: "5eed".into(),
        from: 0,
    };
    let reply = client
        .request(
            Subjects::new(PREFIX).feed_request(),
            serde_json::to_vec(&request).unwrap().into(),
        )
        .await
        .unwrap_or_else(|e| panic!("{sub}'s feed request: {e}"));
    let reply: FeedReply = serde_json::from_slice(&reply.payload).unwrap();
    assert!(matches!(reply, FeedReply::Started { .. }), "{reply:?}");
    let mut out = Vec::new();
    let mut last = (0, 0);
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(10), feed.next()).await {
        if message.status.is_some() {
            continue; // an idle heartbeat
        }
        // $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
        let reply = message.reply.as_ref().expect("an ack subject").to_string();
        let tokens: Vec<&str> = reply.split('.').collect();
        let t = if tokens.len() == 9 {
            &tokens[2..]
        } else {
            &tokens[4..]
        };
        assert_eq!(t[0], STREAM);
        let (stream_seq, consumer_seq): (u64, u64) = (t[3].parse().unwrap(), t[4].parse().unwrap());
        assert!(
            stream_seq > last.0 && consumer_seq == last.1 + 1,
            "{reply} after {last:?}"
        );
        last = (stream_seq, consumer_seq);
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string());
        out.push((
            message.subject.to_string(),
            message.payload.to_vec(),
            msg_id,
        ));
        if t[6] == "0" {
            break;
        }
    }
    out
}

fn ids(rows: &[Vec<Value>]) -> Vec<i64> {
    rows.iter()
        .map(|r| match r[0] {
            Value::Integer(i) => i,
            ref other => panic!("id {other:?}"),
        })
        .collect()
}

fn start_cluster(dir: &Path, scoped: bool) -> (Vec<Node>, Vec<(u16, u16)>) {
    let ports = cluster_ports(3);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let mut extra = embedded_cluster_toml(&ports, i, i as u64 + 1);
            if scoped {
                extra.push_str(&scopes_toml(dir));
            }
            Node::new(dir, &format!("node{}", i + 1), SCHEMA, &extra)
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    for node in &mut nodes {
        node.wait_healthy(START);
    }
    (nodes, ports)
}

#[test]
fn a_running_cluster_moves_to_scoped_subjects_without_losing_or_duplicating_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, ports) = start_cluster(dir.path(), false);
    let app = App::start(&nodes[0].db, 1, Duration::from_millis(20));
    assert!(wait_until(Duration::from_secs(30), || app.acked() >= 50));

    // Each node in turn: stop, turn scopes on, start; the app keeps writing on node1.
    let scopes = scopes_toml(dir.path());
    for node in &mut nodes {
        node.stop();
        let mut config = std::fs::read_to_string(&node.config).unwrap();
        config.push_str(&scopes);
        std::fs::write(&node.config, config).unwrap();
        node.start();
        node.wait_healthy(START);
        let before = app.acked();
        assert!(wait_until(Duration::from_secs(30), || app.acked() >= before + 25));
    }
    let acked = app.stop();
    let refs: Vec<&Node> = nodes.iter().collect();
    let rows = wait_converged(&refs, "items", CONVERGE, |rows| rows.len() >= acked.len());
    let mut expected = acked.clone();
    expected.sort_unstable();
    assert_eq!(ids(&rows), expected, "every acknowledged write, once");

    // Written after the move: on the partition's subject, where only that partition's
    // scoped client may read it.
    let last = *acked.last().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let read = runtime.block_on(async {
        let client = scoped_client(ports[1].0, "app").await;
        read_all(&client, "app").await
    });
    // Its feed holds its partition's messages and schema migrations, nothing else.
    let schema = Subjects::new(PREFIX).schema();
    assert!(
        read.iter().all(|(subject, _, _)| subject == &schema
            || subject == &format!("{PREFIX}.p.origin.tapp.f.titems")),
        "{:?}",
        read.iter()
            .map(|(subject, _, _)| subject)
            .collect::<Vec<_>>()
    );
    let read: Vec<_> = read
        .into_iter()
        .filter(|(subject, _, _)| subject != &schema)
        .collect();
    assert!(!read.is_empty(), "no message on the partition's subject");
    let mut seen = Vec::new();
    for (_, frame, _) in &read {
        let wire::Message::Routed(part) = wire::decode_message(frame).unwrap() else {
            panic!("a partition's message that is not routed");
        };
        assert!(part.is_whole(), "small batches are one frame");
        let batch = wire::decode_batch(part.compression, &part.body).unwrap();
        seen.extend(batch.rows.iter().map(|r| match r.key[0] {
            Value::Integer(i) => i,
            ref other => panic!("{other:?}"),
        }));
    }
    assert!(
        seen.contains(&last),
        "the last write ({last}) travelled on its partition"
    );
    for node in &mut nodes {
        node.stop();
    }
}

/// One routed frame of `rows` (id, origin) as scoped replica `origin` publishes it.
fn client_frame(origin: NodeId, seq: u64, rows: &[(i64, &str)]) -> Vec<u8> {
    let batch = Batch {
        tables: vec![TableSchema {
            name: "items".into(),
            fingerprint: 0,
            key_columns: vec!["id".into()],
            value_columns: vec!["origin".into(), "body".into()],
        }],
        rows: rows
            .iter()
            .map(|(id, who)| RowChange {
                table: 0,
                time: harmonylite_core::hlc::ntp64_from_unix_millis(
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as i64,
                )
                .as_u64(),
                key: vec![Value::Integer(*id)],
                values: Some(vec![Value::Text((*who).into()), Value::Blob(vec![1])]),
            })
            .collect(),
        cells: Vec::new(),
    };
    let rules = ScopeRules::new(
        vec![PartitionRule {
            name: "origin".into(),
            claims: vec!["sub".into()],
            tables: [("items".to_owned(), vec!["origin".to_owned()])].into(),
        }],
        [],
        [],
    )
    .unwrap();
    let mut frames = wire::encode_routed_batch(
        origin,
        BatchSeq::new(seq),
        rules.fingerprint(),
        &[batch],
        Compression::None,
        1 << 20,
    )
    .unwrap();
    assert_eq!(frames.len(), 1);
    frames.remove(0).1
}

#[test]
fn every_node_refuses_a_scoped_clients_writes_outside_its_partition() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, ports) = start_cluster(dir.path(), true);
    // A full node's row in partition "bob".
    nodes[0]
        .app()
        .execute("INSERT INTO items VALUES (1, 'bob', x'00')", [])
        .unwrap();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_converged(&refs, "items", CONVERGE, |rows| rows.len() == 1);

    let alice = NodeId::from_u128(0xa11ce).unwrap();
    let own = format!("{PREFIX}.p.origin.talice.c.titems");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = scoped_client(ports[2].0, "alice").await;
        let js = jetstream::new(client.clone());
        let publish = |seq: u64, rows: &'static [(i64, &'static str)]| {
            let js = js.clone();
            let subject = own.clone();
            async move {
                js.publish(subject, client_frame(alice, seq, rows).into())
                    .await
                    .unwrap()
                    .await
                    .unwrap_or_else(|e| panic!("alice's publish {seq}: {e}"));
            }
        };
        publish(1, &[(10, "alice")]).await; // hers: accepted
        publish(2, &[(11, "bob")]).await; // bob's row on her subject: refused
        publish(3, &[(1, "alice")]).await; // bob's key taken over: refused
        publish(4, &[(12, "alice"), (13, "bob")]).await; // half wrong: refused whole
                                                         // Another partition's subject: NATS itself refuses it.
        let other = js
            .publish(
                format!("{PREFIX}.p.origin.tbob.c.titems"),
                client_frame(alice, 5, &[(14, "bob")]).into(),
            )
            .await;
        let refused_by_nats = match other {
            Err(_) => true,
            Ok(ack) => ack.await.is_err(),
        };
        assert!(refused_by_nats, "publishing on bob's subject must fail");
    });

    let rows = wait_converged(&refs, "items", CONVERGE, |rows| rows.len() >= 2);
    // Let every node reach the refusals before looking.
    for node in &nodes {
        assert!(
            wait_until(Duration::from_secs(30), || node
                .log()
                .matches("refused a scoped replica's change")
                .count()
                >= 3),
            "{} did not log 3 refusals:\n{}",
            node.name,
            node.log_tail()
        );
    }
    let rows_now = wait_converged(&refs, "items", CONVERGE, |_| true);
    assert_eq!(rows_now, rows);
    let summary: Vec<(i64, String)> = rows
        .iter()
        .map(|r| {
            let Value::Integer(id) = r[0] else { panic!() };
            let Value::Text(ref who) = r[1] else { panic!() };
            (id, who.clone())
        })
        .collect();
    assert_eq!(summary, [(1, "bob".to_owned()), (10, "alice".to_owned())]);
    for node in &nodes {
        let log = node.log();
        assert!(log.contains("the key belongs to partition origin='bob'"));
        assert!(log.contains("the row belongs to partition origin='bob'"));
    }
    for node in &mut nodes {
        node.stop();
    }
}

#[test]
fn a_node_whose_scope_rules_differ_says_so_and_applies_once_they_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _ports) = start_cluster(dir.path(), true);
    // node3 restarts with one more table in its rules than the others.
    nodes[2].stop();
    let config = std::fs::read_to_string(&nodes[2].config).unwrap();
    std::fs::write(
        &nodes[2].config,
        config.replace("[scopes]\n", "[scopes]\nshared = [\"tags\"]\n"),
    )
    .unwrap();
    nodes[2].start();
    nodes[2].wait_healthy(START);
    nodes[0]
        .app()
        .execute("INSERT INTO items VALUES (1, 'bob', x'00')", [])
        .unwrap();
    let mut why = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || match nodes[2].health() {
            Some((503, body)) => {
                why = body.to_string();
                why.contains("scope rules differ")
            }
            _ => false,
        }),
        "node3 stayed healthy with other scope rules:\n{}",
        nodes[2].log_tail()
    );
    assert!(
        why.contains("make [scopes] identical on every node"),
        "{why}"
    );
    assert_eq!(
        dump(&nodes[2].db, "items").len(),
        0,
        "nothing judged by other rules"
    );

    nodes[2].stop();
    std::fs::write(&nodes[2].config, config).unwrap();
    nodes[2].start();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_converged(&refs, "items", CONVERGE, |rows| rows.len() == 1);
    nodes[2].wait_healthy(START);
    for node in &mut nodes {
        node.stop();
    }
}

#[test]
fn a_scoped_client_cannot_make_a_full_node_lose_a_write_by_taking_its_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, ports) = start_cluster(dir.path(), true);
    // A full node's write in alice's partition shows alice that node's message ids.
    nodes[0]
        .app()
        .execute("INSERT INTO items VALUES (1, 'alice', x'00')", [])
        .unwrap();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_converged(&refs, "items", CONVERGE, |rows| rows.len() == 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = scoped_client(ports[1].0, "alice").await;
        let read = read_all(&client, "alice").await;
        let seen = read
            .last()
            .and_then(|(_, _, id)| id.clone())
            .expect("the full node's message id in alice's feed");
        // <node>-<incarnation>-<batch>-<part>: take the id of that node's next batch.
        let mut parts: Vec<String> = seen.split('-').map(str::to_owned).collect();
        let batch: u64 = parts[2].parse().unwrap();
        parts[2] = (batch + 1).to_string();
        let stolen = parts.join("-");
        let js = jetstream::new(client.clone());
        let message = jetstream::message::PublishMessage::build()
            .payload(client_frame(NodeId::from_u128(0xa11ce).unwrap(), 1, &[(50, "alice")]).into())
            .message_id(&stolen);
        js.send_publish(format!("{PREFIX}.p.origin.talice.c.titems"), message)
            .await
            .unwrap()
            .await
            .unwrap_or_else(|e| panic!("alice's publish under {stolen}: {e}"));
    });
    // The full node's next write gets that id; it must still reach every node.
    nodes[0]
        .app()
        .execute("INSERT INTO items VALUES (2, 'bob', x'00')", [])
        .unwrap();
    let rows = wait_converged(&refs, "items", CONVERGE, |rows| {
        rows.iter().any(|r| r[0] == Value::Integer(2))
    });
    assert!(ids(&rows).contains(&2));
    assert!(
        nodes[0]
            .log()
            .contains("another publisher used this node's message id"),
        "{}",
        nodes[0].log_tail()
    );
    for node in &mut nodes {
        node.stop();
    }
}
