//! Outlier detection (DestinationRule `outlierDetection`, Envoy passive health
//! checking): an endpoint that fails N times in a row is ejected for
//! `baseEjectionTime` × the times it was ejected, with at most `maxEjectionPercent` of
//! the cluster ejected at once. Ejections end lazily when their time is up.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use tokio::time::Instant;

use super::Endpoint;
use crate::config::istio::OutlierDetection;

/// A compiled `outlierDetection` block.
#[derive(Debug, Clone)]
pub struct OutlierPolicy {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    base_ejection: Duration,
    max_ejection_percent: u32,
}

impl OutlierPolicy {
    /// Istio's defaults when the block exists: 5 consecutive 5xx, 30 s, 10 %.
    pub fn compile(o: &OutlierDetection) -> Self {
        Self {
            consecutive_5xx: o.consecutive_5xx_errors.unwrap_or(5),
            consecutive_gateway: o.consecutive_gateway_errors.unwrap_or(0),
            base_ejection: o.base_ejection_time.map_or(Duration::from_secs(30), |d| d.0),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(10).min(100),
        }
    }
}

/// What an attempt on an endpoint came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any non-5xx response.
    Success,
    /// A 5xx response other than 502/503/504.
    ServerError,
    /// 502, 503, 504, or a connect failure, reset or timeout (local origin counts, as
    /// Istio does without `splitExternalLocalOriginErrors`).
    GatewayError,
}

/// Per-endpoint counters and ejection state.
#[derive(Debug, Default)]
pub struct Health {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    times_ejected: AtomicU32,
    /// Milliseconds since the process clock's start; 0 when not ejected.
    ejected_until: AtomicU64,
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    // +1 so that 0 always means "not ejected".
    Instant::now().duration_since(start).as_millis() as u64 + 1
}

impl Health {
    /// True while the endpoint is ejected.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Acquire) > now_ms()
    }

    /// Times ejected so far.
    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }
}

/// Records an attempt's outcome on `endpoint` and ejects it when the policy says so.
pub(super) fn record(policy: &OutlierPolicy, endpoints: &[Arc<Endpoint>], endpoint: &Endpoint, outcome: Outcome) {
    let h = &endpoint.health;
    if outcome == Outcome::Success {
        h.consecutive_5xx.store(0, Ordering::Relaxed);
        h.consecutive_gateway.store(0, Ordering::Relaxed);
        return;
    }
    let fives = h.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1;
    let gateway = if outcome == Outcome::GatewayError {
        h.consecutive_gateway.fetch_add(1, Ordering::AcqRel) + 1
    } else {
        h.consecutive_gateway.store(0, Ordering::Relaxed);
        0
    };
    let tripped = (policy.consecutive_5xx > 0 && fives >= policy.consecutive_5xx)
        || (policy.consecutive_gateway > 0 && gateway >= policy.consecutive_gateway);
    if !tripped || h.is_ejected() {
        return;
    }
    // Envoy: eject while the ejected share stays within maxEjectionPercent, and always
    // allow one ejection so small clusters are protected too.
    let ejected = endpoints.iter().filter(|e| e.health.is_ejected()).count();
    if ejected > 0 && (ejected + 1) * 100 > endpoints.len() * policy.max_ejection_percent as usize {
        return;
    }
    let times = h.times_ejected.fetch_add(1, Ordering::AcqRel) + 1;
    let until = now_ms() + (policy.base_ejection * times).as_millis() as u64;
    h.ejected_until.store(until, Ordering::Release);
    h.consecutive_5xx.store(0, Ordering::Relaxed);
    h.consecutive_gateway.store(0, Ordering::Relaxed);
    tracing::warn!(endpoint = %endpoint.addr, times, "endpoint ejected (outlier detection)");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::telemetry::DestinationLabels;

    fn endpoints(n: u16) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9000 + i));
                Arc::new(Endpoint::new(addr, BTreeMap::new(), DestinationLabels::unknown()))
            })
            .collect()
    }

    fn policy(yaml: &str) -> OutlierPolicy {
        OutlierPolicy::compile(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn consecutive_errors_eject_and_a_success_resets_the_count() {
        let eps = endpoints(4);
        let p = policy("{consecutive5xxErrors: 2, maxEjectionPercent: 100}");
        record(&p, &eps, &eps[0], Outcome::ServerError);
        record(&p, &eps, &eps[0], Outcome::Success);
        record(&p, &eps, &eps[0], Outcome::ServerError);
        assert!(!eps[0].health.is_ejected(), "the success broke the run");
        record(&p, &eps, &eps[0], Outcome::GatewayError);
        assert!(eps[0].health.is_ejected());
        assert_eq!(eps[0].health.times_ejected(), 1);
    }

    #[test]
    fn gateway_errors_count_on_their_own_threshold() {
        let eps = endpoints(2);
        let p = policy("{consecutive5xxErrors: 0, consecutiveGatewayErrors: 1, maxEjectionPercent: 100}");
        record(&p, &eps, &eps[0], Outcome::ServerError);
        assert!(!eps[0].health.is_ejected(), "a 500 is not a gateway error");
        record(&p, &eps, &eps[0], Outcome::GatewayError);
        assert!(eps[0].health.is_ejected());
    }

    #[test]
    fn max_ejection_percent_caps_ejections_but_one_is_always_allowed() {
        let eps = endpoints(4);
        let p = policy("{consecutive5xxErrors: 1, maxEjectionPercent: 10}");
        for e in &eps {
            record(&p, &eps, e, Outcome::ServerError);
        }
        assert_eq!(eps.iter().filter(|e| e.health.is_ejected()).count(), 1);
        let p = policy("{consecutive5xxErrors: 1, maxEjectionPercent: 50}");
        let eps = endpoints(4);
        for e in &eps {
            record(&p, &eps, e, Outcome::ServerError);
        }
        assert_eq!(eps.iter().filter(|e| e.health.is_ejected()).count(), 2);
    }
}
