//! A scoped replica's side of scopes: the rules and partitions a full node gives it, the
//! scoped bootstrap, and the refetch of refused writes (see `harmonylite_core::sqlite`'s
//! `refusal`, `scope_bootstrap` and `scope_refetch`).

use harmonylite_core::report::RefusedWrite;
use harmonylite_core::scope::Partition;
use harmonylite_core::sqlite::scope_bootstrap::{
    BootstrapReply, ImportMode, PartitionExport, RefetchKey,
};
use harmonylite_core::value::Value;
use js_sys::Array;
use wasm_bindgen::prelude::*;

use super::{now, num, object, Replica};
use crate::convert;
use crate::error::ReplicaError;

#[wasm_bindgen]
impl Replica {
    /// Whether this replica knows the cluster's scope rules (a scoped replica learns them
    /// from a full node, then keeps them in its database for offline starts).
    #[wasm_bindgen(js_name = hasScopeRules)]
    pub fn has_scope_rules(&self) -> Result<bool, JsValue> {
        Ok(self.session()?.scope_rules().is_enabled())
    }

    /// Takes the scope rules a full node gave (`{ partition, shared, hidden }`, the rules'
    /// data form) as a scoped replica's: stored, and used from the next capture on. Returns
    /// whether they changed (the store was reopened with them).
    #[wasm_bindgen(js_name = adoptScopeRules)]
    pub fn adopt_scope_rules(
        &mut self,
        monotonic_ms: f64,
        wall_ms: f64,
        rules: JsValue,
    ) -> Result<bool, JsValue> {
        let holder = js_sys::Object::new();
        js_sys::Reflect::set(&holder, &JsValue::from_str("scopes"), &rules)?;
        let rules = crate::options::scopes_arg(&holder)?;
        if *self.session()?.scope_rules() == rules {
            return Ok(false);
        }
        self.reopen_store(monotonic_ms, wall_ms, |conn, options| {
            options.scopes = rules;
            options.writer = harmonylite_core::scope::Writer::Scoped;
            Ok(conn)
        })?;
        Ok(true)
    }

    /// The tables a scoped bootstrap brings (the rules' partitioned and shared tables),
    /// lowercase; empty before the rules are known.
    #[wasm_bindgen(js_name = scopeTables)]
    pub fn scope_tables(&self) -> Result<Array, JsValue> {
        let doc = self.session()?.scope_rules().to_doc();
        let tables: Vec<String> = doc
            .partition
            .iter()
            .flat_map(|rule| rule.tables.keys().cloned())
            .chain(doc.shared)
            .collect();
        Ok(convert::string_array(&tables))
    }

    /// Merges one page of a scoped bootstrap: `reply` is a full node's postcard
    /// `BootstrapReply`. Returns `{ finished, next, rows, tombstones, skippedTables, cursor }`
    /// (`next`: the `after` of the next page's request, null on the last page). When
    /// `finished`, the cursor moved: feed `Reopened` (kind 13). `rebootstrap`: the replica
    /// is not new (its token grants partitions it did not have): the last page puts the
    /// cursor at the covered sequence even when that is behind it.
    #[wasm_bindgen(js_name = importBootstrapPage)]
    pub fn import_bootstrap_page(
        &mut self,
        monotonic_ms: f64,
        wall_ms: f64,
        reply: &[u8],
        rebootstrap: bool,
    ) -> Result<JsValue, JsValue> {
        let page = decode_page(reply, "scoped bootstrap")?;
        let mode = if rebootstrap {
            ImportMode::Rebootstrap
        } else {
            ImportMode::Bootstrap
        };
        let now = now(monotonic_ms, wall_ms);
        let report = self
            .session_mut()?
            .import_page(&page, now.wall, mode)
            .map_err(|e| {
                ReplicaError::Storage(format!("importing a scoped bootstrap page: {e}"))
            })?;
        let skipped: Vec<String> = report
            .skipped_tables
            .iter()
            .map(|(table, _)| table.clone())
            .collect();
        Ok(object(&[
            ("finished", report.finished.into()),
            (
                "next",
                page.next
                    .as_ref()
                    .map_or(JsValue::NULL, |p| JsValue::from(p.to_token())),
            ),
            ("rows", num(report.rows as f64)),
            ("tombstones", num(report.tombstones as f64)),
            ("skippedTables", convert::string_array(&skipped).into()),
            ("cursor", num(report.cursor as f64)),
        ]))
    }

