//! Scoped clients authenticated through NATS auth callout (issue 18, point 3), with real
//! nats-servers and real sidecars: the `async-nats` client plays the browser, passing the
//! app's JWT as its NATS token and using the inbox prefix its permissions allow.
//!
//! - Against an external server configured for auth callout (the sidecar answers it): a valid
//!   HS256 / RS256 token gets exactly its partitions (consume and publish its own, nothing
//!   else: other partitions, `<prefix>.>`, shared tables, stream delete/purge, consumer
//!   listing, `_INBOX.>`), and forged, expired and wrong-audience tokens are refused with an
//!   authorization error, a log line naming the reason and a metric.
//! - A 3-node embedded cluster with scopes on: routes and the sidecars' own connections keep
//!   working, EdDSA (PEM) and JWKS keys (EdDSA and RS256 by `kid`) admit clients on any node,
//!   over TCP and WebSocket.
//!
//! Ed25519 keys are generated per test; the RSA pair is a test-only fixture
//! (`tests/fixtures/scopes/`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use futures::StreamExt;
use harmonylite_core::scope::Subjects;
use harmonylite_tests::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::KeyPair as _;
use serde_json::json;
use tokio::sync::mpsc;

const SCHEMA: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, owner_id TEXT, body TEXT);\
                      CREATE TABLE tags(id INTEGER PRIMARY KEY, name TEXT);";
const START: Duration = Duration::from_secs(60);
const AUDIENCE: &str = "notes-app";
const PREFIX: &str = "harmonylite-change-log";
const STREAM: &str = "harmonylite-changes-1";
const SECRET: &str = "an HS256 secret shared with the app";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/scopes")
        .join(name)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Every key of a test: the callout's account seed, the HS256 secret, a new Ed25519 pair
/// (PEM public key, and a JWKS holding it as `ed-2` plus the RSA fixture as `rsa-1`).
struct Keys {
    seed_file: PathBuf,
    account_public: String,
    secret_file: PathBuf,
    ed_pkcs8: Vec<u8>,
    ed_public_pem: PathBuf,
    jwks_file: PathBuf,
}

fn keys(dir: &Path) -> Keys {
    std::fs::create_dir_all(dir).unwrap();
    let account = nkeys::KeyPair::new_account();
    let seed_file = dir.join("callout.nk");
    std::fs::write(&seed_file, format!("{}\n", account.seed().unwrap())).unwrap();
    let secret_file = dir.join("hs256.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();

    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    // SubjectPublicKeyInfo of an Ed25519 key: a fixed 12-byte prefix, then the key.
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(&public);
    let ed_public_pem = dir.join("ed25519.pem");
    std::fs::write(
        &ed_public_pem,
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(&spki)
        ),
    )
    .unwrap();
    let rsa: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("rs256-jwk.json")).unwrap()).unwrap();
    let jwks = json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed-2", "alg": "EdDSA", "x": URL_SAFE_NO_PAD.encode(&public)},
        rsa,
    ]});
    let jwks_file = dir.join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    Keys {
        seed_file,
        account_public: account.public_key(),
        secret_file,
        ed_pkcs8: pkcs8.as_ref().to_vec(),
        ed_public_pem,
        jwks_file,
    }
}

/// The `[scopes]` sections: notes partitioned by `owner_id` from `sub`, tags shared, and the
/// key lines given.
fn scopes_toml(keys: &Keys, key_lines: &str) -> String {
    format!(
        "[scopes]\nshared = [\"tags\"]\n[[scopes.partition]]\nname = \"user\"\nclaims = [\"sub\"]\ntables = {{ notes = \"owner_id\" }}\n[scopes.auth]\naudience = \"{AUDIENCE}\"\ncallout_seed_file = {:?}\n{key_lines}\n",
        keys.seed_file.display().to_string()
    )
}

fn claims(sub: &str) -> serde_json::Value {
    json!({"sub": sub, "aud": AUDIENCE, "exp": now() + 600, "iat": now()})
}

fn hs256(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn rs256(claims: &serde_json::Value, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    let pem = std::fs::read(fixture("rs256-private.pem")).unwrap();
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

fn eddsa(keys: &Keys, claims: &serde_json::Value, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&keys.ed_pkcs8)).unwrap()
}

/// A browser-like client: connected with `token`, inbox prefix of user `sub`, and the
/// server's asynchronous errors (permission violations) on a channel.
struct Scoped {
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

async fn connect(url: &str, token: &str, sub: &str) -> Result<Scoped, async_nats::ConnectError> {
    let (tx, errors) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_token(token.to_owned())
        .custom_inbox_prefix(Subjects::client_inbox_prefix(sub))
        .connection_timeout(Duration::from_secs(10))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event.to_string());
            }
        })
        .connect(url)
        .await?;
    Ok(Scoped { client, errors })
}

