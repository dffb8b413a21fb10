//! Distributed tracing as Envoy does it under Istio: W3C trace context and B3
//! (multi-header and single) are read from the request and written towards the
//! upstream with the gateway's span as parent; one server span per request carries
//! Envoy's attribute names, with a child span per upstream attempt; sampled spans are
//! exported in batches over OTLP/HTTP (`otlp`). A collector that is down costs
//! dropped spans, never a slower or failed request.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use http::{HeaderMap, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::AccessRecord;
use crate::{hex::encode as hex, upstream::Attempt};

/// Spans exported and dropped (queue full or collector unreachable).
#[derive(Debug, Clone, Default)]
pub struct TraceCounters {
    /// Spans the collector accepted.
    pub exported: Counter,
    /// Spans lost.
    pub dropped: Counter,
}

/// A 16-byte trace id.
pub(crate) type TraceId = [u8; 16];
/// An 8-byte span id.
pub(crate) type SpanId = [u8; 8];

/// The caller's trace context, from `traceparent` or B3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Incoming {
    /// Trace id (64-bit B3 ids are left-padded with zeros).
    pub trace_id: TraceId,
    /// The caller's span: our parent.
    pub parent: Option<SpanId>,
    /// The caller's sampling decision, if it made one.
    pub sampled: Option<bool>,
    /// `tracestate`, passed on as received.
    pub tracestate: Option<HeaderValue>,
    /// Which format it came in, so the answer upstream uses it too.
    pub format: Format,
}

/// A propagation format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// W3C `traceparent`.
    W3c,
    /// `x-b3-*` headers.
    B3Multi,
    /// One `b3` header.
    B3Single,
}

fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.is_empty() || text.len() > 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded = format!("{text:0>width$}", width = 2 * N);
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(padded.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    (out.iter().any(|b| *b != 0)).then_some(out)
}

