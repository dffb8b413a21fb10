//! One request's context: what every phase reads (the snapshot, the connection) and
//! what the phases learn on the way (the authority, the verified identity, the flags,
//! the Wasm stream, the access record), and the response phases that close it.

use std::{net::SocketAddr, sync::Arc};

use http::{header, HeaderValue, Request, Response, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use super::{body, local::LocalReply, ConnInfo, Direction, Forwarded, Proxy, ResponseBody};
use crate::{
    addr_text,
    error::ResponseFlags,
    security::jwt::Identity,
    snapshot::Snapshot,
    telemetry::{AccessRecord, DestinationLabels, LogFormat, Logged, Prehashed},
    wasm::{Phase, StreamInfo, WasmStream},
};

/// The state of one request as it goes through the phases.
pub(super) struct RequestCx<'a> {
    pub(super) proxy: &'a Proxy,
    /// One snapshot for the whole request.
    pub(super) snapshot: &'a Snapshot,
    pub(super) conn: &'a ConnInfo,
    /// `:authority` (HTTP/2) or the one `Host` (HTTP/1); `None` when missing or repeated.
    pub(super) authority: Option<String>,
    /// The verified JWT identity, once authenticated.
    pub(super) identity: Option<Arc<Identity>>,
    /// Flags the phases set on the way (DI, URX).
    pub(super) flags: ResponseFlags,
    /// The HTTP rule that matched.
    pub(super) route_name: Option<Arc<str>>,
    /// What the forward phase learned.
    pub(super) upstream: UpstreamFacts,
    pub(super) wasm: Option<WasmStream>,
    /// The access record: opened at the start, completed by the logging phase.
    pub(super) record: AccessRecord,
}

/// What the forward phase learned of the upstream, for the log line and metrics.
#[derive(Default)]
pub(super) struct UpstreamFacts {
    /// The cluster chosen, by name (also when it does not exist).
    pub(super) cluster: Option<Arc<str>>,
    /// The endpoint that answered, or the last one tried.
    pub(super) host: Option<SocketAddr>,
    /// Istio's `destination_*` labels: the endpoint's, else the cluster's.
    pub(super) destination: Option<Arc<Prehashed<DestinationLabels>>>,
    /// The upstream connection presented a client certificate (mutual TLS).
    pub(super) mutual_tls: bool,
    /// A request body buffered whole, by its length.
    pub(super) bytes_received: Option<u64>,
}

impl<'a> RequestCx<'a> {
    /// Opens the request: its id, its access record and trace span, its Wasm stream.
    pub(super) fn start(
        proxy: &'a Proxy,
        snapshot: &'a Snapshot,
        conn: &'a ConnInfo,
        req: &mut Request<Incoming>,
    ) -> Self {
        let authority = request_authority(req);
        let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut record = AccessRecord::start(
            req.method().as_str(),
            authority.as_deref().unwrap_or(""),
            path_and_query,
            protocol(req.version()),
            conn.peer,
        );
        record.request_id = ensure_request_id(req.headers_mut());
        if let LogFormat::Text(text) = &*snapshot.access_log {
            record.captured = text.capture(req.headers());
        }
        record.format = snapshot.access_log.clone();
        record.scheme = conn.scheme;
        if conn.direction == Direction::Inbound {
            let (reporter, source) = conn.reporter_and_source(&proxy.telemetry.source);
            (record.reporter, record.source) = (reporter, Some(source));
            record.mutual_tls = conn.peer_cert.is_some();
        }
        record.metrics = snapshot.request_metrics;
        if let Some(tracer) = &snapshot.tracer {
            record.span = Some(tracer.start(req.headers_mut()));
        }
        record.grpc =
            req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let wasm = (!snapshot.wasm.is_empty()).then(|| WasmStream::new(stream_info(conn, req, &record)));
        let flags = ResponseFlags::default();
        let upstream = UpstreamFacts::default();
        Self { proxy, snapshot, conn, authority, identity: None, flags, route_name: None, upstream, wasm, record }
    }

