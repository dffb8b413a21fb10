//! A cluster: the endpoints of one `(host, port, subset)` and how to pick among them.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    dns::DnsTarget,
    lb::LbPolicy,
    outlier::{self, Health, Outcome, OutlierPolicy},
};
use crate::{
    config::{
        istio::{ConnectionPoolSettings, TcpKeepalive},
        GoDuration,
    },
    telemetry::labels::{DestinationLabels, Prehashed},
    tls::UpstreamTls,
};

/// The endpoint label Istio sets on workloads that run a sidecar (`istio`).
pub(crate) const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// The protocol spoken to the endpoints, from the service port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (HTTP2, GRPC ports).
    Http2,
}

impl Protocol {
    /// The protocol of a service port (`HTTP2`, `GRPC`, `GRPC-WEB`: HTTP/2 with prior
    /// knowledge; anything else HTTP/1.1).
    pub(crate) fn of_port(protocol: &str) -> Self {
        match protocol.to_ascii_uppercase().as_str() {
            "HTTP2" | "GRPC" | "GRPC-WEB" => Protocol::Http2,
            _ => Protocol::Http1,
        }
    }

    /// ALPN offered when TLS carries this protocol to an endpoint.
    pub fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            Protocol::Http1 => &[b"http/1.1"],
            Protocol::Http2 => &[b"h2"],
        }
    }

    /// ALPN of Istio's mesh mutual TLS carrying this protocol.
    pub fn mesh_alpn(self) -> &'static [&'static [u8]] {
        match self {
            Protocol::Http1 => &[b"istio-http/1.1"],
            Protocol::Http2 => &[b"istio-h2"],
        }
    }
}

/// One upstream endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// Endpoint labels (subsets select on them).
    pub labels: BTreeMap<String, String>,
    /// Istio `destination_*` metric labels of this endpoint.
    pub metrics: Arc<Prehashed<DestinationLabels>>,
    /// Requests in flight, for LEAST_REQUEST.
    active: AtomicUsize,
    /// Outlier detection state.
    pub health: Health,
    /// Runs a sidecar that takes Istio mutual TLS (label `security.istio.io/tlsMode:
    /// istio`, unless its PeerAuthentication disables mTLS): auto mTLS applies.
    pub mesh_tls: bool,
    /// Load-balancing weight (ServiceEntry endpoint / WorkloadEntry `weight`; 1 when
    /// unset or 0, as Istio).
    pub weight: u32,
}

impl Endpoint {
    /// A new endpoint with no request in flight.
    pub fn new(addr: SocketAddr, labels: BTreeMap<String, String>, metrics: Arc<Prehashed<DestinationLabels>>) -> Self {
        let mesh_tls = labels.get(TLS_MODE_LABEL).is_some_and(|m| m == "istio");
        Self { addr, labels, metrics, active: AtomicUsize::new(0), health: Health::default(), mesh_tls, weight: 1 }
    }

    /// With a load-balancing weight; 0 means unset.
    pub fn with_weight(mut self, weight: Option<u32>) -> Self {
        self.weight = weight.filter(|w| *w > 0).unwrap_or(1);
        self
    }

    /// Takes plaintext even though it runs a sidecar (its PeerAuthentication says DISABLE).
    pub fn plaintext(mut self) -> Self {
        self.mesh_tls = false;
        self
    }

    /// Requests currently in flight to this endpoint.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// Counts a request as in flight on an endpoint until dropped.
#[derive(Debug)]
pub(crate) struct EndpointGuard(Arc<Endpoint>);

impl EndpointGuard {
    /// Marks a request in flight on `ep`.
    pub(crate) fn new(ep: Arc<Endpoint>) -> Self {
        ep.active.fetch_add(1, Ordering::Relaxed);
        Self(ep)
    }

