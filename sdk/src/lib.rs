//! Wicket's plugin SDK: HTTP filters in safe Rust over the proxy-wasm ABI.
//!
//! A plugin is a type implementing [`Plugin`] (built once per VM from its
//! configuration) that hands out a [`Filter`] per request. [`plugin!`] registers it;
//! the same source builds for `wasm32-wasip1` (running in Wicket, Envoy or Istio)
//! and natively, where [`testing`] drives it without a proxy.
//!
//! ```ignore
//! use wicket_sdk::{Action, Filter, Plugin, Request};
//!
//! #[derive(serde::Deserialize)]
//! struct Config { header: String }
//!
//! struct Tag(Config);
//! struct TagFilter(String);
//!
//! impl Plugin for Tag {
//!     type Config = Config;
//!     type Filter = TagFilter;
//!     fn configure(config: Config) -> Result<Self, String> { Ok(Tag(config)) }
//!     fn filter(&self) -> TagFilter { TagFilter(self.0.header.clone()) }
//! }
//!
//! impl Filter for TagFilter {
//!     fn on_request(&mut self, req: &mut Request) -> Action {
//!         req.set_header(&self.0, "seen");
//!         Action::Continue
//!     }
//! }
//!
//! wicket_sdk::plugin!(Tag);
//! ```

mod host;
mod http;
pub mod shared;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wasm;

use std::time::{Duration, SystemTime};

pub use http::{CallAnswer, Request, Response};
pub use serde;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub use proxy_wasm as __proxy_wasm;

/// What the stream does after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Go on to the next filter (or upstream).
    Continue,
    /// Hold the stream until [`Request::resume`] (after an HTTP call, say) or a
    /// local response. For bodies: buffer until the end of the stream.
    Pause,
}

/// A plugin: built from its configuration once per VM, it makes one [`Filter`] per
/// request.
pub trait Plugin: Sized + 'static {
    /// The `pluginConfig` of the WasmPlugin, deserialized from JSON. A missing
    /// configuration is read as `{}`.
    type Config: serde::de::DeserializeOwned;
    /// The per-request filter.
    type Filter: Filter;

    /// Validates the configuration; an error rejects the plugin at load time, with
    /// the message in the gateway's report.
    fn configure(config: Self::Config) -> Result<Self, String>;

    /// A filter for a new request.
    fn filter(&self) -> Self::Filter;

    /// How often [`Plugin::on_tick`] runs; `None` for never.
    fn tick_period(&self) -> Option<Duration> {
        None
    }

    /// Periodic work (one call per VM per period).
    fn on_tick(&mut self) {}
}

/// One request's filter. Every callback has a default that continues.
pub trait Filter: 'static {
    /// Request headers arrived.
    fn on_request(&mut self, _req: &mut Request) -> Action {
        Action::Continue
    }

    /// A chunk of the request body; with [`Action::Pause`] the body is buffered and
    /// the next call sees everything so far. `end` marks the last call.
    fn on_request_body(&mut self, _req: &mut Request, _end: bool) -> Action {
        Action::Continue
    }

    /// Response headers arrived (from the upstream or a local response).
    fn on_response(&mut self, _resp: &mut Response) -> Action {
        Action::Continue
    }

    /// A chunk of the response body, as [`Filter::on_request_body`].
    fn on_response_body(&mut self, _resp: &mut Response, _end: bool) -> Action {
        Action::Continue
    }

    /// The answer to an HTTP call this filter made: continue the request with
    /// [`Request::resume`] or answer it with [`Request::respond`].
    fn on_call_answer(&mut self, _req: &mut Request, _answer: CallAnswer) {}

    /// The stream ended (after the response was sent); properties and headers are
    /// still readable.
    fn on_done(&mut self, _req: &Request) {}
}

/// Log levels, as the proxy-wasm ABI numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Trace.
    Trace = 0,
    /// Debug.
    Debug = 1,
    /// Info.
    Info = 2,
    /// Warn.
    Warn = 3,
    /// Error.
    Error = 4,
}

/// Writes to the proxy's log, named by plugin.
pub fn log(level: Level, message: &str) {
    host::log(level, message);
}

/// The proxy's clock (the harness controls it in tests).
pub fn now() -> SystemTime {
    host::now()
}

/// A counter exported with the proxy's metrics (`wasmcustom_<name>` in Wicket).
#[derive(Debug, Clone, Copy)]
pub struct Counter(u32);

impl Counter {
    /// Defines (or finds) the counter `name`.
    pub fn new(name: &str) -> Option<Self> {
        host::define_counter(name).map(Counter)
    }

    /// Adds `n`.
    pub fn add(self, n: u64) {
        host::add_counter(self.0, n);
    }
}

/// Parses a plugin configuration as the gateway delivers it (JSON; empty = `{}`);
/// the error names the field.
pub fn parse_config<C: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<C, String> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { bytes };
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("invalid configuration: {}", e.inner())
        } else {
            format!("invalid configuration: {path}: {}", e.inner())
        }
    })
}

/// Registers `$plugin` as the module's root context (a no-op natively, where the
/// test harness instantiates plugins itself).
#[macro_export]
macro_rules! plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        $crate::__proxy_wasm::main! {{
            $crate::wasm::register::<$plugin>();
        }}
    };
}
