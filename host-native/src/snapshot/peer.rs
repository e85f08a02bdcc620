//! Asking a healthy peer for a snapshot when no stored one covers the stream.
//!
//! A node that must restore or catch up needs a snapshot whose covered sequence reaches the
//! stream's first retained message. When the store holds none (the stream moved past the
//! newest one, or none was ever taken), the node sends a request on
//! `<subject_prefix>.snapshots.request`. Full replicas that take snapshots (`[snapshot]
//! enable`, `publish` and `replicate` on) listen in one queue group, so exactly one answers:
//! when it consumes the stream and is caught up it starts a snapshot job under the usual
//! lease (one snapshotter at a time) and says so; otherwise it declines and the asker tries
//! again. The asker then watches the store until a covering snapshot appears.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::snapshot::store::{SnapshotInfo, SnapshotStore};
use crate::snapshot::PeerError;

/// Queue group of the nodes that answer snapshot requests.
pub const QUEUE_GROUP: &str = "harmonylite-snapshotters";
/// How long an asker watches the store after a peer accepted its request.
const WATCH_FOR: Duration = Duration::from_secs(180);
/// How often it looks.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long a request waits for an answer.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// The subject snapshot requests are sent on.
pub fn request_subject(subject_prefix: &str) -> String {
    format!("{subject_prefix}.snapshots.request")
}

/// A request: the asker needs a snapshot covering at least up to `first_needed - 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// The asking node.
    pub node: String,
    /// The stream's first retained sequence as the asker saw it.
    pub first_needed: u64,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotAnswer {
    /// The answering node.
    pub node: String,
    /// Whether it is taking (or already takes) a snapshot.
    pub accepted: bool,
    /// Why not, when it declined.
    pub reason: Option<String>,
}

/// Where to ask.
#[derive(Clone)]
pub struct PeerAsk {
    /// The NATS client.
    pub client: async_nats::Client,
    /// [`request_subject`].
    pub subject: String,
    /// This node, for the peers' logs.
    pub node: String,
}

impl PeerAsk {
    /// Sends one request and returns the answer.
    pub async fn request(&self, first_needed: u64) -> Result<SnapshotAnswer, PeerError> {
        let payload = serde_json::to_vec(&SnapshotRequest {
            node: self.node.clone(),
            first_needed,
        })
        .map_err(PeerError::Encode)?;
        let reply = tokio::time::timeout(
            ANSWER_WAIT,
            self.client.request(self.subject.clone(), payload.into()),
        )
        .await
        .map_err(|_| PeerError::NoAnswer {
            waited: ANSWER_WAIT,
        })?
        .map_err(|e| match e.kind() {
            async_nats::client::RequestErrorKind::NoResponders => PeerError::NoResponders,
            _ => PeerError::Ask(e),
        })?;
        serde_json::from_slice(&reply.payload).map_err(PeerError::MalformedAnswer)
    }
}

/// Snapshots in `store` that reach `first_needed` (covered + 1 ≥ it), newest first. When
/// none does, asks a peer for one and watches the store until it appears; an error says
/// why none could be had (the caller retries later).
pub async fn usable_snapshots(
    store: &SnapshotStore,
    first_needed: u64,
    ask: &PeerAsk,
) -> Result<Vec<SnapshotInfo>, PeerError> {
    let usable = |all: Vec<SnapshotInfo>| -> Vec<SnapshotInfo> {
        all.into_iter()
            .rev()
            .filter(|s| s.covered_seq.get() + 1 >= first_needed)
            .collect()
    };
    let found = usable(store.list().await?);
    if !found.is_empty() {
        return Ok(found);
    }
    tracing::warn!(
        stream_first = first_needed,
        "no snapshot in the {} covers the stream's first retained message {first_needed}; asking the cluster for one",
        store.describe()
    );
    let answer = ask.request(first_needed).await?;
    if !answer.accepted {
        return Err(PeerError::Declined {
            node: answer.node,
            reason: answer.reason,
        });
    }
    tracing::info!(peer = %answer.node, "a healthy node is taking a snapshot for this one");
    let deadline = Instant::now() + WATCH_FOR;
    while Instant::now() < deadline {
        tokio::time::sleep(WATCH_EVERY).await;
        let found = usable(store.list().await?);
        if !found.is_empty() {
            return Ok(found);
        }
    }
    Err(PeerError::NotAppeared {
        node: answer.node,
        store: store.describe(),
        waited: WATCH_FOR,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_as_json() {
        let request = SnapshotRequest {
            node: "n1".into(),
            first_needed: 42,
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"node":"n1","first_needed":42}"#);
        assert_eq!(
            serde_json::from_str::<SnapshotRequest>(&text).unwrap(),
            request
        );
        let answer = SnapshotAnswer {
            node: "n2".into(),
            accepted: false,
            reason: Some("behind".into()),
        };
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            serde_json::from_str::<SnapshotAnswer>(&text).unwrap(),
            answer
        );
        assert_eq!(
            request_subject("harmonylite"),
            "harmonylite.snapshots.request"
        );
    }
}
