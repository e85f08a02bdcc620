//! Scoped clients authenticated through NATS auth callout (issue 18, point 3), with real
//! nats-servers and real sidecars: the `async-nats` client plays the browser, passing the
//! app's JWT as its NATS token and using the inbox prefix its permissions allow.
//!
//! - Against an external server configured for auth callout (the sidecar answers it): a valid
//!   HS256 / RS256 token publishes (with JetStream acks) only on its partitions and reads
//!   through its feed, which a full node creates on request: exactly its partitions', shared
//!   and schema messages, in stream order, consumer sequences contiguous, delivered into its
//!   own inbox; asking again replaces it; another user's token only ever fills that user's
//!   inbox; expired, forged and malformed requests are refused. It has no JetStream API
//!   rights at all (consumer create/pull/info/delete/list, stream info/get/purge/delete):
//!   the pull that once purged the stream by replying to the purge subject is refused, and a
//!   feed request replying there purges nothing. Other partitions, `<prefix>.>`, shared
//!   tables, `_INBOX.>` and other inboxes are refused; forged, expired and wrong-audience
//!   tokens are refused at connect with an authorization error, a log line naming the reason
//!   and a metric.
//! - A 3-node embedded cluster with scopes on: routes and the sidecars' own connections keep
//!   working, EdDSA (PEM) and JWKS keys (EdDSA and RS256 by `kid`) admit clients on any node,
//!   over TCP and WebSocket, and each gets its feed.
//!
//! Ed25519 keys are generated per test; the RSA pair is a test-only fixture
//! (`tests/fixtures/scopes/`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use futures::StreamExt;
use harmonylite_core::scope::{FeedReply, FeedRequest, Subjects};
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

/// A feed request's JSON.
fn feed_request(token: &str, replica: &str, from: u64) -> Vec<u8> {
    serde_json::to_vec(&FeedRequest {
        token: token.to_owned(),
        replica: replica.to_owned(),
        from,
    })
    .unwrap()
}

/// Sends a feed request (`payload`) and reads the reply; an error when none comes within
/// `wait` (default 10 s).
async fn ask_feed(
    client: &async_nats::Client,
    payload: &[u8],
    wait: Option<Duration>,
) -> Result<FeedReply, async_nats::RequestError> {
    let reply = client
        .send_request(
            Subjects::new(PREFIX).feed_request(),
            async_nats::Request::new()
                .payload(payload.to_vec().into())
                .timeout(Some(wait.unwrap_or(Duration::from_secs(10)))),
        )
        .await?;
    Ok(serde_json::from_slice(&reply.payload).expect("a FeedReply"))
}

/// One message a feed delivered, read from its `$JS.ACK` reply subject.
#[derive(Debug)]
struct Delivered {
    subject: String,
    stream: String,
    consumer: String,
    stream_seq: u64,
    consumer_seq: u64,
}

/// The delivered message `message` is (`None`: a heartbeat).
fn delivered(message: &async_nats::Message) -> Option<Delivered> {
    if message.status.is_some() {
        return None;
    }
    let reply = message
        .reply
        .as_ref()
        .expect("a feed message has an ack subject");
    let tokens: Vec<&str> = reply.split('.').collect();
    assert_eq!(&tokens[..2], ["$JS", "ACK"], "{reply}");
    // v1: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>;
    // v2 adds the domain and account hash after ACK (and a random token at the end).
    let t = if tokens.len() == 9 {
        &tokens[2..]
    } else {
        &tokens[4..]
    };
    Some(Delivered {
        subject: message.subject.to_string(),
        stream: t[0].to_owned(),
        consumer: t[1].to_owned(),
        stream_seq: t[3].parse().unwrap(),
        consumer_seq: t[4].parse().unwrap(),
    })
}

