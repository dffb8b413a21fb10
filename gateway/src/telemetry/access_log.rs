//! One JSON line per request, written when the response body ends (or is dropped), by
//! a writer thread so the request path never blocks on stdout.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde::Serialize;
use tokio::time::Instant;

use super::{
    json,
    metrics::{RequestLabels, RequestProtocol},
    DestinationLabels, LogFormat, Prehashed, Telemetry,
};
use crate::{addr_text, error::ResponseFlags};

/// Bytes buffered for the writer before new lines are dropped.
const MAX_BUFFERED: usize = 8 << 20;
/// How often the writer flushes (Envoy's access log flush interval is 1 s; shorter
/// keeps `tail -f` lively at no measurable cost).
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Where access log lines go. Requests serialize into a shared buffer under a short
/// lock; a writer thread swaps it out and writes it every `FLUSH_EVERY`, so the request
/// path never waits on the writer nor wakes it. The mesh config's `accessLogFile` can
/// point the log at a file; without one it goes to the sink it was built with.
#[derive(Debug, Clone)]
pub struct AccessLog(Arc<Target>);

#[derive(Debug)]
struct Target {
    current: ArcSwapOption<Sink>,
    base: Option<Arc<Sink>>,
    file: Mutex<Option<PathBuf>>,
}

#[derive(Debug)]
struct Sink {
    buffer: Mutex<Vec<u8>>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Lines to standard output, from a dedicated thread.
    pub fn stdout() -> Self {
        Self::to_writer(std::io::stdout())
    }

    /// Lines to any writer, flushed from a dedicated thread.
    pub fn to_writer<W: Write + Send + 'static>(out: W) -> Self {
        Self::with_base(spawn_sink(out))
    }

    fn with_base(base: Option<Arc<Sink>>) -> Self {
        Self(Arc::new(Target { current: ArcSwapOption::new(base.clone()), base, file: Mutex::new(None) }))
    }

    /// Sends lines to `file` (appending; created if missing), or back to the original
    /// sink with `None`. Pointing at the file already in use keeps its writer.
    pub fn use_file(&self, file: Option<&Path>) -> std::io::Result<()> {
        let Ok(mut current) = self.0.file.lock() else { return Ok(()) };
        if current.as_deref() == file {
            return Ok(());
        }
        let sink = match file {
            Some(path) => spawn_sink(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
            None => self.0.base.clone(),
        };
        // The replaced writer drains its buffer and stops once no request holds it.
        self.0.current.store(sink);
        *current = file.map(Path::to_path_buf);
        Ok(())
    }

    /// Lines to a channel the caller reads (tests, embedding).
    pub fn channel() -> (Self, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        (Self::to_writer(LineSender { tx, partial: Vec::new() }), rx)
    }

    /// No access log.
    pub fn disabled() -> Self {
        Self::with_base(None)
    }

    /// Writes a request's line in its format (JSON, text, or nothing).
    pub fn write_request(&self, record: &AccessRecord) {
        match &*record.format {
            LogFormat::Json => self.append(|buffer| {
                record.write_json(buffer);
                buffer.push(b'\n');
            }),
            LogFormat::Text(text) => self.append(|buffer| text.render(record, buffer)),
            LogFormat::Off => {}
        }
    }

    /// Writes one record as a JSON line (dropped, and counted, when the writer falls
    /// behind by more than `MAX_BUFFERED` bytes).
    pub fn write<T: Serialize>(&self, record: &T) {
        self.append(|buffer| {
            let start = buffer.len();
            if serde_json::to_writer(&mut *buffer, record).is_ok() {
                buffer.push(b'\n');
            } else {
                buffer.truncate(start);
            }
        });
    }

    fn append(&self, render: impl FnOnce(&mut Vec<u8>)) {
        let sink = self.0.current.load();
        let Some(sink) = &*sink else { return };
        let Ok(mut buffer) = sink.buffer.lock() else { return };
        if buffer.len() > MAX_BUFFERED {
            sink.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        render(&mut buffer);
    }
}

/// A buffer and the thread that writes it to `out` until the last handle is gone.
fn spawn_sink<W: Write + Send + 'static>(mut out: W) -> Option<Arc<Sink>> {
    let sink = Arc::new(Sink { buffer: Mutex::new(Vec::with_capacity(64 << 10)), dropped: AtomicU64::new(0) });
    let writer = sink.clone();
    let spawned = std::thread::Builder::new().name("access-log".into()).spawn(move || {
        let mut spare = Vec::with_capacity(64 << 10);
        loop {
            // The last handle gone: drain once more, then stop.
            let last = Arc::strong_count(&writer) == 1;
            if let Ok(mut buffer) = writer.buffer.lock() {
                std::mem::swap(&mut *buffer, &mut spare);
            }
            if !spare.is_empty() {
                let _ = out.write_all(&spare).and_then(|()| out.flush());
                spare.clear();
            }
            let dropped = writer.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!(dropped, "access log lines dropped: the writer fell behind");
            }
            if last {
                break;
            }
            std::thread::park_timeout(FLUSH_EVERY);
        }
    });
    spawned.ok().map(|_| sink)
}

