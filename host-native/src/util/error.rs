//! The util layer's errors, and how the library's errors print.
//!
//! Every layer's error type prints like an `anyhow` error: `{}` names what failed, `{:#}`
//! follows it with its causes (`: cause: cause's cause`). A variant that wraps another error
//! keeps it as its `source()`, never copies its text into its own message, so callers can
//! `match` on the variant and still reach the cause. [`write_error`] is that `Display`,
//! shared by every layer's error type; [`report`] prints any error with its causes (the
//! binary's last word on an `anyhow` error).
//!
//! Some errors of other crates (async-nats, rusqlite, harmonylite-core) repeat their cause's
//! text in their own message and also return it as `source()`. A cause whose text is already
//! in the message is therefore not printed again.

use std::error::Error;
use std::fmt;
use std::path::PathBuf;

/// A boxed error of another crate, where a variant's cause can be one of several types.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Why a helper of the util layer failed.
#[derive(Debug, thiserror::Error)]
pub enum UtilError {
    /// The operating system gave no random bytes.
    NoRandomness {
        /// What they were for ("a node id", "an incarnation").
        purpose: &'static str,
        /// The cause.
        #[source]
        source: getrandom::Error,
    },
    /// Fsyncing a directory failed (a rename or removal in it may not be durable).
    SyncDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A failure point armed by `HARMONYLITE_FAIL_AT` failed this step (tests only; see
    /// [`crate::util::failpoint`]).
    Injected {
        /// The failure point.
        name: String,
        /// Failures injected at it so far, this one included.
        done: u32,
        /// Failures it was armed with.
        count: u32,
    },
}

impl fmt::Display for UtilError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = match self {
            UtilError::NoRandomness { purpose, .. } => format!("no randomness for {purpose}"),
            UtilError::SyncDir { dir, .. } => format!("syncing directory {}", dir.display()),
            UtilError::Injected { name, done, count } => format!(
                "injected failure {done}/{count} at {name} ({}): JetStream error 503, no responders available",
                crate::util::failpoint::FAIL_ENV
            ),
        };
        write_error(f, &head, self)
    }
}

/// The `Display` of this crate's error types: `head` (what failed), and with `{:#}` the
/// causes of `error` after it, each once (see the module docs).
pub fn write_error(
    f: &mut fmt::Formatter<'_>,
    head: &str,
    error: &(dyn Error + 'static),
) -> fmt::Result {
    if !f.alternate() {
        return f.write_str(head);
    }
    let mut text = head.to_owned();
    append_causes(&mut text, error.source());
    f.write_str(&text)
}

/// `error`'s message followed by its causes, each once: what `{:#}` prints for this crate's
/// errors, for any error (an `anyhow::Error` derefs to one).
pub fn report(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    append_causes(&mut text, error.source());
    text
}

fn append_causes(text: &mut String, mut cause: Option<&(dyn Error + 'static)>) {
    while let Some(error) = cause {
        let message = error.to_string();
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = error.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn alternate_adds_the_causes_once() {
        let error = UtilError::SyncDir {
            dir: "/d".into(),
            source: std::io::Error::other("disk gone"),
        };
        assert_eq!(error.to_string(), "syncing directory /d");
        assert_eq!(format!("{error:#}"), "syncing directory /d: disk gone");
        assert_eq!(report(&error), "syncing directory /d: disk gone");
        // A cause whose text the message already holds is not repeated.
        let repeats = Repeats(std::io::Error::other("disk gone"));
        assert_eq!(report(&repeats), "outer disk gone");
        let anyhow = anyhow::Error::new(error).context("restoring");
        assert_eq!(
            report(&*anyhow),
            "restoring: syncing directory /d: disk gone"
        );
    }
}
