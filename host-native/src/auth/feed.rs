//! The scoped feed service: full nodes create, on a scoped client's request, the push
//! consumer that delivers what it may read into its own inbox namespace.
//!
//! Scoped clients hold no `$JS.API.>` rights (docs/security.md, "Scoped clients"): JetStream
//! sends a pull's messages to any reply subject the puller names and a push consumer's to any
//! delivery subject its creator names, so a client allowed either could make JetStream
//! publish stored messages where it may not publish. Instead a client subscribes to
//! [`Subjects::feed_deliver_subject`] and sends a [`FeedRequest`] (JSON) to
//! [`Subjects::feed_request`]; every node listens in one queue group, so one answers. It
//! verifies the token as the callout does, and with its own (full) NATS user replaces the
//! consumer [`Subjects::feed_consumer_name`] by one that
//!
//! - delivers to the delivery subject of the *verified* `sub` (never a subject the request
//!   names) the client's read filters (`Subjects::client_subjects(..).read`), from `from` on
//!   (from the stream's first sequence when `from` is 0 or below it);
//! - acks nothing, lives in memory on one replica, sends an idle heartbeat every
//!   [`HEARTBEAT`] (no flow control: the client may not answer), and goes away after
//!   [`INACTIVE`] without a subscriber on its delivery subject;
//! - records the token's expiry in its metadata: every node deletes feeds whose token has
//!   expired ([`SWEEP_EVERY`]), so a feed never outlives the token that asked for it.
//!
//! The answer ([`FeedReply`], JSON) goes only to a reply subject in the requester's inbox
//! namespace: the node's own user may publish anywhere, and a reply aimed at, say, the
//! stream's purge subject would otherwise be a purge request. Each outcome is counted in
//! `harmonylite_scope_feeds_total{outcome}`; each refusal is one log line naming the reason,
//! never the token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use harmonylite_core::scope::{FeedReply, FeedRequest, ScopeRules, Subjects};

use crate::auth::reply::{reply_allowed, unix_now};
use crate::auth::token::{self, Verifier};
use crate::auth::{AuthError, ServiceTask};
use crate::config::Config;
use crate::nats::setup::stream_name;
use crate::ops::metrics::Metrics;

/// The queue group every node's feed service joins, so one node answers each request.
pub const QUEUE_GROUP: &str = "harmonylite-scope-feed";
/// A feed consumer without a subscriber on its delivery subject for this long is removed.
pub const INACTIVE: Duration = Duration::from_secs(120);
/// A feed sends an idle heartbeat when it has delivered nothing for this long.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often each node deletes feeds whose token has expired.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// The consumer metadata key holding the token's expiry (Unix seconds).
pub const EXPIRES_KEY: &str = "harmonylite_feed_expires";
/// Every feed consumer's name starts with this.
const NAME_PREFIX: &str = "hl_feed_";

/// Everything needed to answer feed requests.
pub struct Feed {
    verifier: Verifier,
    rules: ScopeRules,
    subjects: Subjects,
    stream: String,
    metrics: Metrics,
}

/// A request that passed every check: the feed to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The verified `sub`.
    pub user: String,
    /// The consumer's name.
    pub consumer: String,
    /// Where it delivers.
    pub deliver_subject: String,
    /// What it delivers.
    pub filters: Vec<String>,
    /// The partitions the token grants ([`harmonylite_core::scope::Partition::token`]).
    pub partitions: Vec<String>,
    /// The first sequence asked for.
    pub from: u64,
    /// The token's `exp` (Unix seconds).
    pub expires: i64,
}

/// Why a request gets no feed: the reply's reason and the `outcome` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The reason sent back and logged.
    pub reason: String,
    /// The `outcome` label of `scope_feeds_total`.
    pub outcome: &'static str,
}

impl Feed {
    /// The service `config` describes, its keys read; `None` when scopes are off.
    pub fn load(config: &Config) -> Result<Option<Feed>, AuthError> {
        let scopes = &config.scopes;
        if !scopes.enabled() {
            return Ok(None);
        }
        Ok(Some(Feed {
            verifier: Verifier::load(&scopes.auth)?,
            rules: scopes.rules().map_err(AuthError::Rules)?,
            subjects: Subjects::new(config.nats.subject_prefix.clone()),
            stream: stream_name(&config.nats),
            metrics: Metrics::new(&config.prometheus.namespace),
        }))
    }

