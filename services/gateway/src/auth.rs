//! Client authentication: `Authorization: Bearer <key>` checked against the configured keys.
//!
//! Every configured key is compared, each in time independent of where the bytes differ, so
//! the answer's timing tells an attacker neither which key nor how much of one matched. The
//! presented key is never logged and never forwarded: the sessionizer ships with its own key.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use trace_model::secret::Secret;

/// The keys clients may present.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    keys: Vec<Secret>,
}

/// Equality whose running time depends on the lengths only, not on the contents.
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    // Different lengths still walk the expected key, so the time does not reveal a prefix.
    let mut difference = u8::from(presented.len() != expected.len());
    for (index, expected_byte) in expected.iter().enumerate() {
        let presented_byte = presented.get(index).copied().unwrap_or(0);
        difference |= presented_byte ^ expected_byte;
    }
    std::hint::black_box(difference) == 0
}

impl ApiKeys {
    pub fn new(keys: Vec<Secret>) -> Self {
        ApiKeys { keys }
    }

    /// Whether `headers` carry `Authorization: Bearer <one of the keys>`.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(presented) = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
        else {
            return false;
        };
        // No early exit: every key is compared whatever matched before.
        self.keys.iter().fold(false, |matched, key| {
            matched | constant_time_eq(presented.as_bytes(), key.expose().as_bytes())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(authorization).expect("header value"),
        );
        headers
    }

    fn keys() -> ApiKeys {
        ApiKeys::new(vec![Secret::new("key-one"), Secret::new("key-two")])
    }

    #[test]
    fn accepts_any_configured_key_as_a_bearer_token() {
        assert!(keys().allows(&headers("Bearer key-one")));
        assert!(keys().allows(&headers("Bearer key-two")));
    }

    #[test]
    fn refuses_wrong_missing_prefixed_and_truncated_keys() {
        for authorization in [
            "Bearer key-three",
            "Bearer key-on",
            "Bearer key-one-and-more",
            "Bearer ",
            "key-one",
            "Basic a2V5LW9uZQ==",
        ] {
            assert!(!keys().allows(&headers(authorization)), "{authorization}");
        }
        assert!(!keys().allows(&HeaderMap::new()));
        assert!(!ApiKeys::new(Vec::new()).allows(&headers("Bearer ")));
    }

    #[test]
    fn compares_whole_byte_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abc\0", b"abc"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
