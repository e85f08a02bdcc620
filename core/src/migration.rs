//! Replicated schema migrations: the pure rules deciding which SQL a migration may contain.
//!
//! A migration is SQL that every replica runs exactly once, in stream order (the store side
//! is `sqlite::Store::publish_migration` and the apply path of `sqlite::Store::receive`).
//! Before it is published, [`check`] reads its statements with a small SQL tokenizer
//! (comments, string literals and quoted identifiers are understood, trigger bodies are one
//! statement) and refuses:
//!
//! - an empty migration;
//! - transaction control and connection-level statements (`BEGIN`, `COMMIT`, `END`,
//!   `ROLLBACK`, `SAVEPOINT`, `RELEASE`, `ATTACH`, `DETACH`, `VACUUM`): a migration runs
//!   inside the replica's own apply transaction;
//! - statements naming harmonylite's internal objects (`__hl_…`);
//! - destructive DDL (`DROP TABLE`, `ALTER TABLE … DROP [COLUMN]`) unless the publisher
//!   passed the explicit flag: dropped data cannot come back, and replicas still sending
//!   changes for it have them parked.

use std::fmt;

/// Why a migration was refused before publishing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    /// No statement at all.
    #[error("the migration contains no SQL statement")]
    Empty,
    /// A statement that would end or nest the apply transaction, or leave the database.
    #[error("statement {index} ({statement:?}) is not allowed in a migration: {keyword} runs outside the replica's apply transaction")]
    NotAllowed {
        /// 1-based statement number.
        index: usize,
        /// The statement's first words.
        statement: String,
        /// The refused keyword.
        keyword: String,
    },
    /// A statement names an internal object.
    #[error("statement {index} ({statement:?}) names a harmonylite internal object (__hl_…); migrations may only change application tables")]
    Internal {
        /// 1-based statement number.
        index: usize,
        /// The statement's first words.
        statement: String,
    },
    /// Destructive DDL without the explicit flag.
    #[error("statement {index} ({statement:?}) is destructive ({what}); pass --allow-destructive (npm: {{ allowDestructive: true }}) if every replica may lose that data")]
    Destructive {
        /// 1-based statement number.
        index: usize,
        /// The statement's first words.
        statement: String,
        /// `DROP TABLE` or `DROP COLUMN`.
        what: &'static str,
    },
    /// The SQL failed when tried on the local database (rolled back, nothing published).
    #[error("the migration fails on this database: {0}")]
    Invalid(String),
}

/// What [`check`] found in an accepted migration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationSummary {
    /// Number of statements.
    pub statements: usize,
    /// Whether any statement is destructive (only possible with the flag).
    pub destructive: bool,
}

/// Checks a migration's SQL against the rules in the module documentation.
pub fn check(sql: &str, allow_destructive: bool) -> Result<MigrationSummary, MigrationError> {
    let statements = statements(&tokens(sql));
    if statements.is_empty() {
        return Err(MigrationError::Empty);
    }
    let mut summary = MigrationSummary {
        statements: statements.len(),
        destructive: false,
    };
    for (i, statement) in statements.iter().enumerate() {
        let index = i + 1;
        let head = || head(statement);
        let first = statement[0].keyword();
        if let Some(k) = [
            "BEGIN",
            "COMMIT",
            "END",
            "ROLLBACK",
            "SAVEPOINT",
            "RELEASE",
            "ATTACH",
            "DETACH",
            "VACUUM",
        ]
        .iter()
        .find(|k| first.as_deref() == Some(**k))
        {
            return Err(MigrationError::NotAllowed {
                index,
                statement: head(),
                keyword: (*k).to_string(),
            });
        }
        if statement.iter().any(|t| {
            t.text()
                .get(..5)
                .is_some_and(|p| p.eq_ignore_ascii_case(crate::capture::names::PREFIX))
        }) {
            return Err(MigrationError::Internal {
                index,
                statement: head(),
            });
        }
        if let Some(what) = destructive(statement) {
            summary.destructive = true;
            if !allow_destructive {
                return Err(MigrationError::Destructive {
                    index,
                    statement: head(),
                    what,
                });
            }
        }
    }
    Ok(summary)
}

/// Whether a statement drops a table or a column.
fn destructive(statement: &[Token]) -> Option<&'static str> {
    let kw: Vec<Option<String>> = statement.iter().take(8).map(Token::keyword).collect();
    let is = |i: usize, k: &str| kw.get(i).and_then(|w| w.as_deref()) == Some(k);
    if is(0, "DROP") && is(1, "TABLE") {
        return Some("DROP TABLE");
    }
    if is(0, "ALTER") && is(1, "TABLE") {
        // ALTER TABLE [schema .] name DROP [COLUMN] column
        let action = if statement.get(3).is_some_and(|t| t.text() == ".") {
            5
        } else {
            3
        };
        if is(action, "DROP") {
            return Some("DROP COLUMN");
        }
    }
    None
}