    /// The endpoint.
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Envoy-style name `outbound|port|subset|host`.
    pub name: Arc<str>,
    /// Protocol to speak upstream.
    pub protocol: Protocol,
    /// Endpoint selection.
    pub lb: LbPolicy,
    /// Current endpoints; DNS clusters refresh them in the background.
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// Names to resolve, for DNS resolution.
    pub dns: Vec<DnsTarget>,
    /// TLS towards the endpoints (DestinationRule `tls`), if any.
    pub tls: Option<Arc<UpstreamTls>>,
    /// Istio auto mTLS: used towards endpoints that run a sidecar
    /// (`security.istio.io/tlsMode: istio`) when `tls` is not set.
    pub auto_mtls: Option<Arc<UpstreamTls>>,
    /// Envoy `ORIGINAL_DST`: no endpoint list; each request goes where its connection
    /// was originally headed (Istio's passthrough clusters). Such a cluster knows
    /// nothing of the protocol behind it and speaks the downstream's.
    pub original_dst: bool,
    /// `destination_*` metric labels of the service, for failures before an endpoint.
    pub metrics: Arc<Prehashed<DestinationLabels>>,
    /// Circuit breakers (DestinationRule `connectionPool`).
    pub breakers: Breakers,
    /// Passive health checking (DestinationRule `outlierDetection`).
    pub outlier: Option<OutlierPolicy>,
    /// How connections are opened and kept (`connectionPool.tcp`/`http`).
    pub pool: PoolSettings,
}

/// Connection settings of a cluster: `connectTimeout`, `tcpKeepalive`, `idleTimeout`
/// and `maxRequestsPerConnection`. Clusters with equal settings share a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolSettings {
    /// Time allowed to open a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// TCP keepalive: idle time before the first probe, and the probe interval.
    pub keepalive: Option<(Duration, Option<Duration>)>,
    /// `maxRequestsPerConnection`: requests a connection carries before it is closed
    /// (`None`: no limit; 1: a fresh connection per request).
    pub max_requests: Option<u32>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            connect_timeout: super::client::CONNECT_TIMEOUT,
            idle_timeout: super::client::IDLE_TIMEOUT,
            keepalive: None,
            max_requests: None,
        }
    }
}

/// Envoy cluster circuit breakers: limits on concurrent requests, retries and
/// connections. Going over answers 503 `UO` at once; only requests waiting for an
/// HTTP/1 connection queue, and no more than `http1MaxPendingRequests` of them.
#[derive(Debug)]
pub struct Breakers {
    max_requests: usize,
    max_retries: usize,
    requests: AtomicUsize,
    retries: AtomicUsize,
    /// `tcp.maxConnections`; `None` when unlimited.
    connections: Option<Arc<Semaphore>>,
    max_pending: usize,
    pending: AtomicUsize,
}

impl PoolSettings {
    /// DestinationRule `connectionPool` over `defaults` (the mesh config's): connect
    /// and idle timeouts (zero means unset), TCP keepalive, `maxRequestsPerConnection`.
    pub(crate) fn compile(pool: Option<&ConnectionPoolSettings>, defaults: &PoolSettings) -> Self {
        let tcp = pool.and_then(|p| p.tcp.as_ref());
        let http = pool.and_then(|p| p.http.as_ref());
        let nonzero = |d: Option<GoDuration>| d.map(|d| d.0).filter(|d| !d.is_zero());
        Self {
            connect_timeout: nonzero(tcp.and_then(|t| t.connect_timeout)).unwrap_or(defaults.connect_timeout),
            idle_timeout: nonzero(http.and_then(|h| h.idle_timeout).or(tcp.and_then(|t| t.idle_timeout)))
                .unwrap_or(defaults.idle_timeout),
            keepalive: tcp.and_then(|t| t.tcp_keepalive.as_ref()).map(Self::keepalive).or(defaults.keepalive),
            max_requests: http.and_then(|h| h.max_requests_per_connection).filter(|n| *n > 0),
        }
    }

