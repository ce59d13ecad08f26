//! Retry policy for the Openlayer sink: what to do after one attempt, and how long to wait.
//!
//! Pure: the decision comes from the HTTP status and headers (or the kind of transport
//! failure), the wait from the attempt number and an injected jitter value, and the clock is a
//! parameter. The rules follow Openlayer's official client (see `openlayer-api.md`):
//!
//! - retried: connection errors, timeouts, 408, 409, 429 and every 5xx;
//! - 413 is [`RetryAction::TooLarge`]: the caller splits the batch instead of retrying it;
//! - any other 4xx, and statuses that are neither success nor error (1xx, 3xx: redirects are
//!   not followed), are refused for good.
//!
//! # Waits
//! Capped exponential backoff with *equal jitter*: the n-th wait (from 0) is drawn uniformly
//! from `[b/2, b]` where `b = min(initial · 2ⁿ, max)`. Equal rather than full jitter keeps a
//! floor under every wait, so a flapping server is never hammered with near-zero waits, while
//! still spreading clients apart.
//!
//! When the server names a wait (`retry-after-ms`, then `Retry-After` in seconds or as an
//! HTTP date), the wait is the larger of that hint and the jittered backoff: never less than
//! the server asked for. The hint is capped at [`MAX_SERVER_WAIT`] (5 minutes) so a broken or
//! hostile header cannot park a partition for hours; the retry deadline still applies on top.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use std::time::{Duration, SystemTime};

/// Longest wait a server's `Retry-After` can impose. Openlayer's client ignores hints over a
/// minute; we honour longer ones (a rate limit that says 2 minutes means it), up to this.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(5 * 60);

/// Shortest backoff, whatever the settings say: a zero backoff would spin against a server
/// that refuses connections.
const MIN_BACKOFF: Duration = Duration::from_millis(1);

/// Attempts past this do not grow the backoff further (and cannot overflow the shift).
const MAX_DOUBLINGS: u32 = 32;

/// What to do after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    /// Accepted (2xx).
    Successful,
    /// Transient: try the same request again, no earlier than `after` when the server said so.
    /// `reason` is a bounded metric label.
    Retry {
        reason: &'static str,
        after: Option<Duration>,
    },
    /// Refused for good; `reason` is a bounded metric label.
    DontRetry { reason: &'static str },
    /// 413: the body is too large; split the batch and send the halves.
    TooLarge,
}

/// How a request failed when no response came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// The request or the connection timed out.
    Timeout,
    /// No connection could be made (refused, DNS, TLS handshake).
    Connect,
    /// The connection broke while sending or reading (reset, closed early).
    Interrupted,
    /// The request could not even be built; retrying cannot help.
    InvalidRequest,
}

impl TransportError {
    /// Classifies a reqwest error.
    pub fn classify(error: &reqwest::Error) -> Self {
        if error.is_builder() {
            TransportError::InvalidRequest
        } else if error.is_timeout() {
            TransportError::Timeout
        } else if error.is_connect() {
            TransportError::Connect
        } else {
            TransportError::Interrupted
        }
    }
}

impl RetryAction {
    /// The action for a response with `status` and `headers`, received at `now` (used to turn
    /// a `Retry-After` date into a wait).
    pub fn for_response(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Self {
        let retry = |reason| RetryAction::Retry {
            reason,
            after: server_wait_hint(headers, now),
        };
        match status.as_u16() {
            200..=299 => RetryAction::Successful,
            408 => retry("request_timeout"),
            409 => retry("conflict"),
            429 => retry("rate_limited"),
            500..=599 => retry("server_error"),
            413 => RetryAction::TooLarge,
            code if status.is_client_error() => RetryAction::DontRetry {
                reason: client_error_reason(code),
            },
            300..=399 => RetryAction::DontRetry { reason: "redirect" },
            _ => RetryAction::DontRetry {
                reason: "unexpected_status",
            },
        }
    }

    /// The action when no response came back.
    pub fn for_transport_error(error: TransportError) -> Self {
        match error {
            TransportError::Timeout => RetryAction::Retry {
                reason: "timeout",
                after: None,
            },
            TransportError::Connect => RetryAction::Retry {
                reason: "connection",
                after: None,
            },
            TransportError::Interrupted => RetryAction::Retry {
                reason: "interrupted",
                after: None,
            },
            TransportError::InvalidRequest => RetryAction::DontRetry {
                reason: "invalid_request",
            },
        }
    }
}

/// Metric label of a 4xx that is not retried.
fn client_error_reason(code: u16) -> &'static str {
    match code {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        422 => "unprocessable",
        _ => "client_error",
    }
}

