//! Every metric the gateway exports, declared in one place: Istio's standard metrics
//! with Istio's names, labels and buckets (so Istio dashboards and Kiali work
//! unchanged), and the gateway's own. Label values are `Arc`s resolved, and hashed,
//! when the snapshot compiles; recording a request formats nothing.

use std::{
    hash::Hash,
    sync::{
        atomic::{AtomicI64, AtomicU64},
        Arc,
    },
};

use prometheus_client::{
    encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::labels::{DestinationLabels, Prehashed, SourceLabels};
use crate::error::ResponseFlags;

/// Istio's request duration buckets, in milliseconds.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// Istio's size buckets, in bytes: 1 to 10^9.
const SIZE_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// `request_protocol`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RequestProtocol {
    /// Plain HTTP (any version).
    Http,
    /// gRPC (`content-type: application/grpc...`).
    Grpc,
}

/// Istio's `reporter`: which proxy of the two around a call reports it.
#[derive(Debug, Clone, Copy, Default, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The caller's side: a gateway, or a sidecar's outbound.
    #[default]
    Source,
    /// The callee's side: a sidecar's inbound.
    Destination,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// The label set of Istio's request metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct RequestLabels {
    /// Which side reports.
    pub reporter: Reporter,
    /// The gateway.
    pub source: Arc<Prehashed<SourceLabels>>,
    /// The destination.
    pub destination: Arc<Prehashed<DestinationLabels>>,
    /// HTTP or gRPC.
    pub protocol: RequestProtocol,
    /// Status sent to the client.
    pub response_code: u16,
    /// gRPC status, when the response carried one.
    pub grpc_status: Option<u16>,
    /// Envoy response flags.
    pub flags: ResponseFlags,
    /// `mutual_tls` when the upstream connection used client certificates.
    pub mutual_tls: bool,
}

/// The label set of Istio's TCP metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct TcpLabels {
    /// Which side reports.
    pub reporter: Reporter,
    /// `mutual_tls` when the connection was mutual TLS.
    pub mutual_tls: bool,
    /// The gateway.
    pub source: Arc<Prehashed<SourceLabels>>,
    /// The destination.
    pub destination: Arc<Prehashed<DestinationLabels>>,
    /// Envoy response flags.
    pub flags: ResponseFlags,
}

fn label(encoder: &mut LabelSetEncoder<'_>, key: &str, value: &str) -> Result<(), std::fmt::Error> {
    (key, value).encode(encoder.encode_label())
}

fn source_and_destination(
    e: &mut LabelSetEncoder<'_>,
    reporter: Reporter,
    s: &SourceLabels,
    d: &DestinationLabels,
) -> std::fmt::Result {
    label(e, "reporter", reporter.as_str())?;
    label(e, "source_workload", &s.workload)?;
    label(e, "source_workload_namespace", &s.namespace)?;
    label(e, "source_principal", &s.principal)?;
    label(e, "source_app", &s.app)?;
    label(e, "source_version", &s.version)?;
    label(e, "destination_workload", &d.workload)?;
    label(e, "destination_workload_namespace", &d.workload_namespace)?;
    label(e, "destination_principal", &d.principal)?;
    label(e, "destination_service", &d.service)?;
    label(e, "destination_service_name", &d.service_name)?;
    label(e, "destination_service_namespace", &d.service_namespace)?;
    label(e, "destination_app", &d.app)?;
    label(e, "destination_version", &d.version)
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, e: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        source_and_destination(e, self.reporter, &self.source, &self.destination)?;
        label(e, "request_protocol", if self.protocol == RequestProtocol::Grpc { "grpc" } else { "http" })?;
        label(e, "response_code", itoa::Buffer::new().format(self.response_code))?;
        let mut digits = itoa::Buffer::new();
        label(e, "grpc_response_status", self.grpc_status.map_or("", |g| digits.format(g)))?;
        label(e, "response_flags", &self.flags.to_string())?;
        label(e, "connection_security_policy", if self.mutual_tls { "mutual_tls" } else { "unknown" })
    }
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, e: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        source_and_destination(e, self.reporter, &self.source, &self.destination)?;
        label(e, "request_protocol", "tcp")?;
        label(e, "response_flags", &self.flags.to_string())?;
        label(e, "connection_security_policy", if self.mutual_tls { "mutual_tls" } else { "unknown" })
    }
}

/// `{cluster, response_code_class}` of the gateway's own upstream counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct ClusterLabels {
    /// Cluster name.
    pub cluster: Arc<str>,
    /// `2xx` ... `5xx`, or the flag of a failure (`UF`, `UT`, ...).
    pub outcome: &'static str,
}

/// `{port}` of listener gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    /// Gateway server port.
    pub port: u16,
}

/// `{result}` of config reloads.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct ReloadLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// One watch of the Kubernetes source: `{kind, namespace}` (`namespace` empty for all).
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct WatchLabels {
    /// Resource kind.
    pub kind: &'static str,
    /// Namespace watched, empty for every namespace.
    pub namespace: String,
}

