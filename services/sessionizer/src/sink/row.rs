//! The rows the sink ships, as JSON text.

/// One row ready to ship: JSON text, serialized once and copied verbatim into request bodies
/// and dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowJson(Box<str>);

/// The buffer rows are written into is kept per thread up to this size; after a rare larger
/// row it is shrunk back rather than held at that row's size by the thread.
const KEPT_BUFFER_BYTES: usize = 64 * 1024;

thread_local! {
    static ROW_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl RowJson {
    /// serde_json's text of `row` (the bytes `to_string` writes), copied out of a buffer kept
    /// per thread: a fresh `Vec` per row grew from 128 bytes, four to five reallocations and
    /// copies for a 2-3 KB row, 6 % of the pipeline's CPU (perf).
    ///
    /// # Errors
    /// When `row`'s `Serialize` fails (a map with non-string keys).
    pub fn try_from_serialize<T: serde::Serialize + ?Sized>(
        row: &T,
    ) -> Result<Self, serde_json::Error> {
        ROW_BUFFER.with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut buffer) => {
                buffer.clear();
                let row = write(&mut buffer, row);
                if buffer.capacity() > KEPT_BUFFER_BYTES {
                    buffer.clear();
                    buffer.shrink_to(KEPT_BUFFER_BYTES);
                }
                row
            }
            // A row serialized while another is (none is) gets a buffer of its own.
            Err(_) => write(&mut Vec::new(), row),
        })
    }

    /// A row from JSON text, checked to be one JSON value.
    ///
    /// # Errors
    /// When `json` is not JSON.
    pub fn try_from_text(json: impl Into<Box<str>>) -> Result<Self, serde_json::Error> {
        let json = json.into();
        serde_json::from_str::<serde::de::IgnoredAny>(&json)?;
        Ok(RowJson(json))
    }

    /// The row's JSON text.
    #[must_use]
    pub fn get(&self) -> &str {
        &self.0
    }
}

fn write<T: serde::Serialize + ?Sized>(
    buffer: &mut Vec<u8>,
    row: &T,
) -> Result<RowJson, serde_json::Error> {
    serde_json::to_writer(&mut *buffer, row)?;
    // serde_json writes UTF-8 only; the check stands in for `unsafe`, which the crate forbids.
    let text = std::str::from_utf8(buffer)
        .map_err(|_| serde::ser::Error::custom("serde_json wrote invalid UTF-8"))?;
    Ok(RowJson(text.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_what_serde_json_writes() {
        let row = json!({"output": "caf\u{e9} \"quoted\"\n", "tokens": 12, "steps": [{"a": null}]});
        let written = RowJson::try_from_serialize(&row).expect("serializes");
        assert_eq!(
            written.get(),
            serde_json::to_string(&row).expect("serializes")
        );
    }

    #[test]
    fn a_row_larger_than_the_kept_buffer_is_whole_and_its_buffer_shrunk_back() {
        let large = json!({"output": "x".repeat(3 * KEPT_BUFFER_BYTES)});
        let large_row = RowJson::try_from_serialize(&large).expect("serializes");
        assert_eq!(
            large_row.get().len(),
            3 * KEPT_BUFFER_BYTES + r#"{"output":""}"#.len()
        );
        ROW_BUFFER.with_borrow(|buffer| assert!(buffer.capacity() <= KEPT_BUFFER_BYTES));
        let small_row = RowJson::try_from_serialize(&json!({"output": "y"})).expect("serializes");
        assert_eq!(small_row.get(), r#"{"output":"y"}"#);
    }

    #[test]
    fn a_shorter_row_after_a_longer_one_is_its_own_text_only() {
        let longer = json!({"output": "a long answer, longer than the next row"});
        let shorter = json!({"output": "no"});
        RowJson::try_from_serialize(&longer).expect("serializes");
        let row = RowJson::try_from_serialize(&shorter).expect("serializes");
        assert_eq!(row.get(), r#"{"output":"no"}"#);
    }

    #[test]
    fn a_row_serialized_while_another_is_gets_a_buffer_of_its_own() {
        struct Nested;
        impl serde::Serialize for Nested {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let inner = RowJson::try_from_serialize(&json!({"inner": 1}))
                    .map_err(serde::ser::Error::custom)?;
                serializer.serialize_str(inner.get())
            }
        }
        let row = RowJson::try_from_serialize(&Nested).expect("serializes");
        assert_eq!(row.get(), r#""{\"inner\":1}""#);
    }

    #[test]
    fn a_failed_serialization_is_an_error_and_leaves_no_text_behind() {
        let bad: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        assert!(RowJson::try_from_serialize(&bad).is_err());
        assert_eq!(
            RowJson::try_from_serialize(&json!([1]))
                .expect("serializes")
                .get(),
            "[1]"
        );
    }

    #[test]
    fn text_must_be_one_json_value() {
        assert_eq!(
            RowJson::try_from_text(r#"{"a": 1}"#).expect("JSON").get(),
            r#"{"a": 1}"#
        );
        assert!(RowJson::try_from_text("{\"a\": ").is_err());
        assert!(RowJson::try_from_text("{} {}").is_err());
    }
}
