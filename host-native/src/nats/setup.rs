//! Connecting this node to NATS: the embedded server it supervises, the transport settings
//! and the change stream. Used by the sidecar's run loop and by one-shot commands
//! (`--save-snapshot`).

use std::time::Duration;

use async_nats::jetstream;
use harmonylite_core::hlc::NodeId;

use crate::config::{Config, NatsConfig, Secret};
use crate::nats::server::{AuthCalloutSettings, ClusterConfig, EmbeddedServerConfig, NatsServer};
use crate::nats::transport::{self, Auth, StreamError, TransportConfig};
use crate::nats::NatsError;

/// The user the sidecar connects to its embedded server as when scopes are on (every other
/// client is authenticated through the auth callout this user answers).
pub const SIDECAR_USER: &str = "harmonylite";

/// The change stream's name: `<stream_prefix>-1`.
pub fn stream_name(nats: &NatsConfig) -> String {
    format!("{}-1", nats.stream_prefix)
}

/// Starts the embedded nats-server `config` describes (store under the data directory,
/// cluster routes, leaf remotes, WebSocket; with scopes on, auth callout for every client
/// but the sidecar's own user, whose password is new at every start) and waits until it is
/// ready.
pub async fn start_embedded_server(
    config: &Config,
    node_id: NodeId,
) -> Result<NatsServer, NatsError> {
    let store_dir = config.effective_data_dir().join("nats");
    let mut embedded = EmbeddedServerConfig::new(store_dir, format!("harmonylite-{node_id}"));
    embedded.binary = config.nats.server_binary.clone();
    embedded.client_listen = config.nats.bind_address;
    embedded.cluster = config.nats.cluster_addr.map(|listen| ClusterConfig {
        name: "harmonylite".into(),
        listen,
        routes: config.nats.cluster_peers.clone(),
    });
    embedded.leaf_remotes = config.nats.leaf_servers.clone();
    embedded.websocket_listen = config.nats.websocket_bind;
    embedded.include_config = config.nats.server_config.clone();
    if config.scopes.enabled() {
        let issuer = config.scopes.auth.callout_account()?.public_key();
        let mut password = [0u8; 24];
        getrandom::getrandom(&mut password).map_err(|source| {
            crate::util::UtilError::NoRandomness {
                purpose: "the sidecar's NATS password",
                source,
            }
        })?;
        embedded.auth_callout = Some(AuthCalloutSettings {
            user: SIDECAR_USER.into(),
            password: Secret::new(
                password
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            ),
            issuer,
        });
    }
    let server = NatsServer::start(embedded).await?;
    tracing::info!(url = %server.client_url(), websocket = ?server.websocket_url(), "embedded nats-server ready");
    Ok(server)
}

/// The transport settings of this node: the embedded server's URL when it runs one, else
/// `[nats]`'s servers and credentials.
pub fn transport_config(
    config: &Config,
    node_id: NodeId,
    server: Option<&NatsServer>,
) -> TransportConfig {
    let nats = &config.nats;
    let auth = if let (Some(user), Some(password)) = (&nats.user_name, &nats.user_password) {
        Auth::UserPassword {
            user: user.clone(),
            password: password.expose().to_string(),
        }
    } else if let Some(token) = &nats.token {
        Auth::Token(token.expose().to_string())
    } else if let Some(seed) = &nats.seed_file {
        Auth::NkeySeedFile(seed.clone())
    } else if let Some(creds) = &nats.creds_file {
        Auth::CredsFile(creds.clone())
    } else {
        Auth::None
    };
    TransportConfig {
        urls: match server {
            Some(server) => vec![server.client_url()],
            None => nats.urls.clone(),
        },
        auth: match server {
            Some(server) => server
                .sidecar_credentials()
                .map_or(Auth::None, |(user, password)| Auth::UserPassword {
                    user,
                    password,
                }),
            None => auth,
        },
        ca_file: nats.ca_file.clone().filter(|_| server.is_none()),
        client_cert: match (&nats.cert_file, &nats.key_file) {
            (Some(cert), Some(key)) if server.is_none() => Some((cert.clone(), key.clone())),
            _ => None,
        },
        reconnect_wait: nats.reconnect_wait,
        connect_timeout: nats.connect_timeout,
        client_name: format!("harmonylite-{node_id}"),
        stream_name: stream_name(nats),
        subjects: harmonylite_core::scope::Subjects::new(nats.subject_prefix.as_str()),
        scoped: config.scopes.enabled(),
        max_entries: config.replication_log.max_entries as i64,
        replicas: config.replication_log.replicas as usize,
    }
}

/// Creates or updates the stream, retrying until it succeeds (in a cluster, the other nodes
/// may not be up yet). A node that has applied messages up to `applied_cursor > 0` waits
/// for the stream instead of creating it ([`transport::ensure_stream`]).
///
/// Each attempt has its own deadline, short at first: while a JetStream cluster is still
/// electing its meta leader, requests are dropped unanswered, and waiting out the client's
/// whole request timeout (10 s) after the leader is known delayed every cluster's start.
pub async fn ensure_stream_until_ready(
    js: &jetstream::Context,
    config: &TransportConfig,
    applied_cursor: u64,
) -> jetstream::stream::Stream {
    let mut delay = Duration::from_millis(200);
    let mut deadline = Duration::from_secs(1);
    loop {
        let attempt = tokio::time::timeout(
            deadline,
            transport::ensure_stream(js, config, applied_cursor),
        )
        .await
        .unwrap_or_else(|_| Err(StreamError::NoAnswer(deadline.as_secs())));
        deadline = (deadline * 2).min(Duration::from_secs(10));
        match attempt {
            Ok(stream) => return stream,
            Err(e @ StreamError::Missing(_)) => {
                tracing::error!(stream = %config.stream_name, retry_in_ms = delay.as_millis() as u64, "{e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                tracing::warn!(stream = %config.stream_name, retry_in_ms = delay.as_millis() as u64, "stream not ready: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
