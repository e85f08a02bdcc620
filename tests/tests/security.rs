//! Authentication, TLS and permissions against a real, secured `nats-server`: every mode the
//! `[nats]` section offers (user/password, token, nkey, creds in operator mode, mutual TLS)
//! carries replication between real sidecars, a wrong password is named in the log and
//! retried, and a read-only replica works with consume-only permissions (docs/security.md).
//!
//! Credentials, keys and certificates are generated per test: nkeys with the `nkeys` crate,
//! operator/account/user JWTs signed with those nkeys, a CA and certificates with `rcgen`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use harmonylite_tests::*;
use nkeys::KeyPair;

const SCHEMA: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);";
const START: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(30);

/// Starts two sidecars on `url`, with `[nats]` keys `nats_a` and `nats_b` (TOML lines), and
/// proves replication both ways.
fn replicate_pair(dir: &Path, url: &str, nats_a: &str, nats_b: &str) -> (Node, Node) {
    let mut a = Node::new(
        dir,
        "a",
        SCHEMA,
        &format!("{}{nats_a}\n", external_toml(url, 1)),
    );
    let mut b = Node::new(
        dir,
        "b",
        SCHEMA,
        &format!("{}{nats_b}\n", external_toml(url, 2)),
    );
    a.start();
    b.start();
    a.wait_healthy(START);
    b.wait_healthy(START);
    a.app()
        .execute("INSERT INTO notes VALUES (1, 'from a')", [])
        .unwrap();
    wait_converged(&[&a, &b], "notes", CONVERGE, |rows| rows.len() == 1);
    b.app()
        .execute("INSERT INTO notes VALUES (2, 'from b')", [])
        .unwrap();
    wait_converged(&[&a, &b], "notes", CONVERGE, |rows| rows.len() == 2);
    (a, b)
}

/// A TOML basic string (quotes and backslashes escaped).
fn toml_str(text: &str) -> String {
    format!("{text:?}")
}

#[test]
fn user_password_replicates_and_a_wrong_password_is_named_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start_with_config(
        &dir.path().join("nats"),
        r#"authorization {
  users = [
    { user: "alice", password: "alice-secret" }
    { user: "bob", password: "bob-secret" }
  ]
}
"#,
    );
    let (_a, _b) = replicate_pair(
        dir.path(),
        &nats.url(),
        "user_name = \"alice\"\nuser_password = \"alice-secret\"",
        "user_name = \"bob\"\nuser_password = \"bob-secret\"",
    );

    let mut wrong = Node::new(
        dir.path(),
        "wrong",
        SCHEMA,
        &format!(
            "{}user_name = \"alice\"\nuser_password = \"not-the-password\"\nreconnect_wait_seconds = 1\n",
            external_toml(&nats.url(), 3)
        ),
    );
    wrong.start();
    // Named in the sidecar's own words, at every attempt: it keeps retrying.
    let refused = "NATS refused this node's credentials (authorization violation)";
    assert!(
        wait_until(START, || wrong.log().matches(refused).count() >= 3),
        "no repeated authorization-violation message:\n{}",
        wrong.log_tail()
    );
    assert!(
        wrong.is_running(),
        "the sidecar exited instead of retrying:\n{}",
        wrong.log_tail()
    );
    assert!(
        !wrong.log().contains("not-the-password"),
        "the password leaked into the log"
    );
    let (code, health) = wrong.health().expect("the health endpoint answers");
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["nats_connected"], false, "{health}");
}

#[test]
fn token_auth_replicates() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ExternalNats::start_with_config(
        &dir.path().join("nats"),
        "authorization { token: \"s3cr3t-t0ken\" }\n",
    );
    let token = "token = \"s3cr3t-t0ken\"";
    let (a, _b) = replicate_pair(dir.path(), &nats.url(), token, token);
    assert!(
        !a.log().contains("s3cr3t-t0ken"),
        "the token leaked into the log"
    );
}

#[test]
fn nkey_auth_replicates() {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, key_b) = (KeyPair::new_user(), KeyPair::new_user());
    let seed_a = dir.path().join("a.nk");
    let seed_b = dir.path().join("b.nk");
    std::fs::write(&seed_a, key_a.seed().unwrap()).unwrap();
    std::fs::write(&seed_b, key_b.seed().unwrap()).unwrap();
    let nats = ExternalNats::start_with_config(
        &dir.path().join("nats"),
        &format!(
            "authorization {{\n  users = [\n    {{ nkey: {} }}\n    {{ nkey: {} }}\n  ]\n}}\n",
            key_a.public_key(),
            key_b.public_key()
        ),
    );
    replicate_pair(
        dir.path(),
        &nats.url(),
        &format!("seed_file = {}", toml_str(&seed_a.display().to_string())),
        &format!("seed_file = {}", toml_str(&seed_b.display().to_string())),
    );
}

