//! The one-shot commands: each does its work and returns, without the run loop.

pub mod adopt_stream;
pub mod cleanup;
pub mod save_snapshot;
pub mod schema;
pub mod scopes_keygen;
