//! The sidecar's side of the change-stream identity check
//! ([`harmonylite_core::sqlite::stream_identity`]): its advice on a mismatch
//! (`--adopt-stream` is [`crate::commands::adopt_stream`]).

#[cfg(test)]
pub(crate) use harmonylite_core::sqlite::stream_identity::StreamFacts;

/// What an operator does to adopt a re-created stream (ends the session's refusals).
pub const HOW_TO_ADOPT: &str = "stop the application and this node and run `harmonylite --config <file> \
                                --adopt-stream` (docs/operations.md, \"The change stream was re-created\")";

/// Why this node must not consume the stream from `cursor`, with what to do; `None` when it
/// is the stream the cursor counts in (the first stream seen is recorded). The running
/// sidecar gets the same text from its session; tests check the sidecar's wording here.
#[cfg(test)]
pub(crate) fn refusal(
    conn: &rusqlite::Connection,
    stream_name: &str,
    cursor: u64,
    facts: StreamFacts,
) -> Result<Option<String>, harmonylite_core::error::StoreError> {
    harmonylite_core::sqlite::stream_identity::refusal(
        conn,
        stream_name,
        cursor,
        facts,
        HOW_TO_ADOPT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    const CREATED: i64 = 1_795_706_470_000_000_000;

    #[test]
    fn a_refusal_says_how_to_adopt() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE __hl_meta(key TEXT PRIMARY KEY, value)")
            .unwrap();
        let old = StreamFacts {
            created_ns: CREATED,
            last_seq: 10,
        };
        assert_eq!(refusal(&conn, "s", 10, old).unwrap(), None);
        let new = StreamFacts {
            created_ns: CREATED + 1,
            last_seq: 50,
        };
        let why = refusal(&conn, "s", 10, new).unwrap().expect("refused");
        assert!(why.contains("deleted and created again"), "{why}");
        assert!(why.contains("--adopt-stream"), "{why}");
    }
}
