//! Values between JavaScript and SQLite.
//!
//! Parameters: `null`/`undefined` → NULL, `boolean` → 0/1, a safe-integer `number` →
//! INTEGER, any other `number` → REAL, `bigint` → INTEGER (must fit in 64 bits), `string` →
//! TEXT, `Uint8Array`/`ArrayBuffer` → BLOB. Anything else is an `InvalidArgumentError`.
//!
//! Results: INTEGER → `number` when it is a safe integer, else `bigint`; REAL → `number`;
//! TEXT → `string`; BLOB → `Uint8Array`; NULL → `null`.

use js_sys::{Array, BigInt, Object, Reflect, Uint8Array};
use rusqlite::types::{Value, ValueRef};
use rusqlite::Statement;
use wasm_bindgen::{JsCast, JsValue};

use crate::error::ReplicaError;

/// Largest integer a JS `number` holds exactly.
const MAX_SAFE: i64 = (1 << 53) - 1;

/// Converts one JS parameter value.
pub fn to_sql(value: &JsValue, what: &dyn Fn() -> String) -> Result<Value, ReplicaError> {
    if value.is_null() || value.is_undefined() {
        return Ok(Value::Null);
    }
    if let Some(b) = value.as_bool() {
        return Ok(Value::Integer(b as i64));
    }
    if let Some(n) = value.as_f64() {
        if n.fract() == 0.0 && n.abs() <= MAX_SAFE as f64 {
            return Ok(Value::Integer(n as i64));
        }
        return Ok(Value::Real(n));
    }
    if let Some(s) = value.as_string() {
        return Ok(Value::Text(s));
    }
    if value.is_bigint() {
        let big: &BigInt = value.unchecked_ref();
        return i64::try_from(big.clone()).map(Value::Integer).map_err(|_| {
            ReplicaError::InvalidArgument(format!("{} does not fit in 64 bits", what()))
        });
    }
    if let Some(bytes) = value.dyn_ref::<Uint8Array>() {
        return Ok(Value::Blob(bytes.to_vec()));
    }
    if let Some(buffer) = value.dyn_ref::<js_sys::ArrayBuffer>() {
        return Ok(Value::Blob(Uint8Array::new(buffer).to_vec()));
    }
    Err(ReplicaError::InvalidArgument(format!(
        "{} has an unsupported type (use null, boolean, number, bigint, string, Uint8Array or ArrayBuffer)",
        what()
    )))
}

/// Converts one SQLite value for JS.
pub fn to_js(value: ValueRef<'_>) -> JsValue {
    match value {
        ValueRef::Null => JsValue::NULL,
        ValueRef::Integer(i) if (-MAX_SAFE..=MAX_SAFE).contains(&i) => JsValue::from_f64(i as f64),
        ValueRef::Integer(i) => BigInt::from(i).into(),
        ValueRef::Real(f) => JsValue::from_f64(f),
        ValueRef::Text(t) => JsValue::from_str(&String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => Uint8Array::from(b).into(),
    }
}

/// Binds `params` to `stmt`: an array binds by position, a plain object by name (`:name`,
/// `@name`, `$name` look up `name`), `undefined`/`null` binds nothing.
pub fn bind(stmt: &mut Statement<'_>, params: &JsValue) -> Result<(), ReplicaError> {
    let count = stmt.parameter_count();
    if params.is_undefined() || params.is_null() {
        if count > 0 {
            return Err(ReplicaError::InvalidArgument(format!(
                "the statement has {count} parameters but none were given"
            )));
        }
        return Ok(());
    }
    if let Some(array) = params.dyn_ref::<Array>() {
        let given = array.length() as usize;
        if given != count {
            return Err(ReplicaError::InvalidArgument(format!(
                "the statement has {count} parameters but {given} were given"
            )));
        }
        for i in 0..count {
            let value = to_sql(&array.get(i as u32), &|| format!("parameter {}", i + 1))?;
            stmt.raw_bind_parameter(i + 1, value)?;
        }
        return Ok(());
    }
    if params.is_object() {
        for i in 1..=count {
            let Some(name) = stmt.parameter_name(i).map(str::to_owned) else {
                return Err(ReplicaError::InvalidArgument(format!(
                    "parameter {i} is positional; pass an array"
                )));
            };
            let key = name.trim_start_matches([':', '@', '$']);
            let value = Reflect::get(params, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED);
            if value.is_undefined()
                && !Reflect::has(params, &JsValue::from_str(key)).unwrap_or(false)
            {
                return Err(ReplicaError::InvalidArgument(format!(
                    "no value for parameter {name}"
                )));
            }
            let value = to_sql(&value, &|| format!("parameter {name}"))?;
            stmt.raw_bind_parameter(i, value)?;
        }
        return Ok(());
    }
    Err(ReplicaError::InvalidArgument(
        "params must be an array (positional) or an object (named)".into(),
    ))
}

/// Builds a plain object from column names and a row's values.
pub fn row_object(names: &[JsValue], row: &rusqlite::Row<'_>) -> Result<Object, ReplicaError> {
    let object = Object::new();
    for (i, name) in names.iter().enumerate() {
        let value = to_js(row.get_ref(i)?);
        Reflect::set(&object, name, &value)
            .map_err(|_| ReplicaError::InvalidArgument("cannot build a result row".into()))?;
    }
    Ok(object)
}

/// A JS array of strings.
pub fn string_array<'a>(items: impl IntoIterator<Item = &'a String>) -> Array {
    items.into_iter().map(|s| JsValue::from_str(s)).collect()
}