/// Whether a refusal with `status` may be caused by some rows only (malformed or unprocessable
/// content), so that sending smaller parts of the batch can get the other rows through.
/// Key, permission and pipeline errors (401, 403, 404) hit every row alike.
pub fn may_be_row_specific(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 422)
}

/// The wait the server asked for: `retry-after-ms` (milliseconds, may be fractional), else
/// `Retry-After` (seconds, or an HTTP date relative to `now`; a date in the past means no
/// wait). Dates are read in the three forms RFC 9110 says recipients must accept: the
/// IMF-fixdate servers send and the obsolete RFC 850 and asctime forms. Unparseable values are
/// ignored, as Openlayer's client does.
pub fn server_wait_hint(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header_str = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(millis) = header_str("retry-after-ms").and_then(parse_non_negative) {
        return Some(duration_from_secs_saturating(millis / 1000.0));
    }
    let retry_after = header_str("retry-after")?.trim();
    if let Some(seconds) = parse_non_negative(retry_after) {
        return Some(duration_from_secs_saturating(seconds));
    }
    let at = httpdate::parse_http_date(retry_after).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn parse_non_negative(text: &str) -> Option<f64> {
    let value: f64 = text.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value)
}

fn duration_from_secs_saturating(seconds: f64) -> Duration {
    // The only failure left for a finite non-negative value is overflow.
    Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
}

