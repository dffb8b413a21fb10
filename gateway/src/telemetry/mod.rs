//! Telemetry: the JSON access log (metrics and traces arrive with issue #7).

mod access_log;

pub use access_log::{AccessLog, AccessRecord, Logged};
