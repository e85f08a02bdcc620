//! Snapshots in a JetStream object store bucket (`store = "nats"`, the default).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use futures::StreamExt;

use super::{SnapshotInfo, SnapshotStoreError, ORPHAN_AGE};
use crate::ops::progress::{Progress, ProgressReader};
use crate::snapshot::frame::FramedReader;

/// Object store chunk size: large chunks keep the per-message overhead low; well under the
/// default 1 MiB NATS payload limit.
const OBJECT_CHUNK: usize = 512 * 1024;

/// Snapshots in a JetStream object store bucket.
pub struct NatsStore {
    js: jetstream::Context,
    pub(super) bucket: String,
    pub(super) store: object_store::ObjectStore,
    stream: String,
}

/// How long one object-store request or chunk ack may take. async-nats waits 5 s for a
/// publish ack by default; one slow fsync on a busy disk outlasted that and failed a whole
/// 1 GiB upload (a benchmark run did). A snapshot is background work: waiting is better.
const OBJECT_STORE_TIMEOUT: Duration = Duration::from_secs(60);

impl NatsStore {
    pub(super) async fn open(
        js: &jetstream::Context,
        bucket: &str,
        replicas: usize,
        stream: &str,
    ) -> Result<Self, SnapshotStoreError> {
        // The bucket handle keeps the timeout of the context it came from.
        let mut js = js.clone();
        js.set_timeout(OBJECT_STORE_TIMEOUT);
        let store = match js.get_object_store(bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.to_owned(),
                    description: Some("harmonylite snapshots".into()),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| SnapshotStoreError::CreateBucket {
                    bucket: bucket.to_owned(),
                    replicas,
                    source: e.into(),
                })?,
        };
        Ok(NatsStore {
            js,
            bucket: bucket.to_owned(),
            store,
            stream: stream.to_owned(),
        })
    }

    /// Where the snapshots are, for messages.
    pub(super) fn describe(&self) -> String {
        format!("JetStream object store bucket {:?}", self.bucket)
    }

    pub(super) async fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotStoreError> {
        let listing = |e: Box<dyn std::error::Error + Send + Sync>| SnapshotStoreError::List {
            place: format!("snapshot bucket {:?}", self.bucket),
            source: e,
        };
        let mut out = Vec::new();
        let mut objects = self.store.list().await.map_err(|e| listing(e.into()))?;
        while let Some(object) = objects.next().await {
            let object = object.map_err(|e| listing(e.into()))?;
            if let Some(mut info) = SnapshotInfo::parse(&self.stream, &object.name) {
                info.size = object.size as u64;
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Stores the `size` framed bytes `framed` reads as object `info.name`.
    pub(super) async fn upload(
        &self,
        info: &SnapshotInfo,
        size: u64,
        framed: FramedReader,
    ) -> Result<u64, SnapshotStoreError> {
        let meta = object_store::ObjectMetadata {
            name: info.name.clone(),
            description: Some(format!(
                "harmonylite snapshot covering stream sequence {} taken by node {}",
                info.covered_seq.get(),
                info.taken_by
            )),
            chunk_size: Some(OBJECT_CHUNK),
            metadata: [
                ("covered_seq".to_owned(), info.covered_seq.get().to_string()),
                ("taken_by".to_owned(), info.taken_by.to_string()),
                ("taken_at_ms".to_owned(), info.taken_at_ms.to_string()),
            ]
            .into(),
            headers: None,
        };
        let progress = Progress::new("uploading snapshot", size);
        let mut reader = ProgressReader::new(framed, progress);
        let stored =
            super::object_put::put(&self.js, &self.bucket, meta, OBJECT_CHUNK, &mut reader)
                .await
                .map_err(|e| SnapshotStoreError::Upload {
                    name: info.name.clone(),
                    store: self.describe(),
                    source: e.into(),
                })?;
        if stored.size as u64 != size {
            return Err(SnapshotStoreError::StoredSize {
                name: info.name.clone(),
                stored: stored.size as u64,
                expected: size,
            });
        }
        Ok(stored.size as u64)
    }

    /// The chunks of the stored snapshot `info`, in order, as the server sends them (an
    /// ordered push consumer on the object's chunk subject, like `ObjectStore::get`, but
    /// handing over each chunk as it arrives instead of copying it through a reader and
    /// hashing it: the snapshot's own checksums verify every byte).
    pub async fn chunks(
        &self,
        info: &SnapshotInfo,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<Bytes, SnapshotStoreError>>,
        SnapshotStoreError,
    > {
        let object = self
            .store
            .info(&info.name)
            .await
            .map_err(|e| SnapshotStoreError::Open {
                name: info.name.clone(),
                store: self.describe(),
                source: e.into(),
            })?;
        if object.deleted || object.options.as_ref().is_some_and(|o| o.link.is_some()) {
            return Err(SnapshotStoreError::NotAnObject {
                name: info.name.clone(),
            });
        }
        if object.chunks == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let stream = self
            .js
            .get_stream(format!("OBJ_{}", self.bucket))
            .await
            .map_err(SnapshotStoreError::request)?;
        let reading = |e: Box<dyn std::error::Error + Send + Sync>| SnapshotStoreError::Read {
            name: info.name.clone(),
            source: e,
        };
        let messages = stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: format!("$O.{}.C.{}", self.bucket, object.nuid),
                ..Default::default()
            })
            .await
            .map_err(|e| reading(e.into()))?
            .messages()
            .await
            .map_err(|e| reading(e.into()))?;
        let (expected_size, expected_chunks) = (object.size as u64, object.chunks);
        let name = info.name.clone();
        let state = (messages, 0u64, 0usize, false);
        Ok(
            futures::stream::unfold(state, move |(mut messages, size, chunks, done)| {
                let name = name.clone();
                async move {
                    if done {
                        return None;
                    }
                    let result = async {
                        let message = messages
                            .next()
                            .await
                            .ok_or(SnapshotStoreError::ChunksEnded)?
                            .map_err(|e| SnapshotStoreError::Chunk { source: e.into() })?;
                        let pending = message.info().map_err(SnapshotStoreError::Request)?.pending;
                        Ok::<_, SnapshotStoreError>((message.payload.clone(), pending))
                    }
                    .await;
                    match result {
                        Err(e) => Some((
                            Err(SnapshotStoreError::Read {
                                name: name.clone(),
                                source: Box::new(e),
                            }),
                            (messages, size, chunks, true),
                        )),
                        Ok((payload, pending)) => {
                            let (size, chunks) = (size + payload.len() as u64, chunks + 1);
                            let last = pending == 0;
                            let item = if last && (size, chunks) != (expected_size, expected_chunks)
                            {
                                Err(SnapshotStoreError::ChunkCount {
                                    name: name.clone(),
                                    size,
                                    chunks,
                                    expected_size,
                                    expected_chunks,
                                })
                            } else {
                                Ok(payload)
                            };
                            Some((item, (messages, size, chunks, last)))
                        }
                    }
                }
            })
            .boxed(),
        )
    }

    /// Purges chunks that no object refers to (interrupted uploads) once they are old enough
    /// not to belong to an upload in progress.
    pub(super) async fn purge_orphans(&self) -> Result<usize, SnapshotStoreError> {
        use SnapshotStoreError as E;
        let mut live = std::collections::HashSet::new();
        let mut objects = self.store.list().await.map_err(E::request)?;
        while let Some(object) = objects.next().await {
            live.insert(object.map_err(E::request)?.nuid);
        }
        let stream = self
            .js
            .get_stream(format!("OBJ_{}", self.bucket))
            .await
            .map_err(E::request)?;
        let prefix = format!("$O.{}.C.", self.bucket);
        let mut subjects = stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(E::request)?;
        let mut orphans = Vec::new();
        while let Some(entry) = subjects.next().await {
            let (subject, _count) = entry.map_err(E::request)?;
            if let Some(nuid) = subject.strip_prefix(&prefix) {
                if !live.contains(nuid) {
                    orphans.push(subject.clone());
                }
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let mut purged = 0;
        for subject in orphans {
            let last = stream
                .direct_get_last_for_subject(subject.as_str())
                .await
                .map_err(E::request)?;
            if now - last.time.unix_timestamp() >= ORPHAN_AGE.as_secs() as i64 {
                stream.purge().filter(&subject).await.map_err(E::request)?;
                purged += 1;
            }
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmonylite_core::change::StreamSeq;
    use harmonylite_core::hlc::NodeId;

    use crate::snapshot::frame::FramedSource;

    /// Uploads write objects several chunks at a time (`object_put`) that async-nats' `get`
    /// reads with its digest check; restores read an object's chunks as they arrive
    /// ([`NatsStore::chunks`]) instead of through `get`: both read the same bytes, whatever
    /// wrote the object.
    #[tokio::test]
    async fn chunks_read_what_async_nats_get_reads() {
        use crate::nats::server::{EmbeddedServerConfig, NatsServer};
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(EmbeddedServerConfig::new(dir.path().join("nats"), "t"))
            .await
            .unwrap();
        let client = async_nats::connect(server.client_url()).await.unwrap();
        let js = jetstream::new(client);
        let store = NatsStore::open(&js, "snaps", 1, "s-1").await.unwrap();
        let path = dir.path().join("copy.db");
        let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let node = NodeId::from_u128(5).unwrap();
        let source = FramedSource::prepare(&path, StreamSeq::new(9), node, 1 << 20).unwrap();
        let mut framed = Vec::new();
        source
            .write_to(&mut framed, &mut Progress::silent(), None)
            .unwrap();

        let info = SnapshotInfo::new("s-1", StreamSeq::new(9), 1, node);
        assert_eq!(
            store
                .upload(&info, source.framed_size(), source.reader())
                .await
                .unwrap(),
            framed.len() as u64
        );
        let mut object = store.store.get(&info.name).await.unwrap();
        let mut read = Vec::new();
        object.read_to_end(&mut read).await.unwrap();
        assert!(
            read == framed,
            "async-nats reads our object, digest checked"
        );
        let meta = store.store.info(&info.name).await.unwrap();
        assert_eq!(meta.metadata["covered_seq"], "9");
        // Full chunks but the last, written several at a time (object_put).
        assert_eq!(meta.chunks, framed.len().div_ceil(OBJECT_CHUNK));
        assert!(meta.digest.as_deref().unwrap().starts_with("SHA-256="));
        let mut ours = store.chunks(&info).await.unwrap();
        let mut back = Vec::new();
        while let Some(chunk) = ours.next().await {
            back.extend_from_slice(&chunk.unwrap());
        }
        assert!(back == framed, "our chunk reader reads our object");
        drop(ours);

        let old = SnapshotInfo::new("s-1", StreamSeq::new(8), 1, node);
        let meta = object_store::ObjectMetadata {
            name: old.name.clone(),
            chunk_size: Some(512 * 1024),
            ..Default::default()
        };
        store.store.put(meta, &mut &framed[..]).await.unwrap();
        let mut chunks = store.chunks(&old).await.unwrap();
        let mut back = Vec::new();
        while let Some(chunk) = chunks.next().await {
            back.extend_from_slice(&chunk.unwrap());
        }
        assert!(
            back == framed,
            "an object stored by async-nats' put reads back"
        );
        assert_eq!(store.list().await.unwrap().len(), 2);
        drop(chunks);
        server.shutdown().await;
    }
}
