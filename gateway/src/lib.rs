//! Wicket: an Istio-compatible, WebAssembly-extensible ingress gateway.
//!
//! The flow of one request:
//!
//! ```text
//! accept ─ TLS? (server by SNI: terminate, or pass through by tls routes; tcp routes)
//!        ─ HTTP/1.1 or h2 ─► pipeline::handle
//!   start        one Arc<Snapshot> for the whole request; request id, access record, span
//!   accept       Host present, HTTP/1.1+, route table of the port (and TLS server), 421
//!   normalize    path per meshConfig pathNormalization (400)
//!   wasm AUTHN   filters of the AUTHN phase
//!   authenticate RequestAuthentication → identity and claims (401)
//!   wasm AUTHZ   filters of the AUTHZ phase
//!   authorize    AuthorizationPolicy CUSTOM → DENY → ALLOW (403)
//!   wasm STATS   filters of the STATS and unspecified phases
//!   route        virtual host by :authority, first matching HTTP rule (404 NR)
//!   cors         preflights answered
//!   local        body limit (413), fault delay/abort (DI, FI), redirect, direct response
//!   forward      header rules, cluster → load balancer → pooled connection; timeout, retries, mirrors
//!   respond      local replies made responses; Wasm response callbacks
//!   finish       the record completed; access log line and metrics when the body ends
//! ```
//!
//! Configuration is Istio YAML (`config`), compiled into an immutable `Snapshot`
//! (`snapshot`) that a reload swaps atomically.

pub(crate) mod addr_text;
pub(crate) mod admin;
pub mod config;
pub mod echo;
pub(crate) mod error;
pub mod hex;
pub(crate) mod http_parts;
pub(crate) mod listener;
pub(crate) mod pipeline;
pub mod route;
pub mod security;
pub mod sidecar;
pub mod snapshot;
pub(crate) mod source;
mod supervisor;
pub mod telemetry;
pub(crate) mod tls;
pub(crate) mod upstream;
pub mod wasm;

pub use source::ConnectError;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::sync::watch;

