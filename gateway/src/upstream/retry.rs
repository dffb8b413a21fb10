//! Istio `HTTPRetry` compiled to Envoy retry conditions.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::config::istio::HttpRetry;

/// Envoy `retry_on` conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RetryOn(u32);

impl RetryOn {
    const FIVE_XX: u32 = 1;
    const GATEWAY_ERROR: u32 = 1 << 1;
    const RESET: u32 = 1 << 2;
    const CONNECT_FAILURE: u32 = 1 << 3;
    const RETRIABLE_4XX: u32 = 1 << 4;
    const REFUSED_STREAM: u32 = 1 << 5;
    const RETRIABLE_STATUS_CODES: u32 = 1 << 6;
    const GRPC_CANCELLED: u32 = 1 << 7;
    const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 8;
    const GRPC_INTERNAL: u32 = 1 << 9;
    const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 10;
    const GRPC_UNAVAILABLE: u32 = 1 << 11;
    const OTHER: u32 = 1 << 12;

    fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
}

/// A compiled retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    on: RetryOn,
    status_codes: Vec<u16>,
    /// Pick a different endpoint for a retry.
    pub avoid_previous_hosts: bool,
    backoff_base: Duration,
}

/// What went wrong in an attempt, as retry conditions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// TCP connect failed.
    ConnectFailure,
    /// The connection reset or closed before a response.
    Reset,
    /// The per-try timeout fired.
    PerTryTimeout,
}

