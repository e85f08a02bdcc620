//! What operators see of a running node: the health endpoint, Prometheus metrics, progress
//! bars on a terminal, and the file notifications that wake the driver.

pub mod error;
pub mod health;
pub mod metrics;
pub mod progress;
pub mod watcher;

pub use error::OpsError;
