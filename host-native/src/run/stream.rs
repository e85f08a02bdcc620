//! The stream consumer's IO: reading the change stream and starting its ordered consumer
//! when the session asks, and turning deliveries and connection events into session inputs.

use std::time::Instant;

use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
use harmonylite_core::change::StreamSeq;
use harmonylite_core::session::{SessionInput, SessionOutput};
use tokio::sync::mpsc;

use crate::nats::transport::TransportEvent;
use crate::ops::metrics::Hop;
use crate::run::driver::Driver;
use crate::run::hops::unix_ms_f64;

impl Driver {
    /// The session's input for a (re)connect, with the server's payload limit.
    pub(super) fn connected_input(&self) -> SessionInput {
        SessionInput::Connected {
            max_payload: self.client.server_info().max_payload,
        }
    }

    /// Reads the stream and starts consumers as the session asked, feeding back each outcome
    /// (which may ask for the next: a read is followed by a start).
    pub(super) async fn carry_out_stream_requests(&mut self) {
        while !self.stream_requests.is_empty() {
            let requests = std::mem::take(&mut self.stream_requests);
            for request in requests {
                let outcome = match request {
                    SessionOutput::ReadStreamInfo => {
                        match crate::nats::transport::stream_info(&mut self.stream).await {
                            Ok(info) => SessionInput::StreamInfo(info),
                            Err(e) => {
                                tracing::warn!("cannot read the change stream yet: {e:#}");
                                SessionInput::StreamInfoFailed {
                                    error: format!("{e:#}"),
                                }
                            }
                        }
                    }
                    SessionOutput::StartConsumer { from } => {
                        match crate::nats::transport::consume_from(&self.stream, from).await {
                            Ok(messages) => {
                                self.messages = Some(messages);
                                tracing::info!(from = from.get(), "consuming the change stream");
                                SessionInput::ConsumerStarted
                            }
                            Err(e) => {
                                tracing::warn!("cannot start the stream consumer yet: {e:#}");
                                SessionInput::ConsumerFailed {
                                    error: format!("{e:#}"),
                                }
                            }
                        }
                    }
                    _ => continue,
                };
                self.feed(vec![outcome]);
            }
        }
    }

    pub(super) fn transport_inputs(
        &mut self,
        first: TransportEvent,
        events: &mut mpsc::UnboundedReceiver<TransportEvent>,
    ) -> Vec<SessionInput> {
        let mut inputs = Vec::new();
        let mut next = Some(first);
        while let Some(event) = next {
            match event {
                TransportEvent::Connected => {
                    if !self.session.status().connected {
                        tracing::info!("connected to NATS");
                    }
                    inputs.push(self.connected_input());
                }
                TransportEvent::Disconnected => {
                    tracing::warn!("disconnected from NATS; reconnecting");
                    inputs.push(SessionInput::Disconnected);
                }
                TransportEvent::Acked(id) => {
                    if let Some(at) = self.handed_out.remove(&id) {
                        self.metrics
                            .hop(Hop::CapturedToAcked, at.elapsed().as_secs_f64());
                    }
                    inputs.push(SessionInput::Acked { id })
                }
                TransportEvent::PublishFailed(id, error) => {
                    tracing::warn!(frame = id, "publish failed, will retry: {error}");
                    inputs.push(SessionInput::PublishFailed { id });
                }
            }
            next = events.try_recv().ok();
            if inputs.len() >= 4096 {
                break;
            }
        }
        inputs
    }

    /// The consumer's deliveries (up to one batch) as session inputs; a failed or ended
    /// consumer is dropped and reported.
    pub(super) fn message_inputs(
        &mut self,
        first: Option<Result<jetstream::Message, String>>,
    ) -> Vec<SessionInput> {
        let mut inputs = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Some(Ok(message)) => {
                    let (seq, pending) = match message.info() {
                        Ok(info) => {
                            let stored_ms = info.published.unix_timestamp_nanos() as f64 / 1e6;
                            self.metrics.hop(
                                Hop::StoredToDelivered,
                                ((unix_ms_f64() - stored_ms) / 1000.0).max(0.0),
                            );
                            (info.stream_sequence, info.pending)
                        }
                        Err(e) => {
                            tracing::warn!("stream message without JetStream metadata: {e}");
                            break;
                        }
                    };
                    tracing::trace!(seq, pending, "stream message received");
                    self.delivered_at.get_or_insert_with(Instant::now);
                    inputs.push(SessionInput::Message {
                        seq: StreamSeq::new(seq),
                        pending,
                        frame: message.payload.to_vec(),
                        subject: self
                            .subjects
                            .suffix_of(message.subject.as_str())
                            .map(str::to_owned),
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!("stream consumer failed ({e}); recreating it");
                    self.messages = None;
                    inputs.push(SessionInput::ConsumerFailed { error: e });
                    break;
                }
                None => {
                    tracing::warn!("stream consumer ended; recreating it");
                    self.messages = None;
                    inputs.push(SessionInput::ConsumerEnded);
                    break;
                }
            }
            if inputs.len() >= self.batch_limit {
                break;
            }
            next = match self.messages.as_mut() {
                Some(messages) => messages
                    .next()
                    .now_or_never()
                    .map(|m| m.map(|r| r.map_err(|e| e.to_string()))),
                None => None,
            };
        }
        inputs
    }
}
