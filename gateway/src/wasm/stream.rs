//! One HTTP stream through the Wasm filters: request headers phase by phase (the
//! pipeline interleaves JWT and authorization between phases), pauses awaited until
//! a filter resumes or answers, bodies and trailers streamed through the filters that
//! asked for them, response callbacks in reverse order, and the teardown triple when
//! the stream ends.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::{
    host::{Deferred, Facts, LocalResponse, RequestHead, ResponseHead, Signal, StreamInfo},
    plugin::{Filter, Phase, Traffic},
    vm::{Dir, Verdict, Vm, VmFailure},
    Chain,
};
use crate::upstream::BoxError;

/// How long a paused stream waits for its filter (Envoy would hit the route timeout).
const PAUSE_LIMIT: Duration = Duration::from_secs(60);

/// A filter that took part in this stream.
struct Active {
    filter: Arc<Filter>,
    vm: Arc<Vm>,
    ctx: u32,
    /// Its VM died during this stream: no further callbacks.
    failed: std::sync::atomic::AtomicBool,
}

impl Active {
    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// The stream's filter contexts, shared with its body wrappers; the teardown runs
/// when the last holder drops it (after the response body ended).
struct Contexts {
    active: Vec<Active>,
    /// Index of the filter that answered locally (it does not see its own reply);
    /// `usize::MAX` for none.
    replier: AtomicUsize,
}

impl Drop for Contexts {
    fn drop(&mut self) {
        for a in &self.active {
            a.vm.finish(a.ctx);
        }
    }
}

/// The Wasm side of one request.
pub struct WasmStream {
    facts: Arc<Facts>,
    contexts: Arc<Contexts>,
}

/// Envoy's answer when a FAIL_CLOSE plugin cannot run.
fn fail_closed(filter: &Filter) -> LocalResponse {
    tracing::warn!(plugin = %filter.id, "Wasm plugin unavailable; FAIL_CLOSE denies the request");
    LocalResponse {
        status: StatusCode::SERVICE_UNAVAILABLE,
        details: "wasm_fail_stream".into(),
        body: Bytes::from_static(b"wasm plugin failed\n"),
        headers: Vec::new(),
        grpc_status: None,
    }
}

/// Istio's deny-all placeholder for a FAIL_CLOSE plugin whose module never loaded.
fn placeholder_denies(filter: &Filter) -> LocalResponse {
    tracing::debug!(plugin = %filter.id, "Wasm plugin not loaded; denying (FAIL_CLOSE)");
    LocalResponse {
        status: StatusCode::FORBIDDEN,
        details: "wasm_plugin_not_loaded".into(),
        body: Bytes::from_static(b"RBAC: access denied"),
        headers: Vec::new(),
        grpc_status: None,
    }
}

impl WasmStream {
    /// A stream with no filter run yet.
    pub fn new(info: StreamInfo) -> Self {
        let contexts = Contexts { active: Vec::new(), replier: AtomicUsize::new(usize::MAX) };
        let facts = Facts { info, routed: Default::default(), identity: Default::default() };
        Self { facts: Arc::new(facts), contexts: Arc::new(contexts) }
    }

