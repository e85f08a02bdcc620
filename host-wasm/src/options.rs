//! The options object `openReplica` takes from JavaScript.

use std::time::Duration;

use harmonylite_core::column_merge::MergeConfig;
use harmonylite_core::engine::EngineConfig;
use harmonylite_core::hlc::{Clock, NodeId};
use harmonylite_core::scope::{PartitionRule, ScopeRules, ScopeRulesDoc};
use harmonylite_core::wire::Compression;
use js_sys::{Array, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};

use crate::error::ReplicaError;

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// SQLite's memory VFS: gone when the replica closes (node, workerd, a page).
    Memory,
    /// OPFS through the SyncAccessHandle pool (dedicated Workers only), in `directory`.
    Opfs {
        /// OPFS directory of the pool.
        directory: String,
    },
}

/// Parsed replica options.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// Database name (file name inside the VFS).
    pub name: String,
    /// Where the database lives.
    pub storage: Storage,
    /// A node id to use instead of the stored or random one.
    pub node_id: Option<NodeId>,
    /// 24 random bytes from the host: 16 for a new node id, 8 for the incarnation.
    pub random: [u8; 24],
    /// Tables never replicated.
    pub exclude_tables: Vec<String>,
    /// Compression of published batches.
    pub compression: Compression,
    /// Remote timestamps further ahead than this are refused.
    pub max_clock_ahead: Duration,
    /// Engine tuning.
    pub engine: EngineConfig,
    /// The change stream's name (in refusals).
    pub stream: String,
    /// Whether the stream is consumed at all (`false`: publish only).
    pub replicate: bool,
    /// The cluster's scope rules, as a full node gave them (`scopes`); default: none.
    pub scopes: ScopeRules,
    /// A scoped replica (`scoped: true`): it holds and writes only its partitions, publishes
    /// on scoped subjects and consumes a filtered feed.
    pub scoped: bool,
    /// Tables that merge by column and their counters (`merge`); `None`: as the database
    /// records (tables it does not know merge by row).
    pub merge: Option<MergeConfig>,
}

