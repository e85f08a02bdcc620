//! Running the sidecar: the driver's one loop, the driver's other work in one module per
//! job, and serverless mode's idle timer.

mod catching_up;
pub mod driver;
mod hops;
pub mod serverless;
mod sleep;
mod snapshots;
mod status;
mod stream;
