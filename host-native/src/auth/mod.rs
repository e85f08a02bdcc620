//! Scoped clients' authentication: the NATS auth callout service that turns the app's signed
//! token into a NATS user allowed exactly that client's partitions (decision 13; `[scopes]`
//! in docs/configuration.md, docs/security.md).
//!
//! - [`token`]: verifying the app's JWT and mapping its claims to partitions;
//! - [`nats_jwt`]: the NATS JWTs of the callout protocol (request, user, response);
//! - [`callout`]: the service answering `$SYS.REQ.USER.AUTH`, and the permissions it grants;
//! - [`feed`]: the service creating scoped clients' feeds (push consumers delivering into
//!   their own inbox namespace) on request;
//! - [`bootstrap`]: the service answering scoped clients' bootstrap requests;
//! - `reply`: where those services may send their answers.

pub mod bootstrap;
pub mod callout;
pub mod feed;
pub mod nats_jwt;
mod reply;
pub mod token;

use harmonylite_core::scope::ScopeError;

use crate::config::scopes::KeyFileError;
use crate::config::Config;

pub use callout::Callout;
pub use feed::Feed;

/// Why the callout or feed service could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The scope rules are invalid (configuration validation reports this first).
    #[error("`scopes.partition`: {0}")]
    Rules(#[source] ScopeError),
    /// A key file of `[scopes.auth]` cannot be used.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// Subscribing to the callout or feed request subject failed.
    #[error("subscribing to the scoped clients' service subject: {0}")]
    Subscribe(String),
}

/// One running service task (callout, feed, bootstrap); dropping it stops answering.
#[derive(Debug)]
pub struct ServiceTask(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for ServiceTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The running services for scoped clients; dropping it stops them.
#[derive(Debug)]
pub struct ScopedServices {
    /// Answers `$SYS.REQ.USER.AUTH`.
    pub callout: ServiceTask,
    /// Answers feed requests and deletes expired feeds.
    pub feed: ServiceTask,
}

/// Starts answering auth callout and feed requests on `client` when scopes are on (`None`
/// when they are off). Keep the services for as long as the node runs.
pub async fn start(
    config: &Config,
    client: &async_nats::Client,
) -> Result<Option<ScopedServices>, AuthError> {
    let (Some(callout), Some(feed)) = (Callout::load(config)?, Feed::load(config)?) else {
        return Ok(None);
    };
    Ok(Some(ScopedServices {
        callout: callout.serve(client.clone()).await?,
        feed: feed.serve(client.clone()).await?,
    }))
}
