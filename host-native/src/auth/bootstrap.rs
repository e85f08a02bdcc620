//! The scoped bootstrap service: full nodes answer a new scoped replica's request for the
//! current state of its partitions (issue 18 point 5; docs/snapshots.md, "Scoped bootstrap").
//!
//! A scoped client sends a [`BootstrapRequest`] (JSON: its token, the position to continue
//! from, the largest reply it accepts) to [`Subjects::bootstrap_request`] with a reply
//! subject in its own inbox namespace; every full node listens in one queue group, so one
//! answers each page. The node verifies the token as the auth callout does, maps its claims
//! to partitions ([`ScopeRules::partitions_for`] through [`token::partitions`]), reads one
//! page of those partitions and the shared tables from its database
//! ([`export_partitions`], one read transaction on a connection of its own, beside the
//! replication loop) and replies with a [`BootstrapReply`] (postcard), at most the server's
//! `max_payload`. The client asks again with the page's `next` until a page has none, then
//! consumes its feed from the smallest covered sequence of the pages.
//!
//! - A request with `keys` is a **refetch** (a scoped replica's refused writes, see
//!   `harmonylite_core::sqlite::scope_refetch`): the reply is one page with just those rows'
//!   current versions, those the token's partitions and the shared tables may see.
//! - A refused request (bad or expired token, malformed request, unreadable database) gets
//!   `Refused` naming the reason and one log line, never the token.
//! - Replies go only to a subject under the verified user's inbox prefix: the node's own
//!   user may publish anywhere, and a reply aimed at, say, the stream's purge subject would
//!   otherwise be a purge request.
//! - Only full replicas answer: a node with `replicate = false` does not apply the stream,
//!   so its copy is not the cluster's.
//! - A node that is behind (lag, or not consuming right now) still answers: its covered
//!   sequence is its cursor, and the client consumes from there. A node whose cursor is
//!   older than the stream's first retained message refuses (the client could not consume
//!   from there); the client asks again and another node answers.

use std::path::PathBuf;
use std::sync::Arc;

use async_nats::jetstream;
use futures::StreamExt;
use harmonylite_core::scope::{ScopeRules, Subjects};
use harmonylite_core::sqlite::scope_bootstrap::{
    export_partitions, BootstrapReply, BootstrapRequest, ExportPosition, PartitionExport,
    RefetchKey,
};
use harmonylite_core::sqlite::scope_refetch::{export_keys, MAX_REFETCH_KEYS};
use harmonylite_core::value::Value;
use tokio::sync::Semaphore;

use crate::auth::reply::reply_allowed;
use crate::auth::token::{self, Verifier};
use crate::auth::{AuthError, ServiceTask};
use crate::config::Config;
use crate::nats::setup::stream_name;

/// The queue group every node's bootstrap service joins, so one node answers each request.
pub const QUEUE_GROUP: &str = "harmonylite-scope-bootstrap";
/// Pages read at the same time at most (each holds a read transaction and a connection).
pub const CONCURRENT_PAGES: usize = 4;
/// The smallest reply size a client may ask for.
pub const MIN_PAGE_BYTES: usize = 16 * 1024;

/// Everything needed to answer bootstrap requests.
pub struct Bootstrap {
    verifier: Verifier,
    rules: ScopeRules,
    subjects: Subjects,
    db_path: PathBuf,
    stream: String,
}

/// How one request was answered: the reply (None: send nothing) and a log summary.
#[derive(Debug)]
pub struct Answer {
    /// The postcard reply.
    pub reply: Option<Vec<u8>>,
    /// The user, when the token verified.
    pub user: Option<String>,
    /// Why it was refused.
    pub refused: Option<String>,
}

/// A refetch request's keys, decoded; refused when there are too many or one is malformed.
fn refetch_keys(keys: &[RefetchKey]) -> Result<Vec<(String, Vec<Value>)>, String> {
    if keys.len() > MAX_REFETCH_KEYS {
        return Err(format!(
            "a refetch names {} keys; at most {MAX_REFETCH_KEYS} per request",
            keys.len()
        ));
    }
    keys.iter()
        .map(|k| {
            k.key_values()
                .map(|key| (k.table.clone(), key))
                .ok_or_else(|| format!("a refetch key of table {:?} is malformed", k.table))
        })
        .collect()
}

impl Bootstrap {
    /// The service `config` describes; `None` when scopes are off or this node does not
    /// apply the stream (`replicate = false`).
    pub fn load(config: &Config) -> Result<Option<Bootstrap>, AuthError> {
        let scopes = &config.scopes;
        if !scopes.enabled() || !config.replicate {
            return Ok(None);
        }
        Ok(Some(Bootstrap {
            verifier: Verifier::load(&scopes.auth)?,
            rules: scopes.rules().map_err(AuthError::Rules)?,
            subjects: Subjects::new(config.nats.subject_prefix.clone()),
            db_path: config.db_path.clone(),
            stream: stream_name(&config.nats),
        }))
    }

