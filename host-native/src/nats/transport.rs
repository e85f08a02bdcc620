//! JetStream transport: connection, stream set-up, ordered publishing with acks, and the
//! ordered consumer that feeds the engine.
//!
//! The connection reconnects forever (async-nats never gives up when `max_reconnects` is
//! unset) with a capped linear backoff; connection state changes and publish outcomes arrive
//! on one channel of [`TransportEvent`]s for the driver.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{ConnectOptions, Event};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use harmonylite_core::change::StreamSeq;
use harmonylite_core::engine::Publish;
use harmonylite_core::scope::Subjects;
use harmonylite_core::session::{missing_stream_refusal, StreamInfo};
use tokio::sync::mpsc;

use crate::nats::NatsError;

/// How a client authenticates to NATS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// User name and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// A token.
    Token(String),
    /// An nkey seed read from a file.
    NkeySeedFile(PathBuf),
    /// A `.creds` file (JWT + seed).
    CredsFile(PathBuf),
}

/// Where and how to reach NATS, and the stream to use.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Server URLs (`nats://`, `tls://`).
    pub urls: Vec<String>,
    /// Credentials.
    pub auth: Auth,
    /// CA certificate used to verify the servers.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Delay step between reconnect attempts (grows linearly up to 30 s).
    pub reconnect_wait: Duration,
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// Name shown in the server's connection list.
    pub client_name: String,
    /// JetStream stream holding the change log.
    pub stream_name: String,
    /// The change stream's subjects (`[nats] subject_prefix`).
    pub subjects: Subjects,
    /// Whether scope rules are set: the stream then holds the scoped subjects too.
    pub scoped: bool,
    /// Stream retention, in messages.
    pub max_entries: i64,
    /// Stream replicas.
    pub replicas: usize,
}

/// Something the transport reports to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// Connected (or reconnected) to a server.
    Connected,
    /// Lost the connection (the client keeps reconnecting).
    Disconnected,
    /// JetStream stored outbox frame `id`.
    Acked(i64),
    /// Publishing outbox frame `id` failed.
    PublishFailed(i64, String),
}

/// Connects to NATS. Retries the first connection too; returns once connected.
pub async fn connect(
    config: &TransportConfig,
    events: mpsc::UnboundedSender<TransportEvent>,
) -> Result<async_nats::Client, NatsError> {
    let mut options = match &config.auth {
        Auth::None => ConnectOptions::new(),
        Auth::UserPassword { user, password } => {
            ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        Auth::Token(token) => ConnectOptions::with_token(token.clone()),
        Auth::NkeySeedFile(path) => {
            let seed =
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| NatsError::SeedFile {
                        path: path.clone(),
                        source,
                    })?;
            ConnectOptions::with_nkey(seed.trim().to_string())
        }
        Auth::CredsFile(path) => {
            ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| NatsError::CredsFile {
                    path: path.clone(),
                    source,
                })?
        }
    };
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &config.client_cert {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    let step = config.reconnect_wait;
    let options = options
        .name(&config.client_name)
        .connection_timeout(config.connect_timeout)
        .retry_on_initial_connect()
        // async-nats counts the first attempt as 1: connect at once, then back off linearly.
        .reconnect_delay_callback(move |attempts| {
            (step * attempts.saturating_sub(1) as u32).min(Duration::from_secs(30))
        })
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                match event {
                    Event::Connected => {
                        let _ = events.send(TransportEvent::Connected);
                    }
                    Event::Disconnected => {
                        let _ = events.send(TransportEvent::Disconnected);
                    }
                    other => log_client_event(&other),
                }
            }
        });
    let client = options
        .connect(config.urls.clone())
        .await
        .map_err(|source| NatsError::Connect {
            urls: config.urls.clone(),
            source,
        })?;
    Ok(client)
}

/// Logs a connection event the driver does not act on. Refused credentials, failed TLS
/// handshakes and denied permissions are named with the `[nats]` keys (or the server-side
/// permissions) that fix them; the client keeps retrying either way.
fn log_client_event(event: &Event) {
    use async_nats::{ClientError, ConnectErrorKind, ServerError};
    // async-nats reports a failed connection attempt as the text of its error kind.
    let failed = |kind: ConnectErrorKind| match event {
        Event::ClientError(ClientError::Other(reason)) => *reason == kind.to_string(),
        _ => false,
    };
    let refused = matches!(
        event,
        Event::ServerError(ServerError::AuthorizationViolation)
    );
    if refused || failed(ConnectErrorKind::AuthorizationViolation) {
        tracing::error!(target: "nats", "NATS refused this node's credentials (authorization violation): check the [nats] user_name/user_password, token, seed_file or creds_file against the server's authorization; retrying");
    } else if failed(ConnectErrorKind::Authentication) {
        tracing::error!(target: "nats", "could not answer the NATS server's nonce with the [nats] seed_file or creds_file key; retrying");
    } else if failed(ConnectErrorKind::Tls) {
        tracing::error!(target: "nats", "TLS with the NATS server failed: check the [nats] ca_file (the server's CA), cert_file/key_file (when the server verifies clients) and that the server's certificate names the host in the URL; retrying");
    } else if let Event::ServerError(ServerError::Other(reason)) = event {
        let denied = reason
            .to_ascii_lowercase()
            .contains("permissions violation");
        if denied {
            tracing::error!(target: "nats", "NATS denied this node's user an operation ({reason}); docs/security.md lists the permissions a node needs");
        } else {
            tracing::warn!(target: "nats", "{event}");
        }
    } else {
        tracing::warn!(target: "nats", "{event}");
    }
}