    /// Runs the request-headers callbacks of one phase's filters, in order. `Err` is
    /// a local reply (a filter answered, or one failed closed).
    pub async fn request_headers<B>(
        &mut self,
        chain: &Chain,
        phase: Phase,
        traffic: Traffic,
        req: &mut Request<B>,
        eos: bool,
    ) -> Result<(), LocalResponse> {
        for filter in chain.phase(phase, traffic) {
            let Some(plugin) = &filter.plugin else {
                return Err(placeholder_denies(filter));
            };
            let Some(vm) = plugin.pick() else {
                if filter.fail_open {
                    continue;
                }
                return Err(fail_closed(filter));
            };
            let (ctx, signal) = match vm.create_stream(self.facts.clone()) {
                Ok(c) => c,
                Err(VmFailure::Dead) if filter.fail_open => continue,
                Err(VmFailure::Dead) => return Err(fail_closed(filter)),
            };
            let Some(contexts) = Arc::get_mut(&mut self.contexts) else {
                return Err(fail_closed(filter)); // bodies already started: cannot happen
            };
            let index = contexts.active.len();
            contexts.active.push(Active { filter: filter.clone(), vm: vm.clone(), ctx, failed: Default::default() });
            let head = RequestHead {
                method: std::mem::take(req.method_mut()),
                uri: std::mem::take(req.uri_mut()),
                headers: std::mem::take(req.headers_mut()),
            };
            let failed = || self.contexts.active[index].fail();
            let outcome = match vm.request_headers(ctx, head, eos) {
                Err(VmFailure::Dead) => Verdict::Failed,
                Ok((Verdict::Continue, Some(head))) => {
                    restore(req, head);
                    continue;
                }
                Ok((Verdict::Pause, _)) => wait(&vm, ctx, &signal).await,
                Ok((v, _)) => v,
            };
            match outcome {
                Verdict::Continue => match vm.take_request(ctx) {
                    Some(head) => restore(req, head),
                    None => return Err(fail_closed(filter)),
                },
                Verdict::Reply(r) => {
                    self.contexts.replier.store(index, Ordering::Relaxed);
                    return Err(r);
                }
                Verdict::Close => return Err(closed()),
                Verdict::Failed | Verdict::Pause => {
                    failed();
                    match vm.take_request(ctx) {
                        Some(head) if filter.fail_open => restore(req, head),
                        _ => return Err(fail_closed(filter)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes the verified JWT readable as `request.auth.*` to later phases.
    pub fn authenticated(&self, identity: Arc<crate::security::jwt::Identity>) {
        let _ = self.facts.identity.set(identity);
    }

    /// Records the route and cluster chosen (for `xds.*` properties) and the request
    /// as routed (for `request.*` and request headers during the response).
    pub fn routed<B>(&self, req: &Request<B>, route: Option<Arc<str>>, cluster: Option<Arc<str>>) {
        let head = RequestHead { method: req.method().clone(), uri: req.uri().clone(), headers: req.headers().clone() };
        let _ = self.facts.routed.set(head);
        for a in &self.contexts.active {
            a.vm.set_route(a.ctx, route.clone(), cluster.clone());
        }
    }

    /// True when no filter took part.
    pub fn is_empty(&self) -> bool {
        self.contexts.active.is_empty()
    }

    /// Runs the response-headers callbacks in reverse order (the filter that made a
    /// local reply is skipped). `Err` replaces the response with a local reply.
    pub fn response_headers<B>(&mut self, resp: &mut Response<B>, eos: bool) -> Result<(), LocalResponse> {
        let skip = Some(self.contexts.replier.swap(usize::MAX, Ordering::Relaxed));
        for (i, a) in self.contexts.active.iter().enumerate().rev() {
            if Some(i) == skip || a.failed() {
                continue;
            }
            let head = ResponseHead { status: resp.status(), headers: std::mem::take(resp.headers_mut()) };
            match a.vm.response_headers(a.ctx, head, eos) {
                Ok((verdict, head)) => {
                    if let Some(head) = head {
                        *resp.status_mut() = head.status;
                        *resp.headers_mut() = head.headers;
                    }
                    match verdict {
                        Verdict::Reply(r) => {
                            self.contexts.replier.store(i, Ordering::Relaxed);
                            return Err(r);
                        }
                        Verdict::Close => return Err(closed()),
                        // A pause on response headers without a way to resume later:
                        // the response goes on as Envoy's would once the filter continued.
                        _ => {}
                    }
                }
                Err(VmFailure::Dead) => {
                    a.fail();
                    if !a.filter.fail_open {
                        return Err(fail_closed(&a.filter));
                    }
                }
            }
        }
        Ok(())
    }

    /// Wraps a request body so each chunk passes through the filters, in order.
    pub fn request_body<B>(&self, body: B) -> Filtered<B> {
        Filtered::new(body, self.contexts.clone(), Dir::Request)
    }

    /// Wraps a response body (filters in reverse order); the stream's teardown runs
    /// when it has been sent (or dropped).
    pub fn response_body<B>(self, body: B) -> Filtered<B> {
        Filtered::new(body, self.contexts, Dir::Response)
    }
}

fn closed() -> LocalResponse {
    LocalResponse {
        status: StatusCode::SERVICE_UNAVAILABLE,
        details: "wasm_close_stream".into(),
        body: Bytes::new(),
        headers: Vec::new(),
        grpc_status: None,
    }
}

fn restore<B>(req: &mut Request<B>, head: RequestHead) {
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.headers_mut() = head.headers;
}

/// Waits for a paused filter: resumed, answered, closed, or its VM died.
async fn wait(vm: &Vm, ctx: u32, signal: &Signal) -> Verdict {
    let deadline = tokio::time::Instant::now() + PAUSE_LIMIT;
    loop {
        let mut resumed = false;
        for d in signal.take() {
            match d {
                Deferred::Continue => resumed = true,
                Deferred::Reply(r) => return Verdict::Reply(r),
                Deferred::Close => return Verdict::Close,
                Deferred::Failed => return Verdict::Failed,
            }
        }
        if resumed {
            return Verdict::Continue;
        }
        if !vm.is_alive() {
            return Verdict::Failed;
        }
        if tokio::time::timeout_at(deadline, signal.notify.notified()).await.is_err() {
            tracing::warn!(ctx, "a Wasm filter paused the request and never resumed it");
            return Verdict::Reply(LocalResponse {
                status: StatusCode::GATEWAY_TIMEOUT,
                details: "wasm_pause_timeout".into(),
                body: Bytes::from_static(b"upstream request timeout"),
                headers: Vec::new(),
                grpc_status: None,
            });
        }
    }
}

/// A body whose chunks and trailers pass through the stream's filters. A filter that
/// returns PAUSE keeps its chunks buffered until it continues or the body ends.
pub struct Filtered<B> {
    inner: B,
    contexts: Arc<Contexts>,
    dir: Dir,
    done: bool,
    /// Trailers held back while flushed data goes first.
    trailers: Option<HeaderMap>,
}

impl<B> Filtered<B> {
    fn new(inner: B, contexts: Arc<Contexts>, dir: Dir) -> Self {
        Self { inner, contexts, dir, done: false, trailers: None }
    }

    /// The filters still running, in this direction's order.
    fn order(&self) -> Box<dyn Iterator<Item = &Active> + '_> {
        match self.dir {
            Dir::Request => Box::new(self.contexts.active.iter().filter(|a| !a.failed())),
            Dir::Response => Box::new(self.contexts.active.iter().rev().filter(|a| !a.failed())),
        }
    }

    /// Passes `chunk` through every filter in order; returns what leaves the last.
    fn data(&self, chunk: Bytes, eos: bool) -> Result<Bytes, BoxError> {
        let mut chunk = chunk;
        for a in self.order() {
            match a.vm.body(a.ctx, self.dir, chunk.clone(), eos) {
                Ok((Verdict::Reply(_) | Verdict::Close, _)) => return Err("body reset by a Wasm filter".into()),
                Ok((_, Some(out))) => chunk = out.freeze(),
                Ok((_, None)) if eos => chunk = Bytes::new(),
                Ok((_, None)) => return Ok(Bytes::new()), // buffered by a paused filter
                Err(VmFailure::Dead) => {
                    a.fail();
                    if !a.filter.fail_open {
                        return Err(format!("Wasm plugin {} failed", a.filter.id).into());
                    }
                }
            }
        }
        Ok(chunk)
    }

    fn filter_trailers(&self, mut trailers: HeaderMap) -> Result<HeaderMap, BoxError> {
        for a in self.order() {
            match a.vm.trailers(a.ctx, self.dir, trailers.clone()) {
                Ok((Verdict::Reply(_) | Verdict::Close, _)) => return Err("stream reset by a Wasm filter".into()),
                Ok((_, t)) => trailers = t,
                Err(VmFailure::Dead) => {
                    a.fail();
                    if !a.filter.fail_open {
                        return Err(format!("Wasm plugin {} failed", a.filter.id).into());
                    }
                }
            }
        }
        Ok(trailers)
    }
}

impl<B> Body for Filtered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(t) = self.trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    // End of body: the last call tells the filters, and flushes buffers.
                    self.done = true;
                    let out = self.data(Bytes::new(), true);
                    return Poll::Ready(match out {
                        Ok(b) if b.is_empty() => None,
                        Ok(b) => Some(Ok(Frame::data(b))),
                        Err(e) => Some(Err(e)),
                    });
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            let eos = self.inner.is_end_stream();
                            self.done = eos;
                            match self.data(data, eos) {
                                Ok(b) if b.is_empty() => continue,
                                Ok(b) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                                Err(e) => return Poll::Ready(Some(Err(e))),
                            }
                        }
                        Err(frame) => frame,
                    };
                    match frame.into_trailers() {
                        Ok(t) => {
                            // Trailers end the body: flush what paused filters hold first.
                            self.done = true;
                            let flushed = match self.data(Bytes::new(), true) {
                                Ok(b) => b,
                                Err(e) => return Poll::Ready(Some(Err(e))),
                            };
                            let t = match self.filter_trailers(t) {
                                Ok(t) => t,
                                Err(e) => return Poll::Ready(Some(Err(e))),
                            };
                            if flushed.is_empty() {
                                return Poll::Ready(Some(Ok(Frame::trailers(t))));
                            }
                            // Trailers after the flushed data: keep them for the next poll.
                            self.trailers = Some(t);
                            return Poll::Ready(Some(Ok(Frame::data(flushed))));
                        }
                        Err(_) => continue,
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Filters may change the length.
        SizeHint::default()
    }
}
