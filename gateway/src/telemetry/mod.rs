//! Telemetry: the JSON access log for HTTP requests and TCP connections (metrics and
//! traces arrive with issue #7).

mod access_log;

pub use access_log::{AccessLog, AccessRecord, Logged, TcpRecord};