    /// Checks one request's JSON: its token (signature, `exp`, `nbf`, `aud`, `iss`, claims)
    /// and replica id. The plan's delivery subject and consumer name come from the verified
    /// `sub` only.
    pub fn plan(&self, payload: &[u8]) -> Result<Plan, Refused> {
        let request: FeedRequest = serde_json::from_slice(payload).map_err(|e| Refused {
            reason: format!("the feed request is not valid JSON of a FeedRequest: {e}"),
            outcome: "bad_request",
        })?;
        let refused = |refusal: token::Refusal| Refused {
            reason: refusal.to_string(),
            outcome: refusal.outcome(),
        };
        let token = request.token.trim();
        if token.is_empty() {
            return Err(refused(token::Refusal::NoToken));
        }
        let verified = self.verifier.verify(token).map_err(refused)?;
        let partitions = token::partitions(&self.rules, &verified.claims).map_err(refused)?;
        if !valid_replica(&request.replica) {
            return Err(Refused {
                reason: "the replica id must be 1 to 32 hexadecimal digits".into(),
                outcome: "bad_request",
            });
        }
        Ok(Plan {
            consumer: Subjects::feed_consumer_name(&verified.subject, &request.replica),
            deliver_subject: Subjects::feed_deliver_subject(&verified.subject, &request.replica),
            filters: self.subjects.client_subjects(&partitions).read,
            partitions: partitions.iter().map(|p| p.token()).collect(),
            from: request.from,
            expires: verified.expires,
            user: verified.subject,
        })
    }

    /// Creates (or replaces) the feed `plan` describes on `js` and says how it went.
    async fn start(&self, js: &jetstream::Context, plan: &Plan) -> Result<FeedReply, String> {
        let mut stream = js
            .get_stream(&self.stream)
            .await
            .map_err(|e| format!("reading the change stream's info: {e}"))?;
        let info = stream
            .info()
            .await
            .map_err(|e| format!("reading the change stream's info: {e}"))?;
        let (first_seq, last_seq) = (info.state.first_sequence, info.state.last_sequence);
        let created_ns = u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0);
        let config = consumer_config(plan, first_seq);
        // The start sequence of an existing consumer cannot change: replace it. Another node
        // may be doing the same for a request of the same replica, hence one more try.
        let mut last_error = String::new();
        for _ in 0..2 {
            let _ = stream.delete_consumer(&plan.consumer).await;
            match stream.create_consumer(config.clone()).await {
                Ok(_) => {
                    return Ok(FeedReply::Started {
                        consumer: plan.consumer.clone(),
                        deliver_subject: plan.deliver_subject.clone(),
                        filters: plan.filters.clone(),
                        first_seq,
                        last_seq,
                        created_ns,
                        rules: self.rules.to_doc(),
                        partitions: plan.partitions.clone(),
                    })
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(format!("creating the feed consumer: {last_error}"))
    }

    /// Answers one request whose reply subject is `reply`; the reply to send (`None`: send
    /// nothing) and the outcome label.
    async fn answer(
        &self,
        js: &jetstream::Context,
        payload: &[u8],
        reply: &str,
    ) -> (Option<FeedReply>, &'static str) {
        let plan = match self.plan(payload) {
            Ok(plan) => plan,
            Err(refused) => {
                tracing::warn!(target: "harmonylite::auth", "refused a scoped feed request: {}", refused.reason);
                let answer = reply_allowed(reply, None).then_some(FeedReply::Refused {
                    reason: refused.reason,
                });
                return (answer, refused.outcome);
            }
        };
        if !reply_allowed(reply, Some(&plan.user)) {
            tracing::warn!(target: "harmonylite::auth", user = %plan.user, "refused a scoped feed request: its reply subject is not in the user's inbox namespace ({})", Subjects::client_inbox_prefix(&plan.user));
            return (None, "bad_reply");
        }
        match self.start(js, &plan).await {
            Ok(started) => {
                tracing::debug!(target: "harmonylite::auth", user = %plan.user, consumer = %plan.consumer, from = plan.from, "started a scoped feed");
                (Some(started), "started")
            }
            Err(why) => {
                tracing::warn!(target: "harmonylite::auth", user = %plan.user, "could not start a scoped feed: {why}");
                (
                    Some(FeedReply::Refused {
                        reason: format!("the node could not start the feed, ask again: {why}"),
                    }),
                    "error",
                )
            }
        }
    }

    /// Deletes every feed consumer whose token has expired (`now`: Unix seconds).
    async fn sweep(&self, js: &jetstream::Context, now: i64) -> Result<usize, String> {
        let stream = js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| e.to_string())?;
        let mut expired = Vec::new();
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| e.to_string())?;
            if feed_expired(&info.name, &info.config.metadata, now) {
                expired.push(info.name);
            }
        }
        let mut deleted = 0;
        for name in expired {
            // Another node may have deleted it first.
            if stream.delete_consumer(&name).await.is_ok() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Subscribes to the feed request subject on `client` and answers requests (and deletes
    /// expired feeds) until the returned task is dropped.
    pub async fn serve(self, client: async_nats::Client) -> Result<ServiceTask, AuthError> {
        let mut requests = client
            .queue_subscribe(self.subjects.feed_request(), QUEUE_GROUP.into())
            .await
            .map_err(|e| AuthError::Subscribe(e.to_string()))?;
        tracing::info!(target: "harmonylite::auth", subject = %self.subjects.feed_request(), "answering scoped clients' feed requests");
        let feed = Arc::new(self);
        let js = jetstream::new(client.clone());
        let task = tokio::spawn(async move {
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    message = requests.next() => {
                        let Some(message) = message else { break };
                        let Some(reply) = message.reply.clone() else { continue };
                        let (feed, js, client) = (feed.clone(), js.clone(), client.clone());
                        tokio::spawn(async move {
                            let (answer, outcome) = feed.answer(&js, &message.payload, &reply).await;
                            feed.metrics.scope_feed(outcome);
                            let Some(answer) = answer else { return };
                            let body = serde_json::to_vec(&answer).expect("a FeedReply serializes");
                            if let Err(e) = client.publish(reply, body.into()).await {
                                tracing::warn!(target: "harmonylite::auth", "could not send a feed reply: {e}");
                            }
                        });
                    }
                    _ = sweep.tick() => {
                        match feed.sweep(&js, unix_now()).await {
                            Ok(0) => {}
                            Ok(n) => tracing::debug!(target: "harmonylite::auth", deleted = n, "deleted scoped feeds whose token expired"),
                            Err(e) => tracing::debug!(target: "harmonylite::auth", "could not sweep expired scoped feeds: {e}"),
                        }
                    }
                }
            }
        });
        Ok(ServiceTask(task))
    }
}