/// The next `n` messages the feed delivers (heartbeats skipped).
async fn read_feed(feed: &mut async_nats::Subscriber, n: usize) -> Vec<Delivered> {
    let mut out = Vec::new();
    while out.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .unwrap_or_else(|_| panic!("the feed delivered {} of {n}: {out:?}", out.len()))
            .expect("the subscription is open");
        out.extend(delivered(&message));
    }
    out
}

/// Nothing but heartbeats for a second.
async fn nothing_more(feed: &mut async_nats::Subscriber) {
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(message)) = tokio::time::timeout_at(until, feed.next()).await {
        assert!(
            delivered(&message).is_none(),
            "unexpected {:?}",
            delivered(&message)
        );
    }
}

/// Every message in the change stream, as (sequence, subject), read by the admin user.
async fn stored(admin: &async_nats::Client) -> Vec<(u64, String)> {
    let stream = jetstream::new(admin.clone())
        .get_stream(STREAM)
        .await
        .unwrap();
    let state = stream.get_info().await.unwrap().state;
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(seq).await {
            out.push((seq, message.subject.to_string()));
        }
    }
    out
}

/// Whether NATS filter `filter` matches `subject`.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let (mut f, mut s) = (filter.split('.'), subject.split('.'));
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
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
        let admin =
            async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-pw".into())
                .connect(nats.url())
                .await
                .unwrap();
        ensure_scoped_subjects(&admin).await;
        let subjects = Subjects::new(PREFIX);
        let own = subjects.partition_filter(&user("u1"));
        let other = subjects.partition_filter(&user("u2"));
        let own_notes = notes_subject(&subjects, "u1");
        let other_notes = notes_subject(&subjects, "u2");

        // A valid token: publish on its own partition, with a JetStream ack (the PubAck is a
        // reply to its inbox).
        let mut u1 = connect(&nats.url(), &hs256(&claims("u1"), SECRET), "u1")
            .await
            .expect("a valid HS256 token is admitted");
        let js = jetstream::new(u1.client.clone());
        js.publish(own_notes.clone(), "mine".into())
            .await
            .unwrap()
            .await
            .expect("publishing on its own partition is allowed, and acknowledged");
        // Everything else, written by a full node: another partition, shared, schema,
        // unscoped, and its own partition again.
        let admin_js = jetstream::new(admin.clone());
        for subject in [
            format!("{PREFIX}.p.user.tu2.f.tnotes"),
            format!("{PREFIX}.shared.ttags"),
            subjects.schema(),
            format!("{PREFIX}.1"),
            format!("{PREFIX}.p.user.tu1.f.tnotes"),
            format!("{PREFIX}.p.user.tu2.f.tnotes"),
            format!("{PREFIX}.shared.ttags"),
        ] {
            admin_js
                .publish(subject, "full".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let readable = |subject: &str| {
            subjects
                .client_subjects(&[user("u1")])
                .read
                .iter()
                .any(|filter| subject_matches(filter, subject))
        };
        let stream_messages = stored(&admin).await;
        let expected: Vec<(u64, String)> = stream_messages
            .iter()
            .filter(|(_, subject)| readable(subject))
            .cloned()
            .collect();
        assert!(expected.len() >= 5, "{stream_messages:?}");

        // Its feed from the start: exactly what it may read, in stream order, consumer
        // sequences contiguous, delivered into its own inbox.
        let u1_token = hs256(&claims("u1"), SECRET);
        let mut feed = u1
            .client
            .subscribe(Subjects::feed_deliver_subject("u1", "a1"))
            .await
            .unwrap();
        u1.client.flush().await.unwrap();
        let reply = ask_feed(&u1.client, &feed_request(&u1_token, "a1", 0), None)
            .await
            .unwrap();
        let FeedReply::Started {
            consumer,
            deliver_subject,
            filters,
            first_seq,
            last_seq,
            created_ns,
            rules,
            partitions,
        } = reply
        else {
            panic!("a valid token's feed was refused: {reply:?}");
        };
        assert_eq!(
            harmonylite_core::scope::ScopeRules::from_doc(rules)
                .unwrap()
                .table_scope("notes"),
            harmonylite_core::scope::ScopeRules::from_doc(harmonylite_core::scope::ScopeRulesDoc {
                partition: vec![harmonylite_core::scope::PartitionRule {
                    name: "user".into(),
                    claims: vec!["sub".into()],
                    tables: [("notes".to_owned(), vec!["owner_id".to_owned()])].into(),
                }],
                shared: vec!["tags".into()],
                hidden: vec![],
            })
            .unwrap()
            .table_scope("notes"),
            "the feed gives the scoped replica the cluster's rules"
        );
        assert_eq!(consumer, Subjects::feed_consumer_name("u1", "a1"));
        assert_eq!(deliver_subject, "_INBOX_tu1.feed.a1");
        assert_eq!(filters, subjects.client_subjects(&[user("u1")]).read);
        assert_eq!(
            partitions,
            vec![user("u1").token()],
            "the feed names the partitions the token grants"
        );
        let info = admin_js
            .get_stream(STREAM)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(
            (first_seq, last_seq),
            (info.state.first_sequence, info.state.last_sequence)
        );
        assert_eq!(created_ns as i128, info.created.unix_timestamp_nanos());
        let got = read_feed(&mut feed, expected.len()).await;
        assert_eq!(
            got.iter()
                .map(|d| (d.stream_seq, d.subject.clone()))
                .collect::<Vec<_>>(),
            expected
        );
        assert_eq!(
            got.iter().map(|d| d.consumer_seq).collect::<Vec<_>>(),
            (1..=expected.len() as u64).collect::<Vec<_>>()
        );
        assert!(got
            .iter()
            .all(|d| d.consumer == consumer && d.stream == STREAM));
        nothing_more(&mut feed).await;
        // The consumer a full node made: push, into the inbox, nothing to ack, in memory.
        let made = admin_js
            .get_stream(STREAM)
            .await
            .unwrap()
            .consumer_info(&consumer)
            .await
            .unwrap()
            .clone();
        assert_eq!(
            made.config.deliver_subject.as_deref(),
            Some("_INBOX_tu1.feed.a1")
        );
        assert_eq!(made.config.ack_policy, consumer::AckPolicy::None);
        assert!(made.config.memory_storage);
        assert_eq!(made.config.inactive_threshold, Duration::from_secs(120));

        // Asking again from a later sequence replaces the feed.
        let from = expected[2].0;
        let reply = ask_feed(&u1.client, &feed_request(&u1_token, "a1", from), None)
            .await
            .unwrap();
        assert!(matches!(reply, FeedReply::Started { .. }), "{reply:?}");
        let again = read_feed(&mut feed, expected.len() - 2).await;
        assert_eq!(
            again
                .iter()
                .map(|d| (d.stream_seq, d.subject.clone()))
                .collect::<Vec<_>>(),
            expected[2..]
        );
        assert_eq!(again[0].consumer_seq, 1, "a new consumer");
        nothing_more(&mut feed).await;
        let mut names = admin_js.get_stream(STREAM).await.unwrap().consumer_names();
        let mut feeds = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.unwrap();
            if name.starts_with("hl_feed_") {
                feeds.push(name);
            }
        }
        assert_eq!(feeds, [consumer.as_str()], "one feed per user and replica");

        // Expired, forged, malformed requests: refused with the reason.
        let mut expired = claims("u1");
        expired["exp"] = json!(now() - 3600);
        for (payload, reason) in [
            (
                feed_request(&hs256(&expired, SECRET), "a1", 0),
                "the token has expired",
            ),
            (
                feed_request(&hs256(&claims("u1"), "forged"), "a1", 0),
                "signature does not verify",
            ),
            (feed_request(&u1_token, "not hex", 0), "hexadecimal"),
            (b"{\"token\": 1}".to_vec(), "not valid JSON"),
        ] {
            match ask_feed(&u1.client, &payload, None).await {
                Ok(FeedReply::Refused { reason: why }) => assert!(why.contains(reason), "{why}"),
                other => panic!("expected a refusal naming {reason:?}: {other:?}"),
            }
        }

        // Another user's token (stolen by u1): the feed goes to that user's inbox, never to
        // a subject the request names. Sent with u1's own reply subject: no answer, no feed.
        let u2_token = hs256(&claims("u2"), SECRET);
        let u3 = connect(&nats.url(), &hs256(&claims("u3"), SECRET), "u3")
            .await
            .unwrap();
        let mut u3_inbox = u3
            .client
            .subscribe("_INBOX_tu3.>".to_owned())
            .await
            .unwrap();
        u3.client.flush().await.unwrap();
        let mut sneaky: serde_json::Value =
            serde_json::from_slice(&feed_request(&u2_token, "b2", 0)).unwrap();
        sneaky["deliver_subject"] = json!("_INBOX_tu3.feed.b2");
        let sneaky = sneaky.to_string().into_bytes();
        let unanswered = ask_feed(&u1.client, &sneaky, Some(Duration::from_secs(3))).await;
        assert!(
            unanswered.is_err(),
            "a feed for u2 answered into u1's inbox: {unanswered:?}"
        );
        // With a reply subject in u2's inbox (u1 may name it, not read it), the feed is
        // u2's: it delivers into u2's inbox.
        u1.client
            .publish_with_reply(
                subjects.feed_request(),
                "_INBOX_tu2.reply".to_owned(),
                sneaky.clone().into(),
            )
            .await
            .unwrap();
        u1.client.flush().await.unwrap();
        let u2_feed = Subjects::feed_consumer_name("u2", "b2");
        let stream = admin_js.get_stream(STREAM).await.unwrap();
        let mut made = None;
        for _ in 0..50 {
            if let Ok(info) = stream.consumer_info(&u2_feed).await {
                made = Some(info.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let made = made.expect("u2's feed, made on u2's token");
        assert_eq!(
            made.config.deliver_subject.as_deref(),
            Some("_INBOX_tu2.feed.b2")
        );
        for name in [
            Subjects::feed_consumer_name("u1", "b2"),
            Subjects::feed_consumer_name("u3", "b2"),
        ] {
            assert!(
                stream.consumer_info(&name).await.is_err(),
                "{name} must not exist"
            );
        }
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(2), u3_inbox.next()).await
        {
            panic!("u3's inbox received {:?}", message.subject);
        }

        // No JetStream API at all: consumers, pulls, infos, stream administration.
        let own_feed = Subjects::feed_consumer_name("u1", "a1");
        for subject in [
            format!("$JS.API.CONSUMER.CREATE.{STREAM}.u1-own.{own}"),
            format!("$JS.API.CONSUMER.CREATE.{STREAM}.u1-other.{other}"),
            format!("$JS.API.CONSUMER.CREATE.{STREAM}"),
            format!("$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.u1-own"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{own_feed}"),
            format!("$JS.API.CONSUMER.INFO.{STREAM}.{own_feed}"),
            format!("$JS.API.CONSUMER.DELETE.{STREAM}.{own_feed}"),
            format!("$JS.API.CONSUMER.LIST.{STREAM}"),
            format!("$JS.API.STREAM.INFO.{STREAM}"),
            format!("$JS.API.STREAM.MSG.GET.{STREAM}"),
            format!("$JS.API.DIRECT.GET.{STREAM}"),
            format!("$JS.API.STREAM.DELETE.{STREAM}"),
            format!("$JS.API.STREAM.PURGE.{STREAM}"),
            "$JS.API.STREAM.CREATE.OBJ_snapshots".to_owned(),
            "$KV.bucket.key".to_owned(),
        ] {
            u1.publish_refused(&subject).await;
        }
        assert!(
            js.get_stream(STREAM).await.is_err(),
            "stream info is refused"
        );
        // Writing outside its partitions: another partition, a shared table, the unscoped
        // subject.
        for subject in [
            other_notes.clone(),
            format!("{PREFIX}.shared.ttags"),
            format!("{PREFIX}.1"),
        ] {
            u1.publish_refused(&subject).await;
        }
        // Other users' inboxes and everything's.
        for subject in ["_INBOX.>", "_INBOX_tu2.>", ">"] {
            let _sub = u1.client.subscribe(subject.to_owned()).await.unwrap();
            u1.client.flush().await.unwrap();
            u1.violation(subject).await;
        }

        // The old attack: a purge request stored in its own partition, then pulled with the
        // purge subject as reply subject. The pull is refused by its permissions. A feed
        // request whose reply subject is the purge subject gets no answer there.
        js.publish(own_notes.clone(), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let purge = format!("$JS.API.STREAM.PURGE.{STREAM}");
        u1.client
            .publish_with_reply(
                format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{own_feed}"),
                purge.clone(),
                "{\"batch\": 10}".into(),
            )
            .await
            .unwrap();
        u1.client.flush().await.unwrap();
        u1.violation(&format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}"))
            .await;
        for token in [u1_token.clone(), hs256(&expired, SECRET)] {
            u1.client
                .publish_with_reply(
                    subjects.feed_request(),
                    purge.clone(),
                    feed_request(&token, "c3", 0).into(),
                )
                .await
                .unwrap();
        }
        u1.client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;

        // The stream is intact: nothing purged.
        let info = admin_js
            .get_stream(STREAM)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(
            info.state.messages,
            stream_messages.len() as u64 + 1,
            "{:?}",
            info.state
        );
        assert_eq!(info.state.first_sequence, stream_messages[0].0);
        drop(u3);

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
            assert!(
                log.contains(reason),
                "the log names {reason:?}:\n{}",
                node.log_tail()
            );
        }
        for reason in [
            "refused a scoped feed request: the token has expired",
            "refused a scoped feed request: the token's signature does not verify",
            "refused a scoped feed request: its reply subject is not in the user's inbox namespace",
        ] {
            assert!(
                log.contains(reason),
                "the log names {reason:?}:\n{}",
                node.log_tail()
            );
        }
        assert!(
            !log.contains(&tampered) && !log.contains(&good),
            "tokens never reach the log"
        );
        let (_, metrics) = http_get(metrics_port, "/metrics").unwrap();
        for outcome in [
            "accepted",
            "bad_signature",
            "expired",
            "wrong_audience",
            "no_token",
        ] {
            let line = format!("harmonylite_auth_callouts_total{{outcome=\"{outcome}\"}}");
            assert!(metrics.contains(&line), "{line} in:\n{metrics}");
        }
        for outcome in [
            "started",
            "expired",
            "bad_signature",
            "bad_request",
            "bad_reply",
        ] {
            let line = format!("harmonylite_scope_feeds_total{{outcome=\"{outcome}\"}}");
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
            // Its own bootstrap request goes out and is answered (a refusal: "{}" is not a
            // bootstrap request); another user's partition does not.
            client
                .client
                .request(subjects.bootstrap_request(), "{}".into())
                .await
                .unwrap_or_else(|e| panic!("{sub}'s bootstrap request: {e}"));
            client
                .publish_refused(&notes_subject(&subjects, "someone-else"))
                .await;
            // Some node starts its feed (the shared table's row), whichever it is connected to.
            let mut feed = client
                .client
                .subscribe(Subjects::feed_deliver_subject(sub, "f00d"))
                .await
                .unwrap();
            client.client.flush().await.unwrap();
            let reply = ask_feed(&client.client, &feed_request(&token, "f00d", 0), None)
                .await
                .unwrap_or_else(|e| panic!("{sub}'s feed on {url}: {e}"));
            assert!(matches!(reply, FeedReply::Started { .. }), "{reply:?}");
            let got = read_feed(&mut feed, 1).await;
            assert_eq!(got[0].subject, format!("{PREFIX}.shared.ttags"));
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
