//! Outlier detection (DestinationRule `outlierDetection`, Envoy passive health
//! checking): an endpoint that fails N times in a row is ejected for
//! `baseEjectionTime` × the times it was ejected (up to 300 s), with at most `maxEjectionPercent` of
//! the cluster ejected at once. Ejections end lazily when their time is up, so
//! `interval` (Envoy's sweep period) has nothing to do.

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

/// Envoy's default `max_ejection_time`, which Istio does not expose.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// A compiled `outlierDetection` block.
#[derive(Debug, Clone)]
pub struct OutlierPolicy {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// With `splitExternalLocalOriginErrors`: the local-origin threshold; without it,
    /// local failures count as gateway errors.
    consecutive_local: Option<u32>,
    base_ejection: Duration,
    max_ejection_percent: u32,
    /// Below this share of healthy endpoints, ejections are ignored (Envoy's panic mode).
    min_health_percent: u32,
}

impl OutlierPolicy {
    /// Istio's defaults when the block exists: 5 consecutive 5xx, 30 s, 10 %.
    pub fn compile(o: &OutlierDetection) -> Self {
        Self {
            consecutive_5xx: o.consecutive_5xx_errors.unwrap_or(5),
            consecutive_gateway: o.consecutive_gateway_errors.unwrap_or(0),
            base_ejection: o.base_ejection_time.map_or(Duration::from_secs(30), |d| d.0),
            consecutive_local: (o.split_external_local_origin_errors == Some(true))
                .then(|| o.consecutive_local_origin_failures.unwrap_or(5)),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(10).min(100),
            min_health_percent: o.min_health_percent.unwrap_or(0).min(100),
        }
    }

    /// True when too few endpoints are healthy to honour ejections.
    pub fn panics(&self, healthy: usize, total: usize) -> bool {
        healthy * 100 < total * self.min_health_percent as usize
    }
}

/// What an attempt on an endpoint came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any non-5xx response.
    Success,
    /// A 5xx response other than 502/503/504.
    ServerError,
    /// 502, 503 or 504 from the endpoint.
    GatewayError,
    /// A connect failure, reset or timeout: a gateway error unless
    /// `splitExternalLocalOriginErrors` counts them on their own.
    LocalOrigin,
}

/// Per-endpoint counters and ejection state.
#[derive(Debug, Default)]
pub struct Health {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
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
    let tripped = match (outcome, policy.consecutive_local) {
        (Outcome::LocalOrigin, Some(limit)) => {
            limit > 0 && h.consecutive_local.fetch_add(1, Ordering::AcqRel) + 1 >= limit
        }
        (Outcome::Success, _) => {
            h.consecutive_5xx.store(0, Ordering::Relaxed);
            h.consecutive_gateway.store(0, Ordering::Relaxed);
            h.consecutive_local.store(0, Ordering::Relaxed);
            return;
        }
        _ => {
            if policy.consecutive_local.is_some() {
                // The endpoint answered: the connection itself works.
                h.consecutive_local.store(0, Ordering::Relaxed);
            }
            let fives = h.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1;
            let gateway = if outcome == Outcome::ServerError {
                h.consecutive_gateway.store(0, Ordering::Relaxed);
                0
            } else {
                h.consecutive_gateway.fetch_add(1, Ordering::AcqRel) + 1
            };
            (policy.consecutive_5xx > 0 && fives >= policy.consecutive_5xx)
                || (policy.consecutive_gateway > 0 && gateway >= policy.consecutive_gateway)
        }
    };
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
    // Envoy caps the growth at max_ejection_time: 300 s, or the base time if longer.
    let cap = policy.base_ejection.max(MAX_EJECTION);
    let until = now_ms() + policy.base_ejection.saturating_mul(times).min(cap).as_millis() as u64;
    h.ejected_until.store(until, Ordering::Release);
    h.consecutive_5xx.store(0, Ordering::Relaxed);
    h.consecutive_gateway.store(0, Ordering::Relaxed);
    h.consecutive_local.store(0, Ordering::Relaxed);
    tracing::warn!(endpoint = %endpoint.addr, times, "endpoint ejected (outlier detection)");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::telemetry::labels::DestinationLabels;

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
    fn split_local_origin_errors_count_apart_from_responses() {
        let eps = endpoints(2);
        let p = policy("{consecutive5xxErrors: 2, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 3, maxEjectionPercent: 100}");
        record(&p, &eps, &eps[0], Outcome::LocalOrigin);
        record(&p, &eps, &eps[0], Outcome::LocalOrigin);
        record(&p, &eps, &eps[0], Outcome::ServerError);
        assert!(!eps[0].health.is_ejected(), "neither count reached its threshold");
        record(&p, &eps, &eps[1], Outcome::LocalOrigin);
        record(&p, &eps, &eps[1], Outcome::LocalOrigin);
        record(&p, &eps, &eps[1], Outcome::LocalOrigin);
        assert!(eps[1].health.is_ejected());
        // Without the split a local failure is a gateway error, which is a 5xx too.
        let p = policy("{consecutive5xxErrors: 2, maxEjectionPercent: 100}");
        let eps = endpoints(2);
        record(&p, &eps, &eps[0], Outcome::LocalOrigin);
        record(&p, &eps, &eps[0], Outcome::LocalOrigin);
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

    #[test]
    fn min_health_percent_sets_the_panic_threshold() {
        let p = policy("{minHealthPercent: 50}");
        assert!(!p.panics(2, 4));
        assert!(p.panics(1, 4));
        assert!(!policy("{}").panics(0, 4), "Istio's default 0 never panics");
    }

    /// On a paused clock: an ejection lasts `baseEjectionTime` times the ejections so
    /// far, and the endpoint is back the moment it ends.
    #[tokio::test(start_paused = true)]
    async fn ejections_last_longer_each_time_and_then_end() {
        let eps = endpoints(2);
        let p = policy("{consecutive5xxErrors: 1, baseEjectionTime: 10s, maxEjectionPercent: 100}");
        let step = |d: u64| tokio::time::advance(std::time::Duration::from_millis(d));
        record(&p, &eps, &eps[0], Outcome::ServerError);
        assert!(eps[0].health.is_ejected());
        step(9_990).await;
        assert!(eps[0].health.is_ejected(), "still within the first 10 s");
        step(20).await;
        assert!(!eps[0].health.is_ejected(), "back after 10 s");
        record(&p, &eps, &eps[0], Outcome::ServerError);
        assert_eq!(eps[0].health.times_ejected(), 2);
        step(19_990).await;
        assert!(eps[0].health.is_ejected(), "the second ejection lasts 20 s");
        step(20).await;
        assert!(!eps[0].health.is_ejected());
    }
}
