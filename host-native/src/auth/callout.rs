//! The auth callout service: answers the NATS server's authorization requests for scoped
//! clients.
//!
//! A scoped client connects with the app's JWT as its NATS token. The server, configured with
//! `auth_callout` (issuer: the account key of `scopes.auth.callout_seed_file`), sends an
//! authorization request to `$SYS.REQ.USER.AUTH`; every node subscribes in one queue group,
//! so one answers. The answer is an authorization response signed by the account key that
//! carries either a NATS user JWT with exactly the client's permissions
//! ([`Callout::permissions`]) and the token's expiry, or the reason the token was refused
//! (the server refuses the connection: clients see an authorization violation). Each
//! refusal is one log line naming the reason, never the token; each outcome is counted in
//! `harmonylite_auth_callouts_total{outcome}`.

use futures::StreamExt;
use harmonylite_core::scope::{Partition, ScopeRules, Subjects};

use crate::auth::nats_jwt::{self, UserPermissions};
use crate::auth::reply::unix_now;
use crate::auth::token::{self, Refusal, Verifier};
use crate::auth::{AuthError, ServiceTask};
use crate::config::Config;
use crate::ops::metrics::Metrics;

/// The subject NATS servers send authorization requests to.
pub const CALLOUT_SUBJECT: &str = "$SYS.REQ.USER.AUTH";
/// The queue group every node's callout service joins, so one node answers each request.
pub const QUEUE_GROUP: &str = "harmonylite-auth-callout";

/// Everything needed to answer authorization requests.
pub struct Callout {
    verifier: Verifier,
    rules: ScopeRules,
    subjects: Subjects,
    account: nkeys::KeyPair,
    metrics: Metrics,
}

/// What the service did with one request.
#[derive(Debug)]
pub enum Answer {
    /// A response to send back (a user JWT or a refusal), and the outcome label.
    Reply {
        /// The authorization response JWT.
        response: String,
        /// The `outcome` label.
        outcome: &'static str,
    },
    /// A request that cannot be answered (not a server's signed request).
    Ignore,
}

impl Callout {
    /// The service `config` describes, its keys read; `None` when scopes are off.
    pub fn load(config: &Config) -> Result<Option<Callout>, AuthError> {
        let scopes = &config.scopes;
        if !scopes.enabled() {
            return Ok(None);
        }
        let rules = scopes.rules().map_err(AuthError::Rules)?;
        Ok(Some(Callout {
            verifier: Verifier::load(&scopes.auth)?,
            rules,
            subjects: Subjects::new(config.nats.subject_prefix.clone()),
            account: scopes.auth.callout_account()?,
            metrics: Metrics::new(&config.prometheus.namespace),
        }))
    }

    /// The public key of the account that signs the answers (the server's
    /// `auth_callout.issuer`).
    pub fn issuer(&self) -> String {
        self.account.public_key()
    }

    /// Exactly what a scoped client of user `subject` holding `partitions` may do:
    ///
    /// - subscribe only under its inbox prefix ([`Subjects::client_inbox_prefix`]), where
    ///   its request replies, JetStream publish acks and its feed's deliveries arrive;
    /// - publish changes on its partitions' subjects;
    /// - send feed requests (a full node creates its feed: [`crate::auth::feed`]) and scoped
    ///   bootstrap requests.
    ///
    /// No `$JS.API.>` subject at all: JetStream delivers a pull's messages to whatever reply
    /// subject the request names and a push consumer's to whatever delivery subject its
    /// creator names, whoever asks, so a client allowed to pull or create consumers could
    /// make JetStream publish stored messages on subjects it may not publish to.
    pub fn permissions(&self, subject: &str, partitions: &[Partition]) -> UserPermissions {
        let mut publish = self.subjects.client_subjects(partitions).publish;
        publish.push(self.subjects.feed_request());
        publish.push(self.subjects.bootstrap_request());
        UserPermissions {
            publish,
            subscribe: vec![format!("{}.>", Subjects::client_inbox_prefix(subject))],
        }
    }

