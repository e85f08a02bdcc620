//! Running the sidecar: the driver's one loop, and serverless mode's idle timer.

pub mod driver;
pub mod serverless;