/// Why the change stream is not ready.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream does not exist although this node has applied messages from it; the
    /// text says what to do ([`harmonylite_core::session::missing_stream_refusal`]).
    #[error("{0}")]
    Missing(String),
    /// JetStream did not answer within the attempt's deadline.
    #[error("no answer from JetStream within {0} s (it may still be electing a leader)")]
    NoAnswer(u64),
    /// A JetStream request about the stream failed.
    #[error("{doing} stream {stream}: {error}")]
    Request {
        /// What was asked ("reading", "creating", "updating").
        doing: &'static str,
        /// The stream's name.
        stream: String,
        /// The client's error, rendered.
        error: String,
    },
}

impl StreamError {
    fn request(doing: &'static str, stream: &str, error: impl std::fmt::Display) -> Self {
        StreamError::Request {
            doing,
            stream: stream.to_owned(),
            error: error.to_string(),
        }
    }
}

/// Creates the change-log stream, or updates its retention and replicas if they differ.
///
/// A node that has applied messages already (`applied_cursor > 0`) never creates the
/// stream: if it is gone, JetStream lost it or someone deleted it, and a new, empty stream
/// would restart its sequence numbers under every node's cursor (see
/// [`crate::nats::stream_identity`]). That is an error naming the way out.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: &TransportConfig,
    applied_cursor: u64,
) -> Result<stream::Stream, StreamError> {
    let wanted = stream::Config {
        name: config.stream_name.clone(),
        subjects: config.subjects.stream_subjects(config.scoped),
        max_messages: config.max_entries,
        discard: stream::DiscardPolicy::Old,
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        ..Default::default()
    };
    let mut stream = if applied_cursor > 0 {
        js.get_stream(&config.stream_name).await.map_err(|e| {
            let missing = matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            );
            match missing
                .then(|| {
                    missing_stream_refusal(
                        &config.stream_name,
                        applied_cursor,
                        crate::nats::stream_identity::HOW_TO_ADOPT,
                    )
                })
                .flatten()
            {
                Some(why) => StreamError::Missing(why),
                None => StreamError::request("reading", &config.stream_name, e),
            }
        })?
    } else {
        js.get_or_create_stream(wanted.clone())
            .await
            .map_err(|e| StreamError::request("creating", &config.stream_name, e))?
    };
    let current = stream
        .info()
        .await
        .map_err(|e| StreamError::request("reading", &config.stream_name, e))?
        .config
        .clone();
    // Subjects are only ever added: nodes of a cluster moving to scopes one by one never
    // take away the subjects the others publish on.
    let mut subjects = current.subjects.clone();
    for subject in &wanted.subjects {
        if !subjects.contains(subject) {
            subjects.push(subject.clone());
        }
    }
    if current.max_messages != wanted.max_messages
        || current.num_replicas != wanted.num_replicas
        || current.subjects != subjects
    {
        let updated = stream::Config {
            max_messages: wanted.max_messages,
            num_replicas: wanted.num_replicas,
            subjects,
            ..current
        };
        js.update_stream(updated)
            .await
            .map_err(|e| StreamError::request("updating", &config.stream_name, e))?;
        tracing::info!(stream = %config.stream_name, max_entries = config.max_entries, replicas = config.replicas, "updated stream settings");
        stream = js
            .get_stream(&config.stream_name)
            .await
            .map_err(|e| StreamError::request("reading", &config.stream_name, e))?;
    }
    Ok(stream)
}

