//! The raw world: Istio resources as the user wrote them, parsed from multi-document
//! YAML with `file:line` diagnostics, the per-resource checks that need nothing else,
//! and the list of fields parsed but not applied. Nothing here knows about the
//! runtime; `snapshot::compile` turns these into runtime structures, and `source`
//! says where the YAML comes from.

#[macro_use]
mod enums;

mod bootstrap;
mod diagnostic;
mod duration;
pub(crate) mod files;
pub(crate) mod istio;
pub(crate) mod kubernetes;
mod load;
mod mesh;
pub(crate) mod not_applied;
pub mod probers;

use std::{collections::BTreeMap, fmt, path::Path, sync::Arc};

pub use bootstrap::{Bootstrap, KubernetesSettings, SidecarSettings};
pub use diagnostic::{Diagnostic, Severity};
pub use duration::GoDuration;
pub use load::{load_inputs, load_text, load_texts, Input, Loaded};
pub use mesh::{
    AccessLogEncoding, ExtAuthzHttp, ExtensionProvider, GatewayTopology, MeshConfig, NormalizationType,
    OutboundTrafficMode, PathNormalizationConfig, ProxyConfig,
};

/// Where a resource was written: the file and the line its document starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// File the document came from; for an object of the Kubernetes source,
    /// `kubernetes:<namespace>/<name>@<resourceVersion>`.
    pub file: Arc<Path>,
    /// 1-based line of the document's first line (or of the reported field); 0 for a
    /// source without lines.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}", self.file.display()),
            line => write!(f, "{}:{line}", self.file.display()),
        }
    }
}

/// The resource kinds Wicket understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `networking.istio.io` Gateway.
    Gateway,
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry,
    /// `networking.istio.io` WorkloadEntry.
    WorkloadEntry,
    /// `security.istio.io` RequestAuthentication.
    RequestAuthentication,
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy,
    /// MeshConfig from the `istio` ConfigMap.
    MeshConfig,
    /// `extensions.istio.io` WasmPlugin.
    WasmPlugin,
    /// `telemetry.istio.io` Telemetry.
    Telemetry,
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication,
    /// `networking.istio.io` Sidecar.
    Sidecar,
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// core/v1 Pod.
    Pod,
    /// core/v1 Secret.
    Secret,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::WasmPlugin => "WasmPlugin",
            Kind::Telemetry => "Telemetry",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::Sidecar => "Sidecar",
            Kind::MeshConfig => "ConfigMap",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::Secret => "Secret",
        })
    }
}

/// `kind/namespace/name` of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceRef {
    /// Resource kind.
    pub kind: Kind,
    /// Namespace (defaulted when the file omits it).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// The Kubernetes object metadata Wicket reads; other metadata fields are ignored.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name.
    #[serde(default)]
    pub name: String,
    /// Object namespace; the loader fills in the default.
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A typed spec of one of the supported kinds.
// A config holds hundreds of resources at most: boxing the larger specs buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(crate) enum Spec {
    /// Gateway spec.
    Gateway(istio::Gateway),
    /// VirtualService spec.
    VirtualService(istio::VirtualService),
    /// DestinationRule spec.
    DestinationRule(istio::DestinationRule),
    /// ServiceEntry spec.
    ServiceEntry(istio::ServiceEntry),
    /// WorkloadEntry spec.
    WorkloadEntry(istio::WorkloadEntry),
    /// RequestAuthentication spec.
    RequestAuthentication(istio::RequestAuthentication),
    /// AuthorizationPolicy spec.
    AuthorizationPolicy(istio::AuthorizationPolicy),
    /// MeshConfig.
    MeshConfig(MeshConfig),
    /// WasmPlugin spec.
    WasmPlugin(istio::WasmPlugin),
    /// Telemetry spec.
    Telemetry(istio::Telemetry),
    /// PeerAuthentication spec.
    PeerAuthentication(istio::PeerAuthentication),
    /// Sidecar spec.
    Sidecar(istio::Sidecar),
    /// A Kubernetes Service.
    Service(kubernetes::Service),
    /// A Kubernetes EndpointSlice.
    EndpointSlice(kubernetes::EndpointSlice),
    /// A Kubernetes Pod.
    Pod(kubernetes::Pod),
    /// A Kubernetes Secret.
    Secret(kubernetes::Secret),
    /// A security resource whose document did not load, kept so that compile applies
    /// it in its most restrictive form: leaving it out could let through what it denies.
    Unreadable(Unreadable),
}

impl Resource {
    /// The workload labels this resource selects, for kinds that select workloads
    /// (`None`: every workload of its scope, or a kind that selects none).
    pub fn selector(&self) -> Option<&BTreeMap<String, String>> {
        fn labels(s: &Option<istio::MatchLabelsSelector>) -> Option<&BTreeMap<String, String>> {
            s.as_ref().map(|s| &s.match_labels)
        }
        match &self.spec {
            Spec::Gateway(g) => Some(&g.selector),
            Spec::RequestAuthentication(ra) => labels(&ra.selector),
            Spec::AuthorizationPolicy(ap) => labels(&ap.selector),
            Spec::PeerAuthentication(pa) => labels(&pa.selector),
            Spec::WasmPlugin(wp) => labels(&wp.selector),
            Spec::Telemetry(t) => labels(&t.selector),
            Spec::Unreadable(u) => labels(&u.selector),
            _ => None,
        }
    }
}

/// What could still be read of a security resource (or WasmPlugin) whose document did
/// not load.
#[derive(Debug, Clone, Default)]
pub struct Unreadable {
    /// `spec.selector`, when readable; `None` (the whole namespace) is the broader scope.
    pub selector: Option<istio::MatchLabelsSelector>,
    /// `spec.action` (AuthorizationPolicy): `ALLOW` when absent, `None` when unreadable.
    pub action: Option<String>,
    /// Whether `spec.targetRefs` or `spec.targetRef` is set.
    pub targeted: bool,
    /// The `spec.jwtRules[].issuer` strings that could be read (RequestAuthentication).
    pub issuers: Vec<String>,
    /// `spec.failStrategy` is FAIL_OPEN (WasmPlugin); anything else fails closed.
    pub fail_open: bool,
}

/// One loaded resource with its identity and origin.
#[derive(Debug, Clone)]
pub struct Resource {
    /// `kind/namespace/name`.
    pub id: ResourceRef,
    /// Where it was written.
    pub origin: Origin,
    /// Labels and annotations.
    pub meta: ObjectMeta,
    /// The typed spec.
    pub(crate) spec: Spec,
}
