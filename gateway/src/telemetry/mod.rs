//! Telemetry: Istio's Prometheus metrics (names, labels and buckets as Istio's), the
//! access log for HTTP requests and TCP connections (JSON or Envoy's text format),
//! OpenTelemetry traces, and the run-time log level. `labels` is a leaf the upstream
//! layer shares.

mod access_log;
mod json;
pub(crate) mod labels;
pub(crate) mod log_format;
pub mod log_level;
pub(crate) mod metrics;
pub(crate) mod otlp;
pub(crate) mod trace;

use std::sync::Arc;

pub use access_log::{grpc_status, AccessLog, AccessRecord, Logged, TcpRecord};
pub use labels::{DestinationLabels, Prehashed, SourceLabels};
pub use log_format::LogFormat;
pub use metrics::Metrics;

/// Where finished requests and connections are reported.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// Access log sink.
    pub log: AccessLog,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The gateway's own labels (`source_*`).
    pub source: Arc<Prehashed<SourceLabels>>,
}

impl Telemetry {
    /// Telemetry for a proxy described by its workload labels and namespace; `unnamed`
    /// is its workload name when the labels have no `app`.
    pub fn new(
        log: AccessLog,
        metrics: Arc<Metrics>,
        labels: &std::collections::BTreeMap<String, String>,
        namespace: &str,
        unnamed: &str,
    ) -> Self {
        let get = |k: &str, default: &str| -> Arc<str> { labels.get(k).map_or(default, String::as_str).into() };
        let source = Arc::new(Prehashed::new(SourceLabels {
            workload: get("app", unnamed),
            namespace: namespace.into(),
            principal: "unknown".into(),
            app: get("app", unnamed),
            version: get("version", "unknown"),
        }));
        Self { log, metrics, source }
    }

    /// Names this workload's SPIFFE identity in `source_principal`.
    pub fn set_principal(&mut self, spiffe: &str) {
        let mut source = SourceLabels::clone(&self.source);
        source.principal = spiffe.into();
        self.source = Arc::new(Prehashed::new(source));
    }
}