impl Scoped {
    /// Waits for the server's permissions violation naming `subject`.
    async fn violation(&mut self, subject: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.errors.recv()).await {
                Ok(Some(event)) => {
                    let lower = event.to_ascii_lowercase();
                    if lower.contains("permissions violation") && event.contains(subject) {
                        return;
                    }
                    seen.push(event);
                }
                _ => panic!("no permissions violation for {subject:?}; events: {seen:?}"),
            }
        }
    }

    /// Publishes to `subject` and waits for the server to refuse it.
    async fn publish_refused(&mut self, subject: &str) {
        self.client
            .publish(subject.to_owned(), "x".into())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        self.violation(subject).await;
    }
}

/// Connecting with `token` is refused with an authorization error.
async fn refused(url: &str, token: &str) {
    match connect(url, token, "u1").await {
        Ok(_) => panic!("a bad token was admitted"),
        Err(e) => assert_eq!(
            e.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "{e}"
        ),
    }
}

/// Adds the scoped subjects to the change stream when it lacks them (an admin step, until
/// the sidecar lays out scoped subjects itself: issue 18, point 2).
async fn ensure_scoped_subjects(admin: &async_nats::Client) {
    let js = jetstream::new(admin.clone());
    let mut stream = js.get_stream(STREAM).await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    for subject in Subjects::new(PREFIX).stream_subjects(true) {
        if !config.subjects.contains(&subject) {
            config.subjects.push(subject);
        }
    }
    js.update_stream(config).await.unwrap();
}

/// An ordered consumer of `filter`. It is named, so the filter is part of the API subject
/// the permissions check (an unnamed consumer is created on `$JS.API.CONSUMER.CREATE.<stream>`,
/// which a scoped client may not use).
fn ordered(name: &str, filter: String) -> consumer::pull::OrderedConfig {
    consumer::pull::OrderedConfig {
        name: Some(name.to_owned()),
        filter_subject: filter,
        ..Default::default()
    }
}