impl RetryPolicy {
    /// Istio's mesh default when a rule has no `retries`: 2 retries on
    /// connect-failure, refused-stream, unavailable, cancelled, retriable-status-codes.
    pub fn istio_default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            on: RetryOn(
                RetryOn::CONNECT_FAILURE
                    | RetryOn::REFUSED_STREAM
                    | RetryOn::GRPC_UNAVAILABLE
                    | RetryOn::GRPC_CANCELLED
                    | RetryOn::RETRIABLE_STATUS_CODES,
            ),
            status_codes: Vec::new(),
            avoid_previous_hosts: true,
            backoff_base: Duration::from_millis(25),
        }
    }

    /// No retries at all (mirrors, upgrades).
    pub fn none() -> Self {
        Self { attempts: 0, ..Self::istio_default() }
    }

    /// Compiles an Istio retry block. Bare integers in `retryOn` are status codes.
    pub fn compile(r: &HttpRetry) -> Result<Self, String> {
        let attempts =
            u32::try_from(r.attempts).map_err(|_| format!("attempts {} must not be negative", r.attempts))?;
        let per_try_timeout = r.per_try_timeout.map(|d| d.0);
        if per_try_timeout.is_some_and(|d| d < Duration::from_millis(1)) {
            return Err("perTryTimeout must be at least 1ms".into());
        }
        let mut on = RetryOn::default();
        let mut status_codes = Vec::new();
        let retry_on = r
            .retry_on
            .as_deref()
            .unwrap_or("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes");
        for cond in retry_on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if let Ok(code) = cond.parse::<u16>() {
                if !(100..=599).contains(&code) {
                    return Err(format!("retryOn status {code} is not an HTTP status"));
                }
                status_codes.push(code);
                on.0 |= RetryOn::RETRIABLE_STATUS_CODES;
                continue;
            }
            on.0 |= match cond {
                "5xx" => RetryOn::FIVE_XX,
                "gateway-error" => RetryOn::GATEWAY_ERROR,
                "reset" | "reset-before-request" => RetryOn::RESET,
                "connect-failure" => RetryOn::CONNECT_FAILURE,
                "retriable-4xx" => RetryOn::RETRIABLE_4XX,
                "refused-stream" => RetryOn::REFUSED_STREAM,
                "retriable-status-codes" => RetryOn::RETRIABLE_STATUS_CODES,
                "cancelled" => RetryOn::GRPC_CANCELLED,
                "deadline-exceeded" => RetryOn::GRPC_DEADLINE_EXCEEDED,
                "internal" => RetryOn::GRPC_INTERNAL,
                "resource-exhausted" => RetryOn::GRPC_RESOURCE_EXHAUSTED,
                "unavailable" => RetryOn::GRPC_UNAVAILABLE,
                "envoy-ratelimited" | "retriable-headers" | "http3-post-connect-failure" => RetryOn::OTHER,
                other => return Err(format!("unknown retryOn condition {other:?}")),
            };
        }
        Ok(Self {
            attempts,
            per_try_timeout,
            on,
            status_codes,
            avoid_previous_hosts: r.retry_ignore_previous_hosts.unwrap_or(true),
            backoff_base: r.backoff.map_or(Duration::from_millis(25), |d| d.0),
        })
    }

    /// True when a response with this status (and gRPC status) should be retried.
    pub fn retries_response(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let code = status.as_u16();
        let on = self.on;
        if on.has(RetryOn::FIVE_XX) && code >= 500
            || on.has(RetryOn::GATEWAY_ERROR) && matches!(code, 502..=504)
            || on.has(RetryOn::RETRIABLE_4XX) && code == 409
            || on.has(RetryOn::RETRIABLE_STATUS_CODES) && self.status_codes.contains(&code)
        {
            return true;
        }
        let grpc = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok());
        matches!(
            (grpc, on),
            (Some(1), on) if on.has(RetryOn::GRPC_CANCELLED)
        ) || matches!((grpc, on), (Some(4), on) if on.has(RetryOn::GRPC_DEADLINE_EXCEEDED))
            || matches!((grpc, on), (Some(8), on) if on.has(RetryOn::GRPC_RESOURCE_EXHAUSTED))
            || matches!((grpc, on), (Some(13), on) if on.has(RetryOn::GRPC_INTERNAL))
            || matches!((grpc, on), (Some(14), on) if on.has(RetryOn::GRPC_UNAVAILABLE))
    }

    /// True when an attempt that failed this way should be retried.
    pub fn retries_failure(&self, failure: AttemptFailure) -> bool {
        let on = self.on;
        let upstream_failure = on.has(RetryOn::FIVE_XX) || on.has(RetryOn::GATEWAY_ERROR);
        match failure {
            AttemptFailure::ConnectFailure => upstream_failure || on.has(RetryOn::CONNECT_FAILURE),
            AttemptFailure::Reset => upstream_failure || on.has(RetryOn::RESET),
            AttemptFailure::PerTryTimeout => upstream_failure,
        }
    }

    /// Envoy back-off: exponential from the base, capped at 10×, with full jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let base = self.backoff_base.as_millis().max(1) as u64;
        let max = base.saturating_mul(1u64 << retry.min(10)).min(base * 10);
        Duration::from_millis(rand::random_range(0..=max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &str) -> RetryPolicy {
        RetryPolicy::compile(&HttpRetry { attempts: 3, retry_on: Some(on.into()), ..Default::default() }).unwrap()
    }

    #[test]
    fn bare_integers_are_status_codes() {
        let p = policy("503,reset");
        let h = HeaderMap::new();
        assert!(p.retries_response(StatusCode::SERVICE_UNAVAILABLE, &h));
        assert!(!p.retries_response(StatusCode::BAD_GATEWAY, &h));
        assert!(p.retries_failure(AttemptFailure::Reset));
        assert!(!p.retries_failure(AttemptFailure::ConnectFailure));
    }

    #[test]
    fn gateway_error_and_unknown_conditions() {
        let p = policy("gateway-error");
        assert!(p.retries_response(StatusCode::GATEWAY_TIMEOUT, &HeaderMap::new()));
        assert!(!p.retries_response(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new()));
        let bad = HttpRetry { attempts: 1, retry_on: Some("5xxx".into()), ..Default::default() };
        assert!(RetryPolicy::compile(&bad).is_err());
    }

    #[test]
    fn default_retries_connect_failures_only() {
        let p = RetryPolicy::istio_default();
        assert!(p.retries_failure(AttemptFailure::ConnectFailure));
        assert!(!p.retries_response(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()));
    }

    #[test]
    fn back_off_is_jittered_up_to_a_doubling_bound_capped_at_ten_times_the_base() {
        let p = RetryPolicy { backoff_base: Duration::from_millis(25), ..policy("5xx") };
        for (retry, bound) in [(0, 25), (1, 50), (2, 100), (3, 200), (4, 250), (9, 250)] {
            let waits: Vec<u128> = (0..200).map(|_| p.backoff(retry).as_millis()).collect();
            assert!(waits.iter().all(|w| *w <= bound), "retry {retry}: {waits:?}");
            assert!(waits.iter().any(|w| *w > bound / 2), "retry {retry}: jitter spans the range");
        }
    }
}
