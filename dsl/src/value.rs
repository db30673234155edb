//! Conversions between Rhai values and JSON.

use rhai::Dynamic;
use serde_json::Value;

/// Convert a JSON value to a Rhai value (objects become maps, arrays arrays).
pub fn to_dynamic(value: &Value) -> Dynamic {
    rhai::serde::to_dynamic(value).unwrap_or(Dynamic::UNIT)
}

/// Convert a Rhai value to JSON. Values JSON cannot express (function pointers, custom types)
/// become their display string.
pub fn to_json(value: &Dynamic) -> Value {
    if value.is_unit() {
        return Value::Null;
    }
    rhai::serde::from_dynamic::<Value>(value).unwrap_or_else(|_| Value::String(value.to_string()))
}
