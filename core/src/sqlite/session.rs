//! The SQLite store's side of a [`Session`]: what hosts read between inputs (outbox depth,
//! parked messages, schema status, change log, node-local state), the connection an
//! in-process host runs the application's SQL on, and the store operations that run beside
//! the replication protocol (a published migration, discarded parked changes, a step of a
//! catch-up in place). Hosts call these instead of reaching past the session into the
//! store.

use rusqlite::Connection;

use crate::hlc::{NodeId, NTP64};
use crate::session::Session;
use crate::sqlite::snapshot::NodeLocal;
use crate::sqlite::{
    AppliedMigration, CatchUp, CatchUpError, CatchUpReport, DiscardError, Discarded, ParkedMessage,
    PublishMigrationError, PublishedMigration, SchemaStatus, Store, StoreError,
};

impl Session<Store> {
    fn store(&self) -> &Store {
        self.engine().db()
    }

    /// This replica's node id.
    pub fn node_id(&self) -> NodeId {
        self.store().node_id()
    }

    /// The scope rules this replica routes and validates by (empty: scopes off or, on a
    /// scoped replica, not learned yet).
    pub fn scope_rules(&self) -> &crate::scope::ScopeRules {
        &self.store().options().scopes
    }

    /// The store's connection, on which an in-process host (the wasm replica) runs the
    /// application's own SQL: in the browser the replica is the application's only
    /// connection to its database. Writes made on it fire the capture triggers like any
    /// other application write; feed [`crate::session::SessionInput::LocalWrite`] after them.
    /// Hosts with a connection of their own use it only for reads (a snapshot's
    /// `VACUUM INTO`, checks).
    pub fn app_connection(&self) -> &Connection {
        self.store().connection()
    }

    /// Frames and row changes waiting in the outbox.
    pub fn outbox_depth(&self) -> Result<(u64, u64), StoreError> {
        self.store().outbox_depth()
    }

    /// Lowest and highest outbox id waiting for an acknowledgement ([`Store::outbox_id_range`]).
    pub fn outbox_id_range(&self) -> Result<(i64, i64), StoreError> {
        self.engine().db().outbox_id_range()
    }

    /// Captured row changes not yet drained into the outbox ([`Store::log_depth`]): a host
    /// reports them as pending work, and a database holding any is not empty (a snapshot
    /// restore would lose them).
    pub fn log_depth(&self) -> Result<u64, StoreError> {
        self.store().log_depth()
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

    /// The migrations applied here, with the version each was applied under
    /// ([`Store::migrations`]): a host that published a migration looks up whether (and
    /// under which version) it has been applied on this replica yet.
    pub fn migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        self.store().migrations()
    }

    /// Tables whose changes are captured and applied.
    pub fn replicated_tables(&self) -> Vec<String> {
        self.store().replicated_tables()
    }

    /// The node-local state to install in a snapshot that is about to replace this
    /// replica's database ([`crate::sqlite::snapshot::install_node_local`]): the node id
    /// stays, the clock never goes back behind its last timestamp, and with a fresh
    /// `incarnation` (random) the batch sequence and outbox ids start again at 1. A host
    /// restoring in process has no other copy of this state: the file it lives in is the
    /// one being replaced.
    pub fn node_local_for_restore(&self, incarnation: u64) -> NodeLocal {
        let store = self.store();
        NodeLocal {
            node_id: store.node_id(),
            incarnation,
            next_batch: None,
            next_outbox_id: None,
            clock: Some(store.clock().last().as_u64()),
        }
    }

    /// Writes `sql` to the outbox as a replicated migration ([`Store::publish_migration`]);
    /// feed [`crate::session::SessionInput::LocalWrite`] next to hand it out.
    pub fn publish_migration(
        &mut self,
        sql: &str,
        allow_destructive: bool,
        now: NTP64,
    ) -> Result<PublishedMigration, PublishMigrationError> {
        self.engine_mut()
            .db_mut()
            .publish_migration(sql, allow_destructive, now)
    }

    /// Writes a replicated switch of how `table` merges to the outbox
    /// ([`Store::publish_merge_switch`]); feed [`crate::session::SessionInput::LocalWrite`]
    /// next to hand it out.
    pub fn publish_merge_switch(
        &mut self,
        table: &str,
        merge: Option<&crate::column_merge::TableMerge>,
        now: NTP64,
    ) -> Result<PublishedMigration, PublishMigrationError> {
        self.engine_mut()
            .db_mut()
            .publish_merge_switch(table, merge, now)
    }

    /// Discards the parked changes for `table` ([`Store::discard_parked`]); what is left of
    /// messages that also held other tables' changes is retried at the next input.
    pub fn discard_parked(&mut self, table: &str, force: bool) -> Result<Discarded, DiscardError> {
        let discarded = self.engine_mut().db_mut().discard_parked(table, force)?;
        if discarded.trimmed > 0 {
            self.engine_mut().retry_parked_soon();
        }
        Ok(discarded)
    }

    /// Merges one page of a scoped bootstrap ([`Store::import_partitions`]). When the report
    /// says `finished`, the cursor moved: feed [`crate::session::SessionInput::Reopened`].
    pub fn import_partitions(
        &mut self,
        page: &crate::sqlite::scope_bootstrap::PartitionExport,
        now: NTP64,
    ) -> Result<
        crate::sqlite::scope_bootstrap::ImportReport,
        crate::sqlite::scope_bootstrap::ImportError,
    > {
        self.engine_mut().db_mut().import_partitions(page, now)
    }

    /// Merges one page of a scoped bootstrap moving the cursor as `mode` says
    /// ([`Store::import_page`]); after the last page of a
    /// [`crate::sqlite::scope_bootstrap::ImportMode::Rebootstrap`], feed
    /// [`crate::session::SessionInput::Reopened`].
    pub fn import_page(
        &mut self,
        page: &crate::sqlite::scope_bootstrap::PartitionExport,
        now: NTP64,
        mode: crate::sqlite::scope_bootstrap::ImportMode,
    ) -> Result<
        crate::sqlite::scope_bootstrap::ImportReport,
        crate::sqlite::scope_bootstrap::ImportError,
    > {
        self.engine_mut().db_mut().import_page(page, now, mode)
    }

    /// A scoped replica's partitions as its feed last named them ([`Store::scope_partitions`]).
    pub fn scope_partitions(&self) -> Option<&[crate::scope::Partition]> {
        self.store().scope_partitions()
    }

    /// Takes the partitions a full node says this scoped replica's token grants
    /// ([`Store::adopt_partitions`]).
    pub fn adopt_partitions(
        &mut self,
        partitions: Vec<crate::scope::Partition>,
    ) -> Result<crate::sqlite::PartitionChange, StoreError> {
        self.engine_mut().db_mut().adopt_partitions(partitions)
    }

    /// The refused rows waiting to be fetched again ([`Store::refetch_keys`]).
    pub fn refetch_keys(&self) -> Result<Vec<(String, Vec<crate::value::Value>)>, StoreError> {
        self.store().refetch_keys()
    }

    /// Merges a refetch answer ([`Store::import_refetched`]).
    pub fn import_refetched(
        &mut self,
        page: &crate::sqlite::scope_bootstrap::PartitionExport,
        keys: &[(String, Vec<crate::value::Value>)],
        now: NTP64,
    ) -> Result<
        crate::sqlite::scope_bootstrap::ImportReport,
        crate::sqlite::scope_bootstrap::ImportError,
    > {
        self.engine_mut().db_mut().import_refetched(page, keys, now)
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
