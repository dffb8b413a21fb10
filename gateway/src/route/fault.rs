//! Istio `HTTPFaultInjection`: delays and aborts decided per request.

use std::time::Duration;

use http::StatusCode;

use super::per_million;
use crate::config::istio::HttpFaultInjection;

/// A compiled fault policy.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    /// Delay and the share of requests delayed (per million).
    pub delay: Option<(Duration, u32)>,
    /// Abort and the share of requests aborted (per million).
    pub abort: Option<(Abort, u32)>,
}

/// How an injected abort answers.
#[derive(Debug, Clone, Copy)]
pub enum Abort {
    /// An HTTP status.
    Http(StatusCode),
    /// A gRPC status code, sent as a trailers-only response.
    Grpc(u32),
}

impl Fault {
    /// Compiles a fault; Istio: an absent percentage affects no request.
    pub fn compile(f: &HttpFaultInjection) -> Result<Self, String> {
        if f.delay.is_none() && f.abort.is_none() {
            return Err("a fault needs a delay or an abort".into());
        }
        let delay = match &f.delay {
            None => None,
            Some(d) => {
                if d.exponential_delay.is_some() {
                    return Err("delay.exponentialDelay is not supported".into());
                }
                let fixed = d.fixed_delay.ok_or("delay.fixedDelay is required")?.0;
                let share = match (d.percentage, d.percent) {
                    (Some(p), _) => per_million(p.value),
                    (None, Some(p)) => per_million(f64::from(p)),
                    (None, None) => 0,
                };
                Some((fixed, share))
            }
        };
        let abort = match &f.abort {
            None => None,
            Some(a) => {
                let kind = match (&a.http_status, &a.grpc_status, &a.http2_error) {
                    (Some(s), None, None) => Abort::Http(
                        u16::try_from(*s)
                            .ok()
                            .filter(|s| (200..=599).contains(s))
                            .and_then(|s| StatusCode::from_u16(s).ok())
                            .ok_or_else(|| format!("abort.httpStatus {s} must be in 200..599"))?,
                    ),
                    (None, Some(g), None) => {
                        Abort::Grpc(grpc_code(g).ok_or_else(|| format!("unknown abort.grpcStatus {g:?}"))?)
                    }
                    (None, None, Some(_)) => return Err("abort.http2Error is not supported".into()),
                    _ => return Err("abort needs exactly one of httpStatus and grpcStatus".into()),
                };
                Some((kind, a.percentage.map_or(0, |p| per_million(p.value))))
            }
        };
        Ok(Self { delay, abort })
    }
}

/// gRPC status names as Istio accepts them.
fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}
