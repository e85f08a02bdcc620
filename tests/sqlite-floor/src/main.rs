//! A plain SQLite application on SQLite 3.35.4 (rusqlite 0.25's bundled build).
//!
//! ```text
//! sqlite-floor-app <database> [<sql> ...]
//! ```
//!
//! Opens `<database>` the way an unchanged application would (5 s busy timeout), turns
//! `PRAGMA trusted_schema` off and checks that it is off, prints `sqlite_version <version>`,
//! then runs each `<sql>` argument in order: a statement that returns columns prints its
//! rows (one line per row, values separated by `|`, NULL as `NULL`, blobs as `x'..'`), any
//! other statement prints `changes <n>`. Any error is printed and makes the exit status 1.

use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::Connection;

fn main() {
    if let Err(e) = run() {
        eprintln!("sqlite-floor-app: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: sqlite-floor-app <database> [<sql> ...]")?;
    let conn = Connection::open(&path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch("PRAGMA trusted_schema = OFF;")?;
    let trusted: i64 = conn.query_row("PRAGMA trusted_schema", [], |r| r.get(0))?;
    if trusted != 0 {
        return Err(format!("PRAGMA trusted_schema is {trusted} after setting it OFF").into());
    }
    let version: String = conn.query_row("SELECT sqlite_version()", [], |r| r.get(0))?;
    println!("sqlite_version {version}");
    for sql in args {
        let mut stmt = conn
            .prepare(&sql)
            .map_err(|e| format!("preparing {sql:?}: {e}"))?;
        let width = stmt.column_count();
        if width == 0 {
            let changes = stmt
                .execute([])
                .map_err(|e| format!("running {sql:?}: {e}"))?;
            println!("changes {changes}");
            continue;
        }
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next().map_err(|e| format!("running {sql:?}: {e}"))? {
            let values: Vec<String> = (0..width)
                .map(|i| row.get_ref(i).map(show))
                .collect::<Result<_, _>>()?;
            println!("{}", values.join("|"));
        }
    }
    Ok(())
}

fn show(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => {
            let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
            format!("x'{hex}'")
        }
    }
}