#[test]
fn a_scoped_client_gets_exactly_its_partitions_and_bad_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(&dir.path().join("keys"));
    let nats = ExternalNats::start_with_config(
        &dir.path().join("nats"),
        &format!(
            "authorization {{\n  users: [ {{ user: \"harmonylite\", password: \"sidecar-pw\" }}, {{ user: \"admin\", password: \"admin-pw\" }} ]\n  auth_callout {{\n    issuer: \"{}\"\n    auth_users: [ \"harmonylite\", \"admin\" ]\n  }}\n}}\n",
            keys.account_public
        ),
    );
    let metrics_port = free_port();
    let mut node = Node::new(
        dir.path(),
        "node1",
        SCHEMA,
        &format!(
            "{}user_name = \"harmonylite\"\nuser_password = \"sidecar-pw\"\n[prometheus]\nenable = true\nbind = \"127.0.0.1:{metrics_port}\"\n{}",
            external_toml(&nats.url(), 1),
            scopes_toml(
                &keys,
                &format!(
                    "hs256_secret_file = {:?}\npublic_key_file = {:?}",
                    keys.secret_file.display().to_string(),
                    fixture("rs256-public.pem").display().to_string()
                )
            )
        ),
    );
    node.start();
    node.wait_healthy(START);
    node.wait_for_log("answering NATS auth callout requests", START);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let admin = async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-pw".into())
            .connect(nats.url())
            .await
            .unwrap();
        ensure_scoped_subjects(&admin).await;
        let subjects = Subjects::new(PREFIX);
        let own = subjects.partition_filter(&user("u1"));
        let other = subjects.partition_filter(&user("u2"));
        let own_notes = notes_subject(&subjects, "u1");
        let other_notes = notes_subject(&subjects, "u2");

        // A valid token: consume and publish its own partition.
        let mut u1 = connect(&nats.url(), &hs256(&claims("u1"), SECRET), "u1")
            .await
            .expect("a valid HS256 token is admitted");
        let js = jetstream::new(u1.client.clone());
        let stream = js.get_stream(STREAM).await.expect("stream info is allowed");
        let ack = js
            .publish(own_notes.clone(), "mine".into())
            .await
            .unwrap()
            .await
            .expect("publishing on its own partition is allowed and stored");
        let mut mine = stream
            .create_consumer(ordered("u1-own", own.clone()))
            .await
            .expect("a consumer on its own partition is allowed")
            .messages()
            .await
            .unwrap();
        let message = tokio::time::timeout(Duration::from_secs(10), mine.next())
            .await
            .expect("its own partition's message is delivered")
            .unwrap()
            .unwrap();
        assert_eq!(message.subject.as_str(), own_notes);
        assert_eq!(message.info().unwrap().stream_sequence, ack.sequence);
        for (name, filter) in [("u1-schema", subjects.schema()), ("u1-shared", subjects.shared_filter())] {
            stream
                .create_consumer(ordered(name, filter.clone()))
                .await
                .unwrap_or_else(|e| panic!("a consumer on {filter} is allowed: {e}"));
        }
        // The bootstrap request goes out (nobody answers it yet: no responders, not a
        // permissions violation).
        let bootstrap = u1
            .client
            .request(subjects.bootstrap_request(), "{}".into())
            .await
            .unwrap_err();
        assert_eq!(bootstrap.kind(), async_nats::RequestErrorKind::NoResponders, "{bootstrap}");

        // Reading another partition, or everything.
        for filter in [other.clone(), format!("{PREFIX}.>")] {
            let create = tokio::time::timeout(
                Duration::from_secs(15),
                stream.create_consumer(ordered("u1-other", filter.clone())),
            )
            .await;
            assert!(
                !matches!(create, Ok(Ok(_))),
                "a consumer on {filter} must be refused"
            );
            u1.violation(&format!("$JS.API.CONSUMER.CREATE.{STREAM}")).await;
        }
        // Its own filter in the API subject, another one in the request: JetStream refuses.
        for body in [
            json!({"stream_name": STREAM, "config": {"name": "sneaky", "filter_subject": other, "ack_policy": "none"}}),
            json!({"stream_name": STREAM, "config": {"name": "sneaky", "filter_subjects": [other], "ack_policy": "none"}}),
        ] {
            let reply = u1
                .client
                .request(
                    format!("$JS.API.CONSUMER.CREATE.{STREAM}.sneaky.{own}"),
                    body.to_string().into(),
                )
                .await
                .unwrap();
            let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
            assert!(reply.get("error").is_some(), "{body} must be refused: {reply}");
        }
        // Writing outside its partitions: another partition, a shared table, the unscoped
        // subject.
        for subject in [
            other_notes.clone(),
            format!("{PREFIX}.shared.ttags"),
            format!("{PREFIX}.1"),
        ] {
            u1.publish_refused(&subject).await;
        }
        // Stream administration and listing.
        for subject in [
            format!("$JS.API.STREAM.DELETE.{STREAM}"),
            format!("$JS.API.STREAM.PURGE.{STREAM}"),
            format!("$JS.API.CONSUMER.LIST.{STREAM}"),
            "$JS.API.STREAM.CREATE.OBJ_snapshots".to_owned(),
            "$KV.bucket.key".to_owned(),
        ] {
            u1.publish_refused(&subject).await;
        }
        // Other users' inboxes and everything's.
        for subject in ["_INBOX.>", "_INBOX_tu2.>", ">"] {
            let _sub = u1.client.subscribe(subject.to_owned()).await.unwrap();
            u1.client.flush().await.unwrap();
            u1.violation(subject).await;
        }
        // A push consumer delivering its own messages (a valid purge request) to the purge
        // subject does not purge. (A pull request whose reply subject is the purge subject
        // does: JetStream delivers pulled messages to any reply subject; docs/security.md,
        // "Known gap", and the issue-18 report.)
        js.publish(own_notes.clone(), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let purge = format!("$JS.API.STREAM.PURGE.{STREAM}");
        let push = json!({"stream_name": STREAM, "config": {"name": "aim", "filter_subject": own, "deliver_subject": purge, "ack_policy": "none"}});
        let _ = u1
            .client
            .request(
                format!("$JS.API.CONSUMER.CREATE.{STREAM}.aim.{own}"),
                push.to_string().into(),
            )
            .await;

        u1.client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;

        // The stream is intact: its two messages, nothing purged.
        let info = jetstream::new(admin.clone())
            .get_stream(STREAM)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.state.messages, 2, "{:?}", info.state);

        // RS256 through public_key_file.
        connect(&nats.url(), &rs256(&claims("u3"), None), "u3")
            .await
            .expect("a valid RS256 token is admitted");

        // Forged, expired, wrong audience, tampered, none.
        let mut expired = claims("u1");
        expired["exp"] = json!(now() - 3600);
        let mut foreign = claims("u1");
        foreign["aud"] = json!("another-app");
        let good = hs256(&claims("u1"), SECRET);
        let (signed, signature) = good.rsplit_once('.').unwrap();
        let (header, _) = signed.split_once('.').unwrap();
        let tampered = format!(
            "{header}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(claims("u2").to_string())
        );
        for token in [
            hs256(&claims("u1"), "not the secret"),
            hs256(&expired, SECRET),
            hs256(&foreign, SECRET),
            tampered.clone(),
            String::new(),
        ] {
            refused(&nats.url(), &token).await;
        }
        let log = node.log();
        for reason in [
            "refused a scoped client: the token's signature does not verify",
            "refused a scoped client: the token has expired",
            "refused a scoped client: the token's audience is not this app's",
            "refused a scoped client: no token",
        ] {
            assert!(log.contains(reason), "the log names {reason:?}:\n{}", node.log_tail());
        }
        assert!(!log.contains(&tampered) && !log.contains(&good), "tokens never reach the log");
        let (_, metrics) = http_get(metrics_port, "/metrics").unwrap();
        for outcome in ["accepted", "bad_signature", "expired", "wrong_audience", "no_token"] {
            let line = format!("harmonylite_auth_callouts_total{{outcome=\"{outcome}\"}}");
            assert!(metrics.contains(&line), "{line} in:\n{metrics}");
        }
    });
}

