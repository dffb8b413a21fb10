//! A native test harness: drive a plugin's filters with plain `cargo test`, no proxy
//! and no Wasm. Feed requests, responses, configuration, HTTP-call answers and time;
//! assert the action, headers, bodies, local responses, calls, shared data and
//! metrics. The SDK's host calls land in an in-memory proxy per test thread.
//!
//! ```ignore
//! use wicket_sdk::testing::{Harness, TestRequest};
//!
//! let h = Harness::<Tag>::new(r#"{"header": "x-tag"}"#).unwrap();
//! let ex = h.request(TestRequest::get("/"));
//! assert_eq!(ex.request_header("x-tag").as_deref(), Some("seen"));
//! ```

use std::{
    cell::RefCell,
    collections::HashMap,
    time::{Duration, SystemTime},
};

use crate::{Action, CallAnswer, Filter, Level, Plugin, Request, Response};

/// One stream's state in the fake proxy.
#[derive(Debug, Clone, Default)]
struct Stream {
    request: Vec<(String, String)>,
    response: Vec<(String, String)>,
    request_body: Vec<u8>,
    response_body: Vec<u8>,
    answer: Option<CallAnswer>,
    properties: HashMap<String, Vec<u8>>,
    local: Option<LocalResponse>,
    calls: Vec<Call>,
    resumed: bool,
}

/// Process-wide state of the fake proxy (per test thread).
#[derive(Debug)]
struct World {
    stream: Stream,
    shared: HashMap<String, (Vec<u8>, u32)>,
    cas: u32,
    counters: Vec<(String, u64)>,
    logs: Vec<(Level, String)>,
    now: SystemTime,
}

impl Default for World {
    fn default() -> Self {
        Self {
            stream: Stream::default(),
            shared: HashMap::new(),
            cas: 0,
            counters: Vec::new(),
            logs: Vec::new(),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }
}

thread_local! {
    static WORLD: RefCell<World> = RefCell::new(World::default());
}

fn with<T>(f: impl FnOnce(&mut World) -> T) -> T {
    WORLD.with(|w| f(&mut w.borrow_mut()))
}

/// A local response a filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }
}

/// An HTTP call a filter made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The cluster named.
    pub cluster: String,
    /// Headers, pseudo-headers first.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Option<Vec<u8>>,
    /// Timeout.
    pub timeout: Duration,
}

impl Call {
    /// The first value of a header (`:path`, `:method`, ...).
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }
}

/// Header pairs as the proxy stores them: owned, names lower-cased.
fn owned<'a>(headers: &'a [(&str, &str)]) -> impl Iterator<Item = (String, String)> + 'a {
    headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
}

fn find<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// A plugin configured as the proxy would configure it.
pub struct Harness<P> {
    plugin: P,
}

// Plugins need not be `Debug` for `unwrap_err` to work on `Harness::new`.
impl<P> std::fmt::Debug for Harness<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Harness")
    }
}

impl<P: Plugin> Harness<P> {
    /// Configures the plugin from `pluginConfig` JSON; the error is the one the
    /// operator would see.
    pub fn new(config_json: &str) -> Result<Self, String> {
        crate::shared::init();
        let config = crate::parse_config::<P::Config>(config_json.as_bytes())?;
        Ok(Self { plugin: P::configure(config)? })
    }

    /// The plugin (root context) itself.
    pub fn plugin(&mut self) -> &mut P {
        &mut self.plugin
    }

    /// Runs one tick.
    pub fn tick(&mut self) {
        self.plugin.on_tick();
    }

    /// Starts a request through a fresh filter: request headers, then the body (if
    /// any) unless the filter paused or answered.
    pub fn request(&self, req: TestRequest) -> Exchange<P::Filter> {
        let mut ex = Exchange { filter: self.plugin.filter(), stream: req.stream, action: Action::Continue };
        ex.action = ex.run(|f| f.on_request(&mut Request::new()));
        if let Some(body) = req.body {
            if ex.action == Action::Continue && ex.local_response().is_none() {
                ex.stream.request_body = body;
                ex.action = ex.run(|f| f.on_request_body(&mut Request::new(), true));
            }
        }
        ex
    }
}

/// A request to feed a filter.
#[derive(Debug, Clone)]
pub struct TestRequest {
    stream: Stream,
    body: Option<Vec<u8>>,
}