    /// Answers one request whose reply subject is `reply`; `max_payload` is the server's.
    pub async fn answer(
        &self,
        js: &jetstream::Context,
        body: &[u8],
        reply: &str,
        max_payload: usize,
    ) -> Answer {
        let refuse = |user: Option<String>, reason: String| Answer {
            reply: reply_allowed(reply, user.as_deref()).then(|| {
                BootstrapReply::Refused {
                    reason: reason.clone(),
                }
                .encode()
            }),
            user,
            refused: Some(reason),
        };
        let request: BootstrapRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => {
                return refuse(
                    None,
                    format!("the request is not a bootstrap request (JSON with a token): {e}"),
                )
            }
        };
        let verified = match self.verifier.verify(&request.token) {
            Ok(verified) => verified,
            Err(refusal) => return refuse(None, refusal.to_string()),
        };
        let user = verified.subject.clone();
        if !reply_allowed(reply, Some(&user)) {
            return Answer {
                reply: None,
                refused: Some(format!(
                    "its reply subject is not in the user's inbox namespace ({})",
                    Subjects::client_inbox_prefix(&user)
                )),
                user: Some(user),
            };
        }
        let partitions = match token::partitions(&self.rules, &verified.claims) {
            Ok(partitions) => partitions,
            Err(refusal) => return refuse(Some(user), refusal.to_string()),
        };
        let after = match request.after.as_deref().map(ExportPosition::from_token) {
            None => None,
            Some(Some(position)) => Some(position),
            Some(None) => {
                return refuse(
                    Some(user),
                    "the request's `after` is not a position a page gave".into(),
                )
            }
        };
        let max_bytes = request
            .max_bytes
            .map_or(max_payload, |m| m as usize)
            .min(max_payload)
            .max(MIN_PAGE_BYTES);
        let keys = match request.keys.as_deref().map(refetch_keys) {
            None => None,
            Some(Ok(keys)) => Some(keys),
            Some(Err(reason)) => return refuse(Some(user), reason),
        };
        let path = self.db_path.clone();
        let rules = self.rules.clone();
        let read = tokio::task::spawn_blocking(move || {
            let text = path.to_str().ok_or("the database path is not UTF-8")?;
            let conn = harmonylite_core::sqlite::snapshot::open_read_only(text)
                .map_err(|e| format!("opening the database: {e}"))?;
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            match keys {
                Some(keys) => export_keys(&conn, &rules, &partitions, &keys),
                None => export_partitions(&conn, &rules, &partitions, after.as_ref(), max_bytes),
            }
            .map_err(|e| e.to_string())
        })
        .await;
        let page: PartitionExport = match read {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                return refuse(
                    Some(user),
                    format!("this node cannot read its database now ({e}); ask again"),
                )
            }
            Err(e) => return refuse(Some(user), format!("the export failed: {e}")),
        };
        match js.get_stream(&self.stream).await {
            Ok(stream) => {
                let first = stream.cached_info().state.first_sequence;
                if page.covered + 1 < first {
                    return refuse(
                        Some(user),
                        format!(
                            "this node's copy covers sequence {} but the stream starts at {first} \
                             (the node is catching up); ask again",
                            page.covered
                        ),
                    );
                }
            }
            Err(e) => {
                return refuse(
                    Some(user),
                    format!("this node cannot read the stream's state ({e}); ask again"),
                )
            }
        }
        let rows: usize = page.tables.iter().map(|t| t.rows.len()).sum();
        let encoded = BootstrapReply::Page(page).encode();
        if encoded.len() > max_payload {
            return refuse(
                Some(user),
                format!(
                    "a row of the partition does not fit in one message ({} bytes, the \
                     server's max_payload is {max_payload})",
                    encoded.len()
                ),
            );
        }
        tracing::debug!(target: "harmonylite::auth", user = %user, rows, bytes = encoded.len(), "answered a scoped bootstrap request");
        Answer {
            reply: Some(encoded),
            user: Some(user),
            refused: None,
        }
    }

    /// Subscribes to the bootstrap subject on `client` (in the queue group) and answers
    /// requests until the returned task is dropped.
    pub async fn serve(self, client: async_nats::Client) -> Result<ServiceTask, AuthError> {
        let subject = self.subjects.bootstrap_request();
        let mut requests = client
            .queue_subscribe(subject.clone(), QUEUE_GROUP.into())
            .await
            .map_err(|e| AuthError::Subscribe(e.to_string()))?;
        tracing::info!(target: "harmonylite::auth", subject = %subject, "answering scoped bootstrap requests");
        let service = Arc::new(self);
        let js = jetstream::new(client.clone());
        let slots = Arc::new(Semaphore::new(CONCURRENT_PAGES));
        let task = tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let Some(reply) = message.reply.clone() else {
                    continue;
                };
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (service, client, js) = (service.clone(), client.clone(), js.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let max_payload = client.server_info().max_payload.max(MIN_PAGE_BYTES);
                    let answer = service
                        .answer(&js, &message.payload, &reply, max_payload)
                        .await;
                    if let Some(reason) = &answer.refused {
                        tracing::warn!(target: "harmonylite::auth", user = answer.user.as_deref().unwrap_or("?"), "refused a scoped bootstrap request: {reason}");
                    }
                    if let Some(body) = answer.reply {
                        if let Err(e) = client.publish(reply, body.into()).await {
                            tracing::warn!(target: "harmonylite::auth", "could not send a bootstrap reply: {e}");
                        }
                    }
                });
            }
        });
        Ok(ServiceTask(task))
    }
}

/// Starts answering bootstrap requests on `client` when scopes are on and this node is a
/// full replica (`None` otherwise). Keep the task for as long as the node runs.
pub async fn start(
    config: &Config,
    client: &async_nats::Client,
) -> Result<Option<ServiceTask>, AuthError> {
    match Bootstrap::load(config)? {
        Some(service) => Ok(Some(service.serve(client.clone()).await?)),
        None => Ok(None),
    }
}
