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
    /// The Prometheus recorder could not be installed (another one already is, or a
    /// bucket list is invalid).
    Recorder(String),
}

impl fmt::Display for OpsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = match self {
            OpsError::Bind { section, bind, .. } => format!("{section} bind {bind}"),
            OpsError::Recorder(why) => format!("[prometheus] cannot install the recorder: {why}"),
        };
        crate::util::error::write_error(f, &head, self)
    }
}