impl TestRequest {
    /// `method path` to `example.com` from 192.0.2.1.
    pub fn new(method: &str, path: &str) -> Self {
        let request = [(":method", method), (":path", path), (":authority", "example.com"), (":scheme", "http")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut stream = Stream { request, ..Stream::default() };
        stream.properties.insert("source.address".into(), b"192.0.2.1:40000".to_vec());
        Self { stream, body: None }
    }

    /// A GET.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// A POST with a body.
    pub fn post(path: &str, body: &[u8]) -> Self {
        Self { body: Some(body.to_vec()), ..Self::new("POST", path) }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.stream.request.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Sets `:authority`.
    pub fn authority(mut self, authority: &str) -> Self {
        set(&mut self.stream.request, ":authority", Some(authority));
        self
    }

    /// Sets the client address (`source.address`).
    pub fn from(mut self, ip: &str) -> Self {
        let addr = if ip.contains(':') { format!("[{ip}]:40000") } else { format!("{ip}:40000") };
        self.stream.properties.insert("source.address".into(), addr.into_bytes());
        self
    }

    /// Sets any property (`["connection", "mtls"]`).
    pub fn property(mut self, path: &[&str], value: &[u8]) -> Self {
        self.stream.properties.insert(path.join("."), value.to_vec());
        self
    }

    /// A request the gateway authenticated: principal and top-level claims.
    pub fn jwt(mut self, principal: &str, claims: &serde_json::Value) -> Self {
        self.stream.properties.insert("request.auth.principal".into(), principal.as_bytes().to_vec());
        if let Some(map) = claims.as_object() {
            for (k, v) in map {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                self.stream.properties.insert(format!("request.auth.claims.{k}"), text.into_bytes());
            }
        }
        self
    }
}

fn set(list: &mut Vec<(String, String)>, name: &str, value: Option<&str>) {
    let name = name.to_ascii_lowercase();
    let at = list.iter().position(|(k, _)| *k == name);
    list.retain(|(k, _)| *k != name);
    if let Some(v) = value {
        let entry = (name, v.to_string());
        match at {
            Some(i) if i <= list.len() => list.insert(i, entry),
            _ => list.push(entry),
        }
    }
}

/// One request through one filter.
pub struct Exchange<F> {
    filter: F,
    stream: Stream,
    action: Action,
}

impl<F> std::fmt::Debug for Exchange<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange").field("stream", &self.stream).field("action", &self.action).finish()
    }
}

impl<F: Filter> Exchange<F> {
    /// Runs a callback with this stream as the proxy's current one.
    fn run<T>(&mut self, f: impl FnOnce(&mut F) -> T) -> T {
        with(|w| w.stream = std::mem::take(&mut self.stream));
        let out = f(&mut self.filter);
        self.stream = with(|w| std::mem::take(&mut w.stream));
        out
    }

    /// What the last request callback returned.
    pub fn action(&self) -> Action {
        self.action
    }

    /// True when the request goes on upstream: continued (or resumed) without a
    /// local response.
    pub fn forwarded(&self) -> bool {
        (self.action == Action::Continue || self.stream.resumed) && self.stream.local.is_none()
    }

    /// The local response, if the filter answered.
    pub fn local_response(&self) -> Option<&LocalResponse> {
        self.stream.local.as_ref()
    }

    /// A request header as the filter left it.
    pub fn request_header(&self, name: &str) -> Option<&str> {
        find(&self.stream.request, name)
    }

    /// The request body as the filter left it.
    pub fn request_body(&self) -> &[u8] {
        &self.stream.request_body
    }

    /// HTTP calls made so far.
    pub fn calls(&self) -> &[Call] {
        &self.stream.calls
    }

    /// Answers the last call; runs `on_call_answer`.
    pub fn answer(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let mut all = vec![(":status".to_string(), status.to_string())];
        all.extend(owned(headers));
        let answer = CallAnswer { status, headers: all, body: body.to_vec() };
        self.stream.answer = Some(answer.clone());
        self.run(|f| f.on_call_answer(&mut Request::new(), answer));
        self.stream.answer = None;
    }

    /// Fails the last call (connect failure or reset: status 0).
    pub fn fail_call(&mut self) {
        let answer = CallAnswer::default();
        self.run(|f| f.on_call_answer(&mut Request::new(), answer));
    }

    /// Feeds the response (upstream's, or the local one) through the filter:
    /// headers, then the body. Returns the response-headers action.
    pub fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Action {
        let mut all = vec![(":status".to_string(), status.to_string())];
        all.extend(owned(headers));
        self.stream.response = all;
        let action = self.run(|f| f.on_response(&mut Response::new()));
        if !body.is_empty() {
            self.stream.response_body = body.to_vec();
            self.run(|f| f.on_response_body(&mut Response::new(), true));
        }
        action
    }

    /// A response header as the filter left it.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        find(&self.stream.response, name)
    }

    /// The response body as the filter left it.
    pub fn response_body(&self) -> &[u8] {
        &self.stream.response_body
    }

    /// Ends the stream (`on_done`).
    pub fn done(&mut self) {
        self.run(|f| f.on_done(&Request::new()));
    }
}

