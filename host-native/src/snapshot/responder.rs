//! Answering other nodes' snapshot requests ([`crate::snapshot::peer`]): a full replica
//! that is caught up takes a snapshot under the usual lease (one job at a time) and says so;
//! otherwise it declines, and the asker asks again.

use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::snapshot::peer::{SnapshotAnswer, SnapshotRequest, QUEUE_GROUP};
use crate::snapshot::{JobContext, JobOutcome, PeerError, SnapshotError};

/// A finished snapshot job's result.
pub type JobResult = Result<Result<JobOutcome, SnapshotError>, tokio::task::JoinError>;

/// Subscribed to snapshot requests (in the queue group), with the job it runs, if any.
pub struct Responder {
    requests: async_nats::Subscriber,
    client: async_nats::Client,
    ctx: JobContext,
    job: Option<JoinHandle<Result<JobOutcome, SnapshotError>>>,
}

/// What the responder has for the driver.
pub enum ResponderEvent {
    /// Another node asks for a snapshot.
    Request(async_nats::Message),
    /// The snapshot taken for such a request is done.
    JobDone(JobResult),
}

impl Responder {
    /// Subscribes to `subject`; `ctx` is the context of the jobs it starts (its schedule
    /// [`crate::snapshot::SnapshotSchedule::on_request`]).
    pub async fn subscribe(
        client: &async_nats::Client,
        subject: &str,
        ctx: JobContext,
    ) -> Result<Self, PeerError> {
        let requests = client
            .queue_subscribe(subject.to_owned(), QUEUE_GROUP.to_owned())
            .await
            .map_err(|source| PeerError::Subscribe {
                subject: subject.to_owned(),
                source,
            })?;
        Ok(Responder {
            requests,
            client: client.clone(),
            ctx,
            job: None,
        })
    }

    /// Answers `request`: when `caught_up`, starts a snapshot job at `cursor` (unless one
    /// runs already) and accepts; otherwise declines.
    pub async fn answer(
        &mut self,
        request: async_nats::Message,
        caught_up: bool,
        cursor: harmonylite_core::change::StreamSeq,
    ) {
        let node = self.ctx.node_id.to_string();
        let asked: Option<SnapshotRequest> = serde_json::from_slice(&request.payload).ok();
        let answer = if caught_up {
            if self.job.is_none() {
                let ctx = self.ctx.clone();
                self.job = Some(tokio::spawn(crate::snapshot::run_job(ctx, cursor)));
            }
            SnapshotAnswer {
                node,
                accepted: true,
                reason: None,
            }
        } else {
            SnapshotAnswer {
                node,
                accepted: false,
                reason: Some("this node is not caught up with the stream".into()),
            }
        };
        tracing::info!(
            asker = asked.as_ref().map(|r| r.node.as_str()).unwrap_or("?"),
            first_needed = asked.as_ref().map(|r| r.first_needed),
            accepted = answer.accepted,
            "a node asked for a snapshot"
        );
        if let Some(reply) = request.reply {
            let payload = serde_json::to_vec(&answer).unwrap_or_default();
            if let Err(e) = self.client.publish(reply, payload.into()).await {
                tracing::warn!("answering a snapshot request: {e}");
            }
        }
    }

    /// Forgets the finished job.
    pub fn job_done(&mut self) {
        self.job = None;
    }
}

/// The responder's next event (never while this node answers no requests).
pub async fn next_event(responder: &mut Option<Responder>) -> ResponderEvent {
    let Some(r) = responder.as_mut() else {
        return std::future::pending().await;
    };
    let job = async {
        match r.job.as_mut() {
            Some(job) => job.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        Some(request) = r.requests.next() => ResponderEvent::Request(request),
        outcome = job => ResponderEvent::JobDone(outcome),
    }
}