/// Splits written bytes into lines for `AccessLog::channel`.
struct LineSender {
    tx: mpsc::Sender<String>,
    partial: Vec<u8>,
}

impl Write for LineSender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(buf);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let _ = self.tx.send(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The fields of one access log line (Envoy/Istio JSON access log names).
#[derive(Debug)]
pub struct AccessRecord {
    /// Request start, RFC 3339.
    pub start_time: String,
    /// Method.
    pub method: String,
    /// Authority.
    pub authority: String,
    /// Path with query, as received.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// Status sent.
    pub response_code: u16,
    /// Envoy response flags (`-` when none).
    pub response_flags: String,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes.
    pub bytes_sent: u64,
    /// Milliseconds from request start to the end of the response.
    pub duration: u64,
    /// Endpoint that answered.
    pub upstream_host: Option<String>,
    /// Cluster used.
    pub upstream_cluster: Option<String>,
    /// Matched rule.
    pub route_name: Option<String>,
    /// `x-request-id`.
    pub request_id: String,
    /// Client address.
    pub downstream_remote_address: String,
    /// Why the gateway answered itself, when it did.
    pub response_details: Option<String>,
    /// gRPC status of the response, when it carried one.
    pub grpc_status: Option<u16>,
    started: Option<Instant>,
    /// The flags as a value, for metrics.
    pub flag_bits: ResponseFlags,
    /// Where the request went, for metrics (`unknown` when nowhere).
    pub destination: Option<Arc<Prehashed<DestinationLabels>>>,
    /// gRPC request (`content-type: application/grpc`).
    pub grpc: bool,
    /// The upstream connection used client certificates.
    pub mutual_tls: bool,
    /// Which side reports the metrics (a sidecar's inbound: `destination`).
    pub reporter: crate::telemetry::metrics::Reporter,
    /// The caller, when it is not this proxy's own workload (inbound).
    pub source: Option<Arc<Prehashed<super::SourceLabels>>>,
    /// How this request's line is written (from the snapshot it started on).
    pub format: Arc<LogFormat>,
    /// Request headers a text format reads, captured at the start.
    pub captured: Vec<Option<String>>,
    /// The request's trace span, when tracing is on.
    pub span: Option<super::trace::ActiveSpan>,
    /// `http` or `https`, for the span's URL.
    pub scheme: &'static str,
    /// Whether Istio's request metrics count this request.
    pub metrics: bool,
}

impl AccessRecord {
    /// A record for a request that starts now.
    pub fn start(method: &str, authority: &str, path: &str, protocol: &'static str, peer: SocketAddr) -> Self {
        Self {
            start_time: rfc3339(SystemTime::now()),
            method: method.to_string(),
            authority: authority.to_string(),
            path: path.to_string(),
            protocol,
            response_code: 0,
            response_flags: String::new(),
            bytes_received: 0,
            bytes_sent: 0,
            duration: 0,
            upstream_host: None,
            upstream_cluster: None,
            route_name: None,
            request_id: String::new(),
            downstream_remote_address: addr_text::socket_addr(peer),
            response_details: None,
            grpc_status: None,
            started: Some(Instant::now()),
            flag_bits: ResponseFlags::default(),
            destination: None,
            grpc: false,
            mutual_tls: false,
            reporter: Default::default(),
            source: None,
            format: Arc::default(),
            captured: Vec::new(),
            span: None,
            scheme: "http",
            metrics: true,
        }
    }

    /// The JSON access log line, Envoy's and Istio's field names in a fixed order.
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut o = json::Object::new(out);
        o.str("start_time", &self.start_time);
        o.str("method", &self.method);
        o.str("authority", &self.authority);
        o.str("path", &self.path);
        o.str("protocol", self.protocol);
        o.num("response_code", u64::from(self.response_code));
        o.str("response_flags", &self.response_flags);
        o.num("bytes_received", self.bytes_received);
        o.num("bytes_sent", self.bytes_sent);
        o.num("duration", self.duration);
        o.opt_str("upstream_host", self.upstream_host.as_deref());
        o.opt_str("upstream_cluster", self.upstream_cluster.as_deref());
        o.opt_str("route_name", self.route_name.as_deref());
        o.str("request_id", &self.request_id);
        o.str("downstream_remote_address", &self.downstream_remote_address);
        o.opt_str("response_details", self.response_details.as_deref());
        o.opt_num("grpc_status", self.grpc_status.map(u64::from));
        o.finish();
    }

    /// Sets the response flags.
    pub fn flags(&mut self, flags: ResponseFlags) {
        self.flag_bits = flags;
        self.response_flags = flags.to_string();
    }
}

