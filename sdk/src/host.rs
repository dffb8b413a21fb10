//! The host under the SDK: the proxy-wasm hostcalls in a Wasm build, the test
//! harness's in-memory proxy in a native one. Everything above it is the same code.

/// Header maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Map {
    Request,
    Response,
    /// Read by the Wasm adapter only (the harness hands answers over directly).
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    CallAnswer,
}

/// Buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Buf {
    Request,
    Response,
    /// Read by the Wasm adapter only.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    CallAnswer,
    /// Read by the Wasm adapter only.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    Config,
}

#[cfg(target_arch = "wasm32")]
pub(crate) use wasm::*;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing::host::*;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use proxy_wasm::{
        hostcalls,
        types::{BufferType, LogLevel, MapType, MetricType, Status},
    };

    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{shared::CasMismatch, Level};

    fn map(m: Map) -> MapType {
        match m {
            Map::Request => MapType::HttpRequestHeaders,
            Map::Response => MapType::HttpResponseHeaders,
            Map::CallAnswer => MapType::HttpCallResponseHeaders,
        }
    }

    fn buf(b: Buf) -> BufferType {
        match b {
            Buf::Request => BufferType::HttpRequestBody,
            Buf::Response => BufferType::HttpResponseBody,
            Buf::CallAnswer => BufferType::HttpCallResponseBody,
            Buf::Config => BufferType::PluginConfiguration,
        }
    }

    pub(crate) fn header(m: Map, name: &str) -> Option<String> {
        hostcalls::get_map_value(map(m), name).ok().flatten()
    }

    pub(crate) fn headers(m: Map) -> Vec<(String, String)> {
        hostcalls::get_map(map(m)).unwrap_or_default()
    }

    pub(crate) fn set_header(m: Map, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(map(m), name, value);
    }

    pub(crate) fn add_header(m: Map, name: &str, value: &str) {
        let _ = hostcalls::add_map_value(map(m), name, value);
    }

    pub(crate) fn buffer(b: Buf) -> Vec<u8> {
        hostcalls::get_buffer(buf(b), 0, usize::MAX).ok().flatten().unwrap_or_default()
    }

    pub(crate) fn set_buffer(b: Buf, data: &[u8]) {
        let _ = hostcalls::set_buffer(buf(b), 0, usize::MAX, data);
    }

    pub(crate) fn property(path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    pub(crate) fn respond(status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let _ = hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body));
    }

    pub(crate) fn call(
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, vec![], timeout).map_err(|e| format!("{e:?}"))
    }

    pub(crate) fn resume(request: bool) {
        let _ = if request { hostcalls::resume_http_request() } else { hostcalls::resume_http_response() };
    }

    pub(crate) fn shared_get(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    pub(crate) fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Err(Status::CasMismatch) => Err(CasMismatch),
            _ => Ok(()),
        }
    }

    pub(crate) fn define_counter(name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Counter, name).ok()
    }

    pub(crate) fn add_counter(id: u32, n: u64) {
        let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        let _ = hostcalls::log(level, message);
    }

    pub(crate) fn now() -> SystemTime {
        hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
    }

    pub(crate) fn set_tick(period: Duration) {
        let _ = hostcalls::set_tick_period(period);
    }
}
