//! The Kubernetes source: one watcher per kind (and watched namespace) against the
//! API server, each keeping its objects as rendered documents, so that a reload reads
//! the cluster the way it reads a directory and reports problems by
//! `namespace/name@resourceVersion`.
//!
//! Nothing is published until every watch has finished its initial list. A kind the
//! API server does not serve (no CRD: there can be no such objects) counts as synced
//! and empty; so does a kind it refuses (RBAC), logged and retried, except for the
//! security kinds: not knowing the policies must never mean serving without them, so
//! a refused security kind keeps the gateway unready.
//! Errors never clear what a watch holds: a lost API server leaves the last objects
//! serving while the watches back off and resume (410 Gone relists).

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use kube::{
    api::{ApiResource, DynamicObject, ObjectMeta, PartialObjectMeta},
    runtime::{
        watcher::{self, Event},
        WatchStreamExt,
    },
    Api, Client,
};
use tokio::sync::{mpsc, watch};

mod lease;
mod status;

use status::Findings;

use crate::{
    config::KubernetesSettings,
    telemetry::{metrics::WatchLabels, Metrics},
};

/// Events closer together than this are coalesced into one reload.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// How the origins of the cluster's objects begin (`kubernetes:ns/name@version`).
const ORIGIN_PREFIX: &str = "kubernetes:";

/// Istio's root namespace, where the `istio` ConfigMap (mesh config) lives.
const ROOT_NAMESPACE: &str = "istio-system";

/// Where a kind is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The watched namespaces (all by default).
    Watched,
    /// The gateway's own namespace only (Secrets: least privilege).
    Own,
    /// The `istio` ConfigMap of the root namespace.
    MeshConfig,
}

/// One kind Wicket reads from the API server.
#[derive(Debug)]
struct KindInfo {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    scope: Scope,
    /// Not knowing these objects must keep the gateway unready (fail closed).
    security: bool,
    /// Only metadata is read (Pods: labels), sparing the API server and memory.
    metadata_only: bool,
}

const fn kind(group: &'static str, version: &'static str, kind: &'static str, plural: &'static str) -> KindInfo {
    KindInfo { group, version, kind, plural, scope: Scope::Watched, security: false, metadata_only: false }
}

/// Every kind watched. One served version each: the API server converts objects
/// stored in any version to the one asked for.
const KINDS: &[KindInfo] = &[
    kind("networking.istio.io", "v1", "Gateway", "gateways"),
    kind("networking.istio.io", "v1", "VirtualService", "virtualservices"),
    kind("networking.istio.io", "v1", "DestinationRule", "destinationrules"),
    kind("networking.istio.io", "v1", "ServiceEntry", "serviceentries"),
    kind("networking.istio.io", "v1", "WorkloadEntry", "workloadentries"),
    kind("networking.istio.io", "v1", "Sidecar", "sidecars"),
    KindInfo { security: true, ..kind("security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies") },
    KindInfo { security: true, ..kind("security.istio.io", "v1", "RequestAuthentication", "requestauthentications") },
    KindInfo { security: true, ..kind("security.istio.io", "v1", "PeerAuthentication", "peerauthentications") },
    // A filter may enforce policy (its fail strategy decides): not knowing it fails closed.
    KindInfo { security: true, ..kind("extensions.istio.io", "v1alpha1", "WasmPlugin", "wasmplugins") },
    kind("telemetry.istio.io", "v1", "Telemetry", "telemetries"),
    kind("", "v1", "Service", "services"),
    kind("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    KindInfo { metadata_only: true, ..kind("", "v1", "Pod", "pods") },
    KindInfo { scope: Scope::Own, ..kind("", "v1", "Secret", "secrets") },
    KindInfo { scope: Scope::MeshConfig, ..kind("", "v1", "ConfigMap", "configmaps") },
];

impl KindInfo {
    /// `group/version`, or `version` for the core group.
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }
}

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("no Kubernetes client configuration: {0}")]
    Config(String),
    /// The client could not be built from it.
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Where one watch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// The initial list has not completed.
    Listing,
    /// The objects are known (and kept through later errors).
    Synced,
    /// Not served (404) before any list completed: synced and empty.
    NotServed,
    /// Refused (403) before any list completed: synced and empty, unless the kind is
    /// a security kind.
    Refused,
}

