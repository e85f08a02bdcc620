//! The SQLite store's side of a [`Session`]: what hosts read between inputs (outbox depth,
//! parked messages, schema status) and the one store operation that runs beside the
//! replication protocol (a step of a catch-up in place). Hosts call these instead of
//! reaching past the session into the store.

use crate::hlc::{NodeId, NTP64};
use crate::session::Session;
use crate::sqlite::{
    CatchUp, CatchUpError, CatchUpReport, ParkedMessage, SchemaStatus, Store, StoreError,
};

impl Session<Store> {
    fn store(&self) -> &Store {
        self.engine().db()
    }

    /// This replica's node id.
    pub fn node_id(&self) -> NodeId {
        self.store().node_id()
    }

    /// Frames and row changes waiting in the outbox.
    pub fn outbox_depth(&self) -> Result<(u64, u64), StoreError> {
        self.store().outbox_depth()
    }

    /// Number of parked messages.
    pub fn parked_count(&self) -> Result<u64, StoreError> {
        self.store().parked_count()
    }

    /// Parked messages, oldest first.
    pub fn parked(&self) -> Result<Vec<ParkedMessage>, StoreError> {
        self.store().parked()
    }

    /// Parked message counts by table (`""`: messages about no single table).
    pub fn parked_by_table(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.store().parked_by_table()
    }

    /// The local schema's fingerprint, migration version and parked migrations.
    pub fn schema_status(&self) -> Result<SchemaStatus, StoreError> {
        self.store().schema_status()
    }

    /// Tables whose changes are captured and applied.
    pub fn replicated_tables(&self) -> Vec<String> {
        self.store().replicated_tables()
    }

    /// One step of a catch-up in place ([`Store::catch_up_step`]). When the report says
    /// `finished`, the cursor moved: feed [`crate::session::SessionInput::Reopened`].
    pub fn catch_up_step(
        &mut self,
        catch_up: &mut CatchUp,
        now: NTP64,
        max_rows: usize,
    ) -> Result<CatchUpReport, CatchUpError> {
        self.engine_mut()
            .db_mut()
            .catch_up_step(catch_up, now, max_rows)
    }
}