    /// TCP keepalive settings: probe time (Istio's default is the OS's, 2 hours on
    /// Linux) and interval.
    pub(crate) fn keepalive(k: &TcpKeepalive) -> (Duration, Option<Duration>) {
        let nonzero = |d: Option<GoDuration>| d.map(|d| d.0).filter(|d| !d.is_zero());
        (nonzero(k.time).unwrap_or(Duration::from_secs(7200)), nonzero(k.interval))
    }
}

impl Breakers {
    /// DestinationRule `connectionPool` limits: `http2MaxRequests`, `maxRetries`,
    /// `tcp.maxConnections`, `http1MaxPendingRequests` (unset: unlimited, as Istio).
    pub(crate) fn compile(pool: Option<&ConnectionPoolSettings>) -> Self {
        let tcp = pool.and_then(|p| p.tcp.as_ref());
        let http = pool.and_then(|p| p.http.as_ref());
        Self::new(
            http.and_then(|h| h.http2_max_requests).unwrap_or(u32::MAX),
            http.and_then(|h| h.max_retries).unwrap_or(u32::MAX),
        )
        .with_connections(tcp.and_then(|t| t.max_connections), http.and_then(|h| h.http1_max_pending_requests))
    }
}

impl Default for Breakers {
    /// Istio raises Envoy's defaults to effectively unlimited.
    fn default() -> Self {
        Self::new(u32::MAX, u32::MAX)
    }
}

/// Over a connection limit with too many requests already waiting.
#[derive(Debug)]
pub struct Overflowed;

/// Holds one unit of a breaker until dropped.
#[derive(Debug)]
pub struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn admit(counter: &AtomicUsize, max: usize) -> Option<Admitted<'_>> {
    let previous = counter.fetch_add(1, Ordering::AcqRel);
    if previous >= max {
        counter.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(Admitted(counter))
}

impl Breakers {
    /// `http2MaxRequests` and `maxRetries`.
    pub fn new(max_requests: u32, max_retries: u32) -> Self {
        Self {
            max_requests: max_requests as usize,
            max_retries: max_retries as usize,
            requests: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            connections: None,
            max_pending: usize::MAX,
            pending: AtomicUsize::new(0),
        }
    }

    /// Adds `tcp.maxConnections` and `http.http1MaxPendingRequests`.
    pub fn with_connections(mut self, max_connections: Option<u32>, max_pending: Option<u32>) -> Self {
        self.connections = max_connections.map(|n| Arc::new(Semaphore::new((n as usize).min(Semaphore::MAX_PERMITS))));
        self.max_pending = max_pending.map_or(usize::MAX, |n| n as usize);
        self
    }

    /// A connection slot, taken at once when one is free, else after waiting in line
    /// while fewer than `http1MaxPendingRequests` wait. `Ok(None)` when unlimited.
    pub async fn connection(&self) -> Result<Option<OwnedSemaphorePermit>, Overflowed> {
        let Some(limit) = &self.connections else { return Ok(None) };
        if let Ok(permit) = limit.clone().try_acquire_owned() {
            return Ok(Some(permit));
        }
        let _waiting = admit(&self.pending, self.max_pending).ok_or(Overflowed)?;
        limit.clone().acquire_owned().await.map(Some).map_err(|_| Overflowed)
    }

    /// A connection slot for a TCP connection, which never waits.
    pub fn tcp_connection(&self) -> Result<Option<OwnedSemaphorePermit>, Overflowed> {
        let Some(limit) = &self.connections else { return Ok(None) };
        limit.clone().try_acquire_owned().map(Some).map_err(|_| Overflowed)
    }

    /// A request slot, or `None` when the cluster is at `http2MaxRequests`.
    pub fn request(&self) -> Option<Admitted<'_>> {
        admit(&self.requests, self.max_requests)
    }

    /// A retry slot, or `None` when the cluster is at `maxRetries`.
    pub fn retry(&self) -> Option<Admitted<'_>> {
        admit(&self.retries, self.max_retries)
    }
}

