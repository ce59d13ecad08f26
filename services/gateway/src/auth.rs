//! Client authentication: `Authorization: Bearer <key>` checked against the configured keys.
//!
//! Every configured key is compared, each in time independent of where the bytes differ, so
//! the answer's timing tells an attacker neither which key nor how much of one matched. The
//! presented key is never logged and never forwarded: the sessionizer ships with its own key.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use subtle::{Choice, ConstantTimeEq};
use trace_model::secret::Secret;

/// The keys clients may present.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    keys: Vec<Secret>,
}

/// Whether `presented` equals `expected`, in time that depends on `expected`'s length only.
///
/// `subtle`'s slice comparison returns at once when the lengths differ, which would let the
/// answer's timing tell a guess of the key's length from a wrong one. So the presented key is
/// cut or zero-padded to the expected length and compared over all of it, and the lengths are
/// compared apart, also in constant time.
fn matches(presented: &[u8], expected: &[u8]) -> Choice {
    let mut padded = vec![0u8; expected.len()];
    let num_common = presented.len().min(expected.len());
    padded[..num_common].copy_from_slice(&presented[..num_common]);
    let same_length = (presented.len() as u64).ct_eq(&(expected.len() as u64));
    padded.ct_eq(expected) & same_length
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
        // No early exit: every key is compared whatever matched before. `Choice`'s `|` does
        // not short-circuit, and `subtle` hides its values from the optimizer, which therefore
        // cannot add one.
        let matched = self.keys.iter().fold(Choice::from(0), |matched, key| {
            matched | matches(presented.as_bytes(), key.expose().as_bytes())
        });
        bool::from(matched)
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
    fn compares_whole_byte_strings_of_any_length() {
        let equal = |presented: &[u8], expected: &[u8]| bool::from(matches(presented, expected));
        assert!(equal(b"abc", b"abc"));
        assert!(!equal(b"abd", b"abc"));
        assert!(!equal(b"ab", b"abc"));
        // Padding with zeros must not make a shorter key equal to one ending in zeros.
        assert!(!equal(b"abc", b"abc\0"));
        assert!(!equal(b"abc\0", b"abc"));
        assert!(!equal(b"", b"a"));
        assert!(equal(b"", b""));
    }
}
