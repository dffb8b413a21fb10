//! Reload: load the directory, compile, and keep the last good version of any resource
//! that fails, so one bad file never takes down routes that were working.

use std::{collections::HashMap, sync::Arc};

use super::{compile, Caches, ResourceState, ResourceStatus, Snapshot};
use crate::{
    config::{Bootstrap, Diagnostic, Resource, ResourceRef},
    source::{LoadError, SecretDir, Source},
};

/// What one reload produced.
#[derive(Debug)]
pub(crate) struct ReloadOutcome {
    /// The new snapshot, or `None` when the input did not change.
    pub(crate) snapshot: Option<Arc<Snapshot>>,
    /// Every problem found, errors and warnings.
    pub(crate) diagnostics: Vec<Diagnostic>,
    /// Resources rejected in this reload (their last good version, if any, serves).
    pub(crate) rejected: Vec<ResourceRef>,
}

/// Turns the config directory into snapshots, remembering the last good resources.
#[derive(Debug)]
pub(crate) struct Reloader {
    bootstrap: Bootstrap,
    last_good: HashMap<ResourceRef, Resource>,
    version: u64,
    digest: Option<u64>,
    caches: Arc<Caches>,
    /// Where the Secrets of the configuration are projected.
    secrets: Option<SecretDir>,
    source: Source,
}

impl Reloader {
    /// A reloader reading `source`.
    pub(crate) fn new(mut bootstrap: Bootstrap, caches: Arc<Caches>, source: Source) -> Self {
        let secrets = SecretDir::create()
            .inspect_err(|e| tracing::error!(error = %e, "cannot create a directory for Secrets; none can be used"))
            .ok();
        bootstrap.secrets_dir = secrets.as_ref().map(|s| s.path().to_path_buf());
        Self { bootstrap, last_good: HashMap::new(), version: 0, digest: None, caches, secrets, source }
    }

    /// Loads and compiles the sources. Blocking: run it off the async workers.
    pub(crate) fn reload(&mut self) -> Result<ReloadOutcome, LoadError> {
        let mut loaded = self.source.load(&self.bootstrap.namespace)?;
        loaded.digest = module_stamps(&loaded.resources, self.bootstrap.base_dir(), loaded.digest);
        if self.digest == Some(loaded.digest) {
            return Ok(ReloadOutcome { snapshot: None, diagnostics: Vec::new(), rejected: Vec::new() });
        }
        let mut diagnostics = loaded.diagnostics;
        if let Some(secrets) = &self.secrets {
            diagnostics.extend(secrets.sync(&loaded.resources));
        }
        let mut resources = loaded.resources;
        let mut rejected = loaded.rejected;
        self.keep_last_good(&mut resources, &rejected, &mut diagnostics);
        // A security resource with errors applies in its fail-closed form, never as its
        // last good version: what it says now may deny more than what it said before.
        let mut compiled = compile(&resources, &self.bootstrap, &self.caches);
        if compiled.rejected.iter().any(|r| self.last_good.contains_key(r)) {
            resources.retain(|r| !compiled.rejected.contains(&r.id));
            self.keep_last_good(&mut resources, &compiled.rejected, &mut diagnostics);
            // Those with a last good version serve it: report them as such.
            rejected.extend(compiled.rejected.iter().filter(|r| self.last_good.contains_key(*r)).cloned());
            let first_errors = std::mem::take(&mut compiled.diagnostics);
            compiled = compile(&resources, &self.bootstrap, &self.caches);
            diagnostics.extend(first_errors.into_iter().filter(|d| d.is_error() && !compiled.diagnostics.contains(d)));
        }
        diagnostics.extend(compiled.diagnostics);
        rejected.extend(compiled.rejected.iter().cloned());
        let fail_closed = compiled.fail_closed;
        let statuses = statuses(&resources, &rejected, &compiled.rejected, &fail_closed, &diagnostics);
        self.last_good = resources
            .into_iter()
            .filter(|r| !compiled.rejected.contains(&r.id) && !fail_closed.contains(&r.id))
            .map(|r| (r.id.clone(), r))
            .collect();
        self.digest = Some(loaded.digest);
        self.version += 1;
        let mut snapshot = compiled.snapshot;
        snapshot.version = self.version;
        snapshot.diagnostics = diagnostics.clone();
        snapshot.resources = statuses;
        Ok(ReloadOutcome { snapshot: Some(Arc::new(snapshot)), diagnostics, rejected })
    }

    fn keep_last_good(
        &self,
        resources: &mut Vec<Resource>,
        rejected: &[ResourceRef],
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        for id in rejected {
            if let Some(prev) = self.last_good.get(id) {
                let msg = "rejected; the last good version keeps serving";
                diagnostics.push(Diagnostic::warning(&prev.origin, id, "", msg));
                // An unreadable stand-in, if the loader left one, gives way.
                resources.retain(|r| r.id != *id);
                resources.push(prev.clone());
            }
        }
    }
}

/// Folds the size and modification time of every local Wasm module into `digest`,
/// so replacing a module file reloads even when no YAML changed.
fn module_stamps(resources: &[Resource], config_dir: &std::path::Path, digest: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    digest.hash(&mut h);
    for r in resources {
        if let crate::config::Spec::WasmPlugin(p) = &r.spec {
            if let Some(meta) = crate::wasm::local_path(&p.url, config_dir).and_then(|f| std::fs::metadata(f).ok()) {
                (meta.len(), meta.modified().ok()).hash(&mut h);
            }
        }
    }
    h.finish()
}

/// Each resource's state in this reload: applied, applied in its fail-closed form,
/// serving its last good version, or rejected (with the errors that name it).
fn statuses(
    resources: &[Resource],
    rejected: &[ResourceRef],
    not_applied: &[ResourceRef],
    fail_closed: &[ResourceRef],
    diagnostics: &[Diagnostic],
) -> Vec<ResourceStatus> {
    let errors_of = |id: &ResourceRef| -> Vec<String> {
        diagnostics
            .iter()
            .filter(|d| d.is_error() && d.resource.as_ref() == Some(id))
            .map(ToString::to_string)
            .collect()
    };
    let mut out: Vec<ResourceStatus> = resources
        .iter()
        .filter(|r| !not_applied.contains(&r.id))
        .map(|r| {
            let state = if fail_closed.contains(&r.id) {
                ResourceState::FailClosed
            } else if rejected.contains(&r.id) {
                ResourceState::LastGood
            } else {
                ResourceState::Applied
            };
            ResourceStatus { id: r.id.clone(), origin: r.origin.to_string(), state, errors: errors_of(&r.id) }
        })
        .collect();
    for id in rejected.iter().chain(not_applied) {
        if !out.iter().any(|s| &s.id == id) {
            // Where the first error naming it points.
            let origin = diagnostics.iter().find(|d| d.resource.as_ref() == Some(id)).map(|d| d.origin.to_string());
            out.push(ResourceStatus {
                id: id.clone(),
                origin: origin.unwrap_or_default(),
                state: ResourceState::Rejected,
                errors: errors_of(id),
            });
        }
    }
    out
}
