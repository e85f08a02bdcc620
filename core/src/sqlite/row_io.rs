//! Reading a row's image and writing its version: what drain and the column merge share.

use rusqlite::{params_from_iter, Connection, OptionalExtension};

use crate::error::{Context, StoreError};
use crate::hlc::Hlc;
use crate::value::Value;

/// Reads a row's current image: `Some(values)` if it exists, `None` if it was deleted.
pub(super) fn read_row(
    conn: &Connection,
    sql: &str,
    key: &[Value],
    width: usize,
) -> Result<Option<Vec<Value>>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).context("reading a changed row")?;
    stmt.query_row(params_from_iter(key), |r| {
        if width == 0 {
            return Ok(Vec::new());
        }
        (0..width).map(|i| r.get::<_, Value>(i)).collect()
    })
    .optional()
    .context("reading a changed row")
}

/// Records a row's version (its last write's HLC and whether that write deleted it).
pub(super) fn write_version(
    conn: &Connection,
    sql: &str,
    key: &[Value],
    hlc: Hlc,
    deleted: bool,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(sql).context("writing a row version")?;
    let hlc_bytes = hlc.to_bytes();
    let params = key.iter().map(|v| v as &dyn rusqlite::ToSql).chain([
        &hlc_bytes as &dyn rusqlite::ToSql,
        &deleted as &dyn rusqlite::ToSql,
    ]);
    stmt.execute(params_from_iter(params))
        .context("writing a row version")?;
    Ok(())
}
