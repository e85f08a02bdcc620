//! Snapshots in an S3 bucket (`store = "s3"`, `[snapshot.s3]`): AWS S3 or any server that
//! speaks the S3 protocol (MinIO, Ceph, moto), through the `object_store` crate.
//!
//! Each snapshot is one object holding the framed snapshot (header + checksummed chunks,
//! exactly what the JetStream object store holds), under
//! `<path>/<stream>/<covered_seq>-<taken at>-<node id>.hlsnap`.
//!
//! Atomicity: S3 makes an object visible only when its upload completes. Snapshots up to
//! [`PART_SIZE`] are sent with one `PUT`; larger ones as a multipart upload of
//! [`PART_SIZE`] parts ([`UPLOAD_CONCURRENCY`] in flight), which becomes an object only at
//! `CompleteMultipartUpload`. A listing therefore never shows a half-written snapshot, and an
//! interrupted upload leaves the earlier snapshots as they were. A failed upload is aborted
//! (its parts deleted); the parts of one interrupted by a crash stay invisible and are removed
//! by the bucket's `AbortIncompleteMultipartUpload` lifecycle rule (docs/snapshots.md).

use std::sync::Arc;

use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::S3Config;
use crate::ops::progress::{Progress, ProgressReader};
use crate::snapshot::frame::FramedReader;
use crate::snapshot::info::SnapshotInfo;
use crate::snapshot::store::SnapshotStoreError;

/// Multipart part size, and the largest snapshot sent with a single `PUT`. S3 wants parts of
/// at least 5 MiB; 16 MiB keeps the request count low (10,000 parts = 160 GiB).
pub const PART_SIZE: usize = 16 << 20;
/// Multipart parts uploaded at the same time.
pub const UPLOAD_CONCURRENCY: usize = 4;

/// Snapshots of one stream in an S3 bucket.
pub struct S3Store {
    store: Arc<AmazonS3>,
    bucket: String,
    endpoint: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    prefix: String,
    stream: String,
}