/// The first few tokens of a statement, for messages.
fn head(statement: &[Token]) -> String {
    let words: Vec<&str> = statement.iter().take(6).map(Token::text).collect();
    let mut out = words.join(" ");
    if statement.len() > 6 {
        out.push_str(" …");
    }
    out
}

/// One token: a word, a quoted identifier or literal (kept quoted), or a punctuation mark.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Punct(String),
}

impl Token {
    fn text(&self) -> &str {
        match self {
            Token::Word(s) | Token::Quoted(s) | Token::Punct(s) => s,
        }
    }

    /// The upper-cased word, for keywords (quoted names are never keywords).
    fn keyword(&self) -> Option<String> {
        match self {
            Token::Word(w) => Some(w.to_ascii_uppercase()),
            _ => None,
        }
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// Splits SQL into tokens, dropping comments and whitespace. Quoted identifiers keep their
/// inner text (so `"__hl_log"` is still recognised as internal); string literals keep their
/// quotes.
fn tokens(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if matches!(c, '\'' | '"' | '`' | '[') {
            let close = if c == '[' { ']' } else { c };
            let mut text = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == close {
                    if close != ']' && chars.get(i + 1) == Some(&close) {
                        text.push(close);
                        i += 2;
                        continue;
                    }
                    break;
                }
                text.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(if c == '\'' {
                Token::Quoted(format!("'{text}'"))
            } else {
                Token::Quoted(text)
            });
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            out.push(Token::Punct(c.to_string()));
            i += 1;
        }
    }
    out
}

/// Groups tokens into statements at `;`, keeping a `CREATE TRIGGER … BEGIN … END` body
/// (which contains semicolons) in one statement.
fn statements(tokens: &[Token]) -> Vec<Vec<Token>> {
    let mut out = Vec::new();
    let mut current: Vec<Token> = Vec::new();
    let mut in_trigger_body = false;
    for token in tokens {
        if token.text() == ";" && token.keyword().is_none() && !in_trigger_body {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        current.push(token.clone());
        let kw = token.keyword();
        if kw.as_deref() == Some("BEGIN") && is_create_trigger(&current) {
            in_trigger_body = true;
        } else if kw.as_deref() == Some("END") && in_trigger_body {
            in_trigger_body = false;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn is_create_trigger(statement: &[Token]) -> bool {
    let kws: Vec<Option<String>> = statement.iter().take(3).map(Token::keyword).collect();
    kws.first().and_then(|k| k.as_deref()) == Some("CREATE")
        && kws[1..].iter().any(|k| k.as_deref() == Some("TRIGGER"))
        && statement.len() > 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn additive_ddl_is_accepted() {
        let s = check(
            "-- add a column\nALTER TABLE t ADD COLUMN c TEXT DEFAULT 'x;y';\n\
             CREATE TABLE \"new table\"(id INTEGER PRIMARY KEY, v);\n\
             CREATE INDEX i ON t(c); /* drop table t; */\n\
             CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET c = 'a'; END;",
            false,
        )
        .unwrap();
        assert_eq!(s.statements, 4);
        assert!(!s.destructive);
    }

    #[test]
    fn destructive_ddl_needs_the_flag() {
        for (sql, what) in [
            ("DROP TABLE t", "DROP TABLE"),
            ("drop   table if exists \"t\";", "DROP TABLE"),
            ("ALTER TABLE t DROP COLUMN c", "DROP COLUMN"),
            ("alter table main.t drop c", "DROP COLUMN"),
        ] {
            match check(sql, false) {
                Err(MigrationError::Destructive { what: w, .. }) => assert_eq!(w, what, "{sql}"),
                other => panic!("{sql}: {other:?}"),
            }
            assert!(check(sql, true).unwrap().destructive, "{sql}");
        }
        // A column named drop is not a drop.
        assert!(
            !check("ALTER TABLE t ADD COLUMN \"drop\" TEXT", false)
                .unwrap()
                .destructive
        );
        assert!(!check("DROP INDEX i", false).unwrap().destructive);
    }

    #[test]
    fn transaction_control_and_internal_objects_are_refused() {
        assert!(matches!(
            check("BEGIN; ALTER TABLE t ADD c; COMMIT;", true),
            Err(MigrationError::NotAllowed { index: 1, .. })
        ));
        assert!(matches!(
            check("ALTER TABLE t ADD c; VACUUM", true),
            Err(MigrationError::NotAllowed { index: 2, .. })
        ));
        assert!(matches!(
            check("DELETE FROM \"__hl_log\"", true),
            Err(MigrationError::Internal { index: 1, .. })
        ));
        assert_eq!(
            check(" -- nothing\n ;; ", false),
            Err(MigrationError::Empty)
        );
    }
}
