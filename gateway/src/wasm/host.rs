//! What a VM's store holds: the plugin it runs, its context table (the root and one
//! entry per live HTTP stream), the current and effective context, and the side
//! effects a callback queued. Hostcalls read and write only this.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::SystemTime,
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use tokio::sync::Notify;
use wasmtime::{Memory, StoreLimits, TypedFunc};

use super::{plugin::PluginInfo, runtime::Runtime, vm::Vm};

/// Which callback is running: decides which maps and buffers exist (ABI §7.3, §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// `_initialize`, `on_vm_start`, `on_configure`.
    Start,
    /// `on_request_headers`, or a later callback while the request is paused there.
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    /// `on_log`: everything readable, nothing writable.
    Log,
    /// Ticks, queue wake-ups, HTTP call answers (delivered to the root).
    Async,
    /// `on_done`, `on_delete`.
    Teardown,
}

/// The request line and headers while a filter may read or change them.
#[derive(Debug, Default, Clone)]
pub(super) struct RequestHead {
    /// `:method`.
    pub(super) method: Method,
    /// `:path` (and `:authority` for absolute-form or HTTP/2 requests).
    pub(super) uri: Uri,
    /// Every other header; `host` is presented as `:authority`.
    pub(super) headers: HeaderMap,
}

/// The status and headers of a response while a filter may read or change them.
#[derive(Debug, Default)]
pub(super) struct ResponseHead {
    /// `:status`.
    pub(super) status: StatusCode,
    /// Headers.
    pub(super) headers: HeaderMap,
}

/// The connection and request facts behind `source.*`, `request.*` and friends.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// Client address.
    pub source: SocketAddr,
    /// Listener port the client connected to.
    pub destination_port: u16,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// `x-request-id`.
    pub request_id: String,
    /// When the request started.
    pub start: SystemTime,
    /// Connection id (unique per process).
    pub connection_id: u64,
    /// TLS SNI.
    pub sni: Option<Arc<str>>,
    /// Whether the client presented a verified certificate.
    pub mtls: bool,
    /// First URI SAN of the client certificate (its SPIFFE id).
    pub peer_uri_san: Option<String>,
    /// TLS version of the downstream connection.
    pub tls_version: Option<&'static str>,
}

/// A stream's facts, shared by every filter context of the stream.
#[derive(Debug)]
pub(super) struct Facts {
    pub(super) info: StreamInfo,
    /// The request as routed, readable (not writable) after the request phase.
    pub(super) routed: std::sync::OnceLock<RequestHead>,
    /// The verified JWT, once authentication ran (AUTHZ and later phases).
    pub(super) identity: std::sync::OnceLock<Arc<crate::security::jwt::Identity>>,
}

/// A local reply a filter asked for (`proxy_send_local_response`).
#[derive(Debug, Clone)]
pub struct LocalResponse {
    /// Status code.
    pub status: StatusCode,
    /// Short reason for the access log (Envoy's response code details).
    pub details: String,
    /// Body.
    pub body: Bytes,
    /// Extra headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// gRPC status for a trailers-only gRPC reply.
    pub grpc_status: Option<u32>,
}

/// A side effect queued by a hostcall, applied once the callback returned (ABI §5.5).
#[derive(Debug, Clone)]
pub(super) enum Deferred {
    /// `proxy_continue_stream(HTTP_REQUEST|HTTP_RESPONSE)`.
    Continue,
    /// `proxy_send_local_response`.
    Reply(LocalResponse),
    /// `proxy_close_stream`.
    Close,
    /// The VM died (trap, deadline) while this stream waited on it.
    Failed,
}

/// Side effects for a stream whose task is waiting on a paused filter.
#[derive(Debug, Default)]
pub(super) struct Signal {
    pub(super) pending: Mutex<Vec<Deferred>>,
    pub(super) notify: Notify,
}

impl Signal {
    pub(super) fn push(&self, d: Deferred) {
        if let Ok(mut p) = self.pending.lock() {
            p.push(d);
        }
        self.notify.notify_one();
    }

