//! The control loop beside the data path: reloads on config changes (off the hot
//! path, on the blocking pool), periodic DNS refresh and certificate checks; each new
//! snapshot is published, then the listeners are reconciled with it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use tokio::sync::{mpsc, watch};

use crate::{
    listener::Listeners,
    snapshot::{Caches, ReloadOutcome, Reloader, SnapshotHandle},
    source::{Cluster, LoadError},
    telemetry::{metrics::ResourceLabels, AccessLog, Metrics},
    upstream,
};

/// How often DNS endpoints are resolved again.
const DNS_REFRESH: Duration = Duration::from_secs(30);
/// How often certificate files are checked for rotation.
const CERT_CHECK: Duration = Duration::from_secs(1);

/// What the last reload did, for the admin endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReloadStatus {
    /// When the last reload ran.
    pub at: Option<SystemTime>,
    /// Why the last reload failed or rejected resources, if it did.
    pub errors: Vec<String>,
}

/// Owns the reloader and the listeners; runs until the config watcher stops.
pub(crate) struct Supervisor {
    pub reloader: Arc<Mutex<Reloader>>,
    pub handle: SnapshotHandle,
    pub listeners: Listeners,
    pub addrs: Arc<RwLock<HashMap<u16, SocketAddr>>>,
    pub version: watch::Sender<u64>,
    pub metrics: Arc<Metrics>,
    pub caches: Arc<Caches>,
    pub status: Arc<RwLock<ReloadStatus>>,
    /// Follows the mesh config's `accessLogFile`.
    pub access_log: AccessLog,
    /// Set when a sidecar starts draining: its inbound listener closes.
    pub draining: watch::Receiver<bool>,
    /// Shutdown: close every listener and end.
    pub stop: Arc<tokio::sync::Notify>,
    /// The Kubernetes source, told each reload's problems for the resources' status.
    pub cluster: Option<Cluster>,
}

impl Supervisor {
    /// Loads the directory (on the blocking pool) and applies the result.
    pub(crate) async fn reload(&mut self) -> Result<(), LoadError> {
        let reloader = self.reloader.clone();
        let started = tokio::time::Instant::now();
        // The lock lives inside the blocking task only; reloads never overlap anyway.
        let joined = tokio::task::spawn_blocking(move || match reloader.lock() {
            Ok(mut r) => r.reload(),
            Err(poisoned) => poisoned.into_inner().reload(),
        })
        .await;
        let Ok(result) = joined else {
            // A panic while compiling is a bug; the last good configuration keeps serving.
            tracing::error!("reload panicked; keeping the last good configuration");
            self.metrics.reloaded(None);
            return Ok(());
        };
        match result {
            Ok(outcome) => {
                let changed = outcome.snapshot.is_some();
                self.apply(outcome).await;
                if changed {
                    self.metrics.reload_took(started.elapsed());
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "reload failed; keeping the last good configuration");
                self.metrics.reloaded(None);
                self.set_status(vec![e.to_string()]);
                Err(e)
            }
        }
    }

    /// Runs until `changes` closes.
    pub(crate) async fn run(mut self, mut changes: mpsc::Receiver<()>) {
        let mut dns = tokio::time::interval(DNS_REFRESH);
        dns.tick().await;
        let mut cert_check = tokio::time::interval(CERT_CHECK);
        loop {
            tokio::select! {
                () = self.stop.notified() => {
                    self.listeners.close_all().await;
                    break;
                }
                change = changes.recv() => {
                    if change.is_none() {
                        break;
                    }
                    let _ = self.reload().await;
                }
                _ = dns.tick() => {
                    for c in &self.handle.current().clusters {
                        upstream::refresh_dns(c).await;
                    }
                }
                Ok(()) = self.draining.changed() => {
                    self.listeners.close_for_drain();
                    if let Ok(mut a) = self.addrs.write() {
                        *a = self.listeners.addrs();
                    }
                }
                _ = cert_check.tick() => {
                    let caches = self.caches.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        caches.certs.refresh();
                        if let Some(identity) = &caches.identity {
                            identity.refresh();
                        }
                    })
                    .await;
                }
            }
        }
    }

    /// Logs the diagnostics, resolves DNS, publishes and reconciles listeners.
    async fn apply(&mut self, outcome: ReloadOutcome) {
        for d in &outcome.diagnostics {
            if d.is_error() {
                tracing::error!("{d}");
            } else {
                tracing::warn!("{d}");
            }
        }
        let Some(snapshot) = outcome.snapshot else { return };
        let errors: Vec<String> =
            outcome.diagnostics.iter().filter(|d| d.is_error()).map(ToString::to_string).collect();
        let previous = self.handle.current();
        let old: HashMap<&str, &upstream::Cluster> = previous.clusters.iter().map(|c| (&*c.name, &**c)).collect();
        for c in &snapshot.clusters {
            if let Some(prev) = old.get(&*c.name) {
                c.adopt_endpoints(prev);
            }
            upstream::refresh_dns(c).await;
        }
        self.caches.jwks.start_all();
        if let Err(e) = self.access_log.use_file(snapshot.access_log_file.as_deref()) {
            tracing::error!(file = ?snapshot.access_log_file, error = %e, "cannot open the access log file; logging where it went before");
        }
        self.handle.publish(snapshot.clone());
        for (port, e) in self.listeners.reconcile(&snapshot.listeners).await {
            tracing::error!(port, error = %e, "listener not opened");
        }
        if let Ok(mut a) = self.addrs.write() {
            *a = self.listeners.addrs();
        }
        tracing::info!(version = snapshot.version, rejected = outcome.rejected.len(), "snapshot applied");
        self.metrics.reloaded(Some(snapshot.version));
        self.metrics.not_applied(snapshot.resources.iter().filter_map(|r| {
            let state = r.state.not_applied()?;
            let id = &r.id;
            Some(ResourceLabels {
                kind: id.kind.to_string(),
                namespace: id.namespace.clone(),
                name: id.name.clone(),
                state,
            })
        }));
        self.set_status(errors);
        if let Some(cluster) = &self.cluster {
            let resources = snapshot.resources.iter().map(|r| (&r.id, r.origin.as_str()));
            cluster.report(resources, &snapshot.diagnostics);
        }
        self.version.send_replace(snapshot.version);
    }

    fn set_status(&self, errors: Vec<String>) {
        if let Ok(mut s) = self.status.write() {
            *s = ReloadStatus { at: Some(SystemTime::now()), errors };
        }
    }
}