/// A response body that counts bytes and writes the access log line when it ends.
pub struct Logged<B> {
    inner: B,
    record: Option<AccessRecord>,
    received: Option<Arc<std::sync::atomic::AtomicU64>>,
    telemetry: Telemetry,
}

impl<B> Logged<B> {
    /// Wraps `inner`; `received` counts a streamed request body.
    pub fn new(
        inner: B,
        record: AccessRecord,
        received: Option<Arc<std::sync::atomic::AtomicU64>>,
        telemetry: Telemetry,
    ) -> Self {
        Self { inner, record: Some(record), received, telemetry }
    }

    /// Istio's `telemetry::finish`: one access log line and the request metrics.
    fn finish(&mut self) {
        let Some(mut r) = self.record.take() else { return };
        if let Some(rx) = &self.received {
            r.bytes_received = rx.load(std::sync::atomic::Ordering::Relaxed);
        }
        let elapsed = r.started.map(|s| s.elapsed()).unwrap_or_default();
        r.duration = elapsed.as_millis() as u64;
        if r.metrics {
            let labels = RequestLabels {
                reporter: r.reporter,
                source: r.source.clone().unwrap_or_else(|| self.telemetry.source.clone()),
                destination: r.destination.clone().unwrap_or_else(DestinationLabels::unknown),
                protocol: if r.grpc { RequestProtocol::Grpc } else { RequestProtocol::Http },
                response_code: r.response_code,
                grpc_status: r.grpc_status,
                flags: r.flag_bits,
                mutual_tls: r.mutual_tls,
            };
            let millis = elapsed.as_secs_f64() * 1000.0;
            self.telemetry.metrics.record_request(&labels, millis, r.bytes_received, r.bytes_sent);
        }
        if let Some(span) = r.span.take() {
            span.finish(&r, r.scheme);
        }
        self.telemetry.log.write_request(&r);
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Logged<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(r)) = (frame.data_ref(), this.record.as_mut()) {
                    r.bytes_sent += data.len() as u64;
                }
                if let (Some(trailers), Some(r)) = (frame.trailers_ref(), this.record.as_mut()) {
                    r.grpc_status = grpc_status(trailers).or(r.grpc_status);
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                if let Some(r) = this.record.as_mut() {
                    let mut flags = ResponseFlags::default();
                    flags.insert(ResponseFlags::UC);
                    if r.response_flags.is_empty() || r.response_flags == "-" {
                        r.flags(flags);
                    }
                }
                this.finish();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` of response headers or trailers.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// One TCP or TLS-passthrough connection, logged when it closes.
#[derive(Debug, Serialize)]
pub struct TcpRecord {
    /// Connection start, RFC 3339.
    pub start_time: String,
    /// `TCP`.
    pub protocol: &'static str,
    /// Envoy response flags (`-` when none).
    pub response_flags: String,
    /// Bytes from the client.
    pub bytes_received: u64,
    /// Bytes to the client.
    pub bytes_sent: u64,
    /// Milliseconds the connection lasted.
    pub duration: u64,
    /// SNI of a TLS connection.
    pub requested_server_name: Option<String>,
    /// Endpoint connected to.
    pub upstream_host: Option<String>,
    /// Cluster used.
    pub upstream_cluster: Option<String>,
    /// VirtualService whose rule matched.
    pub route_name: Option<String>,
    /// Client address.
    pub downstream_remote_address: String,
    /// Why the gateway closed the connection itself, when it did.
    pub response_details: Option<String>,
    #[serde(skip)]
    started: Option<Instant>,
}

impl TcpRecord {
    /// A record for a connection that starts now.
    pub fn start(peer: SocketAddr, sni: Option<&str>) -> Self {
        Self {
            start_time: rfc3339(SystemTime::now()),
            protocol: "TCP",
            response_flags: "-".into(),
            bytes_received: 0,
            bytes_sent: 0,
            duration: 0,
            requested_server_name: sni.map(str::to_string),
            upstream_host: None,
            upstream_cluster: None,
            route_name: None,
            downstream_remote_address: addr_text::socket_addr(peer),
            response_details: None,
            started: Some(Instant::now()),
        }
    }

    /// Writes the record with the connection's duration.
    pub fn finish(mut self, log: &AccessLog) {
        self.duration = self.started.map_or(0, |s| s.elapsed().as_millis() as u64);
        log.write(&self);
    }
}

/// Formats a time as RFC 3339 UTC with milliseconds.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Digits written in place: `format!` cost more than the rest of the record.
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let fields = [
        (0, 4, year as u64),
        (5, 2, month as u64),
        (8, 2, day as u64),
        (11, 2, rem / 3600),
        (14, 2, rem % 3600 / 60),
        (17, 2, rem % 60),
        (20, 3, u64::from(d.subsec_millis())),
    ];
    for (at, width, mut n) in fields {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_102_896_123);
        assert_eq!(rfc3339(t), "2025-11-25T20:34:56.123Z");
        let at = |ms: u64| rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_007), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }
}
