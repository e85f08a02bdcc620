//! The nats layer's errors. Two kinds have types of their own: the change stream not being
//! ready ([`crate::nats::transport::StreamError`]; it is missing is a variant the start-up
//! loop decides on) and the embedded server's ([`crate::nats::server::NatsServerError`]).

use std::fmt;
use std::path::PathBuf;

use async_nats::jetstream::{consumer, stream};
use harmonylite_core::change::StreamSeq;

use crate::config::scopes::KeyFileError;
use crate::nats::server::NatsServerError;
use crate::util::UtilError;

/// Why connecting to NATS, reading the change stream or consuming it failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The `[nats] seed_file` could not be read.
    SeedFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The `[nats] creds_file` could not be read.
    CredsFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The client could not be set up to connect (the first connection itself is retried
    /// until it succeeds).
    Connect {
        /// The server URLs.
        urls: Vec<String>,
        /// The cause.
        #[source]
        source: async_nats::ConnectError,
    },
    /// Reading the change stream's state (its bounds, creation time) failed.
    #[error(transparent)]
    StreamInfo(stream::InfoError),
    /// Creating the ordered consumer of the change stream failed.
    CreateConsumer {
        /// The first sequence it was to deliver.
        from: StreamSeq,
        /// The cause.
        #[source]
        source: stream::ConsumerError,
    },
    /// The ordered consumer could not start delivering.
    #[error(transparent)]
    ConsumerMessages(consumer::StreamError),
    /// The embedded nats-server could not be started.
    #[error(transparent)]
    Server(#[from] NatsServerError),
    /// A util-layer step failed (an injected failure, in tests).
    #[error(transparent)]
    Util(#[from] UtilError),
    /// The `[scopes.auth] callout_seed_file` the embedded server's auth callout needs cannot
    /// be used.
    #[error(transparent)]
    CalloutKey(#[from] KeyFileError),
}

impl fmt::Display for NatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = match self {
            NatsError::SeedFile { path, .. } => {
                format!("reading [nats] seed_file {}", path.display())
            }
            NatsError::CredsFile { path, .. } => {
                format!("reading [nats] creds_file {}", path.display())
            }
            NatsError::Connect { urls, .. } => format!("connecting to NATS at {}", urls.join(", ")),
            NatsError::StreamInfo(e) => e.to_string(),
            NatsError::CreateConsumer { from, .. } => {
                format!("creating a consumer from sequence {from}")
            }
            NatsError::ConsumerMessages(e) => e.to_string(),
            NatsError::Server(e) => e.to_string(),
            NatsError::Util(e) => e.to_string(),
            NatsError::CalloutKey(e) => e.to_string(),
        };
        crate::util::error::write_error(f, &head, self)
    }
}
