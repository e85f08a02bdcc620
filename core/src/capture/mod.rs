//! The capture scheme: which tables are replicated, and the SQL that records their changes.
//!
//! Pure functions only; [`crate::sqlite`] executes them.

pub mod ddl;
pub mod names;
pub mod schema;

pub use schema::{ColumnInfo, SkipReason, TableInfo};
