//! A filter written only against the public `proxy-wasm` SDK, exactly as a filter
//! for Envoy/Istio would be. Its `pluginConfig` picks what it does, so the tests
//! exercise the host with one module.

use std::{rc::Rc, time::Duration};

use proxy_wasm::{hostcalls, traits::*, types::*};
use serde::Deserialize;

#[derive(Default, Deserialize)]
#[serde(default)]
struct Config {
    /// Appended to the `x-order` request header (phase/priority ordering).
    tag: Option<String>,
    request_add: Vec<(String, String)>,
    request_set: Vec<(String, String)>,
    request_remove: Vec<String>,
    response_add: Vec<(String, String)>,
    response_set: Vec<(String, String)>,
    response_remove: Vec<String>,
    /// Answers 403 locally when the request has this header.
    deny_if_header: Option<String>,
    /// Copies the raw plugin configuration into this response header.
    echo_config_header: Option<String>,
    /// Copies `from` into `to` with a prefix (e.g. a token into `authorization`).
    copy_header: Option<(String, String, String)>,
    /// Reports in `x-saw-<name>` whether the request had this header.
    observe_header: Option<String>,
    /// `upper` upper-cases the whole request body; `append:<text>` appends.
    request_body: Option<String>,
    /// Redacts `secret` in the whole response body.
    redact_response: bool,
    /// Asks this cluster (`path` on it) and allows on 200, denies with 403 otherwise.
    auth_call: Option<AuthCall>,
    /// Counts requests in shared data under this key (compare-and-swap); the count is
    /// returned in `x-count`.
    counter: Option<String>,
    /// Sets the tick period; every tick adds one to shared data `ticks`.
    tick_ms: Option<u64>,
    /// Defines this counter metric and increments it per request.
    metric: Option<String>,
    /// Copies these properties (dotted paths) into `x-prop-<path>` response headers.
    properties: Vec<String>,
    /// Panics (a trap) when the request has this header.
    panic_if_header: Option<String>,
    /// Returns `x-env` with the value of this environment variable.
    env: Option<String>,
    /// Returns `x-shared` with this shared-data key's value.
    expose_shared: Option<String>,
}

#[derive(Deserialize)]
struct AuthCall {
    cluster: String,
    path: String,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
}

fn default_timeout() -> u64 {
    2000
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: Rc::new(Config::default()), raw: String::new() }) });
}}