impl S3Store {
    /// The store `config` describes, for the change stream `stream`. Static keys from the
    /// configuration win over the AWS environment (`AWS_ACCESS_KEY_ID`, web identity,
    /// container and instance credentials); nothing is contacted yet.
    pub fn open(config: &S3Config, stream: &str) -> Result<Self, SnapshotStoreError> {
        let bucket = config
            .bucket
            .clone()
            .ok_or(SnapshotStoreError::NotConfigured {
                key: "snapshot.s3.bucket",
                store: "s3",
            })?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_virtual_hosted_style_request(!config.path_style);
        let region = config
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_owned());
        builder = builder.with_region(&region);
        let endpoint = match &config.endpoint {
            Some(endpoint) => {
                let url = endpoint_url(endpoint, config.use_ssl);
                if url.starts_with("http://") {
                    builder = builder.with_allow_http(true);
                }
                builder = builder.with_endpoint(&url);
                url
            }
            None => std::env::var("AWS_ENDPOINT_URL_S3")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .unwrap_or_else(|_| format!("AWS S3 ({region})")),
        };
        if let (Some(key), Some(secret)) = (&config.access_key, &config.secret) {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret.expose());
            if let Some(token) = &config.session_token {
                builder = builder.with_token(token.expose());
            }
        }
        let store = match builder.build() {
            Ok(store) => store,
            Err(source) => return Err(SnapshotStoreError::ConfigureS3 { bucket, source }),
        };
        Ok(S3Store {
            store: Arc::new(store),
            bucket,
            endpoint,
            prefix: config.path.trim_matches('/').to_owned(),
            stream: stream.to_owned(),
        })
    }

    /// Where the snapshots are, for messages.
    pub fn describe(&self) -> String {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        format!(
            "S3 bucket {:?} at {}, under {prefix}{}/",
            self.bucket, self.endpoint, self.stream
        )
    }

    /// The object key of a snapshot name (`<stream>/<file>`).
    fn location(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// Every complete snapshot of this stream (unsorted).
    pub async fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotStoreError> {
        let dir = self.location(&self.stream);
        let mut objects = self.store.list(Some(&dir));
        let mut out = Vec::new();
        while let Some(object) = objects.next().await {
            let object = object.map_err(|e| SnapshotStoreError::List {
                place: format!("the {}", self.describe()),
                source: e.into(),
            })?;
            let key = object.location.as_ref();
            let name = match self.prefix.is_empty() {
                true => Some(key),
                false => key
                    .strip_prefix(self.prefix.as_str())
                    .and_then(|k| k.strip_prefix('/')),
            };
            if let Some(mut info) = name.and_then(|n| SnapshotInfo::parse(&self.stream, n)) {
                info.size = object.size;
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Uploads the `size` framed bytes `framed` reads as one object (see the module docs);
    /// returns the bytes stored, checked against the object's size as S3 reports it.
    pub async fn upload(
        &self,
        info: &SnapshotInfo,
        size: u64,
        framed: FramedReader,
    ) -> Result<u64, SnapshotStoreError> {
        let location = self.location(&info.name);
        let progress = Progress::new("uploading snapshot", size);
        let mut reader = ProgressReader::new(framed, progress);
        let uploading = |e: Box<dyn std::error::Error + Send + Sync>| SnapshotStoreError::Upload {
            name: info.name.clone(),
            store: self.describe(),
            source: e,
        };
        if size <= PART_SIZE as u64 {
            let mut body = Vec::with_capacity(size as usize);
            reader
                .read_to_end(&mut body)
                .await
                .map_err(|e| SnapshotStoreError::Read {
                    name: info.name.clone(),
                    source: e.into(),
                })?;
            if body.len() as u64 != size {
                return Err(SnapshotStoreError::ProducedSize {
                    name: Some(info.name.clone()),
                    produced: body.len() as u64,
                    expected: size,
                });
            }
            self.store
                .put(&location, PutPayload::from(body))
                .await
                .map_err(|e| uploading(e.into()))?;
        } else {
            let upload = self
                .store
                .put_multipart(&location)
                .await
                .map_err(|source| SnapshotStoreError::StartUpload {
                    name: info.name.clone(),
                    source,
                })?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            match send_parts(&mut reader, &mut writer, size).await {
                Ok(()) => {
                    writer
                        .finish()
                        .await
                        .map_err(|source| SnapshotStoreError::CompleteUpload {
                            name: info.name.clone(),
                            source,
                        })?;
                }
                Err(e) => {
                    if let Err(abort) = writer.abort().await {
                        tracing::warn!(
                            "could not abort the failed upload of snapshot {}: {abort}",
                            info.name
                        );
                    }
                    return Err(uploading(Box::new(e)));
                }
            }
        }
        reader.into_progress().finish();
        let stored =
            self.store
                .head(&location)
                .await
                .map_err(|source| SnapshotStoreError::CheckUpload {
                    name: info.name.clone(),
                    source,
                })?;
        if stored.size != size {
            return Err(SnapshotStoreError::StoredSize {
                name: info.name.clone(),
                stored: stored.size,
                expected: size,
            });
        }
        Ok(stored.size)
    }

    /// Reads a stored snapshot (framed bytes).
    pub async fn open_reader(
        &self,
        info: &SnapshotInfo,
    ) -> Result<Box<dyn AsyncRead + Send + Unpin>, SnapshotStoreError> {
        let result = self
            .store
            .get(&self.location(&info.name))
            .await
            .map_err(|e| SnapshotStoreError::Open {
                name: info.name.clone(),
                store: self.describe(),
                source: e.into(),
            })?;
        let stream = result.into_stream().map_err(std::io::Error::other);
        Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
    }

    /// Deletes one snapshot.
    pub async fn delete(&self, info: &SnapshotInfo) -> Result<(), SnapshotStoreError> {
        self.store
            .delete(&self.location(&info.name))
            .await
            .map_err(|e| SnapshotStoreError::Delete {
                name: info.name.clone(),
                store: self.describe(),
                source: e.into(),
            })
    }
}

/// Feeds the framed snapshot to a multipart upload, part by part.
async fn send_parts(
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut WriteMultipart,
    expected: u64,
) -> Result<(), SnapshotStoreError> {
    let mut sent = 0u64;
    loop {
        let mut part = BytesMut::with_capacity(PART_SIZE);
        while part.len() < PART_SIZE {
            if reader.read_buf(&mut part).await? == 0 {
                break;
            }
        }
        if part.is_empty() {
            break;
        }
        sent += part.len() as u64;
        writer
            .wait_for_capacity(UPLOAD_CONCURRENCY)
            .await
            .map_err(SnapshotStoreError::request)?;
        writer.put(part.freeze());
    }
    if sent != expected {
        return Err(SnapshotStoreError::ProducedSize {
            name: None,
            produced: sent,
            expected,
        });
    }
    Ok(())
}

/// `endpoint` as a URL: kept when it has a scheme, else `https://` or `http://` by `use_ssl`.
fn endpoint_url(endpoint: &str, use_ssl: bool) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.trim_end_matches('/').to_owned()
    } else {
        let scheme = if use_ssl { "https" } else { "http" };
        format!("{scheme}://{}", endpoint.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_scheme_from_use_ssl_unless_they_have_one() {
        assert_eq!(
            endpoint_url("s3.example:9000", true),
            "https://s3.example:9000"
        );
        assert_eq!(
            endpoint_url("127.0.0.1:9000/", false),
            "http://127.0.0.1:9000"
        );
        assert_eq!(endpoint_url("http://minio:9000", true), "http://minio:9000");
        assert_eq!(endpoint_url("https://minio", false), "https://minio");
    }

    #[test]
    fn keys_carry_the_prefix_and_listing_names_parse_back() {
        let mut config = S3Config {
            bucket: Some("b-1".into()),
            endpoint: Some("127.0.0.1:1".into()),
            use_ssl: false,
            path: "/hl/prod/".into(),
            ..Default::default()
        };
        let store = S3Store::open(&config, "s-1").unwrap();
        let node = harmonylite_core::hlc::NodeId::from_u128(0xab).unwrap();
        let info = SnapshotInfo::new("s-1", harmonylite_core::change::StreamSeq::new(9), 1, node);
        assert_eq!(
            store.location(&info.name).as_ref(),
            format!("hl/prod/{}", info.name)
        );
        assert!(store.describe().contains("\"b-1\""), "{}", store.describe());
        config.path = String::new();
        let store = S3Store::open(&config, "s-1").unwrap();
        assert_eq!(store.location(&info.name).as_ref(), info.name);
    }
}
