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

pub(crate) use common::*;
pub(crate) use destination_rule::*;
pub(crate) use gateway::*;
pub(crate) use security::*;
pub(crate) use service_entry::*;
pub(crate) use sidecar::*;
pub(crate) use telemetry::*;
pub(crate) use virtual_service::*;
pub(crate) use wasm_plugin::*;
