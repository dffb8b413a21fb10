//! `GET /clusters`: each upstream cluster with its endpoints and their state.

use serde_json::{json, Value};

use crate::snapshot::Snapshot;

pub(super) fn render(snapshot: &Snapshot) -> Value {
    let mut clusters: Vec<Value> = snapshot
        .clusters
        .iter()
        .map(|c| {
            let endpoints: Vec<Value> = c
                .endpoints()
                .iter()
                .map(|e| {
                    let health = if e.health.is_ejected() { "ejected" } else { "healthy" };
                    json!({
                        "address": e.addr.to_string(),
                        "labels": e.labels,
                        "health": health,
                        "times_ejected": e.health.times_ejected(),
                        "active_requests": e.active(),
                    })
                })
                .collect();
            json!({"name": c.name.to_string(), "tls": c.tls.is_some(), "endpoints": endpoints})
        })
        .collect();
    clusters.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({"clusters": clusters})
}