    pub(super) fn take(&self) -> Vec<Deferred> {
        self.pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default()
    }
}

/// One HTTP stream's context in a VM.
#[derive(Debug)]
pub(super) struct StreamData {
    pub(super) request: Option<RequestHead>,
    pub(super) response: Option<ResponseHead>,
    pub(super) request_trailers: Option<HeaderMap>,
    pub(super) response_trailers: Option<HeaderMap>,
    pub(super) request_body: Option<BytesMut>,
    pub(super) response_body: Option<BytesMut>,
    pub(super) facts: Arc<Facts>,
    /// Values a filter stored with `proxy_set_property`.
    pub(super) props: HashMap<Vec<u8>, Vec<u8>>,
    pub(super) signal: Arc<Signal>,
    /// Response code once known (for `response.code`).
    pub(super) response_code: Option<u16>,
    pub(super) route_name: Option<Arc<str>>,
    pub(super) cluster_name: Option<Arc<str>>,
}

/// The answer of an HTTP call, readable during `on_http_call_response`.
#[derive(Debug, Default)]
pub(super) struct CallAnswer {
    pub(super) headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) body: Bytes,
    pub(super) trailers: Vec<(Vec<u8>, Vec<u8>)>,
    /// `proxy_get_status`: code and message.
    pub(super) status: (u32, String),
}

/// The store data of one VM.
pub(super) struct Host {
    pub(super) plugin: Arc<PluginInfo>,
    pub(super) runtime: Arc<Runtime>,
    /// The VM owning this store, for asynchronous deliveries.
    pub(super) vm: Weak<Vm>,
    pub(super) memory: Option<Memory>,
    pub(super) alloc: Option<TypedFunc<u32, u32>>,
    pub(super) limits: StoreLimits,
    pub(super) root: u32,
    pub(super) next_id: u32,
    /// Context the running callback targets.
    pub(super) current: u32,
    /// Context hostcalls act on (`proxy_set_effective_context`).
    pub(super) effective: u32,
    pub(super) stage: Stage,
    pub(super) streams: HashMap<u32, StreamData>,
    pub(super) call: Option<CallAnswer>,
    pub(super) deferred: Vec<(u32, Deferred)>,
    /// Outstanding HTTP calls: token → context that made it.
    pub(super) calls: HashMap<u32, u32>,
    pub(super) next_token: u32,
    /// Properties set on the root context.
    pub(super) root_props: HashMap<Vec<u8>, Vec<u8>>,
    /// Tick period in milliseconds (0 = off); the VM's ticker reads it.
    pub(super) tick_ms: u64,
    /// Bytes written to stdout/stderr that did not end in a newline yet.
    pub(super) partial_line: Vec<u8>,
    /// The last error the plugin logged while starting (why it rejected its
    /// configuration, usually), for the operator's report.
    pub(super) start_error: Option<String>,
}

impl Host {
    pub(super) fn new(plugin: Arc<PluginInfo>, runtime: Arc<Runtime>, limits: StoreLimits) -> Self {
        Self {
            plugin,
            runtime,
            vm: Weak::new(),
            memory: None,
            alloc: None,
            limits,
            root: 1,
            next_id: 2,
            current: 1,
            effective: 1,
            stage: Stage::Start,
            streams: HashMap::new(),
            call: None,
            deferred: Vec::new(),
            calls: HashMap::new(),
            next_token: 1,
            root_props: HashMap::new(),
            tick_ms: 0,
            partial_line: Vec::new(),
            start_error: None,
        }
    }

    /// The stream the effective context names, if it is one.
    pub(super) fn stream(&mut self) -> Option<&mut StreamData> {
        self.streams.get_mut(&self.effective)
    }
}

impl StreamData {
    /// The request head: writable while the request phase owns it, read-only as
    /// routed afterwards.
    pub(super) fn request_view(&self) -> Option<&RequestHead> {
        self.request.as_ref().or_else(|| self.facts.routed.get())
    }
}
