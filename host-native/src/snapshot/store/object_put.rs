//! Writing one object into a JetStream object store bucket with several chunks in flight.
//!
//! async-nats' `ObjectStore::put` publishes a chunk and waits for its ack before reading the
//! next: every chunk pays a full round trip and the server's write, one at a time (a 1 GiB
//! snapshot took 14× `cp`'s time, BENCHMARKS.md section 4). This writer keeps up to
//! [`IN_FLIGHT`] chunks published and unacknowledged, reads the next chunk while they are
//! stored, and writes the object's metadata exactly as async-nats does (the same subjects,
//! rollup header, JSON `ObjectInfo` with the SHA-256 digest), so async-nats' `get`/`info`,
//! the `nats` CLI and our own chunk reader read what it writes. A failure leaves chunks no
//! metadata refers to; `NatsStore::purge_orphans` removes them later.

use std::collections::VecDeque;

use async_nats::jetstream::{self, object_store};
use async_nats::HeaderMap;
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Chunks published and not yet acknowledged, at most.
pub const IN_FLIGHT: usize = 8;

/// Why an object was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// Reading the source failed.
    #[error("reading the object's bytes: {0}")]
    Read(#[from] std::io::Error),
    /// JetStream did not take a chunk or the metadata.
    #[error("{what}: {source}")]
    Publish {
        /// Which publish.
        what: &'static str,
        /// The error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn publish_error(
    what: &'static str,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> PutError {
    move |source| PutError::Publish { what, source }
}

/// Stores `data` as object `meta.name` of `bucket` in chunks of `chunk_size` bytes (the last
/// one shorter), [`IN_FLIGHT`] at a time; returns the stored object's info.
pub async fn put(
    js: &jetstream::Context,
    bucket: &str,
    meta: object_store::ObjectMetadata,
    chunk_size: usize,
    data: &mut (impl AsyncRead + Unpin),
) -> Result<object_store::ObjectInfo, PutError> {
    let nuid = format!(
        "{:016x}{:016x}",
        crate::util::random_u64()
            .map_err(|e| publish_error("choosing the object's id")(e.into()))?,
        crate::util::random_u64()
            .map_err(|e| publish_error("choosing the object's id")(e.into()))?
    );
    let chunk_subject = format!("$O.{bucket}.C.{nuid}");
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut acks = VecDeque::with_capacity(IN_FLIGHT);
    let (mut size, mut chunks) = (0usize, 0usize);
    loop {
        let chunk = read_chunk(data, chunk_size).await?;
        if chunk.is_empty() {
            break;
        }
        digest.update(&chunk);
        size += chunk.len();
        chunks += 1;
        if acks.len() == IN_FLIGHT {
            let ack: jetstream::context::PublishAckFuture =
                acks.pop_front().expect("IN_FLIGHT acks are waiting");
            ack.await
                .map_err(|e| publish_error("a chunk's ack")(e.into()))?;
        }
        let ack = js
            .publish(chunk_subject.clone(), chunk.freeze())
            .await
            .map_err(|e| publish_error("publishing a chunk")(e.into()))?;
        acks.push_back(ack);
    }
    for ack in acks {
        ack.await
            .map_err(|e| publish_error("a chunk's ack")(e.into()))?;
    }
    let info = object_store::ObjectInfo {
        name: meta.name,
        description: meta.description,
        metadata: meta.metadata,
        headers: meta.headers,
        options: Some(object_store::ObjectOptions {
            link: None,
            max_chunk_size: Some(chunk_size),
        }),
        bucket: bucket.to_owned(),
        nuid,
        size,
        chunks,
        modified: Some(time::OffsetDateTime::now_utc()),
        digest: Some(format!(
            "SHA-256={}",
            URL_SAFE.encode(digest.finish().as_ref())
        )),
        deleted: false,
    };
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Rollup", "sub");
    let body =
        serde_json::to_vec(&info).map_err(|e| publish_error("encoding the metadata")(e.into()))?;
    js.publish_with_headers(
        format!("$O.{bucket}.M.{}", URL_SAFE.encode(info.name.as_bytes())),
        headers,
        body.into(),
    )
    .await
    .map_err(|e| publish_error("publishing the metadata")(e.into()))?
    .await
    .map_err(|e| publish_error("the metadata's ack")(e.into()))?;
    Ok(info)
}

/// Reads up to `size` bytes: a full chunk unless the source ends first.
async fn read_chunk(data: &mut (impl AsyncRead + Unpin), size: usize) -> std::io::Result<BytesMut> {
    let mut chunk = BytesMut::with_capacity(size);
    while chunk.len() < size {
        let mut limited = (&mut *data).take((size - chunk.len()) as u64);
        if limited.read_buf(&mut chunk).await? == 0 {
            break;
        }
    }
    Ok(chunk)
}