/// The push consumer of `plan`, on a stream whose first sequence is `first_seq`.
pub fn consumer_config(plan: &Plan, first_seq: u64) -> consumer::push::Config {
    consumer::push::Config {
        name: Some(plan.consumer.clone()),
        deliver_subject: plan.deliver_subject.clone(),
        filter_subjects: plan.filters.clone(),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
            start_sequence: plan.from.max(first_seq).max(1),
        },
        ack_policy: consumer::AckPolicy::None,
        memory_storage: true,
        num_replicas: 1,
        inactive_threshold: INACTIVE,
        idle_heartbeat: HEARTBEAT,
        flow_control: false,
        metadata: HashMap::from([(EXPIRES_KEY.to_owned(), plan.expires.to_string())]),
        ..Default::default()
    }
}

/// 1 to 32 hexadecimal digits (a node id).
fn valid_replica(replica: &str) -> bool {
    (1..=32).contains(&replica.len()) && replica.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether consumer `name` is a feed whose token expired before `now`.
fn feed_expired(name: &str, metadata: &HashMap<String, String>, now: i64) -> bool {
    name.starts_with(NAME_PREFIX)
        && metadata
            .get(EXPIRES_KEY)
            .and_then(|e| e.parse::<i64>().ok())
            .is_some_and(|expires| expires < now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::scopes::ScopesAuthConfig;
    use harmonylite_core::scope::PartitionRule;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    fn feed(dir: &std::path::Path) -> Feed {
        let secret = dir.join("hs.secret");
        std::fs::write(&secret, "topsecret\n").unwrap();
        let auth = ScopesAuthConfig {
            audience: Some("app".into()),
            hs256_secret_file: Some(secret),
            ..Default::default()
        };
        let rules = ScopeRules::new(
            vec![PartitionRule {
                name: "user".into(),
                claims: vec!["sub".into()],
                tables: [("notes".to_owned(), vec!["owner".to_owned()])].into(),
            }],
            ["tags".to_owned()],
            [],
        )
        .unwrap();
        Feed {
            verifier: Verifier::load(&auth).unwrap(),
            rules,
            subjects: Subjects::new("app"),
            stream: "s-1".into(),
            metrics: Metrics::new("harmonylite"),
        }
    }

    fn token(sub: &str, exp: i64, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": sub, "aud": "app", "exp": exp}),
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn request(token: &str, replica: &str, from: u64) -> Vec<u8> {
        serde_json::to_vec(&FeedRequest {
            token: token.into(),
            replica: replica.into(),
            from,
        })
        .unwrap()
    }

    #[test]
    fn a_verified_request_plans_a_feed_into_the_users_own_inbox() {
        let dir = tempfile::tempdir().unwrap();
        let feed = feed(dir.path());
        let exp = unix_now() + 600;
        let plan = feed
            .plan(&request(&token("u1", exp, b"topsecret"), "1a2b", 7))
            .unwrap();
        assert_eq!(
            plan,
            Plan {
                user: "u1".into(),
                consumer: "hl_feed_tu1_1a2b".into(),
                deliver_subject: "_INBOX_tu1.feed.1a2b".into(),
                filters: vec![
                    "app.schema".into(),
                    "app.shared.>".into(),
                    "app.p.user.tu1.>".into()
                ],
                partitions: vec!["user.tu1".into()],
                from: 7,
                expires: exp,
            }
        );
        let config = consumer_config(&plan, 3);
        assert_eq!(
            config.deliver_policy,
            consumer::DeliverPolicy::ByStartSequence { start_sequence: 7 }
        );
        assert_eq!(config.ack_policy, consumer::AckPolicy::None);
        assert!(config.memory_storage && !config.flow_control);
        assert_eq!(
            (config.num_replicas, config.inactive_threshold),
            (1, INACTIVE)
        );
        assert_eq!(config.idle_heartbeat, HEARTBEAT);
        assert_eq!(config.metadata[EXPIRES_KEY], exp.to_string());
        // Behind the stream's first sequence, or from 0: from the first.
        for (from, first, start) in [(0, 1, 1), (0, 0, 1), (2, 9, 9), (12, 9, 12)] {
            let config = consumer_config(
                &Plan {
                    from,
                    ..plan.clone()
                },
                first,
            );
            assert_eq!(
                config.deliver_policy,
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start
                }
            );
        }
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let feed = feed(dir.path());
        let good = token("u1", unix_now() + 600, b"topsecret");
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (b"not json".to_vec(), "bad_request", "not valid JSON"),
            (
                br#"{"token":"x"}"#.to_vec(),
                "bad_request",
                "not valid JSON",
            ),
            (request("", "1a", 1), "no_token", "no token"),
            (request("a.b", "1a", 1), "malformed", "well-formed"),
            (
                request(&token("u1", unix_now() - 3600, b"topsecret"), "1a", 1),
                "expired",
                "expired",
            ),
            (
                request(&token("u1", unix_now() + 600, b"forged"), "1a", 1),
                "bad_signature",
                "signature",
            ),
            (request(&good, "", 1), "bad_request", "replica"),
            (request(&good, "1a.>", 1), "bad_request", "replica"),
            (request(&good, &"f".repeat(33), 1), "bad_request", "replica"),
        ];
        for (payload, outcome, reason) in cases {
            let refused = feed.plan(&payload).unwrap_err();
            assert_eq!(refused.outcome, outcome, "{refused:?}");
            assert!(refused.reason.contains(reason), "{refused:?}");
            assert!(!refused.reason.contains(&good));
        }
    }

    #[test]
    fn only_feeds_whose_token_expired_are_swept() {
        let meta = |exp: &str| HashMap::from([(EXPIRES_KEY.to_owned(), exp.to_owned())]);
        assert!(feed_expired("hl_feed_tu1_1a", &meta("99"), 100));
        assert!(!feed_expired("hl_feed_tu1_1a", &meta("100"), 100));
        assert!(!feed_expired("hl_feed_tu1_1a", &meta("soon"), 100));
        assert!(!feed_expired("hl_feed_tu1_1a", &HashMap::new(), 100));
        assert!(!feed_expired("node-consumer", &meta("1"), 100));
    }
}