/// One watch: a kind in one namespace (or all), and the objects it holds.
struct Watched {
    info: &'static KindInfo,
    labels: WatchLabels,
    objects: Mutex<BTreeMap<(String, String), Object>>,
    progress: Mutex<Progress>,
}

/// One object, rendered as the document the loader reads, and its status (not
/// configuration: kept apart, so that writing it does not recompile).
struct Object {
    origin: Arc<Path>,
    text: String,
    status: Option<serde_json::Value>,
    generation: Option<i64>,
}

impl Watched {
    fn ready(&self) -> bool {
        match *self.progress.lock().unwrap_or_else(|p| p.into_inner()) {
            Progress::Listing => false,
            Progress::Synced => true,
            Progress::NotServed => true,
            Progress::Refused => !self.info.security,
        }
    }
}

/// The cluster's objects as the watches hold them (clones share them).
#[derive(Clone)]
pub(crate) struct Cluster {
    watched: Arc<[Arc<Watched>]>,
    /// Bumped whenever a watch's progress changes.
    progress: watch::Receiver<u64>,
    /// The problems of the last reload, for the status writer.
    findings: Arc<watch::Sender<Findings>>,
}

impl Cluster {
    /// Connects (kubeconfig from `settings`, `KUBECONFIG` or `~/.kube/config`, else
    /// in-cluster) and starts every watch. `namespace` is the gateway's own. The
    /// receiver yields one `()` per burst of changes after the initial lists.
    pub(crate) async fn connect(
        settings: &KubernetesSettings,
        namespace: &str,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, mpsc::Receiver<()>), ConnectError> {
        let mut config = match &settings.kubeconfig {
            Some(file) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(file)
                    .map_err(|e| ConnectError::Config(format!("{}: {e}", file.display())))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| ConnectError::Config(format!("{}: {e}", file.display())))?
            }
            None => kube::Config::infer().await.map_err(|e| ConnectError::Config(e.to_string()))?,
        };
        // The watches back off and retry on their own; the client's retries of 503s
        // would only hide an outage from the logs and metrics for minutes.
        config.default_retry = false;
        let client = Client::try_from(config).map_err(ConnectError::Client)?;
        let mut namespaces: Vec<Option<String>> = settings.namespaces.iter().cloned().map(Some).collect();
        // The gateway's own namespace and the root namespace (mesh-wide policies) are
        // always watched.
        if !namespaces.is_empty() {
            for ns in [namespace, ROOT_NAMESPACE] {
                if !namespaces.iter().any(|n| n.as_deref() == Some(ns)) {
                    namespaces.push(Some(ns.to_string()));
                }
            }
        }
        if namespaces.is_empty() {
            namespaces.push(None);
        }
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        let (progress_tx, progress) = watch::channel(0);
        let progress_tx = Arc::new(progress_tx);
        let mut watched = Vec::new();
        for info in KINDS {
            let scopes: Vec<Option<String>> = match info.scope {
                Scope::Watched => namespaces.clone(),
                Scope::Own => vec![Some(namespace.to_string())],
                Scope::MeshConfig => vec![Some(ROOT_NAMESPACE.to_string())],
            };
            for ns in scopes {
                let labels = WatchLabels { kind: info.kind, namespace: ns.clone().unwrap_or_default() };
                let w = Arc::new(Watched {
                    info,
                    labels,
                    objects: Mutex::default(),
                    progress: Mutex::new(Progress::Listing),
                });
                let task = Task {
                    watched: w.clone(),
                    changes: raw_tx.clone(),
                    progress: progress_tx.clone(),
                    metrics: metrics.clone(),
                };
                tokio::spawn(task.run(client.clone(), ns));
                watched.push(w);
            }
        }
        let (findings, findings_rx) = watch::channel(Findings::default());
        let cluster = Self { watched: watched.into(), progress, findings: Arc::new(findings) };
        let leader = lease::elect(client.clone(), namespace, settings.identity.clone());
        tokio::spawn(status::write(client, cluster.clone(), leader, findings_rx));
        Ok((cluster, super::watch::debounce(raw_rx, DEBOUNCE)))
    }

    /// Waits until every watch has completed its initial list (or, for a kind that
    /// may be left out, found it refused or not served).
    pub(crate) async fn synced(&self) {
        let mut progress = self.progress.clone();
        loop {
            let waiting: Vec<&str> = self.watched.iter().filter(|w| !w.ready()).map(|w| w.info.kind).collect();
            if waiting.is_empty() {
                return;
            }
            tracing::debug!(?waiting, "waiting for the initial lists");
            if progress.changed().await.is_err() {
                return;
            }
        }
    }

    /// Every object held, as loader inputs, with a digest of them all (of their
    /// content: a new resourceVersion alone, as a status write makes, changes nothing).
    pub(crate) fn inputs(&self) -> (super::dir::Texts, u64) {
        let mut out = Vec::new();
        let mut hasher = DefaultHasher::new();
        for w in self.watched.iter() {
            let objects = w.objects.lock().unwrap_or_else(|p| p.into_inner());
            for o in objects.values() {
                o.text.hash(&mut hasher);
                out.push((o.origin.clone(), o.text.clone()));
            }
        }
        (out, hasher.finish())
    }

    /// Hands the problems of a reload to the status writer: `diagnostics` for those of
    /// `resources` (each with its origin) that came from the cluster.
    pub(crate) fn report<'r>(
        &self,
        resources: impl IntoIterator<Item = (&'r crate::config::ResourceRef, &'r str)>,
        diagnostics: &[crate::config::Diagnostic],
    ) {
        let ours = resources.into_iter().filter(|(_, origin)| origin.starts_with(ORIGIN_PREFIX)).map(|(id, _)| id);
        let findings = Findings::new(ours, diagnostics);
        self.findings.send_if_modified(|f| {
            let changed = *f != findings;
            *f = findings;
            changed
        });
    }

    /// The status and generation of an object of `kind` the watches hold.
    fn status_of(&self, kind: &str, namespace: &str, name: &str) -> Option<(Option<serde_json::Value>, Option<i64>)> {
        let key = (namespace.to_string(), name.to_string());
        self.watched.iter().filter(|w| w.info.kind == kind).find_map(|w| {
            let objects = w.objects.lock().unwrap_or_else(|p| p.into_inner());
            objects.get(&key).map(|o| (o.status.clone(), o.generation))
        })
    }
}

