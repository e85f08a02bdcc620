//! Scoped clients' authentication: the NATS auth callout service that turns the app's signed
//! token into a NATS user allowed exactly that client's partitions (decision 13; `[scopes]`
//! in docs/configuration.md, docs/security.md).
//!
//! - [`token`]: verifying the app's JWT and mapping its claims to partitions;
//! - [`nats_jwt`]: the NATS JWTs of the callout protocol (request, user, response);
//! - [`callout`]: the service answering `$SYS.REQ.USER.AUTH`, and the permissions it grants.

pub mod bootstrap;
pub mod callout;
pub mod nats_jwt;
pub mod token;

use harmonylite_core::scope::ScopeError;

use crate::config::scopes::KeyFileError;
use crate::config::Config;

pub use callout::{Callout, CalloutTask};

/// Why the callout service could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The scope rules are invalid (configuration validation reports this first).
    #[error("`scopes.partition`: {0}")]
    Rules(#[source] ScopeError),
    /// A key file of `[scopes.auth]` cannot be used.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// Subscribing to the callout subject failed.
    #[error("subscribing to the NATS auth callout subject: {0}")]
    Subscribe(String),
}

/// Starts answering auth callout requests on `client` when scopes are on (`None` when they
/// are off). Keep the task for as long as the node runs.
pub async fn start(
    config: &Config,
    client: &async_nats::Client,
) -> Result<Option<CalloutTask>, AuthError> {
    match Callout::load(config)? {
        Some(callout) => Ok(Some(callout.serve(client.clone()).await?)),
        None => Ok(None),
    }
}
