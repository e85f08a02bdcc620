//! Switching how a table merges on a running cluster, as a replicated migration.
//!
//! The switch travels as an ordinary migration whose SQL is one harmless statement,
//! `SELECT 'harmonylite:merge', '<table>', '<mode>'[, '<counter>' …]`. Every replica runs
//! migrations once, in stream order, so every replica switches at the same point of the
//! stream: changes before it were captured by row, changes after it by column (a row image
//! still in flight from a replica that captured it before the switch is merged as a write
//! of every column). A build older than column merging runs the statement as the no-op it
//! is, and parks the column changes that follow (wire version 5) until it is upgraded.

use crate::capture::names::quote_literal;
use crate::column_merge::TableMerge;

const MARKER: &str = "harmonylite:merge";

/// The migration SQL that switches `table` to `merge` (`None`: by row).
pub fn sql(table: &str, merge: Option<&TableMerge>) -> String {
    let mode = if merge.is_some() { "column" } else { "row" };
    let mut values = vec![
        quote_literal(MARKER),
        quote_literal(table),
        quote_literal(mode),
    ];
    values.extend(
        merge
            .into_iter()
            .flat_map(|m| &m.counters)
            .map(|c| quote_literal(c)),
    );
    format!("SELECT {}", values.join(", "))
}

/// The switch a migration's SQL makes, if it is one: the table and its new merge mode.
pub fn parse(sql: &str) -> Option<(String, Option<TableMerge>)> {
    let literals = string_literals(sql.trim().strip_prefix("SELECT ")?)?;
    let [marker, table, mode, counters @ ..] = literals.as_slice() else {
        return None;
    };
    if marker != MARKER {
        return None;
    }
    let merge = match mode.as_str() {
        "row" if counters.is_empty() => None,
        "column" => Some(TableMerge {
            counters: counters.to_vec(),
        }),
        _ => return None,
    };
    Some((table.clone(), merge))
}

/// The SQL string literals of `'a', 'b''c'`, or `None` when it is anything else.
fn string_literals(text: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        if chars.next()? != '\'' {
            return None;
        }
        let mut literal = String::new();
        loop {
            match chars.next()? {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    literal.push('\'');
                }
                '\'' => break,
                c => literal.push(c),
            }
        }
        out.push(literal);
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some(',') => {
                while chars.peek() == Some(&' ') {
                    chars.next();
                }
            }
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_reads_back_as_written() {
        let merge = TableMerge {
            counters: vec!["qty".into(), "it's".into()],
        };
        let text = sql("odd 'name'", Some(&merge));
        assert_eq!(parse(&text), Some(("odd 'name'".into(), Some(merge))));
        assert_eq!(parse(&sql("notes", None)), Some(("notes".into(), None)));
        assert_eq!(
            parse(&sql("notes", Some(&TableMerge::default()))),
            Some(("notes".into(), Some(TableMerge::default())))
        );
    }

    #[test]
    fn other_sql_is_not_a_switch() {
        for text in [
            "SELECT 1",
            "CREATE TABLE t(a)",
            "SELECT 'harmonylite:merge', 'notes'",
            "SELECT 'harmonylite:merge', 'notes', 'sideways'",
            "SELECT 'harmonylite:merge', 'notes', 'row', 'qty'",
            "SELECT 'harmonylite:merge', 'notes', 'column'; DROP TABLE notes",
            "SELECT 'other', 'notes', 'column'",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
