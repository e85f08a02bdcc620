//! Where a scoped-client service may send its answer: the node answering a feed or bootstrap
//! request publishes with full rights, so the reply subject the requester named must lie in
//! that requester's own inbox namespace (never a feed's delivery subject), or a request could
//! aim the node's publish at e.g. the stream's purge subject.

use harmonylite_core::scope::Subjects;

/// Whether a reply may go to `reply`: a subject under the inbox prefix of `user` (under
/// any scoped inbox prefix when the token was not verified), but never a feed's delivery
/// subject.
pub(crate) fn reply_allowed(reply: &str, user: Option<&str>) -> bool {
    let rest = match user {
        Some(user) => reply
            .strip_prefix(&Subjects::client_inbox_prefix(user))
            .and_then(|rest| rest.strip_prefix('.')),
        None => reply
            .strip_prefix("_INBOX_")
            .and_then(|rest| rest.split_once('.'))
            .filter(|(token, _)| !token.is_empty())
            .map(|(_, rest)| rest),
    };
    rest.is_some_and(|rest| {
        rest.split('.').all(|token| !token.is_empty()) && rest.split('.').next() != Some("feed")
    })
}

/// Unix time in seconds (token expiry is in seconds).
pub(crate) fn unix_now() -> i64 {
    (crate::util::unix_ms() / 1000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The feed and bootstrap services answer only into the requester's own inbox
    /// namespace (cases of both services' former tests).
    #[test]
    fn replies_go_only_to_the_requesters_inbox() {
        assert!(reply_allowed("_INBOX_tu1.abc", Some("u1")));
        assert!(reply_allowed("_INBOX_tu1.abc.def", Some("u1")));
        for reply in [
            "_INBOX_tu2.abc",
            "_INBOX_tu1",
            "_INBOX_tu1.",
            "_INBOX_tu1..x",
            "_INBOX_tu10.abc",
            "_INBOX_tu1.feed.1a",
            "_INBOX.abc",
            "$JS.API.STREAM.PURGE.harmonylite-changes-1",
            "$JS.API.STREAM.PURGE.s-1",
            "app.p.user.tu1.c.tnotes",
        ] {
            assert!(!reply_allowed(reply, Some("u1")), "{reply}");
        }
        assert!(reply_allowed("_INBOX_tu9.abc", None));
        for reply in [
            "_INBOX.abc",
            "_INBOX_.abc",
            "_INBOX_tu9.feed.1",
            "$JS.API.STREAM.PURGE.x",
            "$JS.API.STREAM.PURGE.s-1",
        ] {
            assert!(!reply_allowed(reply, None), "{reply}");
        }
    }
}
