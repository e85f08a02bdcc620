//! The one place that names internal SQL objects, and quotes identifiers.
//!
//! Naming scheme: every internal object starts with [`PREFIX`] (`__hl_`).
//!
//! | object | name |
//! | --- | --- |
//! | key/value metadata (node id, cursor, clock, batch counter) | `__hl_meta` |
//! | registry of replicated tables (id, name, key width, fingerprint) | `__hl_tables` |
//! | change log written by the triggers | `__hl_log` |
//! | encoded batches waiting for a JetStream ack | `__hl_outbox` |
//! | echo-suppression marker (a row exists only inside an apply transaction) | `__hl_applying` |
//! | parts of multi-part batches received so far | `__hl_parts` |
//! | messages that could not be applied, with the reason and table | `__hl_parked` |
//! | replicated schema migrations applied here, in order | `__hl_migrations` |
//! | row versions of replicated table *N* | `__hl_v<N>` |
//! | capture triggers of table *N* | `__hl_t<N>_insert`, `__hl_t<N>_update`, `__hl_t<N>_delete` |
//!
//! Tables are numbered, so user table names (spaces, quotes, any Unicode) never become part of
//! an internal name.

/// Prefix shared by every internal object.
pub const PREFIX: &str = "__hl_";
/// Metadata table.
pub const META: &str = "__hl_meta";
/// Replicated-table registry.
pub const TABLES: &str = "__hl_tables";
/// Change log.
pub const LOG: &str = "__hl_log";
/// Outbox of encoded frames.
pub const OUTBOX: &str = "__hl_outbox";
/// Echo-suppression marker table.
pub const APPLYING: &str = "__hl_applying";
/// Received parts of multi-part batches.
pub const PARTS: &str = "__hl_parts";
/// Parked messages.
pub const PARKED: &str = "__hl_parked";
/// Applied replicated migrations.
pub const MIGRATIONS: &str = "__hl_migrations";
/// The partition of each partitioned row (scopes on), to route its deletes.
pub const PARTITIONS: &str = "__hl_partitions";
/// A full replica's own partitioned upserts, until their message is seen in the stream.
pub const PARTITIONS_PENDING: &str = "__hl_partitions_pending";
/// A scoped replica's refused rows waiting to be fetched again from a full node.
pub const REFETCH: &str = "__hl_refetch";
/// The batches of a scoped replica whose refusal notice it has handled.
pub const REFUSED_SEEN: &str = "__hl_refused_seen";

/// Version table of the table with registry id `id`.
pub fn version_table(id: i64) -> String {
    format!("{PREFIX}v{id}")
}

/// Column-merge state table of the table with registry id `id` (tables merging by column).
pub fn cells_table(id: i64) -> String {
    format!("{PREFIX}c{id}")
}

/// The three capture triggers of the table with registry id `id`.
pub fn triggers(id: i64) -> [String; 3] {
    [
        format!("{PREFIX}t{id}_insert"),
        format!("{PREFIX}t{id}_update"),
        format!("{PREFIX}t{id}_delete"),
    ]
}

/// Name of the `n`th key slot column of the log and of version tables.
pub fn key_slot(n: usize) -> String {
    format!("k{n}")
}

/// Whether `name` is an internal object.
pub fn is_internal(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// Quotes an identifier for SQL: wrapped in double quotes, inner quotes doubled.
pub fn quote(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push('"');
    for c in ident.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quotes a string literal for SQL: wrapped in single quotes, inner quotes doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_inner_quotes() {
        assert_eq!(quote(r#"a "b" c"#), r#""a ""b"" c""#);
        assert_eq!(quote("é t"), "\"é t\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