/// A signed NATS JWT (`ed25519-nkey`): `issuer` vouches for `subject` with the `nats` claims.
fn nats_jwt(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{name}-{}", now.as_nanos()),
        "iat": now.as_secs(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A `.creds` file: the user's JWT and nkey seed in the decorated format `nsc` writes.
fn creds_file(jwt: &str, user: &KeyPair) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n",
        user.seed().unwrap()
    )
}

#[test]
fn creds_file_in_operator_mode_replicates() {
    let dir = tempfile::tempdir().unwrap();
    let operator = KeyPair::new_operator();
    let system = KeyPair::new_account();
    let account = KeyPair::new_account();
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    let mut with_jetstream = unlimited.clone();
    for (key, value) in [
        ("mem_storage", -1),
        ("disk_storage", -1),
        ("streams", -1),
        ("consumer", -1),
    ] {
        with_jetstream[key] = value.into();
    }
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        serde_json::json!({
            "type": "operator", "version": 2, "system_account": system.public_key(),
        }),
    );
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "app",
        serde_json::json!({"type": "account", "version": 2, "limits": with_jetstream}),
    );
    let operator_file = dir.path().join("operator.jwt");
    std::fs::write(&operator_file, &operator_jwt).unwrap();
    let nats = ExternalNats::start_with_config(
        &dir.path().join("nats"),
        &format!(
            "operator: {operator}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {sys}: {system_jwt}\n  {acc}: {account_jwt}\n}}\n",
            operator = toml_str(&operator_file.display().to_string()),
            sys = system.public_key(),
            acc = account.public_key(),
        ),
    );
    let mut creds = Vec::new();
    for name in ["a", "b"] {
        let user = KeyPair::new_user();
        let jwt = nats_jwt(
            &account,
            &user.public_key(),
            name,
            serde_json::json!({
                "type": "user", "version": 2, "pub": {}, "sub": {},
                "subs": -1, "data": -1, "payload": -1,
            }),
        );
        let path = dir.path().join(format!("{name}.creds"));
        std::fs::write(&path, creds_file(&jwt, &user)).unwrap();
        creds.push(format!(
            "creds_file = {}",
            toml_str(&path.display().to_string())
        ));
    }
    replicate_pair(dir.path(), &nats.url(), &creds[0], &creds[1]);
}

/// PEM files of a test CA and the server and client certificates it signs.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "harmonylite test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    // rustls verifies the address the client dialled against the SANs: 127.0.0.1 and localhost.
    let mut server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "nats-server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();

    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "harmonylite-node");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();

    Pki {
        ca: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

#[test]
fn mutual_tls_replicates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let file = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        toml_str(&path.display().to_string())
    };
    let ca = file("ca.pem", &pki.ca);
    let server_cert = file("server-cert.pem", &pki.server_cert);
    let server_key = file("server-key.pem", &pki.server_key);
    let client_cert = file("client-cert.pem", &pki.client_cert);
    let client_key = file("client-key.pem", &pki.client_key);
    let nats = ExternalNats::start_with_config(
        &dir.path().join("nats"),
        &format!(
            "tls {{\n  cert_file: {server_cert}\n  key_file: {server_key}\n  ca_file: {ca}\n  verify: true\n}}\n"
        ),
    );
    let tls = format!("ca_file = {ca}\ncert_file = {client_cert}\nkey_file = {client_key}");
    replicate_pair(dir.path(), &nats.tls_url(), &tls, &tls);
    // The server really required the client certificate: one without it is turned away.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let without_cert = runtime.block_on(async {
        async_nats::ConnectOptions::new()
            .add_root_certificates(dir.path().join("ca.pem"))
            .require_tls(true)
            .connection_timeout(Duration::from_secs(5))
            .connect(nats.tls_url())
            .await
    });
    // Refused for the missing certificate, not timed out or unreachable: the client's error
    // is no timeout and the server says why it ended the handshake.
    let error = match without_cert {
        Ok(_) => panic!("a client without a certificate was accepted"),
        Err(e) => e,
    };
    assert_ne!(
        error.kind(),
        async_nats::ConnectErrorKind::TimedOut,
        "the client without a certificate timed out instead of being refused: {error}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || nats
            .log()
            .contains("client didn't provide a certificate")),
        "the server did not refuse the client for its missing certificate ({error}):\n{}",
        nats.log()
    );
}