/// One watch loop: the watcher's events applied to the watch's objects.
struct Task {
    watched: Arc<Watched>,
    changes: mpsc::UnboundedSender<()>,
    progress: Arc<watch::Sender<u64>>,
    metrics: Arc<Metrics>,
}

impl Task {
    async fn run(self, client: Client, namespace: Option<String>) {
        let info = self.watched.info;
        let mut config = watcher::Config::default();
        if info.scope == Scope::MeshConfig {
            config = config.fields("metadata.name=istio");
        }
        let ar = info.api_resource();
        if info.metadata_only {
            let api = api::<PartialObjectMeta<DynamicObject>>(client, namespace.as_deref(), &ar);
            self.follow(api, config, |o| (o.metadata, None)).await;
        } else {
            let api = api::<DynamicObject>(client, namespace.as_deref(), &ar);
            self.follow(api, config, |o| (o.metadata, Some(o.data))).await;
        }
    }

    /// Applies the watcher's events of `api` (each object cut to its `Parts`) until
    /// the gateway is gone.
    async fn follow<K>(&self, api: Api<K>, config: watcher::Config, split: impl Fn(K) -> Parts)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let mut relist: Option<BTreeMap<(String, String), Object>> = None;
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            self.step(event.map(|e| parts(e, &split)), &mut relist);
            if self.changes.is_closed() {
                return;
            }
        }
    }

    fn step(
        &self,
        event: Result<Event<Parts>, watcher::Error>,
        relist: &mut Option<BTreeMap<(String, String), Object>>,
    ) {
        let w = &self.watched;
        let objects = || w.objects.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Ok(Event::Init) => *relist = Some(BTreeMap::new()),
            Ok(Event::InitApply((meta, data))) => {
                let (key, object) = render(w.info, &meta, data.as_ref());
                relist.get_or_insert_with(BTreeMap::new).insert(key, object);
            }
            Ok(Event::InitDone) => {
                *objects() = relist.take().unwrap_or_default();
                self.set_progress(Progress::Synced);
                self.metrics.watch_up(&w.labels, true);
                let _ = self.changes.send(());
            }
            Ok(Event::Apply((meta, data))) => {
                let (key, object) = render(w.info, &meta, data.as_ref());
                objects().insert(key, object);
                self.metrics.watch_up(&w.labels, true);
                let _ = self.changes.send(());
            }
            Ok(Event::Delete((meta, _))) => {
                objects().remove(&key_of(&meta));
                let _ = self.changes.send(());
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Logs and counts a failed request; a refusal before the first list may let the
    /// gateway go ready without this kind (see the module doc).
    fn failed(&self, e: &watcher::Error) {
        let w = &self.watched;
        let code = status_code(e);
        self.metrics.watch_error(&w.labels, code.unwrap_or(0));
        let (kind, namespace) = (w.info.kind, w.labels.namespace.as_str());
        let scope =
            if namespace.is_empty() { "in every namespace".to_string() } else { format!("in namespace {namespace}") };
        match code {
            Some(403) => {
                let consequence = if w.info.security {
                    "this security kind is required: not ready until it can be read"
                } else {
                    "serving without it"
                };
                tracing::error!(
                    "Kubernetes: forbidden to list/watch {kind} ({}) {scope}: grant the verbs list and watch on {} ({consequence}; retrying)",
                    w.info.api_version(),
                    w.info.plural
                );
            }
            Some(404) => tracing::warn!(
                "Kubernetes: {kind} ({}) is not served {scope} (CRD not installed?); read as empty, retrying",
                w.info.api_resource().api_version
            ),
            _ => tracing::warn!("Kubernetes: watching {kind} {scope} failed, retrying with back-off: {e}"),
        }
        let unavailable = match code {
            Some(403) => Some(Progress::Refused),
            Some(404) => Some(Progress::NotServed),
            _ => None,
        };
        if let Some(unavailable) = unavailable {
            let mut progress = w.progress.lock().unwrap_or_else(|p| p.into_inner());
            if *progress == Progress::Listing {
                *progress = unavailable;
                drop(progress);
                self.progress.send_modify(|v| *v += 1);
            }
        }
    }

    fn set_progress(&self, to: Progress) {
        *self.watched.progress.lock().unwrap_or_else(|p| p.into_inner()) = to;
        self.progress.send_modify(|v| *v += 1);
    }
}

/// An API of `K` in `namespace`, or in every namespace.
fn api<K>(client: Client, namespace: Option<&str>, ar: &ApiResource) -> Api<K>
where
    K: kube::Resource<DynamicType = ApiResource, Scope = kube::core::DynamicResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced_with(client, ns, ar),
        None => Api::all_with(client, ar),
    }
}

