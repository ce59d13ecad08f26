//! OTLP attribute values as JSON, and lookups by key.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use serde_json::{Map, Number, Value};

/// An attribute value as JSON: strings, booleans and numbers as themselves, arrays and
/// key-value lists as arrays and objects, bytes as lowercase hex. A non-finite double, which
/// JSON cannot hold, becomes its text (`"NaN"`, `"inf"`).
pub fn to_json(value: &AnyValue) -> Value {
    match &value.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(text)) => Value::String(text.clone()),
        Some(any_value::Value::BoolValue(flag)) => Value::Bool(*flag),
        Some(any_value::Value::IntValue(number)) => Value::from(*number),
        Some(any_value::Value::DoubleValue(number)) => Number::from_f64(*number)
            .map_or_else(|| Value::String(number.to_string()), Value::Number),
        Some(any_value::Value::ArrayValue(array)) => {
            Value::Array(array.values.iter().map(to_json).collect())
        }
        Some(any_value::Value::KvlistValue(list)) => Value::Object(to_map(&list.values)),
        Some(any_value::Value::BytesValue(bytes)) => Value::String(hex(bytes)),
        #[allow(unreachable_patterns)]
        Some(_) => Value::Null,
    }
}

/// Key-value pairs as a JSON object (a later duplicate key wins, as in the SDKs).
pub fn to_map(attributes: &[KeyValue]) -> Map<String, Value> {
    attributes
        .iter()
        .map(|pair| {
            let value = pair.value.as_ref().map_or(Value::Null, to_json);
            (pair.key.clone(), value)
        })
        .collect()
}

/// Lowercase hex, as OTLP JSON writes trace and span ids.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// The attributes of one span (or resource), looked up by key.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a>(pub &'a [KeyValue]);

impl<'a> Attributes<'a> {
    pub fn get(&self, key: &str) -> Option<&'a AnyValue> {
        // The last occurrence wins, as in `to_map`.
        self.0
            .iter()
            .rev()
            .find(|pair| pair.key == key)
            .and_then(|pair| pair.value.as_ref())
    }

    /// A string attribute (other types are not coerced: a session id must be a string).
    pub fn str(&self, key: &str) -> Option<&'a str> {
        text_of(self.get(key)?)
    }

    /// The first of `keys` that is set, as a string.
    pub fn first_str(&self, keys: &[&str]) -> Option<&'a str> {
        keys.iter().find_map(|key| self.str(key))
    }

    /// An integer attribute; a whole double or a decimal string counts too (exporters differ).
    pub fn int(&self, key: &str) -> Option<i64> {
        match &self.get(key)?.value {
            Some(any_value::Value::IntValue(number)) => Some(*number),
            Some(any_value::Value::DoubleValue(number))
                if number.fract() == 0.0 && number.abs() < 9.0e15 =>
            {
                Some(*number as i64)
            }
            Some(any_value::Value::StringValue(text)) => text.trim().parse().ok(),
            _ => None,
        }
    }

    /// A number attribute (integer or double, or a decimal string).
    pub fn number(&self, key: &str) -> Option<f64> {
        match &self.get(key)?.value {
            Some(any_value::Value::IntValue(number)) => Some(*number as f64),
            Some(any_value::Value::DoubleValue(number)) if number.is_finite() => Some(*number),
            Some(any_value::Value::StringValue(text)) => text
                .trim()
                .parse()
                .ok()
                .filter(|number: &f64| number.is_finite()),
            _ => None,
        }
    }

    /// The attribute as JSON, where its string holds JSON (as `gen_ai.input.messages` does
    /// when an SDK cannot record structured values): parsed; otherwise as it is.
    pub fn json(&self, key: &str) -> Option<Value> {
        Some(parsed_json(self.get(key)?))
    }
}

/// A non-empty string value.
pub fn text_of(value: &AnyValue) -> Option<&str> {
    match &value.value {
        Some(any_value::Value::StringValue(text)) if !text.is_empty() => Some(text),
        _ => None,
    }
}

/// A value as JSON; a string holding a JSON array or object is parsed (an answer that reads
/// `42` or `null` stays text).
pub fn parsed_json(value: &AnyValue) -> Value {
    match to_json(value) {
        Value::String(text) if text.trim_start().starts_with(['[', '{']) => {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn pair(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    #[test]
    fn values_become_json_of_the_same_shape() {
        let nested = any_value::Value::KvlistValue(KeyValueList {
            values: vec![pair("n", any_value::Value::IntValue(3))],
        });
        let attributes = vec![
            pair("s", any_value::Value::StringValue("x".into())),
            pair("b", any_value::Value::BoolValue(true)),
            pair("d", any_value::Value::DoubleValue(0.5)),
            pair("nan", any_value::Value::DoubleValue(f64::NAN)),
            pair("bytes", any_value::Value::BytesValue(vec![0x0f, 0xa0])),
            pair(
                "list",
                any_value::Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(nested),
                    }],
                }),
            ),
        ];
        assert_eq!(
            Value::Object(to_map(&attributes)),
            serde_json::json!({
                "s": "x", "b": true, "d": 0.5, "nan": "NaN", "bytes": "0fa0",
                "list": [{"n": 3}]
            })
        );
    }

    #[test]
    fn lookups_take_the_last_value_and_coerce_numbers_only() {
        let attributes = vec![
            pair("k", any_value::Value::StringValue("first".into())),
            pair("k", any_value::Value::StringValue("last".into())),
            pair("tokens", any_value::Value::StringValue("12".into())),
            pair("whole", any_value::Value::DoubleValue(7.0)),
            pair("id", any_value::Value::IntValue(5)),
            pair("empty", any_value::Value::StringValue(String::new())),
            pair("messages", any_value::Value::StringValue("[1, 2]".into())),
        ];
        let attributes = Attributes(&attributes);
        assert_eq!(attributes.str("k"), Some("last"));
        assert_eq!(attributes.int("tokens"), Some(12));
        assert_eq!(attributes.int("whole"), Some(7));
        assert_eq!(attributes.str("id"), None, "an integer is no id string");
        assert_eq!(attributes.first_str(&["empty", "k"]), Some("last"));
        assert_eq!(attributes.json("messages"), Some(serde_json::json!([1, 2])));
        assert_eq!(attributes.json("k"), Some(Value::from("last")));
        assert_eq!(
            attributes.json("tokens"),
            Some(Value::from("12")),
            "text stays text"
        );
    }
}
