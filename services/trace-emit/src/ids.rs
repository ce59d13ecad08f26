//! Random v4 UUIDs for traces and steps.
//!
//! Each id draws fresh randomness from the OS (`Uuid::new_v4`): a generator kept in the
//! process would be copied by `fork`, and parent and child would then hand out the same ids.

/// A new random (version 4) UUID in its hyphenated lowercase form.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hyphenated_lowercase_version_4_uuids() {
        let id = new_id();
        assert_eq!(id.len(), uuid::fmt::Hyphenated::LENGTH);
        assert_eq!(id, id.to_lowercase());
        let parsed = uuid::Uuid::parse_str(&id).expect("uuid");
        assert_eq!(parsed.get_version_num(), 4);
    }
}
