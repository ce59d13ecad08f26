//! The rows the sink ships, as JSON text.

/// One row ready to ship: JSON text, serialized once and copied verbatim into request bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowJson(Box<str>);

/// Rows serialize into a buffer kept per thread up to this size: one allocation of the
/// row's own size, where a fresh `Vec` grew from 128 bytes (four to five reallocations and
/// copies for a 2-3 KB row: 6 % of the pipeline's CPU, in perf).
const KEPT_BUFFER_BYTES: usize = 64 * 1024;

thread_local! {
    static ROW_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl RowJson {
    /// Serializes `row` with serde_json.
    ///
    /// # Errors
    /// When `row`'s `Serialize` fails (a map with non-string keys).
    pub fn serialize<T: serde::Serialize + ?Sized>(row: &T) -> Result<Self, serde_json::Error> {
        ROW_BUFFER.with_borrow_mut(|buffer| {
            buffer.clear();
            let written = serde_json::to_writer(&mut *buffer, row);
            let text = std::str::from_utf8(buffer)
                .map(Box::<str>::from)
                .map_err(|_| serde::ser::Error::custom("serde_json wrote invalid UTF-8"));
            if buffer.capacity() > KEPT_BUFFER_BYTES {
                *buffer = Vec::new();
            }
            written.and(text).map(RowJson)
        })
    }

    /// A row from JSON text, checked to be one JSON value.
    ///
    /// # Errors
    /// When `text` is not JSON.
    pub fn from_text(text: impl Into<Box<str>>) -> Result<Self, serde_json::Error> {
        let text = text.into();
        serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
        Ok(RowJson(text))
    }

    /// The row's JSON text.
    #[must_use]
    pub fn get(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_what_serde_json_writes() {
        let row = json!({"output": "caf\u{e9} \"quoted\"\n", "tokens": 12, "steps": [{"a": null}]});
        let written = RowJson::serialize(&row).expect("serializes");
        assert_eq!(
            written.get(),
            serde_json::to_string(&row).expect("serializes")
        );
    }

    #[test]
    fn a_row_larger_than_the_kept_buffer_is_whole_and_the_next_row_unaffected() {
        let large = json!({"output": "x".repeat(3 * KEPT_BUFFER_BYTES)});
        let small = json!({"output": "y"});
        let large_row = RowJson::serialize(&large).expect("serializes");
        let small_row = RowJson::serialize(&small).expect("serializes");
        assert_eq!(
            large_row.get().len(),
            3 * KEPT_BUFFER_BYTES + r#"{"output":""}"#.len()
        );
        assert_eq!(small_row.get(), r#"{"output":"y"}"#);
        ROW_BUFFER.with_borrow(|buffer| assert!(buffer.capacity() <= KEPT_BUFFER_BYTES));
    }

    #[test]
    fn a_failed_serialization_is_an_error_and_leaves_no_text_behind() {
        let bad: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        assert!(RowJson::serialize(&bad).is_err());
        assert_eq!(
            RowJson::serialize(&json!([1])).expect("serializes").get(),
            "[1]"
        );
    }

    #[test]
    fn text_must_be_one_json_value() {
        assert_eq!(
            RowJson::from_text(r#"{"a": 1}"#).expect("JSON").get(),
            r#"{"a": 1}"#
        );
        assert!(RowJson::from_text("{\"a\": ").is_err());
        assert!(RowJson::from_text("{} {}").is_err());
    }
}