impl Cluster {
    /// A cluster with a fixed initial endpoint list.
    pub fn new(
        name: Arc<str>,
        protocol: Protocol,
        lb: LbPolicy,
        endpoints: Vec<Arc<Endpoint>>,
        dns: Vec<DnsTarget>,
    ) -> Self {
        Self {
            name,
            protocol,
            lb,
            endpoints: ArcSwap::from_pointee(endpoints),
            dns,
            tls: None,
            auto_mtls: None,
            original_dst: false,
            metrics: DestinationLabels::unknown(),
            breakers: Breakers::default(),
            outlier: None,
            pool: PoolSettings::default(),
        }
    }

    /// Opens and keeps connections as `pool` says.
    pub fn with_pool(mut self, pool: PoolSettings) -> Self {
        self.pool = pool;
        self
    }

    /// Ejects failing endpoints under this policy.
    pub fn with_outlier(mut self, outlier: Option<OutlierPolicy>) -> Self {
        self.outlier = outlier;
        self
    }

    /// Records an attempt's outcome for outlier detection.
    pub fn report(&self, endpoint: &Endpoint, outcome: Outcome) {
        if let Some(policy) = &self.outlier {
            outlier::record(policy, &self.endpoints.load(), endpoint, outcome);
        }
    }

    /// Enforces these circuit breakers.
    pub fn with_breakers(mut self, breakers: Breakers) -> Self {
        self.breakers = breakers;
        self
    }