    /// The partitions a full node says this replica's token grants (tokens as the feed
    /// reply names them): stored, writes outside them are refused from now on, and rows of
    /// partitions it no longer has are removed locally. Returns `{ gained, lost,
    /// rowsForgotten, knownBefore, refused }` (`refused`: writes captured first that the old
    /// partitions did not allow, as the `refused` events carry them). When `knownBefore` and
    /// `gained` is not empty, bootstrap again (`importBootstrapPage(.., true)`).
    #[wasm_bindgen(js_name = adoptScopePartitions)]
    pub fn adopt_scope_partitions(&mut self, tokens: Vec<String>) -> Result<JsValue, JsValue> {
        let partitions = tokens
            .iter()
            .map(|t| {
                Partition::from_token(t).ok_or_else(|| {
                    ReplicaError::InvalidArgument(format!(
                        "the feed named {t:?}, which is not a partition"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let change = self
            .session_mut()?
            .adopt_partitions(partitions)
            .map_err(|e| ReplicaError::Storage(format!("adopting the scope partitions: {e}")))?;
        let tokens = |list: &[Partition]| -> Array {
            list.iter().map(|p| JsValue::from(p.token())).collect()
        };
        Ok(object(&[
            ("gained", tokens(&change.gained).into()),
            ("lost", tokens(&change.lost).into()),
            ("rowsForgotten", num(change.rows_forgotten as f64)),
            ("knownBefore", change.known_before.into()),
            ("refused", refused_writes_to_js(&change.refused_writes)),
        ]))
    }

    /// The partitions this replica's token grants as its feed last named them (tokens),
    /// or null before it learned them.
    #[wasm_bindgen(js_name = scopePartitions)]
    pub fn scope_partitions(&self) -> Result<JsValue, JsValue> {
        Ok(self
            .session()?
            .scope_partitions()
            .map_or(JsValue::NULL, |list| {
                list.iter()
                    .map(|p| JsValue::from(p.token()))
                    .collect::<Array>()
                    .into()
            }))
    }

    /// The refused rows waiting to be fetched again, as the `keys` of a refetch request
    /// (`[{ table, key }]`, keys opaque), at most `limit`.
    #[wasm_bindgen(js_name = refetchKeys)]
    pub fn refetch_keys(&self, limit: u32) -> Result<JsValue, JsValue> {
        let keys = self
            .session()?
            .refetch_keys()
            .map_err(|e| ReplicaError::Storage(format!("reading the refetch queue: {e}")))?;
        let list: Array = keys
            .iter()
            .take(limit as usize)
            .map(|(table, key)| {
                let k = RefetchKey::new(table, key);
                object(&[("table", k.table.into()), ("key", k.key.into())])
            })
            .collect();
        Ok(list.into())
    }

    /// Merges a full node's answer to a refetch of `keys` (as [`Replica::refetch_keys`]
    /// gave them): rows it sent come back, the others stay deleted; the keys leave the
    /// queue. Returns the number of rows merged.
    #[wasm_bindgen(js_name = importRefetched)]
    pub fn import_refetched(
        &mut self,
        monotonic_ms: f64,
        wall_ms: f64,
        reply: &[u8],
        keys: JsValue,
    ) -> Result<f64, JsValue> {
        let page = decode_page(reply, "refetch")?;
        let keys: Vec<(String, Vec<Value>)> = Array::from(&keys)
            .iter()
            .map(|entry| {
                let field = |name: &str| {
                    js_sys::Reflect::get(&entry, &JsValue::from_str(name))
                        .ok()
                        .and_then(|v| v.as_string())
                };
                let key = RefetchKey {
                    table: field("table").unwrap_or_default(),
                    key: field("key").unwrap_or_default(),
                };
                key.key_values()
                    .map(|values| (key.table.clone(), values))
                    .ok_or_else(|| {
                        ReplicaError::InvalidArgument(format!(
                            "a refetch key of table {:?} is malformed",
                            key.table
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        let now = now(monotonic_ms, wall_ms);
        let report = self
            .session_mut()?
            .import_refetched(&page, &keys, now.wall)
            .map_err(|e| ReplicaError::Storage(format!("importing refetched rows: {e}")))?;
        Ok(report.remote_won as f64)
    }
}

/// A full node's postcard `BootstrapReply` as a page; its refusal or a malformed reply as
/// an error naming `what` was asked.
fn decode_page(reply: &[u8], what: &str) -> Result<PartitionExport, ReplicaError> {
    match BootstrapReply::decode(reply) {
        Ok(BootstrapReply::Page(page)) => Ok(page),
        Ok(BootstrapReply::Refused { reason }) => Err(ReplicaError::Storage(format!(
            "the {what} was refused: {reason}"
        ))),
        Err(e) => Err(ReplicaError::Storage(format!(
            "a malformed {what} reply: {e}"
        ))),
    }
}

/// Refused writes for JS: `[{ table, key, reason }]`, key values as `query` returns them.
pub(super) fn refused_writes_to_js(writes: &[RefusedWrite]) -> JsValue {
    writes
        .iter()
        .map(|w| {
            let key: Array = w.key.iter().map(value_to_js).collect();
            object(&[
                ("table", w.table.as_str().into()),
                ("key", key.into()),
                ("reason", w.reason.as_str().into()),
            ])
        })
        .collect::<Array>()
        .into()
}

/// One replicated value for JS, as `query` returns it.
fn value_to_js(value: &Value) -> JsValue {
    use rusqlite::types::ValueRef;
    convert::to_js(match value {
        Value::Null => ValueRef::Null,
        Value::Integer(i) => ValueRef::Integer(*i),
        Value::Real(f) => ValueRef::Real(*f),
        Value::Text(t) => ValueRef::Text(t.as_bytes()),
        Value::Blob(b) => ValueRef::Blob(b),
    })
}
