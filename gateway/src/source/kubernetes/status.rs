//! Status written back to the cluster's Istio resources, the way Istio does it: the
//! replica holding the Lease (see `lease`) writes each resource's `status` through the
//! status subresource: a `PassedAnalysis` condition and `validationMessages` holding
//! the messages `wicket validate` prints, and clears them when the problem goes.
//! What it compares against is the status the watches see, so a new leader picks up
//! where the last one stopped and nothing is written twice.

use std::{collections::BTreeMap, time::Duration};

use kube::{
    api::{DynamicObject, Patch, PatchParams},
    Api, Client,
};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{Cluster, KINDS};
use crate::config::{Diagnostic, ResourceRef, Severity};

/// How often the leader compares the statuses it wants with those it sees, beyond
/// every reload and every change of leadership.
const RESYNC: Duration = Duration::from_secs(10);

/// The problems of one reload, by resource; a resource without any has its status
/// cleared.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Findings(BTreeMap<ResourceRef, Vec<(Severity, String)>>);

impl Findings {
    /// `diagnostics` grouped by resource, for every resource in `resources`.
    pub(crate) fn new<'r>(resources: impl IntoIterator<Item = &'r ResourceRef>, diagnostics: &[Diagnostic]) -> Self {
        let mut by: BTreeMap<ResourceRef, Vec<(Severity, String)>> =
            resources.into_iter().map(|r| (r.clone(), Vec::new())).collect();
        for d in diagnostics {
            if let Some(list) = d.resource.as_ref().and_then(|id| by.get_mut(id)) {
                let field = if d.field.is_empty() { String::new() } else { format!("{}: ", d.field) };
                let entry = (d.severity, format!("{field}{}", d.message));
                if !list.contains(&entry) {
                    list.push(entry);
                }
            }
        }
        Self(by)
    }
}

/// Writes statuses while `leader` says so, from the findings `findings` carries.
pub(super) async fn write(
    client: Client,
    cluster: Cluster,
    mut leader: watch::Receiver<bool>,
    mut findings: watch::Receiver<Findings>,
) {
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            changed = leader.changed() => if changed.is_err() { return },
            changed = findings.changed() => if changed.is_err() { return },
            _ = resync.tick() => {}
        }
        if !*leader.borrow() {
            continue;
        }
        let current = findings.borrow().clone();
        for (id, messages) in &current.0 {
            sync_one(&client, &cluster, id, messages).await;
        }
    }
}

/// Patches one resource's status when what the watch shows differs from `messages`.
async fn sync_one(client: &Client, cluster: &Cluster, id: &ResourceRef, messages: &[(Severity, String)]) {
    let kind = id.kind.to_string();
    let Some(info) = KINDS.iter().find(|k| k.kind == kind && k.group.ends_with(".istio.io")) else { return };
    // Only objects of the cluster (a file's resource has no status to write).
    let Some((seen, generation)) = cluster.status_of(info.kind, &id.namespace, &id.name) else { return };
    let wanted = wanted(messages, generation);
    if ours(seen.as_ref()) == ours(wanted.as_ref()) {
        return;
    }
    let patch = match wanted {
        Some(status) => json!({ "status": status }),
        None => json!({ "status": { "conditions": null, "validationMessages": null } }),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &id.namespace, &info.api_resource());
    match api.patch_status(&id.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => tracing::debug!(resource = %id, "Kubernetes: status written"),
        Err(e) => tracing::warn!(resource = %id, error = %e, "Kubernetes: cannot write status"),
    }
}

/// The status Istio writes for a resource with problems (none without).
fn wanted(messages: &[(Severity, String)], generation: Option<i64>) -> Option<Value> {
    if messages.is_empty() {
        return None;
    }
    let errors = messages.iter().filter(|(s, _)| *s == Severity::Error).count();
    let warnings = messages.len() - errors;
    let reason = if errors > 0 { "errorsFound" } else { "warningsFound" };
    let list: Vec<Value> = messages
        .iter()
        .map(|(severity, message)| {
            let level = if *severity == Severity::Error { "Error" } else { "Warning" };
            json!({ "level": level, "message": message })
        })
        .collect();
    let mut status = json!({
        "conditions": [{
            "type": "PassedAnalysis",
            "status": "False",
            "reason": reason,
            "message": format!("{errors} error(s) and {warnings} warning(s) found. See validationMessages field for details"),
        }],
        "validationMessages": list,
    });
    if let Some(g) = generation {
        status["observedGeneration"] = json!(g);
    }
    Some(status)
}

/// The part of a status Wicket owns: its condition and the validation messages.
fn ours(status: Option<&Value>) -> (Option<&Value>, Option<&Value>) {
    let Some(status) = status else { return (None, None) };
    let condition = status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "PassedAnalysis"));
    let messages = status.get("validationMessages").filter(|m| !m.is_null());
    (condition, messages)
}