/// Capped exponential backoff with equal jitter; one per batch being shipped.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// Waits handed out since the last success.
    num_waits: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(MIN_BACKOFF);
        Backoff {
            initial,
            max: max.max(initial),
            num_waits: 0,
        }
    }

    /// The wait before the next attempt. `server_hint` is what the server asked for (never
    /// waited less, capped at [`MAX_SERVER_WAIT`]); `jitter` in `[0, 1]` picks the point in
    /// `[b/2, b]` (`fastrand::f64()` outside tests).
    pub fn next_wait(&mut self, server_hint: Option<Duration>, jitter: f64) -> Duration {
        let doublings = self.num_waits.min(MAX_DOUBLINGS);
        self.num_waits = self.num_waits.saturating_add(1);
        let exponential = 2u32
            .checked_pow(doublings)
            .and_then(|factor| self.initial.checked_mul(factor))
            .unwrap_or(self.max)
            .min(self.max);
        let half = exponential / 2;
        let jittered = half + (exponential - half).mul_f64(jitter.clamp(0.0, 1.0));
        match server_hint {
            Some(hint) => hint.min(MAX_SERVER_WAIT).max(jittered),
            None => jittered,
        }
    }

    /// Starts over from `initial` after a success.
    pub fn reset(&mut self) {
        self.num_waits = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use std::time::UNIX_EPOCH;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                *name,
                HeaderValue::from_str(value).expect("valid header value"),
            );
        }
        map
    }

    fn action(status: u16) -> RetryAction {
        let status = StatusCode::from_u16(status).expect("valid status");
        RetryAction::for_response(status, &HeaderMap::new(), UNIX_EPOCH)
    }

    fn reason(action: RetryAction) -> &'static str {
        match action {
            RetryAction::Retry { reason, .. } | RetryAction::DontRetry { reason } => reason,
            RetryAction::Successful => "successful",
            RetryAction::TooLarge => "too_large",
        }
    }

    /// 2015-10-21 07:28:00 UTC.
    const SOME_DATE_SECS: u64 = 1_445_412_480;

    #[test]
    fn every_2xx_is_success() {
        for status in [200, 201, 202, 204, 299] {
            assert_eq!(action(status), RetryAction::Successful, "{status}");
        }
    }

    #[test]
    fn retries_transient_statuses() {
        for (status, expected) in [
            (408, "request_timeout"),
            (409, "conflict"),
            (429, "rate_limited"),
            (500, "server_error"),
            (502, "server_error"),
            (503, "server_error"),
            (504, "server_error"),
            (599, "server_error"),
        ] {
            assert_eq!(
                action(status),
                RetryAction::Retry {
                    reason: expected,
                    after: None
                },
                "{status}"
            );
        }
    }

    #[test]
    fn splits_on_413() {
        assert_eq!(action(413), RetryAction::TooLarge);
    }

    #[test]
    fn refuses_other_client_errors_for_good() {
        for (status, expected) in [
            (400, "bad_request"),
            (401, "unauthorized"),
            (403, "forbidden"),
            (404, "not_found"),
            (422, "unprocessable"),
            (405, "client_error"),
            (451, "client_error"),
        ] {
            assert_eq!(
                action(status),
                RetryAction::DontRetry { reason: expected },
                "{status}"
            );
        }
    }

    #[test]
    fn refuses_redirects_and_informational_statuses() {
        assert_eq!(reason(action(301)), "redirect");
        assert_eq!(reason(action(307)), "redirect");
        assert_eq!(reason(action(101)), "unexpected_status");
    }

    #[test]
    fn only_content_errors_may_be_row_specific() {
        for status in [400, 422] {
            assert!(may_be_row_specific(
                StatusCode::from_u16(status).expect("status")
            ));
        }
        for status in [401, 403, 404, 413, 429, 500] {
            assert!(!may_be_row_specific(
                StatusCode::from_u16(status).expect("status")
            ));
        }
    }

    #[test]
    fn transport_errors_are_retried_except_invalid_requests() {
        assert_eq!(
            RetryAction::for_transport_error(TransportError::Timeout),
            RetryAction::Retry {
                reason: "timeout",
                after: None
            }
        );
        assert_eq!(
            reason(RetryAction::for_transport_error(TransportError::Connect)),
            "connection"
        );
        assert_eq!(
            reason(RetryAction::for_transport_error(
                TransportError::Interrupted
            )),
            "interrupted"
        );
        assert_eq!(
            RetryAction::for_transport_error(TransportError::InvalidRequest),
            RetryAction::DontRetry {
                reason: "invalid_request"
            }
        );
    }

    #[test]
    fn reads_retry_after_seconds_on_429_and_503() {
        let map = headers(&[("retry-after", "7")]);
        for status in [
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert_eq!(
                RetryAction::for_response(status, &map, UNIX_EPOCH),
                RetryAction::Retry {
                    reason: reason(action(status.as_u16())),
                    after: Some(Duration::from_secs(7))
                }
            );
        }
    }

    #[test]
    fn prefers_retry_after_ms_over_retry_after() {
        let map = headers(&[("retry-after", "7"), ("retry-after-ms", "250")]);
        assert_eq!(
            server_wait_hint(&map, UNIX_EPOCH),
            Some(Duration::from_millis(250))
        );
        let fractional = headers(&[("retry-after-ms", "1.5")]);
        assert_eq!(
            server_wait_hint(&fractional, UNIX_EPOCH),
            Some(Duration::from_micros(1500))
        );
    }

    #[test]
    fn falls_back_to_retry_after_when_retry_after_ms_is_garbage() {
        let map = headers(&[("retry-after-ms", "soon"), ("Retry-After", "2")]);
        assert_eq!(
            server_wait_hint(&map, UNIX_EPOCH),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn reads_retry_after_as_an_http_date() {
        let now = UNIX_EPOCH + Duration::from_secs(SOME_DATE_SECS);
        let map = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT")]);
        assert_eq!(server_wait_hint(&map, now), Some(Duration::from_secs(30)));
    }

    #[test]
    fn a_retry_after_date_in_the_past_means_no_wait() {
        let now = UNIX_EPOCH + Duration::from_secs(SOME_DATE_SECS);
        let map = headers(&[("retry-after", "Wed, 21 Oct 2015 07:27:00 GMT")]);
        assert_eq!(server_wait_hint(&map, now), Some(Duration::ZERO));
    }

    #[test]
    fn ignores_unparseable_or_negative_hints() {
        for value in [
            "-3",
            "NaN",
            "inf",
            "soon",
            "",
            "Wed, 21 Oct 2015 07:28:30 UTC",
            "Wed, 31 Feb 2015 07:28:30 GMT",
            "Wed, 21 Oct 2015 24:00:00 GMT",
            "Wed, 21 Oct 2015 07:28:30 GMT extra",
            "Xyz, 21 Oct 2015 07:28:30 GMT",
        ] {
            let map = headers(&[("retry-after", value)]);
            assert_eq!(server_wait_hint(&map, UNIX_EPOCH), None, "{value:?}");
        }
        assert_eq!(server_wait_hint(&HeaderMap::new(), UNIX_EPOCH), None);
    }

    #[test]
    fn reads_the_obsolete_http_date_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(SOME_DATE_SECS);
        for value in [
            "Wednesday, 21-Oct-15 07:28:30 GMT",
            "Wed Oct 21 07:28:30 2015",
        ] {
            let map = headers(&[("retry-after", value)]);
            assert_eq!(
                server_wait_hint(&map, now),
                Some(Duration::from_secs(30)),
                "{value:?}"
            );
        }
    }

    #[test]
    fn reads_http_dates_across_leap_days_and_years() {
        let seconds_since_epoch = |date: &str| {
            server_wait_hint(&headers(&[("retry-after", date)]), UNIX_EPOCH)
                .map(|wait| wait.as_secs())
        };
        assert_eq!(
            seconds_since_epoch("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(0)
        );
        assert_eq!(
            seconds_since_epoch("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            seconds_since_epoch("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(951_825_600)
        );
        assert_eq!(
            seconds_since_epoch("Fri, 31 Dec 2100 23:59:59 GMT"),
            Some(4_133_980_799)
        );
        assert_eq!(seconds_since_epoch("Thu, 29 Feb 2100 00:00:00 GMT"), None);
        assert_eq!(seconds_since_epoch("Wed, 31 Dec 1969 23:59:59 GMT"), None);
    }

    #[test]
    fn huge_hints_saturate_instead_of_panicking() {
        let map = headers(&[("retry-after", "1e300")]);
        assert_eq!(server_wait_hint(&map, UNIX_EPOCH), Some(Duration::MAX));
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        assert_eq!(backoff.next_wait(Some(Duration::MAX), 0.5), MAX_SERVER_WAIT);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<u128> = (0..6)
            .map(|_| backoff.next_wait(None, 1.0).as_millis())
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_keeps_half_of_the_backoff() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<u128> = (0..6)
            .map(|_| backoff.next_wait(None, 0.0).as_millis())
            .collect();
        assert_eq!(waits, [50, 100, 200, 400, 500, 500]);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(backoff.next_wait(None, 0.5), Duration::from_millis(75));
    }

    #[test]
    fn backoff_never_overflows() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(3600));
        for _ in 0..200 {
            assert!(backoff.next_wait(None, 1.0) <= Duration::from_secs(3600));
        }
        assert_eq!(backoff.next_wait(None, 1.0), Duration::from_secs(3600));
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        for _ in 0..5 {
            backoff.next_wait(None, 1.0);
        }
        backoff.reset();
        assert_eq!(backoff.next_wait(None, 1.0), Duration::from_millis(10));
    }

    #[test]
    fn zero_or_inverted_settings_still_wait() {
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.next_wait(None, 1.0), MIN_BACKOFF);
        let mut inverted = Backoff::new(Duration::from_millis(200), Duration::from_millis(50));
        assert_eq!(inverted.next_wait(None, 1.0), Duration::from_millis(200));
        assert_eq!(inverted.next_wait(None, 1.0), Duration::from_millis(200));
    }

    #[test]
    fn never_waits_less_than_the_server_asked() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        assert_eq!(
            backoff.next_wait(Some(Duration::from_secs(2)), 1.0),
            Duration::from_secs(2)
        );
        // A hint shorter than our own backoff does not shorten it.
        for _ in 0..5 {
            backoff.next_wait(None, 1.0);
        }
        assert_eq!(
            backoff.next_wait(Some(Duration::from_millis(1)), 1.0),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn caps_server_hints() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        assert_eq!(
            backoff.next_wait(Some(Duration::from_secs(3600)), 0.0),
            MAX_SERVER_WAIT
        );
    }
}