/// A publish acknowledged as a duplicate of the message at `seq`: fine when that message is
/// this frame (a retry after a lost ack); otherwise someone else used this frame's id, and
/// the frame is published again under a new one.
async fn settle_duplicate(
    js: &jetstream::Context,
    stream_name: &str,
    seq: u64,
    subject: String,
    frame: bytes::Bytes,
    msg_id: &str,
) -> Result<(), String> {
    let stream = js
        .get_stream_no_info(stream_name)
        .await
        .map_err(|e| format!("checking a duplicate ack: {e}"))?;
    let stored = stream
        .direct_get(seq)
        .await
        .map_err(|e| format!("checking a duplicate ack: {e}"))?;
    if stored.payload == frame && stored.subject.as_str() == subject {
        return Ok(());
    }
    let fresh = format!(
        "{msg_id}-r{:x}",
        crate::util::random_u64().map_err(|e| e.to_string())?
    );
    tracing::warn!(
        msg_id,
        stored_seq = seq,
        stored_subject = %stored.subject,
        "another publisher used this node's message id (a scoped client?); publishing the frame again as {fresh}"
    );
    let message = jetstream::message::PublishMessage::build()
        .payload(frame)
        .message_id(&fresh);
    js.send_publish(subject, message)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The stream's bounds and creation time, for the session's consumer rules.
pub async fn stream_info(stream: &mut stream::Stream) -> Result<StreamInfo, NatsError> {
    crate::util::failpoint::inject("stream-info")?;
    let info = stream.info().await.map_err(NatsError::StreamInfo)?;
    Ok(StreamInfo {
        first_seq: info.state.first_sequence,
        last_seq: info.state.last_sequence,
        created_ns: i64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(i64::MAX),
    })
}

/// First and last sequence currently in the stream.
pub async fn stream_bounds(stream: &mut stream::Stream) -> Result<(u64, u64), NatsError> {
    crate::util::failpoint::inject("stream-info")?;
    let info = stream.info().await.map_err(NatsError::StreamInfo)?;
    Ok((info.state.first_sequence, info.state.last_sequence))
}

/// How long one pull of the ordered consumer waits (see [`consume_from`]).
pub const ORDERED_PULL_EXPIRES: Duration = Duration::from_secs(4);

/// An ordered, ephemeral consumer delivering every message from sequence `from` on.
pub async fn consume_from(
    stream: &stream::Stream,
    from: StreamSeq,
) -> Result<consumer::pull::Ordered, NatsError> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.get(),
            },
            // Pull requests expire after this and carry an idle heartbeat of half of it, so
            // a consumer lost with the server that held it (a peer node stopped) is noticed
            // and recreated after two missed heartbeats: about 4 s, not async-nats' default
            // 30 s expiry and 15 s heartbeat, which stalled replication for ~35 s.
            max_expires: ORDERED_PULL_EXPIRES,
            ..Default::default()
        })
        .await
        .map_err(|source| NatsError::CreateConsumer { from, source })?;
    consumer
        .messages()
        .await
        .map_err(NatsError::ConsumerMessages)
}

/// Publishes frames in the order given, keeping the acks in flight concurrently, and reports
/// each outcome as [`TransportEvent::Acked`] or [`TransportEvent::PublishFailed`].
///
/// An ack that says "duplicate" is checked: the stream's de-duplication is by message id
/// across all its subjects, and a scoped client (which reads full nodes' message ids in its
/// feed) could publish first under the id of this node's next frame. When the stored
/// message is not this frame, the frame is published again under a new id, so it is never
/// lost to someone else's message.
pub fn spawn_publisher(
    js: jetstream::Context,
    stream_name: String,
    subjects: Subjects,
    events: mpsc::UnboundedSender<TransportEvent>,
) -> mpsc::UnboundedSender<Publish> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Publish>();
    tokio::spawn(async move {
        let mut acks = FuturesUnordered::new();
        loop {
            tokio::select! {
                next = rx.recv() => {
                    let Some(p) = next else { break };
                    tracing::trace!(id = p.id, msg_id = %p.msg_id, "publishing");
                    let frame = bytes::Bytes::from(p.frame);
                    let message = jetstream::message::PublishMessage::build()
                        .payload(frame.clone())
                        .message_id(&p.msg_id);
                    let subject = subjects.for_suffix(p.subject.as_deref());
                    match js.send_publish(subject.clone(), message).await {
                        Ok(ack) => {
                            let (js, stream_name) = (js.clone(), stream_name.clone());
                            acks.push(async move {
                                let outcome = match ack.await {
                                    Ok(ack) if ack.duplicate => {
                                        settle_duplicate(&js, &stream_name, ack.sequence, subject, frame, &p.msg_id).await
                                    }
                                    Ok(_) => Ok(()),
                                    Err(e) => Err(e.to_string()),
                                };
                                (p.id, outcome)
                            })
                        }
                        Err(e) => {
                            let _ = events.send(TransportEvent::PublishFailed(p.id, e.to_string()));
                        }
                    }
                }
                Some((id, outcome)) = acks.next(), if !acks.is_empty() => {
                    tracing::trace!(id, ok = outcome.is_ok(), "publish outcome");
                    let event = match outcome {
                        Ok(()) => TransportEvent::Acked(id),
                        Err(e) => TransportEvent::PublishFailed(id, e),
                    };
                    let _ = events.send(event);
                }
            }
        }
        while let Some((id, outcome)) = acks.next().await {
            let _ = events.send(match outcome {
                Ok(()) => TransportEvent::Acked(id),
                Err(e) => TransportEvent::PublishFailed(id, e),
            });
        }
    });
    tx
}