/// Moves the proxy's clock forward.
pub fn advance(by: Duration) {
    with(|w| w.now += by);
}

/// The value of a shared-data key.
pub fn shared(key: &str) -> Option<Vec<u8>> {
    with(|w| w.shared.get(key).map(|(v, _)| v.clone()))
}

/// A counter's value.
pub fn counter(name: &str) -> Option<u64> {
    with(|w| w.counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v))
}

/// Log lines written so far.
pub fn logs() -> Vec<(Level, String)> {
    with(|w| w.logs.clone())
}

/// Forgets shared data, counters, logs and time (a fresh proxy).
pub fn reset() {
    with(|w| *w = World::default());
}

/// The host functions of the native build.
pub(crate) mod host {
    use super::*;
    use crate::{
        host::{Buf, Map},
        shared::CasMismatch,
    };

    fn map(w: &mut World, m: Map) -> Vec<(String, String)> {
        match m {
            Map::Request => w.stream.request.clone(),
            Map::Response => w.stream.response.clone(),
            Map::CallAnswer => w.stream.answer.as_ref().map(|a| a.headers.clone()).unwrap_or_default(),
        }
    }

    pub(crate) fn header(m: Map, name: &str) -> Option<String> {
        with(|w| find(&map(w, m), name).map(str::to_string))
    }

    pub(crate) fn headers(m: Map) -> Vec<(String, String)> {
        with(|w| map(w, m))
    }

    pub(crate) fn set_header(m: Map, name: &str, value: Option<&str>) {
        with(|w| match m {
            Map::Request => set(&mut w.stream.request, name, value),
            Map::Response => set(&mut w.stream.response, name, value),
            Map::CallAnswer => {}
        });
    }

    pub(crate) fn add_header(m: Map, name: &str, value: &str) {
        let entry = (name.to_ascii_lowercase(), value.to_string());
        with(|w| match m {
            Map::Request => w.stream.request.push(entry),
            Map::Response => w.stream.response.push(entry),
            Map::CallAnswer => {}
        });
    }

    pub(crate) fn buffer(b: Buf) -> Vec<u8> {
        with(|w| match b {
            Buf::Request => w.stream.request_body.clone(),
            Buf::Response => w.stream.response_body.clone(),
            Buf::CallAnswer => w.stream.answer.as_ref().map(|a| a.body.clone()).unwrap_or_default(),
            Buf::Config => Vec::new(),
        })
    }

    pub(crate) fn set_buffer(b: Buf, data: &[u8]) {
        with(|w| match b {
            Buf::Request => w.stream.request_body = data.to_vec(),
            Buf::Response => w.stream.response_body = data.to_vec(),
            Buf::CallAnswer | Buf::Config => {}
        });
    }

    pub(crate) fn property(path: &[&str]) -> Option<Vec<u8>> {
        with(|w| w.stream.properties.get(&path.join(".")).cloned())
    }

    pub(crate) fn respond(status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let headers = owned(headers).collect();
        with(|w| w.stream.local = Some(LocalResponse { status, headers, body: body.to_vec() }));
    }

    pub(crate) fn call(
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        let headers = owned(headers).collect();
        let call = Call { cluster: cluster.to_string(), headers, body: body.map(<[u8]>::to_vec), timeout };
        Ok(with(|w| {
            w.stream.calls.push(call);
            w.stream.calls.len() as u32
        }))
    }

    pub(crate) fn resume(request: bool) {
        if request {
            with(|w| w.stream.resumed = true);
        }
    }

    pub(crate) fn shared_get(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        with(|w| match w.shared.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    pub(crate) fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        with(|w| {
            let current = w.shared.get(key).map(|(_, c)| *c);
            if cas.is_some_and(|c| c != 0 && Some(c) != current) {
                return Err(CasMismatch);
            }
            w.cas += 1;
            let next = w.cas;
            w.shared.insert(key.to_string(), (value.to_vec(), next));
            Ok(())
        })
    }

    pub(crate) fn define_counter(name: &str) -> Option<u32> {
        with(|w| {
            let id = match w.counters.iter().position(|(n, _)| n == name) {
                Some(i) => i,
                None => {
                    w.counters.push((name.to_string(), 0));
                    w.counters.len() - 1
                }
            };
            u32::try_from(id).ok()
        })
    }

    pub(crate) fn add_counter(id: u32, n: u64) {
        with(|w| {
            if let Some((_, v)) = w.counters.get_mut(id as usize) {
                *v += n;
            }
        });
    }

    pub(crate) fn log(level: Level, message: &str) {
        with(|w| w.logs.push((level, message.to_string())));
    }

    pub(crate) fn now() -> SystemTime {
        with(|w| w.now)
    }
}