/// A failed request of a watch: `{kind, namespace, code}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct WatchErrorLabels {
    /// Resource kind.
    pub kind: &'static str,
    /// Namespace watched, empty for every namespace.
    pub namespace: String,
    /// HTTP status of the API server's answer, 0 when there was none.
    pub code: u16,
}

/// A resource that is not in force as written: `{kind, namespace, name, state}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResourceLabels {
    /// Resource kind (`AuthorizationPolicy`).
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `fail_closed`, `last_good` or `rejected`.
    pub state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The gateway's metrics and the registry that exports them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Histograms<RequestLabels>,
    request_bytes: Histograms<RequestLabels>,
    response_bytes: Histograms<RequestLabels>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    upstream_requests: Family<ClusterLabels, Counter>,
    active_connections: Family<ListenerLabels, Gauge>,
    overflow: Family<ListenerLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    config_version: Gauge<i64, AtomicI64>,
    reload_seconds: Gauge<f64, AtomicU64>,
    not_applied: Family<ResourceLabels, Gauge>,
    access_log_dropped: Counter<u64, AtomicU64>,
    watch_up: Family<WatchLabels, Gauge>,
    watch_errors: Family<WatchErrorLabels, Counter>,
    wasm: Arc<crate::wasm::PluginMetrics>,
    trace: super::trace::TraceCounters,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Declares every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let durations: fn() -> Histogram = || Histogram::new(DURATION_BUCKETS);
        let sizes: fn() -> Histogram = || Histogram::new(SIZE_BUCKETS);
        let m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(durations),
            request_bytes: Family::new_with_constructor(sizes),
            response_bytes: Family::new_with_constructor(sizes),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            upstream_requests: Family::default(),
            active_connections: Family::default(),
            overflow: Family::default(),
            reloads: Family::default(),
            config_version: Gauge::default(),
            reload_seconds: Gauge::default(),
            not_applied: Family::default(),
            access_log_dropped: Counter::default(),
            watch_up: Family::default(),
            watch_errors: Family::default(),
            wasm: Arc::default(),
            trace: super::trace::TraceCounters::default(),
        };
        // prometheus-client appends `_total` to counters.
        registry.register("istio_requests", "Requests handled, by source and destination", m.requests.clone());
        registry.register_with_unit(
            "istio_request_duration",
            "Request duration",
            Unit::Other("milliseconds".into()),
            m.duration.clone(),
        );
        registry.register("istio_request_bytes", "Request body sizes", m.request_bytes.clone());
        registry.register("istio_response_bytes", "Response body sizes", m.response_bytes.clone());
        registry.register("istio_tcp_sent_bytes", "Bytes sent to TCP clients", m.tcp_sent.clone());
        registry.register("istio_tcp_received_bytes", "Bytes received from TCP clients", m.tcp_received.clone());
        registry.register("istio_tcp_connections_opened", "TCP connections opened", m.tcp_opened.clone());
        registry.register("istio_tcp_connections_closed", "TCP connections closed", m.tcp_closed.clone());
        registry.register(
            "wicket_upstream_requests",
            "Upstream requests by cluster and outcome",
            m.upstream_requests.clone(),
        );
        registry.register(
            "wicket_listener_active_connections",
            "Open downstream connections",
            m.active_connections.clone(),
        );
        registry.register(
            "wicket_listener_overflow",
            "Connections closed at once because the listener was at its connection limit",
            m.overflow.clone(),
        );
        registry.register("wicket_config_reloads", "Configuration reloads by result", m.reloads.clone());
        registry.register("wicket_config_version", "Version of the snapshot serving", m.config_version.clone());
        registry.register(
            "wicket_config_reload_seconds",
            "How long the last applied reload took: read, compile, reconcile listeners",
            m.reload_seconds.clone(),
        );
        registry.register(
            "wicket_config_resources_not_applied",
            "Resources of the serving snapshot not in force as written (1 each): fail_closed, last_good or rejected",
            m.not_applied.clone(),
        );
        registry.register("wicket_access_log_dropped", "Access log lines dropped", m.access_log_dropped.clone());
        registry.register(
            "wicket_kubernetes_watch_up",
            "1 while a watch of the Kubernetes source is synced and streaming, 0 while it retries",
            m.watch_up.clone(),
        );
        registry.register(
            "wicket_kubernetes_watch_errors",
            "Failed list or watch requests of the Kubernetes source, by HTTP status",
            m.watch_errors.clone(),
        );
        registry.register_collector(Box::new(m.wasm.clone()));
        registry.register(
            "wicket_tracing_spans_exported",
            "Spans the trace collector accepted",
            m.trace.exported.clone(),
        );
        registry.register(
            "wicket_tracing_spans_dropped",
            "Spans lost: queue full or collector unreachable",
            m.trace.dropped.clone(),
        );
        Self { registry, ..m }
    }

    /// The tracer's export counters.
    pub fn trace_counters(&self) -> super::trace::TraceCounters {
        self.trace.clone()
    }

    /// Metrics Wasm plugins define, and their failure counts.
    pub fn wasm_plugins(&self) -> Arc<crate::wasm::PluginMetrics> {
        self.wasm.clone()
    }

    /// Records a finished HTTP request.
    pub fn record_request(&self, labels: &RequestLabels, duration_ms: f64, request_bytes: u64, response_bytes: u64) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(duration_ms);
        self.request_bytes.get_or_create(labels).observe(request_bytes as f64);
        self.response_bytes.get_or_create(labels).observe(response_bytes as f64);
    }

    /// Records a TCP connection opening.
    pub fn tcp_opened(&self, labels: &TcpLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    /// Records a TCP connection closing with its byte counts.
    pub fn tcp_closed(&self, labels: &TcpLabels, sent: u64, received: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_sent.get_or_create(labels).inc_by(sent);
        self.tcp_received.get_or_create(labels).inc_by(received);
    }

    /// Counts an upstream attempt's outcome.
    pub fn upstream(&self, cluster: &Arc<str>, outcome: &'static str) {
        self.upstream_requests.get_or_create(&ClusterLabels { cluster: cluster.clone(), outcome }).inc();
    }

    /// The gauge of open connections on a listener port.
    pub fn active_connections(&self, port: u16) -> Gauge {
        self.active_connections.get_or_create_owned(&ListenerLabels { port })
    }

    /// The counter of connections refused over a listener's limit.
    pub fn overflow(&self, port: u16) -> Counter {
        self.overflow.get_or_create_owned(&ListenerLabels { port })
    }

    /// Counts a reload and, on success, the version now serving.
    pub fn reloaded(&self, version: Option<u64>) {
        let result = if version.is_some() { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        if let Some(v) = version {
            self.config_version.set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    /// Replaces the set of resources not in force as written with `resources`.
    pub fn not_applied(&self, resources: impl IntoIterator<Item = ResourceLabels>) {
        self.not_applied.clear();
        for r in resources {
            self.not_applied.get_or_create(&r).set(1);
        }
    }

    /// Records whether a watch of the Kubernetes source is synced and streaming.
    pub(crate) fn watch_up(&self, watch: &WatchLabels, up: bool) {
        self.watch_up.get_or_create(watch).set(i64::from(up));
    }

    /// Counts a failed list or watch request of the Kubernetes source.
    pub(crate) fn watch_error(&self, watch: &WatchLabels, code: u16) {
        let labels = WatchErrorLabels { kind: watch.kind, namespace: watch.namespace.clone(), code };
        self.watch_errors.get_or_create(&labels).inc();
        self.watch_up(watch, false);
    }

    /// Records how long an applied reload took.
    pub fn reload_took(&self, took: std::time::Duration) {
        self.reload_seconds.set(took.as_secs_f64());
    }

    /// Counts access log lines dropped because the writer fell behind.
    pub fn access_log_dropped(&self, n: u64) {
        self.access_log_dropped.inc_by(n);
    }

    /// The exposition text (OpenMetrics, which Prometheus also reads as text).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Class of an HTTP status for the upstream counters.
pub(crate) fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(version: &str) -> Arc<Prehashed<DestinationLabels>> {
        let s = |v: &str| -> Arc<str> { v.into() };
        Arc::new(Prehashed::new(DestinationLabels {
            workload: s("shop"),
            workload_namespace: s("default"),
            principal: s("unknown"),
            service: s("shop.default.svc.cluster.local"),
            service_name: s("shop"),
            service_namespace: s("default"),
            app: s("shop"),
            version: s(version),
        }))
    }

    /// Two snapshots build their label groups apart: alike groups must count as one
    /// series, different ones as two.
    #[test]
    fn alike_label_groups_are_one_series() {
        let metrics = Metrics::new();
        let source = SourceLabels::peer(None);
        let labels = |destination| RequestLabels {
            reporter: Reporter::Source,
            source: source.clone(),
            destination,
            protocol: RequestProtocol::Http,
            response_code: 200,
            grpc_status: None,
            flags: ResponseFlags::default(),
            mutual_tls: false,
        };
        for destination in [destination("v1"), destination("v1"), destination("v2")] {
            metrics.record_request(&labels(destination), 1.0, 0, 10);
        }
        let text = metrics.encode();
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("istio_requests_total{")).collect();
        assert_eq!(series.len(), 2, "{series:#?}");
        assert!(series.iter().any(|l| l.contains("destination_version=\"v1\"") && l.ends_with(" 2")), "{series:#?}");
        assert!(series.iter().any(|l| l.contains("destination_version=\"v2\"") && l.ends_with(" 1")), "{series:#?}");
    }
}
