//! `--save-snapshot`: take, store and prune snapshots once, then return.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::snapshot::store::SnapshotStore;
use crate::snapshot::{prune, take, Taken};

/// `--save-snapshot`: takes a snapshot of `db_path`, stores it, prunes old ones. Reads the
/// database only, so a running sidecar on the same database is fine. With the embedded
/// server it connects to the one listening on `nats.bind_address` (the running sidecar's),
/// or starts it when none listens.
pub async fn save_snapshot(config: &Config) -> anyhow::Result<Taken> {
    let journal = config.effective_data_dir().join("restore.json");
    anyhow::ensure!(
        !journal.exists(),
        "a restore of {} is unfinished ({} exists): start the sidecar to complete it first",
        config.db_path.display(),
        journal.display()
    );
    match crate::snapshot::restore::assess(&config.db_path)? {
        crate::snapshot::restore::LocalDb::Missing => anyhow::bail!(
            "--save-snapshot: there is no database at {}",
            config.db_path.display()
        ),
        crate::snapshot::restore::LocalDb::Damaged { problems } => anyhow::bail!(
            "--save-snapshot: {} is damaged ({})",
            config.db_path.display(),
            problems.join("; ")
        ),
        crate::snapshot::restore::LocalDb::Sound => {}
    }
    let stored = crate::snapshot::restore::salvage_local(
        &config.db_path,
        &crate::snapshot::restore::LocalDb::Sound,
    );
    let node_id = config.node_id.or(stored.node_id).with_context(|| {
        format!(
            "--save-snapshot: {} has no harmonylite metadata; run the sidecar on it first",
            config.db_path.display()
        )
    })?;
    let listening = config.nats.embedded()
        && std::net::TcpStream::connect_timeout(
            &loopback_if_unspecified(config.nats.bind_address),
            Duration::from_secs(1),
        )
        .is_ok();
    let server = if config.nats.embedded() && !listening {
        Some(crate::nats::setup::start_embedded_server(config, node_id).await?)
    } else {
        None
    };
    let result = async {
        let mut transport = crate::nats::setup::transport_config(config, node_id, server.as_ref());
        if listening {
            transport.urls = vec![format!(
                "nats://{}",
                loopback_if_unspecified(config.nats.bind_address)
            )];
        }
        let (events, _events_rx) = mpsc::unbounded_channel();
        let client = tokio::time::timeout(
            Duration::from_secs(60),
            crate::nats::transport::connect(&transport, events),
        )
        .await
        .with_context(|| format!("connecting to NATS at {}", transport.urls.join(", ")))??;
        let js = jetstream::new(client.clone());
        let stream = tokio::time::timeout(
            Duration::from_secs(60),
            crate::nats::setup::ensure_stream_until_ready(&js, &transport, 0),
        )
        .await
        .context("the change stream is not available")?;
        let stream_name = stream.cached_info().config.name.clone();
        let store = SnapshotStore::open(config, &js, &stream_name).await?;
        let taken = take(
            &config.db_path,
            &config.effective_data_dir(),
            node_id,
            &stream_name,
            &store,
        )
        .await?;
        prune(&store, config.snapshot.keep).await;
        client.flush().await.ok();
        anyhow::Ok(taken)
    }
    .await;
    if let Some(server) = server {
        server.shutdown().await;
    }
    result
}

fn loopback_if_unspecified(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        let ip: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        std::net::SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}