    /// Answers one authorization request (`now`: Unix seconds).
    pub fn answer(&self, request: &[u8], now: i64) -> Answer {
        let request = match std::str::from_utf8(request)
            .map_err(|_| nats_jwt::RequestError::Malformed("not text".into()))
            .and_then(nats_jwt::decode_request)
        {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(target: "harmonylite::auth", "ignored an authorization request: {e} (a server with `auth_callout.xkey` set sends encrypted requests, which this service does not read)");
                self.metrics.auth_callout("bad_request");
                return Answer::Ignore;
            }
        };
        let decision = self
            .decide(&request.token)
            .and_then(|(verified, partitions)| {
                let permissions = self.permissions(&verified.subject, &partitions);
                let expires = verified.expires.max(now + 1);
                nats_jwt::user_jwt(
                    &self.account,
                    &request.user_nkey,
                    &verified.subject,
                    &permissions,
                    expires,
                    now,
                )
                .map(|user| (verified, partitions, user))
                .map_err(|e| Decision::Failed(e.to_string()))
            });
        let (response, outcome) = match decision {
            Ok((verified, partitions, user)) => {
                tracing::debug!(target: "harmonylite::auth", user = %verified.subject, partitions = partitions.len(), client = %request.client_name, host = %request.client_host, "accepted a scoped client");
                (
                    nats_jwt::response_jwt(&self.account, &request, Ok(&user), now),
                    "accepted",
                )
            }
            Err(Decision::Refused(refusal)) => {
                tracing::warn!(target: "harmonylite::auth", client = %request.client_name, host = %request.client_host, "refused a scoped client: {refusal}");
                (
                    nats_jwt::response_jwt(&self.account, &request, Err(&refusal.to_string()), now),
                    refusal.outcome(),
                )
            }
            Err(Decision::Failed(why)) => {
                tracing::error!(target: "harmonylite::auth", "could not sign a NATS user: {why}");
                (
                    nats_jwt::response_jwt(
                        &self.account,
                        &request,
                        Err("the auth service could not sign a user"),
                        now,
                    ),
                    "error",
                )
            }
        };
        match response {
            Ok(response) => Answer::Reply { response, outcome },
            Err(e) => {
                tracing::error!(target: "harmonylite::auth", "could not sign an authorization response: {e}");
                self.metrics.auth_callout("error");
                Answer::Ignore
            }
        }
    }

    fn decide(&self, token: &str) -> Result<(token::Verified, Vec<Partition>), Decision> {
        let verified = self.verifier.verify(token).map_err(Decision::Refused)?;
        let partitions =
            token::partitions(&self.rules, &verified.claims).map_err(Decision::Refused)?;
        Ok((verified, partitions))
    }

    /// Subscribes to the callout subject on `client` and answers requests until the
    /// returned task is dropped.
    pub async fn serve(self, client: async_nats::Client) -> Result<ServiceTask, AuthError> {
        let mut requests = client
            .queue_subscribe(CALLOUT_SUBJECT, QUEUE_GROUP.into())
            .await
            .map_err(|e| AuthError::Subscribe(e.to_string()))?;
        tracing::info!(target: "harmonylite::auth", issuer = %self.issuer(), rules = self.rules.rules().len(), "answering NATS auth callout requests for scoped clients");
        let task = tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let Some(reply) = message.reply.clone() else {
                    continue;
                };
                match self.answer(&message.payload, unix_now()) {
                    Answer::Reply { response, outcome } => {
                        self.metrics.auth_callout(outcome);
                        if let Err(e) = client.publish(reply, response.into()).await {
                            tracing::warn!(target: "harmonylite::auth", "could not send an authorization response: {e}");
                        }
                    }
                    Answer::Ignore => {}
                }
            }
        });
        Ok(ServiceTask(task))
    }
}

enum Decision {
    Refused(Refusal),
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::scopes::ScopesAuthConfig;
    use harmonylite_core::scope::PartitionRule;
    use harmonylite_core::value::Value;

    #[test]
    fn a_scoped_user_gets_its_inbox_its_partitions_and_the_two_requests_only() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hs.secret");
        std::fs::write(&secret, "topsecret\n").unwrap();
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
        let callout = Callout {
            verifier: Verifier::load(&ScopesAuthConfig {
                audience: Some("app".into()),
                hs256_secret_file: Some(secret),
                ..Default::default()
            })
            .unwrap(),
            rules,
            subjects: Subjects::new("app"),
            account: nkeys::KeyPair::new_account(),
            metrics: Metrics::new("harmonylite"),
        };
        let partition = |id: &str| Partition {
            rule: "user".into(),
            values: vec![Value::Text(id.into())],
        };
        let permissions = callout.permissions("u1", &[partition("u1"), partition("t9")]);
        assert_eq!(
            permissions.publish,
            [
                "app.p.user.tu1.c.*",
                "app.p.user.tt9.c.*",
                "app.scope.feed",
                "app.scope.bootstrap"
            ]
        );
        assert_eq!(permissions.subscribe, ["_INBOX_tu1.>"]);
    }
}