fn sampled_flag(v: &str) -> Option<bool> {
    match v {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// Reads the caller's context: `traceparent` first, then `b3`, then `x-b3-*`.
pub(crate) fn extract(headers: &HeaderMap) -> Option<Incoming> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(tp) = get("traceparent") {
        let parts: Vec<&str> = tp.split('-').collect();
        if let [version, trace, span, flags, ..] = parts.as_slice() {
            let valid = version.len() == 2 && *version != "ff" && trace.len() == 32 && span.len() == 16;
            if let (true, Some(trace_id), Some(parent), Ok(flags)) =
                (valid, hex_bytes::<16>(trace), hex_bytes::<8>(span), u8::from_str_radix(flags, 16))
            {
                return Some(Incoming {
                    trace_id,
                    parent: Some(parent),
                    sampled: Some(flags & 1 == 1),
                    tracestate: headers.get("tracestate").cloned(),
                    format: Format::W3c,
                });
            }
        }
    }
    if let Some(b3) = get("b3") {
        let parts: Vec<&str> = b3.split('-').collect();
        if let [trace, span, rest @ ..] = parts.as_slice() {
            if let (Some(trace_id), Some(parent)) = (hex_bytes::<16>(trace), hex_bytes::<8>(span)) {
                let sampled = rest.first().and_then(|s| sampled_flag(s));
                return Some(Incoming {
                    trace_id,
                    parent: Some(parent),
                    sampled,
                    tracestate: None,
                    format: Format::B3Single,
                });
            }
        }
    }
    let trace_id = get("x-b3-traceid").and_then(hex_bytes::<16>)?;
    let parent = get("x-b3-spanid").and_then(hex_bytes::<8>);
    let sampled = if get("x-b3-flags") == Some("1") { Some(true) } else { get("x-b3-sampled").and_then(sampled_flag) };
    Some(Incoming { trace_id, parent, sampled, tracestate: None, format: Format::B3Multi })
}

/// A span ready to export.
#[derive(Debug, Clone)]
pub struct SpanData {
    /// Trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// Parent span.
    pub parent: Option<SpanId>,
    /// `tracestate` of the trace.
    pub tracestate: String,
    /// Operation name.
    pub name: String,
    /// Server (the request) or client (an upstream attempt).
    pub server: bool,
    /// Start, nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_ns: u64,
    /// Attributes, with Envoy's names.
    pub attributes: Vec<(&'static str, String)>,
    /// Marks the span as failed (5xx, reset).
    pub error: bool,
}

/// The configured tracer: sampling and where spans go.
#[derive(Debug)]
pub struct Tracer {
    /// Percentage of requests traced when the caller did not decide.
    pub sampling: f64,
    /// `service.name` of the exported resource.
    pub service: String,
    /// Node id (`router~<ip>~<name>.<ns>`-like), an Envoy span attribute.
    pub node_id: String,
    queue: Option<mpsc::Sender<SpanData>>,
    counters: TraceCounters,
}

impl Tracer {
    /// A tracer sending spans into `queue` (none: spans are only propagated).
    pub fn new(
        sampling: f64,
        service: String,
        node_id: String,
        queue: Option<mpsc::Sender<SpanData>>,
        counters: TraceCounters,
    ) -> Self {
        Self { sampling: sampling.clamp(0.0, 100.0), service, node_id, queue, counters }
    }

    /// Starts the request's span: reads the caller's context, decides sampling, and
    /// rewrites the trace headers the upstream will see (our span as its parent).
    pub fn start(self: &Arc<Self>, headers: &mut HeaderMap) -> ActiveSpan {
        let incoming = extract(headers);
        let span_id: SpanId = random_id();
        let trace_id = incoming.as_ref().map_or_else(random_id::<16>, |i| i.trace_id);
        let sampled = incoming
            .as_ref()
            .and_then(|i| i.sampled)
            .unwrap_or_else(|| self.sampling > 0.0 && rand::random::<f64>() * 100.0 < self.sampling);
        let parent = incoming.as_ref().and_then(|i| i.parent);
        let format = incoming.as_ref().map_or(Format::W3c, |i| i.format);
        inject(headers, trace_id, span_id, parent, sampled, format);
        let tracestate =
            incoming.and_then(|i| i.tracestate).and_then(|v| v.to_str().ok().map(str::to_string)).unwrap_or_default();
        ActiveSpan {
            tracer: self.clone(),
            trace_id,
            span_id,
            parent,
            sampled,
            tracestate,
            start: SystemTime::now(),
            attempts: Vec::new(),
        }
    }

    fn send(&self, span: SpanData) {
        let Some(queue) = &self.queue else { return };
        if queue.try_send(span).is_err() {
            self.counters.dropped.inc();
        }
    }
}

fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = std::array::from_fn(|_| rand::random());
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

/// Writes the context towards the upstream: always `traceparent`, and the B3 form
/// the caller used.
fn inject(
    headers: &mut HeaderMap,
    trace: TraceId,
    span: SpanId,
    parent: Option<SpanId>,
    sampled: bool,
    format: Format,
) {
    let set = |h: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    let flag = if sampled { "01" } else { "00" };
    set(headers, "traceparent", format!("00-{}-{}-{flag}", hex(&trace), hex(&span)));
    match format {
        Format::W3c => {}
        Format::B3Single => {
            let mut b3 = format!("{}-{}-{}", hex(&trace), hex(&span), u8::from(sampled));
            if let Some(p) = parent {
                b3.push('-');
                b3.push_str(&hex(&p));
            }
            set(headers, "b3", b3);
        }
        Format::B3Multi => {
            set(headers, "x-b3-traceid", hex(&trace));
            set(headers, "x-b3-spanid", hex(&span));
            match parent {
                Some(p) => set(headers, "x-b3-parentspanid", hex(&p)),
                None => {
                    headers.remove("x-b3-parentspanid");
                }
            }
            set(headers, "x-b3-sampled", u8::from(sampled).to_string());
            headers.remove("x-b3-flags");
        }
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The span of a request in flight.
#[derive(Debug)]
pub struct ActiveSpan {
    tracer: Arc<Tracer>,
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    sampled: bool,
    tracestate: String,
    start: SystemTime,
    attempts: Vec<Attempt>,
}

impl ActiveSpan {
    /// Whether this request is exported.
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// Records upstream attempts (child spans).
    pub fn attempts(&mut self, attempts: Vec<Attempt>) {
        self.attempts = attempts;
    }

    /// Ends the request's span with what the access log knows, and exports it and
    /// its attempts when sampled.
    pub fn finish(self, r: &AccessRecord, scheme: &str) {
        if !self.sampled {
            return;
        }
        let end = SystemTime::now();
        // Istio's route decorator: `<destination service>:<port>/*`.
        let name = match r.upstream_cluster.as_deref().map(|c| c.split('|').collect::<Vec<_>>()) {
            Some(parts) if parts.len() == 4 => format!("{}:{}/*", parts[3], parts[1]),
            _ => format!("{}/*", r.authority),
        };
        let mut attributes = vec![
            ("node_id", self.tracer.node_id.clone()),
            ("component", "proxy".to_string()),
            ("guid:x-request-id", r.request_id.clone()),
            ("http.url", format!("{scheme}://{}{}", r.authority, r.path)),
            ("http.method", r.method.clone()),
            ("http.protocol", r.protocol.to_string()),
            ("downstream_cluster", "-".to_string()),
            ("peer.address", r.downstream_remote_address.clone()),
            ("request_size", r.bytes_received.to_string()),
            ("response_size", r.bytes_sent.to_string()),
            ("http.status_code", r.response_code.to_string()),
            ("response_flags", if r.response_flags.is_empty() { "-".into() } else { r.response_flags.clone() }),
        ];
        if let Some(c) = &r.upstream_cluster {
            attributes.push(("upstream_cluster", c.clone()));
            attributes.push(("upstream_cluster.name", c.clone()));
        }
        if let Some(route) = &r.route_name {
            attributes.push(("route_name", route.clone()));
        }
        let error = r.response_code >= 500 || r.response_code == 0;
        if error {
            attributes.push(("error", "true".to_string()));
        }
        let tracer = &self.tracer;
        for a in &self.attempts {
            let cluster = r.upstream_cluster.clone().unwrap_or_default();
            let mut attrs = vec![("upstream_address", a.addr.to_string()), ("upstream_cluster", cluster.clone())];
            if let Some(s) = a.status {
                attrs.push(("http.status_code", s.to_string()));
            }
            tracer.send(SpanData {
                trace_id: self.trace_id,
                span_id: random_id(),
                parent: Some(self.span_id),
                tracestate: self.tracestate.clone(),
                name: format!("router {cluster} egress"),
                server: false,
                start_ns: nanos(a.start),
                end_ns: nanos(a.end),
                attributes: attrs,
                error: a.status.is_none_or(|s| s >= 500),
            });
        }
        tracer.send(SpanData {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            tracestate: self.tracestate,
            name,
            server: true,
            start_ns: nanos(self.start),
            end_ns: nanos(end),
            attributes,
            error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_str(v).unwrap())).collect()
    }

    #[test]
    fn w3c_traceparent_is_read_and_invalid_ones_ignored() {
        let h = headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let i = extract(&h).unwrap();
        assert_eq!(hex(&i.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&i.parent.unwrap()), "00f067aa0ba902b7");
        assert_eq!((i.sampled, i.format), (Some(true), Format::W3c));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(extract(&headers(&[("traceparent", bad)])).is_none(), "{bad}");
        }
    }

    #[test]
    fn b3_single_and_multi_are_read_with_64_bit_ids_padded() {
        let i = extract(&headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")]))
            .unwrap();
        assert_eq!(
            (hex(&i.parent.unwrap()).as_str(), i.sampled, i.format),
            ("e457b5a2e4d86bd1", Some(true), Format::B3Single)
        );
        let i = extract(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(hex(&i.trace_id), "0000000000000000463ac35c9f6413ad");
        assert_eq!((i.sampled, i.format), (Some(false), Format::B3Multi));
        let debug = extract(&headers(&[("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-flags", "1")])).unwrap();
        assert_eq!(debug.sampled, Some(true));
    }

    #[test]
    fn the_upstream_sees_our_span_as_parent_in_the_callers_format() {
        let tracer = Arc::new(Tracer::new(0.0, "gw".into(), "node".into(), None, TraceCounters::default()));
        let mut h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]);
        let span = tracer.start(&mut h);
        assert!(span.sampled());
        assert_eq!(h["x-b3-traceid"], "0000000000000000463ac35c9f6413ad");
        assert_eq!(h["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(h["x-b3-spanid"], hex(&span.span_id).as_str());
        let tp = h["traceparent"].to_str().unwrap();
        assert_eq!(tp, format!("00-0000000000000000463ac35c9f6413ad-{}-01", hex(&span.span_id)));
        // No caller context and 0% sampling: a fresh trace, propagated unsampled.
        let mut h = HeaderMap::new();
        let span = tracer.start(&mut h);
        assert!(!span.sampled());
        assert!(h["traceparent"].to_str().unwrap().ends_with("-00"));
    }
}