/// The subject a scoped client of user `id` publishes its `notes` changes on.
fn notes_subject(subjects: &Subjects, id: &str) -> String {
    let publish = subjects.client_subjects(&[user(id)]).publish;
    format!("{}tnotes", publish[0].trim_end_matches('*'))
}

fn user(id: &str) -> harmonylite_core::scope::Partition {
    harmonylite_core::scope::Partition {
        rule: "user".into(),
        values: vec![harmonylite_core::value::Value::Text(id.into())],
    }
}

#[test]
fn an_embedded_cluster_admits_scoped_clients_by_eddsa_and_jwks_keys_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(&dir.path().join("keys"));
    let ports = cluster_ports(3);
    let ws_port = free_port();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let websocket = if i == 0 {
                format!("websocket_bind = \"127.0.0.1:{ws_port}\"\n")
            } else {
                String::new()
            };
            Node::new(
                dir.path(),
                &format!("node{}", i + 1),
                SCHEMA,
                &format!(
                    "{}{websocket}{}",
                    embedded_cluster_toml(&ports, i, i as u64 + 1),
                    scopes_toml(
                        &keys,
                        &format!(
                            "public_key_file = {:?}\njwks_file = {:?}",
                            keys.ed_public_pem.display().to_string(),
                            keys.jwks_file.display().to_string()
                        )
                    )
                ),
            )
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    for node in &mut nodes {
        node.wait_healthy(START);
    }
    // Replication between the sidecars still works (their own user bypasses the callout).
    nodes[0]
        .app()
        .execute("INSERT INTO tags VALUES (1, 'red')", [])
        .unwrap();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_converged(&refs, "tags", Duration::from_secs(30), |rows| {
        rows.len() == 1
    });

    let url = |i: usize| format!("nats://127.0.0.1:{}", ports[i].0);
    let ws = format!("ws://127.0.0.1:{ws_port}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let subjects = Subjects::new(PREFIX);
        for (url, token, sub) in [
            // EdDSA through public_key_file (no kid).
            (url(1), eddsa(&keys, &claims("u1"), None), "u1"),
            // EdDSA and RS256 through the JWKS, by kid; one over WebSocket.
            (url(2), eddsa(&keys, &claims("u2"), Some("ed-2")), "u2"),
            (ws.clone(), rs256(&claims("u3"), Some("rsa-1")), "u3"),
        ] {
            let mut client = connect(&url, &token, sub)
                .await
                .unwrap_or_else(|e| panic!("{sub} on {url}: {e}"));
            // Its own bootstrap request goes out; another user's partition does not.
            let bootstrap = client
                .client
                .request(subjects.bootstrap_request(), "{}".into())
                .await
                .unwrap_err();
            assert_eq!(bootstrap.kind(), async_nats::RequestErrorKind::NoResponders);
            client
                .publish_refused(&notes_subject(&subjects, "someone-else"))
                .await;
        }
        // A kid the JWKS lacks, an RS256 token without kid (no RSA public_key_file), an HS256
        // token (no secret configured), a wrong audience: refused on every node and over
        // WebSocket.
        let mut foreign = claims("u1");
        foreign["aud"] = json!("another-app");
        for (url, token) in [
            (url(0), rs256(&claims("u1"), Some("rsa-9"))),
            (url(1), rs256(&claims("u1"), None)),
            (url(2), hs256(&claims("u1"), SECRET)),
            (ws.clone(), eddsa(&keys, &foreign, None)),
        ] {
            refused(&url, &token).await;
        }
    });
    let logs: String = nodes.iter().map(Node::log).collect();
    for reason in [
        "the token's key id \"rsa-9\" is not in the JWKS file",
        "the token's algorithm RS256 is not accepted",
        "the token's algorithm HS256 is not accepted",
        "the token's audience is not this app's",
    ] {
        assert!(logs.contains(reason), "some node logs {reason:?}");
    }
}