/// The parts of a watched object the loader reads: its metadata and the rest.
type Parts = (ObjectMeta, Option<serde_json::Value>);

fn parts<K>(event: Event<K>, split: impl Fn(K) -> Parts) -> Event<Parts> {
    match event {
        Event::Apply(o) => Event::Apply(split(o)),
        Event::Delete(o) => Event::Delete(split(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(split(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// The HTTP status of the API server's answer, if it gave one.
fn status_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

fn key_of(meta: &ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// The document the loader reads for one object: its kind as watched (list items of
/// built-in kinds carry none), the metadata Wicket reads, and the rest as served.
fn render(info: &KindInfo, meta: &ObjectMeta, data: Option<&serde_json::Value>) -> ((String, String), Object) {
    let key = key_of(meta);
    let mut doc = serde_json::Map::new();
    doc.insert("apiVersion".into(), info.api_version().into());
    doc.insert("kind".into(), info.kind.into());
    let mut annotations = meta.annotations.clone().unwrap_or_default();
    // A copy of the whole object as last applied: large, and read from the object itself.
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    doc.insert(
        "metadata".into(),
        serde_json::json!({
            "name": key.1,
            "namespace": key.0,
            "labels": meta.labels.clone().unwrap_or_default(),
            "annotations": annotations,
        }),
    );
    let mut status = None;
    if let Some(serde_json::Value::Object(rest)) = data {
        for (k, v) in rest {
            match k.as_str() {
                "apiVersion" | "kind" | "metadata" => {}
                "status" => status = Some(v.clone()),
                _ => {
                    doc.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let version = meta.resource_version.as_deref().unwrap_or("?");
    let origin: Arc<Path> = Path::new(&format!("{ORIGIN_PREFIX}{}/{}@{version}", key.0, key.1)).into();
    let text = serde_json::Value::Object(doc).to_string();
    (key, Object { origin, text, status, generation: meta.generation })
}
