//! Wicket: an Istio-compatible, WebAssembly-extensible ingress gateway.
//!
//! The flow of one request:
//!
//! ```text
//! accept (listener) ─ HTTP/1.1 or h2c (hyper) ─► pipeline::handle
//!   snapshot   one Arc<Snapshot> for the whole request
//!   vhost      route table of the listener port, by :authority
//!   route      first matching HTTP rule (route::VirtualHost::find_route)
//!   cors/fault preflight answered, delay/abort injected
//!   action     redirect | direct response | forward (+ mirrors)
//!   upstream   cluster → load balancer → pooled connection, timeout, retries
//!   response   header rules, access log line when the body ends
//! ```
//!
//! Configuration is Istio YAML (`config`), compiled into an immutable `Snapshot`
//! (`snapshot`) that a reload swaps atomically.

pub mod admin;
pub mod config;
pub mod echo;
pub mod error;
pub mod listener;
pub mod pipeline;
pub mod route;
pub mod security;
pub mod snapshot;
pub mod telemetry;
pub mod upstream;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::AtomicBool, Arc, RwLock},
    time::Duration,
};

use tokio::sync::watch;

use crate::{
    config::{Bootstrap, LoadError},
    listener::{certs::CertStore, Listeners},
    pipeline::Proxy,
    snapshot::{Reloader, Snapshot, SnapshotHandle},
    telemetry::AccessLog,
    upstream::Upstreams,
};

/// How often DNS endpoints are resolved again.
const DNS_REFRESH: Duration = Duration::from_secs(30);
/// How often certificate files are checked for rotation.
const CERT_CHECK: Duration = Duration::from_secs(1);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config directory could not be read.
    #[error("cannot load configuration")]
    Load(#[from] LoadError),
    /// The config directory cannot be watched.
    #[error("cannot watch the configuration directory")]
    Watch(#[from] notify::Error),
    /// The admin listener could not be bound.
    #[error("cannot bind the admin listener on {addr}")]
    Admin {
        /// Address asked for.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running ingress gateway.
pub struct Gateway {
    snapshot: SnapshotHandle,
    addrs: Arc<RwLock<HashMap<u16, SocketAddr>>>,
    admin: Option<SocketAddr>,
    version: watch::Receiver<u64>,
    _supervisor: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// The address bound for a Gateway server port (as written in the YAML).
    pub fn listener_addr(&self, port: u16) -> Option<SocketAddr> {
        self.addrs.read().ok()?.get(&port).copied()
    }

    /// The admin listener address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The live snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.current()
    }

    /// Waits until a snapshot newer than `version` is applied (listeners reconciled).
    pub async fn wait_for_version_after(&mut self, version: u64) -> u64 {
        let _ = self.version.wait_for(|v| *v > version).await;
        *self.version.borrow()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self._supervisor.abort();
    }
}

/// Starts the ingress gateway: first load, listeners, admin, then a supervisor that
/// reloads on every change of the config directory.
pub async fn start_ingress(bootstrap: Bootstrap, access_log: AccessLog) -> Result<Gateway, StartError> {
    let handle = SnapshotHandle::default();
    let proxy = Arc::new(Proxy { snapshot: handle.clone(), upstreams: Upstreams::new(), access_log });
    let certs = Arc::new(CertStore::default());
    let reloader = Reloader::new(bootstrap.clone(), certs.clone());
    let mut listeners = Listeners::new(proxy.clone(), bootstrap.port_map.clone());
    let (watcher, mut changes) = config::watch_dir(&bootstrap.config_dir)?;
    let (mut reloader, first) = reload_off_thread(reloader).await;
    let first = first?;
    let ready = Arc::new(AtomicBool::new(false));
    let admin = match bootstrap.admin {
        Some(addr) => Some(
            admin::serve(addr, admin::AdminState { snapshot: handle.clone(), ready: ready.clone() })
                .await
                .map_err(|source| StartError::Admin { addr, source })?,
        ),
        None => None,
    };
    let addrs = Arc::new(RwLock::new(HashMap::new()));
    let (version_tx, version_rx) = watch::channel(0);
    apply(first, &handle, &mut listeners, &addrs, &version_tx).await;
    ready.store(true, std::sync::atomic::Ordering::Release);

    let supervisor_addrs = addrs.clone();
    let supervisor_handle = handle.clone();
    let supervisor = tokio::spawn(async move {
        let _watcher = watcher; // dropping it stops the watch
        let mut dns = tokio::time::interval(DNS_REFRESH);
        dns.tick().await;
        let mut cert_check = tokio::time::interval(CERT_CHECK);
        loop {
            tokio::select! {
                change = changes.recv() => {
                    if change.is_none() {
                        break;
                    }
                    let (back, result) = reload_off_thread(reloader).await;
                    reloader = back;
                    match result {
                        Ok(outcome) => apply(outcome, &supervisor_handle, &mut listeners, &supervisor_addrs, &version_tx).await,
                        Err(e) => tracing::error!(error = %e, source = ?std::error::Error::source(&e), "reload failed; keeping the last good configuration"),
                    }
                }
                _ = dns.tick() => {
                    for c in &supervisor_handle.current().clusters {
                        upstream::refresh_dns(c).await;
                    }
                }
                _ = cert_check.tick() => {
                    let certs = certs.clone();
                    let _ = tokio::task::spawn_blocking(move || certs.refresh()).await;
                }
            }
        }
    });
    Ok(Gateway { snapshot: handle, addrs, admin, version: version_rx, _supervisor: supervisor })
}

/// Runs a reload on the blocking pool (it reads files and compiles regexes).
async fn reload_off_thread(mut reloader: Reloader) -> (Reloader, Result<snapshot::ReloadOutcome, LoadError>) {
    tokio::task::spawn_blocking(move || {
        let result = reloader.reload();
        (reloader, result)
    })
    .await
    .expect("a reload does not panic")
}

/// Logs the reload's diagnostics, resolves DNS, publishes and reconciles listeners.
async fn apply(
    outcome: snapshot::ReloadOutcome,
    handle: &SnapshotHandle,
    listeners: &mut Listeners,
    addrs: &RwLock<HashMap<u16, SocketAddr>>,
    version: &watch::Sender<u64>,
) {
    for d in &outcome.diagnostics {
        if d.is_error() {
            tracing::error!("{d}");
        } else {
            tracing::warn!("{d}");
        }
    }
    let Some(snapshot) = outcome.snapshot else {
        return;
    };
    for c in &snapshot.clusters {
        upstream::refresh_dns(c).await;
    }
    handle.publish(snapshot.clone());
    listeners.reconcile(&snapshot.listeners).await;
    if let Ok(mut a) = addrs.write() {
        *a = listeners.addrs();
    }
    tracing::info!(version = snapshot.version, rejected = outcome.rejected.len(), "snapshot applied");
    version.send_replace(snapshot.version);
}

/// `wicket validate`: every problem in a config directory, offline.
pub fn validate(bootstrap: &Bootstrap) -> Result<Vec<config::Diagnostic>, LoadError> {
    let loaded = config::load_dir(&bootstrap.config_dir, &bootstrap.namespace)?;
    let compiled = snapshot::compile(&loaded.resources, bootstrap, &CertStore::default());
    let mut all = loaded.diagnostics;
    all.extend(compiled.diagnostics);
    Ok(all)
}
