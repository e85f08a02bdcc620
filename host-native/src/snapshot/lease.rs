//! The snapshot lease: one key in a JetStream key-value bucket, so that only one node of a
//! cluster takes a periodic snapshot at a time.
//!
//! A node acquires the lease by creating the key (an atomic compare-and-set: it fails when the
//! key holds a value), renews it by updating the key at the revision it holds (fails when
//! someone else took it over), and releases it by deleting the key at that revision. The
//! bucket's `max_age` is the lease's time-to-live: the key of a holder that died expires by
//! itself, and the next node can take the lease.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use harmonylite_core::hlc::NodeId;

use crate::snapshot::LeaseError;

/// How long a lease lives without renewal.
pub const TTL: Duration = Duration::from_secs(60);
/// How often a holder renews it.
pub const RENEW_EVERY: Duration = Duration::from_secs(15);

/// The lease bucket.
#[derive(Clone)]
pub struct LeaseBucket {
    kv: kv::Store,
    name: String,
}

/// A held lease; [`Lease::release`] gives it back (dropping it lets it expire).
pub struct Lease {
    kv: kv::Store,
    key: String,
    revision: u64,
}

impl LeaseBucket {
    /// Opens the key-value bucket `name`, creating it when missing (history 1, `max_age` =
    /// `ttl`, `replicas`).
    pub async fn open(
        js: &jetstream::Context,
        name: &str,
        replicas: usize,
        ttl: Duration,
    ) -> Result<Self, LeaseError> {
        let kv = match js.get_key_value(name).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: name.to_owned(),
                    description: "harmonylite: which node takes the next snapshot".into(),
                    history: 1,
                    max_age: ttl,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|source| LeaseError::CreateBucket {
                    bucket: name.to_owned(),
                    source,
                })?,
        };
        Ok(LeaseBucket {
            kv,
            name: name.to_owned(),
        })
    }

    /// Takes the lease `key` for `holder`, unless someone holds it (`Ok(None)`).
    pub async fn try_acquire(
        &self,
        key: &str,
        holder: NodeId,
    ) -> Result<Option<Lease>, LeaseError> {
        match self.kv.create(key, holder.to_string().into()).await {
            Ok(revision) => Ok(Some(Lease {
                kv: self.kv.clone(),
                key: key.to_owned(),
                revision,
            })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(source) => Err(LeaseError::Take {
                key: key.to_owned(),
                bucket: self.name.clone(),
                source,
            }),
        }
    }

    /// The node holding lease `key`, if any.
    pub async fn holder(&self, key: &str) -> Result<Option<String>, LeaseError> {
        Ok(self
            .kv
            .get(key)
            .await
            .map_err(|source| LeaseError::Read {
                key: key.to_owned(),
                source,
            })?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}

impl Lease {
    /// Extends the lease by another TTL; fails when it was lost (expired and taken over).
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        let value = self
            .kv
            .get(&self.key)
            .await
            .map_err(|source| LeaseError::Read {
                key: self.key.clone(),
                source,
            })?
            .ok_or(LeaseError::Expired)?;
        self.revision = self
            .kv
            .update(&self.key, value, self.revision)
            .await
            .map_err(LeaseError::TakenOver)?;
        Ok(())
    }

    /// Gives the lease back, if still held.
    pub async fn release(self) {
        if let Err(e) = self
            .kv
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
        {
            tracing::debug!("releasing the snapshot lease: {e}");
        }
    }
}
