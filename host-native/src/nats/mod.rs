//! NATS: the supervised embedded `nats-server` and its cluster peers, the JetStream
//! transport (connection, change stream, publisher), and the change stream's identity.

pub mod error;
pub mod route_peers;
pub mod server;
pub mod setup;
pub mod stream_identity;
pub mod transport;

pub use error::NatsError;
