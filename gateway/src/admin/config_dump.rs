//! `GET /config_dump`: the resources in force and why any were rejected, the snapshot
//! version and when it was built, the last reload's errors.

use std::{sync::RwLock, time::UNIX_EPOCH};

use serde_json::{json, Value};

use crate::{
    snapshot::{PortPlan, ResourceState, Snapshot},
    supervisor::ReloadStatus,
};

pub(super) fn render(snapshot: &Snapshot, status: &RwLock<ReloadStatus>) -> Value {
    let unix =
        |t: Option<std::time::SystemTime>| t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs());
    let resources: Vec<Value> = snapshot
        .resources
        .iter()
        .map(|r| {
            let state = match r.state {
                ResourceState::Applied => "applied",
                ResourceState::LastGood => "rejected; last good version applied",
                ResourceState::FailClosed => "rejected; applied in its fail-closed form",
                ResourceState::Rejected => "rejected",
            };
            json!({"resource": r.id.to_string(), "origin": r.origin, "state": state, "errors": r.errors})
        })
        .collect();
    let listeners: Vec<Value> = snapshot
        .listeners
        .iter()
        .map(|l| {
            let kind = match snapshot.ports.get(&l.port) {
                Some(PortPlan::Http(_)) => "http",
                Some(PortPlan::Tls(_)) => "tls",
                Some(PortPlan::Tcp(_)) => "tcp",
                Some(PortPlan::Outbound(_)) => "sidecar outbound",
                Some(PortPlan::Inbound(_)) => "sidecar inbound",
                None => "none",
            };
            json!({"port": l.port, "bind": l.bind.to_string(), "serves": kind})
        })
        .collect();
    let last = status.read().map(|s| s.clone()).unwrap_or_default();
    json!({
        "version": snapshot.version,
        "created_unix": unix(snapshot.created),
        "listeners": listeners,
        "resources": resources,
        "diagnostics": snapshot.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "last_reload": {"at_unix": unix(last.at), "errors": last.errors},
    })
}
