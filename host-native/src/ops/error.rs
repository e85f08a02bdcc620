//! The ops layer's errors.

use std::fmt;
use std::net::SocketAddr;

/// Why an operator-facing service could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// An HTTP endpoint could not listen on its address (in use, not this host's, no
    /// permission).
    Bind {
        /// The configuration section of the endpoint (`[health_check]`).
        section: &'static str,
        /// The address it was to listen on.
        bind: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl fmt::Display for OpsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = match self {
            OpsError::Bind { section, bind, .. } => format!("{section} bind {bind}"),
        };
        crate::util::error::write_error(f, &head, self)
    }
}