/// The subjects a read-only replica needs, and nothing more (docs/security.md): stream info,
/// creating, pulling from, checking (after a reconnect) and deleting (when it recreates it)
/// its ordered consumer, and the replies on its inbox. Publishing a change is denied.
const READER_PERMISSIONS: &str = r#"permissions: {
        publish: {
          allow: [
            "$JS.API.STREAM.INFO.harmonylite-changes-1"
            "$JS.API.CONSUMER.CREATE.harmonylite-changes-1"
            "$JS.API.CONSUMER.MSG.NEXT.harmonylite-changes-1.*"
            "$JS.API.CONSUMER.INFO.harmonylite-changes-1.*"
            "$JS.API.CONSUMER.DELETE.harmonylite-changes-1.*"
          ]
          deny: ["harmonylite-change-log.>"]
        }
        subscribe: { allow: ["_INBOX.>"] }
      }"#;

#[test]
fn read_only_replica_replicates_with_consume_only_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = ExternalNats::start_with_config(
        &dir.path().join("nats"),
        &format!(
            "authorization {{\n  users = [\n    {{ user: \"writer\", password: \"w\" }}\n    {{ user: \"reader\", password: \"r\", {READER_PERMISSIONS} }}\n  ]\n}}\n"
        ),
    );
    // The writer starts first: it creates the stream, which the reader may not.
    let mut writer = Node::new(
        dir.path(),
        "writer",
        SCHEMA,
        &format!(
            "{}user_name = \"writer\"\nuser_password = \"w\"\nreconnect_wait_seconds = 1\n",
            external_toml(&nats.url(), 1)
        ),
    );
    writer.start();
    writer.wait_healthy(START);
    writer
        .app()
        .execute("INSERT INTO notes VALUES (1, 'before the reader')", [])
        .unwrap();
    let mut reader = Node::new(
        dir.path(),
        "reader",
        SCHEMA,
        &format!(
            "publish = false\n{}user_name = \"reader\"\nuser_password = \"r\"\nreconnect_wait_seconds = 1\n",
            external_toml(&nats.url(), 2)
        ),
    );
    reader.start();
    reader.wait_healthy(START);
    wait_converged(&[&writer, &reader], "notes", CONVERGE, |rows| {
        rows.len() == 1
    });
    writer
        .app()
        .execute("INSERT INTO notes VALUES (2, 'while the reader runs')", [])
        .unwrap();
    wait_converged(&[&writer, &reader], "notes", CONVERGE, |rows| {
        rows.len() == 2
    });
    // After a server restart the reader reconnects and recreates its consumer with the same
    // permissions.
    nats.stop();
    nats.restart();
    writer
        .app()
        .execute("INSERT INTO notes VALUES (3, 'after a restart')", [])
        .unwrap();
    wait_converged(&[&writer, &reader], "notes", CONVERGE, |rows| {
        rows.len() == 3
    });
    assert!(
        !reader.log().contains("Permissions Violation"),
        "the reader needed more permissions:\n{}",
        reader.log_tail()
    );

    // The permissions are real: the reader's user cannot publish a change. A failed publish
    // alone proves nothing (a timeout fails it too): the server must tell this client that
    // publishing to the subject violates its permissions, and the stream must not grow.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (published, server_errors, before, after) = runtime.block_on(async {
        let (errors_tx, mut errors_rx) = tokio::sync::mpsc::unbounded_channel();
        let client =
            async_nats::ConnectOptions::with_user_and_password("reader".into(), "r".into())
                .event_callback(move |event| {
                    let errors_tx = errors_tx.clone();
                    async move {
                        if let async_nats::Event::ServerError(e) = event {
                            let _ = errors_tx.send(e.to_string());
                        }
                    }
                })
                .connect(nats.url())
                .await
                .unwrap();
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(Duration::from_secs(1));
        let messages = |js: async_nats::jetstream::Context| async move {
            let mut stream = js.get_stream("harmonylite-changes-1").await.unwrap();
            stream.info().await.unwrap().state.messages
        };
        let before = messages(js.clone()).await;
        let published = match js
            .publish("harmonylite-change-log.1", "forged".into())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut server_errors = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, errors_rx.recv()).await {
            let permission = e.contains("Permissions Violation for Publish");
            server_errors.push(e);
            if permission {
                break;
            }
        }
        let after = messages(js.clone()).await;
        (published, server_errors, before, after)
    });
    assert!(
        published.is_err(),
        "the reader's user could publish a change"
    );
    assert!(
        server_errors.iter().any(|e| e
            .contains("Permissions Violation for Publish to \"harmonylite-change-log.1\"")),
        "the reader's publish failed ({published:?}) but the server sent no permissions violation for it: {server_errors:?}"
    );
    assert_eq!(before, after, "the stream grew after the refused publish");
    assert!(
        wait_until(Duration::from_secs(10), || nats
            .log()
            .contains("Publish Violation")),
        "the server logged no publish violation:\n{}",
        nats.log()
    );
    assert_eq!(dump(&writer.db, "notes").len(), 3);
}