use crate::{
    config::Bootstrap,
    listener::Listeners,
    pipeline::Proxy,
    snapshot::{Reloader, Snapshot, SnapshotHandle},
    supervisor::Supervisor,
    telemetry::AccessLog,
    upstream::Upstreams,
};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config directory could not be read.
    #[error("cannot load configuration")]
    Load(#[from] source::LoadError),
    /// The config directory cannot be watched.
    #[error("cannot watch the configuration directory")]
    Watch(#[from] notify::Error),
    /// The Kubernetes source cannot start.
    #[error("cannot read the Kubernetes API")]
    Kubernetes(#[from] source::ConnectError),
    /// The workload identity (`--identity-dir`) is missing or unusable.
    #[error("cannot load the workload identity: {0}")]
    Identity(String),
    /// The sidecar's health listener could not be bound.
    #[error("cannot bind the health (probe) listener on {addr}")]
    Probes {
        /// Address asked for.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
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
    drain: Arc<listener::Drain>,
    /// Tells the supervisor to close the listeners that drain (a sidecar's inbound side).
    inbound_drain: watch::Sender<bool>,
    order: DrainOrder,
    /// Tells the supervisor to close its listeners and end.
    stop: Arc<tokio::sync::Notify>,
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

    /// Graceful shutdown: stop reloading and accepting, tell every connection to finish
    /// (HTTP/2 GOAWAY, HTTP/1 `Connection: close`), and wait for them up to `limit`.
    /// A sidecar, like Istio's, drains its inbound side only and keeps serving the
    /// application's outbound calls for all of `limit` (`terminationDrainDuration`).
    /// Returns the connections still open when it gave up.
    pub async fn shutdown(mut self, limit: Duration) -> usize {
        if self.order == DrainOrder::Everything {
            self.close_listeners().await;
            tracing::info!(open = self.drain.open(), ?limit, "draining");
            return self.drain.drain(limit).await;
        }
        let deadline = tokio::time::Instant::now() + limit;
        self.inbound_drain.send_replace(true);
        tracing::info!(open = self.drain.open(), ?limit, "draining inbound; outbound serves until the end");
        let left = self.drain.drain(limit).await;
        tokio::time::sleep_until(deadline).await;
        self.close_listeners().await;
        left
    }

    /// Stops reloading and closes every listener; returns once none accepts any more.
    async fn close_listeners(&mut self) {
        self.stop.notify_one();
        let _ = (&mut self._supervisor).await;
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

/// How a process shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainOrder {
    /// A gateway: every listener closes, then open connections finish.
    Everything,
    /// A sidecar (Istio's): the inbound side drains, the outbound side serves the
    /// application until the drain time is up.
    InboundFirst,
}

/// Starts the gateway, or with `bootstrap.sidecar` the sidecar: identity, first load,
/// listeners, admin, then a supervisor that reloads on every change of the config
/// directory.
pub async fn start(bootstrap: Bootstrap, access_log: AccessLog) -> Result<Gateway, StartError> {
    match bootstrap.sidecar.clone() {
        None => start_ingress(bootstrap, access_log).await,
        Some(settings) => start_sidecar(bootstrap, settings, access_log).await,
    }
}

/// The ingress gateway: Gateway listeners served as a gateway serves them.
async fn start_ingress(bootstrap: Bootstrap, access_log: AccessLog) -> Result<Gateway, StartError> {
    let core = Core::new(&bootstrap, access_log, "istio-ingressgateway", None)?;
    let handler: listener::Handler =
        |stream, peer, port, server| Box::pin(listener::connection(stream, peer, port, server));
    core.serve(bootstrap, handler, DrainOrder::Everything).await
}

/// The sidecar: captured outbound and inbound listeners, and the probe listener.
async fn start_sidecar(
    bootstrap: Bootstrap,
    settings: config::SidecarSettings,
    access_log: AccessLog,
) -> Result<Gateway, StartError> {
    let core = Core::new(&bootstrap, access_log, "unknown", settings.mark)?;
    let upstreams = core.proxy.upstreams.clone();
    let bind_ip = bootstrap.bind_ip;
    let gateway = core.serve(bootstrap, sidecar::serve, DrainOrder::InboundFirst).await?;
    if let Some(port) = settings.probe_port {
        let addr = SocketAddr::new(bind_ip, port);
        let open = gateway.addrs.clone();
        let ready = move || open.read().is_ok_and(|a| !a.is_empty());
        sidecar::probes::serve(addr, settings.probers, upstreams, ready)
            .await
            .map_err(|source| StartError::Probes { addr, source })?;
    }
    Ok(gateway)
}

/// What gateway and sidecar share: metrics, the workload identity, the request path
/// (`Proxy`), and the caches snapshots are compiled with (certificates, Wasm, JWKS).
struct Core {
    metrics: Arc<telemetry::Metrics>,
    handle: SnapshotHandle,
    proxy: Arc<Proxy>,
    caches: Arc<snapshot::Caches>,
    access_log: AccessLog,
}

impl Core {
    /// `unnamed` is the workload name telemetry reports when the labels give none;
    /// `mark` is the SO_MARK of the proxy's own upstream connections.
    fn new(bootstrap: &Bootstrap, access_log: AccessLog, unnamed: &str, mark: Option<u32>) -> Result<Self, StartError> {
        let metrics = Arc::new(telemetry::Metrics::new());
        let certs = tls::certs::CertStore::default();
        let identity = match &bootstrap.identity_dir {
            Some(dir) => Some(
                tls::identity::IdentityFiles::in_dir(dir)
                    .and_then(|files| tls::identity::WorkloadIdentity::load(files, &bootstrap.trust_domain, &certs))
                    .map_err(StartError::Identity)?,
            ),
            None => None,
        };
        let mut telemetry = telemetry::Telemetry::new(
            access_log.clone(),
            metrics.clone(),
            &bootstrap.labels,
            &bootstrap.namespace,
            unnamed,
        );
        if let Some(principal) = identity.as_ref().and_then(|i| i.spiffe_uri()) {
            telemetry.set_principal(&principal);
        }
        let handle = SnapshotHandle::default();
        let proxy = Arc::new(Proxy {
            snapshot: handle.clone(),
            upstreams: Upstreams::with_mark(mark),
            telemetry,
            max_request_body: bootstrap.max_request_body,
        });
        let runtime = wasm::Runtime::new(metrics.wasm_plugins(), bootstrap.wasm_cache_dir.clone());
        let clusters = Arc::new(handle.clone());
        runtime.set_dispatcher(wasm::Dispatcher { upstreams: proxy.upstreams.clone(), clusters });
        let caches = Arc::new(snapshot::Caches { wasm: Arc::new(runtime), certs, identity, ..Default::default() });
        let _ = caches.tracing.set((proxy.upstreams.clone(), metrics.trace_counters()));
        Ok(Self { metrics, handle, proxy, caches, access_log })
    }

    /// Loads the configuration, opens its listeners (each connection served by
    /// `handler`) and the admin listener, and hands the rest to the supervisor.
    async fn serve(
        self,
        bootstrap: Bootstrap,
        handler: listener::Handler,
        order: DrainOrder,
    ) -> Result<Gateway, StartError> {
        let Core { metrics, handle, proxy, caches, access_log } = self;
        let mut changes = Vec::new();
        let watcher = match &bootstrap.config_dir {
            Some(dir) => {
                let (watcher, dir_changes) = source::watch_dir(dir)?;
                changes.push(dir_changes);
                Some(watcher)
            }
            None => None,
        };
        let cluster = match &bootstrap.kubernetes {
            Some(settings) => {
                let (cluster, cluster_changes) =
                    source::Cluster::connect(settings, &bootstrap.namespace, metrics.clone()).await?;
                changes.push(cluster_changes);
                Some(cluster)
            }
            None => None,
        };
        let changes = source::merge(changes);
        let source = source::Source { dir: bootstrap.config_dir.clone(), cluster: cluster.clone() };
        let (version_tx, version_rx) = watch::channel(0);
        let (inbound_drain, draining) = watch::channel(false);
        let stop = Arc::new(tokio::sync::Notify::new());
        let drain = Arc::new(listener::Drain::default());
        let status = Arc::new(RwLock::new(supervisor::ReloadStatus::default()));
        let listeners =
            Listeners::new(proxy, handler, drain.clone(), bootstrap.port_map.clone(), bootstrap.max_connections);
        let admin_addr = bootstrap.admin;
        let mut supervisor = Supervisor {
            reloader: Arc::new(std::sync::Mutex::new(Reloader::new(bootstrap, caches.clone(), source))),
            handle: handle.clone(),
            listeners,
            addrs: Arc::new(RwLock::new(HashMap::new())),
            version: version_tx,
            metrics: metrics.clone(),
            caches,
            status: status.clone(),
            access_log,
            draining,
            stop: stop.clone(),
            cluster: cluster.clone(),
        };
        // The Kubernetes source publishes once every watch has listed (until then
        // `/ready` answers 503); a directory alone is loaded before anything binds.
        if cluster.is_none() {
            supervisor.reload().await?;
        }
        let admin = match admin_addr {
            Some(addr) => {
                let state = admin::AdminState { snapshot: handle.clone(), metrics, status };
                Some(admin::serve(addr, state).await.map_err(|source| StartError::Admin { addr, source })?)
            }
            None => None,
        };
        let addrs = supervisor.addrs.clone();
        let task = tokio::spawn(async move {
            let _watcher = watcher; // dropping it stops the watch
            if let Some(cluster) = cluster {
                cluster.synced().await;
                tracing::info!("Kubernetes: every watch has listed; publishing");
                let _ = supervisor.reload().await;
            }
            supervisor.run(changes).await;
        });
        Ok(Gateway {
            snapshot: handle,
            addrs,
            admin,
            version: version_rx,
            drain,
            inbound_drain,
            order,
            stop,
            _supervisor: task,
        })
    }
}

/// `wicket validate`: every problem in a config directory, offline. The resources
/// are compiled for the workload `bootstrap` describes and again for every workload
/// a resource selects (its namespace and selector labels), so a policy or Gateway
/// for another workload is checked too; each problem is reported once.
pub fn validate(bootstrap: &Bootstrap) -> Result<Vec<config::Diagnostic>, source::LoadError> {
    let loaded = source::load_dir(bootstrap.base_dir(), &bootstrap.namespace)?;
    let root = loaded.resources.iter().find_map(|r| match &r.spec {
        config::Spec::MeshConfig(m) => Some(m.root_namespace.clone()),
        _ => None,
    });
    let root = root.unwrap_or_else(|| config::MeshConfig::default().root_namespace);
    let mut views = vec![(bootstrap.namespace.clone(), bootstrap.labels.clone())];
    for r in &loaded.resources {
        let namespace = match &r.spec {
            // A Gateway selects workloads in any namespace; root-namespace policies, every namespace.
            config::Spec::Gateway(_) => bootstrap.namespace.clone(),
            _ if r.id.namespace == root => bootstrap.namespace.clone(),
            _ => r.id.namespace.clone(),
        };
        let view = (namespace, r.selector().cloned().unwrap_or_else(|| bootstrap.labels.clone()));
        if !views.contains(&view) {
            views.push(view);
        }
    }
    let caches = snapshot::Caches::default();
    let mut all = loaded.diagnostics;
    let secrets =
        source::SecretDir::create().map_err(|source| source::LoadError::Io { path: std::env::temp_dir(), source })?;
    all.extend(secrets.sync(&loaded.resources));
    let secrets_dir = Some(secrets.path().to_path_buf());
    let mut seen: std::collections::HashSet<String> = all.iter().map(ToString::to_string).collect();
    for (namespace, labels) in views {
        let view = Bootstrap { namespace, labels, secrets_dir: secrets_dir.clone(), ..bootstrap.clone() };
        for d in snapshot::compile(&loaded.resources, &view, &caches).diagnostics {
            if seen.insert(d.to_string()) {
                all.push(d);
            }
        }
    }
    Ok(all)
}
