//! Metrics plugins define (ABI §11.4), exported on `/metrics` beside the gateway's
//! own under Envoy's `wasmcustom` prefix, plus the failure count of each plugin.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        RwLock,
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, histogram::Histogram, MetricType},
};

use super::status::{Status, BAD_ARGUMENT, NOT_FOUND};

/// `proxy_metric_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug)]
struct Metric {
    name: String,
    kind: MetricKind,
    value: AtomicI64,
    histogram: Option<Histogram>,
}

/// Names a plugin may define: Prometheus-safe after `.`/`-` become `_`.
const MAX_METRICS: usize = 10_000;

/// Every plugin-defined metric (shared by all VMs, so one name is one metric) and the
/// per-plugin failure counters.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    metrics: RwLock<Vec<Metric>>,
    ids: RwLock<HashMap<String, u32>>,
    failures: RwLock<HashMap<(String, &'static str), AtomicU64>>,
}

impl PluginMetrics {
    /// The id of `name`, defining it on first use; `None` for a bad name or kind clash.
    pub(super) fn define(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
        if clean.is_empty() {
            return None;
        }
        if let Some(id) = self.ids.read().ok()?.get(&clean) {
            let metrics = self.metrics.read().ok()?;
            return (metrics[*id as usize - 1].kind == kind).then_some(*id);
        }
        let mut ids = self.ids.write().ok()?;
        let mut metrics = self.metrics.write().ok()?;
        if let Some(id) = ids.get(&clean) {
            return (metrics[*id as usize - 1].kind == kind).then_some(*id);
        }
        if metrics.len() >= MAX_METRICS {
            return None;
        }
        let histogram = (kind == MetricKind::Histogram)
            .then(|| Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 4.0, 12)));
        metrics.push(Metric { name: clean.clone(), kind, value: AtomicI64::new(0), histogram });
        let id = metrics.len() as u32;
        ids.insert(clean, id);
        Some(id)
    }

    fn with<T>(&self, id: u32, f: impl FnOnce(&Metric) -> Result<T, Status>) -> Result<T, Status> {
        let metrics = self.metrics.read().map_err(|_| NOT_FOUND)?;
        let m = id.checked_sub(1).and_then(|i| metrics.get(i as usize)).ok_or(NOT_FOUND)?;
        f(m)
    }

    /// Counters only go up; gauges add.
    pub(super) fn increment(&self, id: u32, delta: i64) -> Result<(), Status> {
        self.with(id, |m| match m.kind {
            MetricKind::Counter if delta <= 0 => Err(BAD_ARGUMENT),
            MetricKind::Counter | MetricKind::Gauge => {
                m.value.fetch_add(delta, Ordering::Relaxed);
                Ok(())
            }
            MetricKind::Histogram => Err(BAD_ARGUMENT),
        })
    }

    /// Gauge = set, histogram = observe, counter = add (Envoy).
    pub(super) fn record(&self, id: u32, value: u64) -> Result<(), Status> {
        self.with(id, |m| {
            let v = i64::try_from(value).unwrap_or(i64::MAX);
            match m.kind {
                MetricKind::Counter => m.value.fetch_add(v, Ordering::Relaxed),
                MetricKind::Gauge => m.value.swap(v, Ordering::Relaxed),
                MetricKind::Histogram => {
                    if let Some(h) = &m.histogram {
                        h.observe(value as f64);
                    }
                    0
                }
            };
            Ok(())
        })
    }

    /// Counter or gauge value; histograms have none.
    pub(super) fn get(&self, id: u32) -> Result<u64, Status> {
        self.with(id, |m| match m.kind {
            MetricKind::Histogram => Err(BAD_ARGUMENT),
            _ => Ok(m.value.load(Ordering::Relaxed) as u64),
        })
    }

    /// Counts a failed callback of `plugin` (`trap`, `deadline`, `start`, ...).
    pub(super) fn failure(&self, plugin: &str, cause: &'static str) {
        let key = (plugin.to_string(), cause);
        if let Ok(f) = self.failures.read() {
            if let Some(c) = f.get(&key) {
                c.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Ok(mut f) = self.failures.write() {
            f.entry(key).or_default().fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Collector for PluginMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Ok(failures) = self.failures.read() {
            // Declared even when empty, so dashboards and alerts find the family.
            let mut family = encoder.encode_descriptor(
                "wicket_wasm_plugin_failures",
                "Wasm callbacks that trapped, hit their deadline or could not start, by plugin and cause",
                None,
                MetricType::Counter,
            )?;
            for ((plugin, cause), n) in failures.iter() {
                let labels = [("plugin", plugin.as_str()), ("cause", *cause)];
                let e = family.encode_family(&labels)?;
                ConstCounter::new(n.load(Ordering::Relaxed)).encode(e)?;
            }
        }
        let Ok(metrics) = self.metrics.read() else { return Ok(()) };
        for m in metrics.iter() {
            let name = format!("wasmcustom_{}", m.name);
            let value = m.value.load(Ordering::Relaxed);
            match (&m.kind, &m.histogram) {
                (MetricKind::Counter, _) => {
                    let c = ConstCounter::new(value.max(0) as u64);
                    c.encode(encoder.encode_descriptor(&name, "Defined by a Wasm plugin", None, c.metric_type())?)?;
                }
                (MetricKind::Gauge, _) => {
                    let g = ConstGauge::new(value);
                    g.encode(encoder.encode_descriptor(&name, "Defined by a Wasm plugin", None, g.metric_type())?)?;
                }
                (MetricKind::Histogram, Some(h)) => {
                    h.encode(encoder.encode_descriptor(&name, "Defined by a Wasm plugin", None, h.metric_type())?)?;
                }
                (MetricKind::Histogram, None) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_is_one_metric_with_envoy_semantics() {
        let m = PluginMetrics::default();
        let a = m.define(MetricKind::Counter, "requests.total").unwrap();
        assert_eq!(m.define(MetricKind::Counter, "requests.total"), Some(a));
        assert_eq!(m.define(MetricKind::Gauge, "requests.total"), None, "kind clash");
        m.increment(a, 2).unwrap();
        assert_eq!(m.increment(a, -1), Err(BAD_ARGUMENT));
        m.record(a, 3).unwrap();
        assert_eq!(m.get(a), Ok(5));
        let g = m.define(MetricKind::Gauge, "inflight").unwrap();
        m.increment(g, -4).unwrap();
        m.record(g, 7).unwrap();
        assert_eq!(m.get(g), Ok(7));
        let h = m.define(MetricKind::Histogram, "sizes").unwrap();
        m.record(h, 10).unwrap();
        assert_eq!(m.get(h), Err(BAD_ARGUMENT));
        assert_eq!(m.get(99), Err(NOT_FOUND));
    }
}
