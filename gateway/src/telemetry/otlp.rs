//! OTLP/HTTP export of spans: `ExportTraceServiceRequest` encoded as protobuf by
//! hand (a handful of messages, not worth a code generator), posted in batches by a
//! background task through the gateway's own upstream stack.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{uri::PathAndQuery, HeaderMap, HeaderValue, Method};
use tokio::sync::mpsc;

use super::trace::{SpanData, TraceCounters};
use crate::upstream::{self, Cluster, ReplayBody, RequestHead, RetryPolicy, Upstreams};

/// Spans waiting for export; beyond this, new ones are dropped (and counted).
const QUEUE: usize = 8192;
/// Spans per request to the collector.
const BATCH: usize = 512;
/// Longest a span waits for its batch.
const FLUSH: Duration = Duration::from_secs(1);

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(out, field, 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

/// `KeyValue { key = 1; AnyValue value = 2 { string_value = 1 } }`.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &str) {
    let mut any = Vec::with_capacity(value.len() + 2);
    bytes_field(&mut any, 1, value.as_bytes());
    let mut kv = Vec::with_capacity(key.len() + any.len() + 4);
    bytes_field(&mut kv, 1, key.as_bytes());
    bytes_field(&mut kv, 2, &any);
    bytes_field(out, field, &kv);
}

/// `Span` (opentelemetry/proto/trace/v1/trace.proto).
fn span(s: &SpanData) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    bytes_field(&mut out, 1, &s.trace_id);
    bytes_field(&mut out, 2, &s.span_id);
    if !s.tracestate.is_empty() {
        bytes_field(&mut out, 3, s.tracestate.as_bytes());
    }
    if let Some(p) = &s.parent {
        bytes_field(&mut out, 4, p);
    }
    bytes_field(&mut out, 5, s.name.as_bytes());
    tag(&mut out, 6, 0);
    varint(&mut out, if s.server { 2 } else { 3 }); // SPAN_KIND_SERVER / _CLIENT
    fixed64(&mut out, 7, s.start_ns);
    fixed64(&mut out, 8, s.end_ns);
    for (k, v) in &s.attributes {
        key_value(&mut out, 9, k, v);
    }
    if s.error {
        let mut status = Vec::new();
        tag(&mut status, 3, 0);
        varint(&mut status, 2); // STATUS_CODE_ERROR
        bytes_field(&mut out, 15, &status);
    }
    out
}

/// `ExportTraceServiceRequest { ResourceSpans { Resource, ScopeSpans { scope, spans } } }`.
pub(crate) fn encode(service: &str, spans: &[SpanData]) -> Vec<u8> {
    let mut resource = Vec::new();
    key_value(&mut resource, 1, "service.name", service);
    key_value(&mut resource, 1, "telemetry.sdk.name", "wicket");
    let mut scope = Vec::new();
    bytes_field(&mut scope, 1, b"wicket");
    bytes_field(&mut scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
    let mut scope_spans = Vec::new();
    bytes_field(&mut scope_spans, 1, &scope);
    for s in spans {
        bytes_field(&mut scope_spans, 2, &span(s));
    }
    let mut resource_spans = Vec::new();
    bytes_field(&mut resource_spans, 1, &resource);
    bytes_field(&mut resource_spans, 2, &scope_spans);
    let mut request = Vec::new();
    bytes_field(&mut request, 1, &resource_spans);
    request
}

/// Where spans go.
#[derive(Clone)]
pub(crate) struct Collector {
    /// Upstream clients.
    pub upstreams: Upstreams,
    /// The collector's cluster.
    pub cluster: Arc<Cluster>,
    /// Its `Host`.
    pub authority: String,
    /// Export path (`/v1/traces`).
    pub path: PathAndQuery,
    /// Time allowed per export.
    pub timeout: Duration,
}

/// Starts the export task; it ends once every sender is gone and the queue is
/// drained (a reload that replaces the tracer retires the old task this way).
pub(crate) fn spawn(collector: Collector, service: String, counters: TraceCounters) -> Option<mpsc::Sender<SpanData>> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let (tx, mut rx) = mpsc::channel::<SpanData>(QUEUE);
    rt.spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let first = rx.recv().await;
            let Some(first) = first else { break };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + FLUSH;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    _ => break,
                }
            }
            let n = batch.len() as u64;
            if export(&collector, &service, &batch).await {
                counters.exported.inc_by(n);
            } else {
                counters.dropped.inc_by(n);
            }
            batch.clear();
        }
    });
    Some(tx)
}

async fn export(c: &Collector, service: &str, spans: &[SpanData]) -> bool {
    let body = Bytes::from(encode(service, spans));
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
    if let Ok(host) = HeaderValue::from_str(&c.authority) {
        headers.insert(http::header::HOST, host);
    }
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let head = RequestHead::new(Method::POST, c.path.clone(), headers);
    let no_retry = RetryPolicy::none();
    match upstream::call(&c.upstreams, &c.cluster, head, ReplayBody::Full(body), Some(c.timeout), &no_retry, None).await
    {
        Ok(outcome) if outcome.response.status().is_success() => true,
        Ok(outcome) => {
            tracing::debug!(status = %outcome.response.status(), "trace collector refused spans");
            false
        }
        Err(e) => {
            tracing::debug!(error = %e.error, "trace collector unreachable");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_a_span_encode_as_protobuf() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        let s = SpanData {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: None,
            tracestate: String::new(),
            name: "n".into(),
            server: true,
            start_ns: 1,
            end_ns: 2,
            attributes: vec![("k", "v".into())],
            error: false,
        };
        let encoded = span(&s);
        // trace_id: field 1, wire type 2, 16 bytes.
        assert_eq!(&encoded[..2], &[0x0a, 16]);
        assert_eq!(&encoded[18..20], &[0x12, 8]);
        // name "n", kind SERVER, start and end as fixed64.
        assert_eq!(&encoded[28..35], &[0x2a, 1, b'n', 0x30, 2, 0x39, 1]);
        // KeyValue { key "k", value { string_value "v" } }.
        assert!(encoded.ends_with(&[0x4a, 8, 0x0a, 1, b'k', 0x12, 3, 0x0a, 1, b'v']));
    }
}