fn get(options: &JsValue, key: &str) -> JsValue {
    Reflect::get(options, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

fn invalid(key: &str, what: &str) -> ReplicaError {
    ReplicaError::InvalidArgument(format!("option {key}: {what}"))
}

fn opt_string(options: &JsValue, key: &str) -> Result<Option<String>, ReplicaError> {
    let v = get(options, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_string()
        .map(Some)
        .ok_or_else(|| invalid(key, "must be a string"))
}

fn opt_bool(options: &JsValue, key: &str) -> Result<Option<bool>, ReplicaError> {
    let v = get(options, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_bool()
        .map(Some)
        .ok_or_else(|| invalid(key, "must be a boolean"))
}

fn opt_positive(options: &JsValue, key: &str) -> Result<Option<f64>, ReplicaError> {
    let v = get(options, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    match v.as_f64() {
        Some(n) if n.is_finite() && n > 0.0 => Ok(Some(n)),
        _ => Err(invalid(key, "must be a positive number")),
    }
}

fn string_list(value: &JsValue, key: &str) -> Result<Vec<String>, ReplicaError> {
    if value.is_undefined() || value.is_null() {
        return Ok(Vec::new());
    }
    value
        .dyn_ref::<Array>()
        .ok_or_else(|| invalid(key, "must be an array of strings"))?
        .iter()
        .map(|v| {
            v.as_string()
                .ok_or_else(|| invalid(key, "must be an array of strings"))
        })
        .collect()
}

/// `scopes`: `{ partition: [{ name, claims: [..], tables: { table: [columns] } }], shared:
/// [..], hidden: [..] }` (the rules' data form, `ScopeRulesDoc`), checked like the sidecar's.
pub fn scopes_arg(options: &JsValue) -> Result<ScopeRules, ReplicaError> {
    let value = get(options, "scopes");
    if value.is_undefined() || value.is_null() {
        return Ok(ScopeRules::default());
    }
    if !value.is_object() {
        return Err(invalid("scopes", "must be an object"));
    }
    let rules = get(&value, "partition");
    let rules = if rules.is_undefined() || rules.is_null() {
        Vec::new()
    } else {
        rules
            .dyn_ref::<Array>()
            .ok_or_else(|| invalid("scopes.partition", "must be an array"))?
            .iter()
            .map(|rule| {
                let name = get(&rule, "name")
                    .as_string()
                    .ok_or_else(|| invalid("scopes.partition", "each rule needs a name"))?;
                let claims = string_list(&get(&rule, "claims"), "scopes.partition claims")?;
                let tables_value = get(&rule, "tables");
                if !tables_value.is_object() {
                    return Err(invalid(
                        "scopes.partition",
                        "each rule needs tables: { table: [columns] }",
                    ));
                }
                let tables = js_sys::Object::entries(tables_value.unchecked_ref())
                    .iter()
                    .map(|entry| {
                        let entry: Array = entry.unchecked_into();
                        let table = entry.get(0).as_string().unwrap_or_default();
                        let columns = string_list(&entry.get(1), "scopes.partition tables")?;
                        Ok((table, columns))
                    })
                    .collect::<Result<_, ReplicaError>>()?;
                Ok(PartitionRule {
                    name,
                    claims,
                    tables,
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let doc = ScopeRulesDoc {
        partition: rules,
        shared: string_list(&get(&value, "shared"), "scopes.shared")?,
        hidden: string_list(&get(&value, "hidden"), "scopes.hidden")?,
    };
    ScopeRules::from_doc(doc).map_err(|e| invalid("scopes", &e.to_string()))
}

/// `merge`: `{ column?: [table], counters?: ["table.column"] }` (the sidecar's `[merge]`
/// section), checked like the sidecar's: unknown keys and counters without their table are
/// refused. Absent or `null`: `None` (follow the database).
pub fn merge_arg(options: &JsValue) -> Result<Option<MergeConfig>, ReplicaError> {
    let value = get(options, "merge");
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    if !value.is_object() || Array::is_array(&value) {
        return Err(invalid(
            "merge",
            "must be an object { column: [tables], counters: [\"table.column\"] }",
        ));
    }
    let object: &js_sys::Object = value.unchecked_ref();
    for key in js_sys::Object::keys(object).iter() {
        let key = key.as_string().unwrap_or_default();
        if key != "column" && key != "counters" {
            return Err(invalid(
                "merge",
                &format!("unknown key {key:?} (the keys are \"column\" and \"counters\")"),
            ));
        }
    }
    let column = string_list(&get(&value, "column"), "merge.column")?;
    let counters = string_list(&get(&value, "counters"), "merge.counters")?;
    MergeConfig::new(&column, &counters)
        .map(Some)
        .map_err(|e| invalid("merge", e.strip_prefix("merge: ").unwrap_or(&e)))
}

fn millis(n: f64) -> Duration {
    Duration::from_secs_f64(n / 1000.0)
}

impl ReplicaOptions {
    /// Reads the options object.
    pub fn from_js(options: &JsValue) -> Result<Self, ReplicaError> {
        if !options.is_object() {
            return Err(ReplicaError::InvalidArgument(
                "options must be an object".into(),
            ));
        }
        let name = opt_string(options, "name")?.ok_or_else(|| invalid("name", "is required"))?;
        if name.is_empty() || name.contains('\0') {
            return Err(invalid("name", "must be a non-empty string without NUL"));
        }
        let storage = match opt_string(options, "storage")?.as_deref() {
            None | Some("memory") => Storage::Memory,
            Some("opfs") => Storage::Opfs {
                directory: opt_string(options, "opfsDirectory")?
                    .unwrap_or_else(|| ".harmonylite".into()),
            },
            Some(other) => {
                return Err(invalid(
                    "storage",
                    &format!("{other:?} is not \"memory\" or \"opfs\""),
                ))
            }
        };
        let node_id = opt_string(options, "nodeId")?
            .map(|s| {
                s.parse::<NodeId>().map_err(|_| {
                    invalid(
                        "nodeId",
                        "must be a non-zero hexadecimal number of at most 32 digits",
                    )
                })
            })
            .transpose()?;
        let random_value = get(options, "random");
        let random_bytes = random_value
            .dyn_ref::<Uint8Array>()
            .map(Uint8Array::to_vec)
            .ok_or_else(|| invalid("random", "must be a Uint8Array of 24 random bytes"))?;
        let random: [u8; 24] = random_bytes
            .get(..24)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| invalid("random", "must hold at least 24 bytes"))?;
        let exclude_value = get(options, "excludeTables");
        let exclude_tables = if exclude_value.is_undefined() || exclude_value.is_null() {
            Vec::new()
        } else {
            let array = exclude_value
                .dyn_ref::<Array>()
                .ok_or_else(|| invalid("excludeTables", "must be an array of strings"))?;
            array
                .iter()
                .map(|v| {
                    v.as_string()
                        .ok_or_else(|| invalid("excludeTables", "must be an array of strings"))
                })
                .collect::<Result<_, _>>()?
        };
        let compression = match opt_string(options, "compression")?.as_deref() {
            None | Some("lz4") => Compression::Lz4,
            Some("none") => Compression::None,
            Some(other) => {
                return Err(invalid(
                    "compression",
                    &format!("{other:?} is not \"lz4\" or \"none\""),
                ))
            }
        };
        let publish = opt_bool(options, "publish")?.unwrap_or(true);
        let replicate = opt_bool(options, "replicate")?.unwrap_or(true);
        let stream =
            opt_string(options, "stream")?.unwrap_or_else(|| "harmonylite-changes-1".into());
        let defaults = EngineConfig::default();
        let engine = EngineConfig {
            polling_interval: opt_positive(options, "pollingIntervalMs")?
                .map(millis)
                .unwrap_or(defaults.polling_interval),
            publish_window: opt_positive(options, "publishWindow")?
                .map(|n| n as usize)
                .unwrap_or(defaults.publish_window),
            apply_batch: opt_positive(options, "applyBatch")?
                .map(|n| n as usize)
                .unwrap_or(defaults.apply_batch),
            parked_retry_interval: opt_positive(options, "parkedRetryIntervalMs")?
                .map(millis)
                .unwrap_or(defaults.parked_retry_interval),
            publish,
            ..defaults
        };
        Ok(ReplicaOptions {
            name,
            storage,
            node_id,
            random,
            exclude_tables,
            compression,
            max_clock_ahead: opt_positive(options, "maxClockAheadMs")?
                .map(millis)
                .unwrap_or(Clock::DEFAULT_MAX_AHEAD),
            engine,
            stream,
            replicate,
            scopes: scopes_arg(options)?,
            scoped: opt_bool(options, "scoped")?.unwrap_or(false),
            merge: merge_arg(options)?,
        })
    }

    /// A node id from the host's randomness (never zero).
    pub fn random_node_id(&self) -> NodeId {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&self.random[..16]);
        NodeId::from_u128(u128::from_le_bytes(bytes))
            .unwrap_or_else(|| NodeId::from_u128(1).expect("1 is a valid node id"))
    }

    /// The incarnation from the host's randomness.
    pub fn random_incarnation(&self) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&self.random[16..24]);
        u64::from_le_bytes(bytes)
    }
}