    /// Reports metrics with these service labels.
    pub fn with_metrics(mut self, metrics: Arc<Prehashed<DestinationLabels>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Speaks TLS to the endpoints.
    pub fn with_tls(mut self, tls: Option<Arc<UpstreamTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Uses mutual TLS with the mesh identity towards endpoints that run a sidecar.
    pub fn with_auto_mtls(mut self, tls: Option<Arc<UpstreamTls>>) -> Self {
        self.auto_mtls = tls;
        self
    }

    /// Makes this an original-destination cluster.
    pub fn original_dst(mut self) -> Self {
        self.original_dst = true;
        self
    }

    /// The protocol of one request: the cluster's, or for an original-destination
    /// cluster the downstream's (Envoy's `USE_DOWNSTREAM_PROTOCOL`), so gRPC stays h2.
    pub fn protocol_for(&self, downstream_h2: bool) -> Protocol {
        match (self.original_dst, downstream_h2) {
            (true, true) => Protocol::Http2,
            (true, false) => Protocol::Http1,
            (false, _) => self.protocol,
        }
    }

    /// The TLS towards `endpoint`: the DestinationRule's, else auto mTLS when the
    /// endpoint runs a sidecar, else plaintext.
    pub fn tls_for(&self, endpoint: &Endpoint) -> Option<&UpstreamTls> {
        self.tls.as_deref().or_else(|| self.auto_mtls.as_deref().filter(|_| endpoint.mesh_tls))
    }

    /// The endpoint for one attempt: for an original-destination cluster the
    /// connection's own destination, else `select`.
    pub fn endpoint_for(
        &self,
        original_dst: Option<SocketAddr>,
        previous: Option<SocketAddr>,
        key: Option<u64>,
    ) -> Option<Arc<Endpoint>> {
        if self.original_dst {
            let addr = original_dst?;
            return Some(Arc::new(Endpoint::new(addr, BTreeMap::new(), self.metrics.clone())));
        }
        self.select(previous, key)
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Replaces the endpoints (DNS refresh).
    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        self.endpoints.store(Arc::new(endpoints));
    }

    /// Takes over `previous`'s endpoints that this cluster has too (same address,
    /// labels and metric labels), so a reload keeps their requests in flight and
    /// outlier state.
    pub fn adopt_endpoints(&self, previous: &Cluster) {
        let old = previous.endpoints();
        if !self.dns.is_empty() {
            // Resolved endpoints: the next refresh keeps those it finds again.
            if self.dns == previous.dns {
                self.set_endpoints(old.to_vec());
            }
            return;
        }
        let merged = self
            .endpoints()
            .iter()
            .map(|e| {
                old.iter()
                    .find(|o| o.addr == e.addr && o.labels == e.labels && o.metrics == e.metrics)
                    .unwrap_or(e)
                    .clone()
            })
            .collect();
        self.set_endpoints(merged);
    }

    /// Picks an endpoint, avoiding `previous` when another exists (Istio's default
    /// `retryIgnorePreviousHosts`); `key` is the consistent-hash key, if any.
    pub fn select(&self, previous: Option<SocketAddr>, key: Option<u64>) -> Option<Arc<Endpoint>> {
        let all = self.endpoints.load();
        // Ejected endpoints are skipped unless too few are left (`minHealthPercent`).
        let healthy: Vec<Arc<Endpoint>>;
        let eps: &[Arc<Endpoint>] = match &self.outlier {
            Some(policy) if all.iter().any(|e| e.health.is_ejected()) => {
                healthy = all.iter().filter(|e| !e.health.is_ejected()).cloned().collect();
                if policy.panics(healthy.len(), all.len()) {
                    &all
                } else {
                    &healthy
                }
            }
            _ => &all,
        };
        match previous {
            Some(prev) if eps.len() > 1 => {
                let others: Vec<Arc<Endpoint>> = eps.iter().filter(|e| e.addr != prev).cloned().collect();
                self.lb.pick(&others, key).cloned()
            }
            _ => self.lb.pick(eps, key).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(yaml: &str) -> ConnectionPoolSettings {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn pool_settings_take_the_destination_rule_over_the_mesh_defaults() {
        const IDLE: Duration = super::super::client::IDLE_TIMEOUT;
        let defaults = PoolSettings { connect_timeout: Duration::from_secs(3), ..PoolSettings::default() };
        let cases = [
            ("{}", Duration::from_secs(3), IDLE, None),
            ("{tcp: {connectTimeout: 250ms}}", Duration::from_millis(250), IDLE, None),
            // Zero is unset, as in Envoy.
            ("{tcp: {connectTimeout: 0s, idleTimeout: 5s}}", Duration::from_secs(3), Duration::from_secs(5), None),
            // HTTP's idle timeout wins over TCP's.
            ("{tcp: {idleTimeout: 5s}, http: {idleTimeout: 7s}}", Duration::from_secs(3), Duration::from_secs(7), None),
            ("{http: {maxRequestsPerConnection: 1}}", Duration::from_secs(3), IDLE, Some(1)),
            ("{http: {maxRequestsPerConnection: 0}}", Duration::from_secs(3), IDLE, None),
        ];
        for (yaml, connect, idle, max_requests) in cases {
            let got = PoolSettings::compile(Some(&pool(yaml)), &defaults);
            assert_eq!(
                (got.connect_timeout, got.idle_timeout, got.max_requests),
                (connect, idle, max_requests),
                "{yaml}"
            );
        }
        let keepalive = PoolSettings::compile(Some(&pool("{tcp: {tcpKeepalive: {interval: 30s}}}")), &defaults);
        assert_eq!(keepalive.keepalive, Some((Duration::from_secs(7200), Some(Duration::from_secs(30)))));
    }

    #[test]
    fn breakers_are_unlimited_unless_the_pool_says_otherwise() {
        let open = Breakers::compile(None);
        assert_eq!(
            (open.max_requests, open.max_retries, open.max_pending),
            (u32::MAX as usize, u32::MAX as usize, usize::MAX)
        );
        assert!(open.connections.is_none());
        let limited = Breakers::compile(Some(&pool(
            "{tcp: {maxConnections: 2}, http: {http2MaxRequests: 10, maxRetries: 1, http1MaxPendingRequests: 3}}",
        )));
        assert_eq!((limited.max_requests, limited.max_retries, limited.max_pending), (10, 1, 3));
        assert_eq!(limited.connections.as_ref().map(|s| s.available_permits()), Some(2));
    }
}