    /// Runs the Wasm filters of `phase` on the request headers.
    pub(super) async fn filters(&mut self, phase: Phase, req: &mut Request<Incoming>) -> Result<(), LocalReply> {
        let Some(wasm) = &mut self.wasm else { return Ok(()) };
        let eos = req.body().is_end_stream();
        let traffic = self.conn.traffic();
        wasm.request_headers(&self.snapshot.wasm, phase, traffic, req, eos).await.map_err(LocalReply::wasm)
    }

    /// The response phases: the gateway's own answer made a response, then the Wasm
    /// filters' response callbacks (in reverse order).
    pub(super) fn respond(&mut self, reply: Result<Forwarded, LocalReply>) -> Forwarded {
        let (mut response, received) = match reply {
            Ok(forwarded) => {
                self.record.flags(self.flags);
                forwarded
            }
            Err(local) => (local.into_response(&mut self.record), None),
        };
        if let Some(mut stream) = self.wasm.take().filter(|w| !w.is_empty()) {
            let eos = response.body().is_end_stream();
            if let Err(local) = stream.response_headers(&mut response, eos) {
                response = LocalReply::wasm(local).into_response(&mut self.record);
            }
            // A response without a body never reaches the body callbacks (as in Envoy).
            if !response.body().is_end_stream() {
                response = response.map(|b| body::boxed(stream.response_body(b)));
            }
        }
        (response, received)
    }

    /// The logging phase: the record is completed from what the phases learned and
    /// the response, and written when the response body ends.
    pub(super) fn finish(self, (response, received): Forwarded) -> Response<Logged<ResponseBody>> {
        let mut record = self.record;
        record.route_name = self.route_name.as_deref().map(str::to_string);
        let upstream = self.upstream;
        record.upstream_cluster = upstream.cluster.as_deref().map(str::to_string);
        record.upstream_host = upstream.host.map(addr_text::socket_addr);
        record.destination = upstream.destination;
        record.mutual_tls |= upstream.mutual_tls;
        if let Some(n) = upstream.bytes_received {
            record.bytes_received = n;
        }
        record.response_code = response.status().as_u16();
        record.grpc_status = crate::telemetry::grpc_status(response.headers()).or(record.grpc_status);
        let telemetry = self.proxy.telemetry.clone();
        response.map(|b| Logged::new(b, record, received, telemetry))
    }
}

/// What Wasm filters read as `source.*`, `request.*` and `connection.*`.
fn stream_info<B>(conn: &ConnInfo, req: &Request<B>, record: &AccessRecord) -> StreamInfo {
    StreamInfo {
        source: conn.peer,
        destination_port: conn.port,
        scheme: conn.scheme,
        protocol: protocol(req.version()),
        request_id: record.request_id.clone(),
        start: std::time::SystemTime::now(),
        connection_id: conn.id,
        sni: conn.sni.clone(),
        mtls: conn.peer_cert.is_some(),
        peer_uri_san: conn.peer_cert.as_ref().and_then(|p| p.uris.first().cloned()),
        tls_version: conn.tls_version,
    }
}

/// `:authority` for HTTP/2, `Host` for HTTP/1 (exactly one); absolute-form wins.
pub(super) fn request_authority<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next()?;
    if hosts.next().is_some() {
        return None;
    }
    host.to_str().ok().filter(|h| !h.is_empty()).map(str::to_string)
}

/// Envoy generates `x-request-id` when missing and passes it on.
fn ensure_request_id(headers: &mut http::HeaderMap) -> String {
    static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
    if let Some(id) = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) {
        return id.to_string();
    }
    // A v4 UUID from the thread-local generator: `Uuid::new_v4` costs a syscall each.
    let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let id = uuid.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_string();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(&X_REQUEST_ID, v);
    }
    id
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP",
    }
}