struct Root {
    config: Rc<Config>,
    raw: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        self.raw = String::from_utf8_lossy(&bytes).into_owned();
        let config: Config = if bytes.is_empty() {
            Config::default()
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(c) => c,
                Err(e) => {
                    log::error!("bad configuration: {e}");
                    return false;
                }
            }
        };
        if let Some(ms) = config.tick_ms {
            self.set_tick_period(Duration::from_millis(ms));
        }
        self.config = Rc::new(config);
        true
    }

    fn on_tick(&mut self) {
        add_shared("ticks");
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { config: self.config.clone(), raw: self.raw.clone(), count: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Adds one to a shared-data counter with compare-and-swap; returns the new value.
fn add_shared(key: &str) -> u64 {
    loop {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let n = value.and_then(|v| String::from_utf8(v).ok()).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) + 1;
        match hostcalls::set_shared_data(key, Some(n.to_string().as_bytes()), cas) {
            Ok(()) => return n,
            Err(Status::CasMismatch) => continue,
            Err(e) => panic!("set_shared_data: {e:?}"),
        }
    }
}

struct Filter {
    config: Rc<Config>,
    raw: String,
    count: Option<u64>,
}

impl Context for Filter {
    fn on_http_call_response(&mut self, _: u32, _: usize, body_size: usize, _: usize) {
        let status = self.get_http_call_response_header(":status");
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        if status.as_deref() == Some("200") {
            self.set_http_request_header("x-auth-body", Some(&String::from_utf8_lossy(&body)));
            self.resume_http_request();
        } else {
            let reason = format!("denied by auth service ({})", status.unwrap_or_else(|| "no answer".into()));
            self.send_http_response(403, vec![("x-denied-by", "conformance")], Some(reason.as_bytes()));
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let c = self.config.clone();
        if let Some(h) = &c.panic_if_header {
            if self.get_http_request_header(h).is_some() {
                panic!("asked to panic by {h}");
            }
        }
        if let Some(tag) = &c.tag {
            let order = match self.get_http_request_header("x-order") {
                Some(prev) => format!("{prev},{tag}"),
                None => tag.clone(),
            };
            self.set_http_request_header("x-order", Some(&order));
        }
        if let Some(h) = &c.observe_header {
            let saw = if self.get_http_request_header(h).is_some() { "yes" } else { "no" };
            self.set_http_request_header(&format!("x-saw-{h}"), Some(saw));
        }
        if let Some((from, to, prefix)) = &c.copy_header {
            if let Some(v) = self.get_http_request_header(from) {
                self.set_http_request_header(to, Some(&format!("{prefix}{v}")));
            }
        }
        if let Some(h) = &c.deny_if_header {
            if self.get_http_request_header(h).is_some() {
                self.send_http_response(403, vec![("x-denied-by", "conformance")], Some(b"denied by wasm\n"));
                return Action::Pause;
            }
        }
        for (k, v) in &c.request_add {
            self.add_http_request_header(k, v);
        }
        for (k, v) in &c.request_set {
            self.set_http_request_header(k, Some(v));
        }
        for k in &c.request_remove {
            self.set_http_request_header(k, None);
        }
        if let Some(key) = &c.counter {
            self.count = Some(add_shared(key));
        }
        if let Some(name) = &c.metric {
            let id = hostcalls::define_metric(MetricType::Counter, name).expect("define_metric");
            hostcalls::increment_metric(id, 1).expect("increment_metric");
        }
        if c.request_body.is_some() && !end_of_stream {
            self.set_http_request_header("content-length", None);
        }
        if let Some(call) = &c.auth_call {
            let path = self.get_http_request_header(":path").unwrap_or_default();
            let headers = vec![
                (":method", "GET"),
                (":path", call.path.as_str()),
                (":authority", call.cluster.as_str()),
                ("x-original-path", path.as_str()),
            ];
            return match self.dispatch_http_call(
                &call.cluster,
                headers,
                None,
                vec![],
                Duration::from_millis(call.timeout_ms),
            ) {
                Ok(_) => Action::Pause,
                Err(e) => {
                    self.send_http_response(500, vec![], Some(format!("dispatch failed: {e:?}").as_bytes()));
                    Action::Pause
                }
            };
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(mode) = self.config.request_body.clone() else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let new = if mode == "upper" {
            body.to_ascii_uppercase()
        } else if let Some(text) = mode.strip_prefix("append:") {
            [body.as_slice(), text.as_bytes()].concat()
        } else {
            body
        };
        self.set_http_request_body(0, body_size, &new);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let c = self.config.clone();
        for (k, v) in &c.response_add {
            self.add_http_response_header(k, v);
        }
        for (k, v) in &c.response_set {
            self.set_http_response_header(k, Some(v));
        }
        for k in &c.response_remove {
            self.set_http_response_header(k, None);
        }
        if let Some(h) = &c.echo_config_header {
            let raw = self.raw.clone();
            self.set_http_response_header(h, Some(&raw));
        }
        if let Some(n) = self.count {
            self.set_http_response_header("x-count", Some(&n.to_string()));
        }
        if let Some(key) = &c.expose_shared {
            let (value, _) = hostcalls::get_shared_data(key).unwrap_or((None, None));
            let v = value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_else(|| "<none>".into());
            self.set_http_response_header("x-shared", Some(&v));
        }
        if let Some(name) = &c.env {
            let v = std::env::var(name).unwrap_or_else(|_| "<unset>".into());
            self.set_http_response_header("x-env", Some(&v));
        }
        for p in &c.properties {
            let path: Vec<&str> = p.split('.').collect();
            let v = match self.get_property(path) {
                Some(bytes) => render(p, &bytes),
                None => "<none>".into(),
            };
            self.set_http_response_header(&format!("x-prop-{p}"), Some(&v));
        }
        if c.redact_response {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.config.redact_response {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_response_body(0, body_size) {
            let text = String::from_utf8_lossy(&body).replace("secret", "******");
            self.set_http_response_body(0, body_size, text.as_bytes());
        }
        Action::Continue
    }
}

/// Envoy encodes ints as 8 bytes little-endian and booleans as one byte.
fn render(path: &str, bytes: &[u8]) -> String {
    let numeric = ["source.port", "destination.port", "response.code", "connection.id"];
    if numeric.contains(&path) && bytes.len() == 8 {
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        return i64::from_le_bytes(b).to_string();
    }
    if path == "connection.mtls" && bytes.len() == 1 {
        return (bytes[0] != 0).to_string();
    }
    String::from_utf8_lossy(bytes).into_owned()
}
