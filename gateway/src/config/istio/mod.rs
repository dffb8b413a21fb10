//! Serde types of the Istio resources Wicket reads, mirroring Istio's field names.
//!
//! Every struct denies unknown fields: a typo such as `retryon` must be an error that
//! names the field, not a silently ignored setting.

mod common;
mod destination_rule;
mod gateway;
mod security;
mod service_entry;
mod sidecar;
mod telemetry;
mod virtual_service;
mod wasm_plugin;

pub use common::*;
pub use destination_rule::*;
pub use gateway::*;
pub use security::*;
pub use service_entry::*;
pub use sidecar::*;
pub use telemetry::*;
pub use virtual_service::*;
pub use wasm_plugin::*;
