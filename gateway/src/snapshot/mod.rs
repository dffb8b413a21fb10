//! The compiled world: one immutable `Snapshot` of listeners, route tables and
//! clusters, published atomically. A request loads it once and keeps its `Arc`.

mod compile;
mod reload;
pub(crate) mod sidecar;

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::SystemTime};

use arc_swap::ArcSwap;

pub use compile::{compile, Compiled};
pub(crate) use reload::{ReloadOutcome, Reloader};

use crate::{
    config::{Diagnostic, ResourceRef},
    route::{host_matches, L4Route, RouteTable},
    security::{authz::AuthzEngine, jwks::JwksCache, jwt::JwtAuthn, normalize::Normalization},
    telemetry::LogFormat,
    tls::{certs::CertStore, server::TlsTermination},
    upstream::Cluster,
};

/// A listener the snapshot wants open. What it serves is read from the snapshot for
/// every new connection, so a reload can change a port's protocol without reopening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerSpec {
    /// Port as written in the Gateway (routes match on it).
    pub port: u16,
    /// Address to bind.
    pub bind: IpAddr,
    /// Whether its connections are told to finish when the process drains (and the
    /// listener closes). A sidecar's outbound listener does not drain: it serves the
    /// application's calls until the end, as Istio's does.
    pub drains: bool,
}

/// What one port serves.
#[derive(Debug)]
pub enum PortPlan {
    /// Plaintext HTTP/1.1 and h2c; one route table for every HTTP server on the port.
    Http(RouteTable),
    /// TLS: one filter chain per server, chosen by SNI.
    Tls(Vec<FilterChain>),
    /// Opaque TCP, routed by VirtualService `tcp` rules.
    Tcp(Vec<L4Route>),
    /// A sidecar's outbound listener (captured traffic from the application).
    Outbound(crate::snapshot::sidecar::OutboundPlan),
    /// A sidecar's inbound listener (captured traffic from peers).
    Inbound(crate::snapshot::sidecar::InboundPlan),
}

/// One Gateway server on a TLS port.
#[derive(Debug)]
pub struct FilterChain {
    /// Server hosts (`name`, `*.suffix`, `*`), the SNI names this chain answers.
    pub server_names: Vec<String>,
    /// What happens after the chain is chosen.
    pub action: ChainAction,
}

/// Terminate (then HTTP or TCP) or pass the TLS bytes through.
#[derive(Debug)]
pub enum ChainAction {
    /// HTTPS: terminate, then route HTTP with this server's own route table.
    Https {
        /// rustls config (certificate resolver follows rotation) and client pins.
        tls: TlsTermination,
        /// The server's route table.
        table: RouteTable,
    },
    /// TLS-terminated TCP: terminate, then VirtualService `tcp` rules.
    TlsTcp {
        /// rustls config and client pins.
        tls: TlsTermination,
        /// TCP rules.
        routes: Vec<L4Route>,
    },
    /// PASSTHROUGH: forward the encrypted bytes by VirtualService `tls` rules.
    Passthrough {
        /// TLS rules, matched by SNI.
        routes: Vec<L4Route>,
    },
}

/// Envoy filter chain match: exact server name, then the longest wildcard, then a
/// chain for `*` (which also takes connections without SNI).
pub fn select_chain<'a>(chains: &'a [FilterChain], sni: Option<&str>) -> Option<&'a FilterChain> {
    if let Some(sni) = sni {
        let exact = chains.iter().find(|c| c.server_names.iter().any(|n| n.eq_ignore_ascii_case(sni)));
        let wildcard = || {
            chains
                .iter()
                .filter_map(|c| {
                    let best = c
                        .server_names
                        .iter()
                        .filter(|n| n.starts_with("*.") && host_matches(n, sni))
                        .map(String::len)
                        .max()?;
                    Some((best, c))
                })
                .max_by_key(|(len, _)| *len)
                .map(|(_, c)| c)
        };
        if let Some(c) = exact.or_else(wildcard) {
            return Some(c);
        }
    }
    chains.iter().find(|c| c.server_names.iter().any(|n| n == "*"))
}

/// What became of one resource in the reload that built a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceState {
    /// In force as written.
    Applied,
    /// The new version was rejected; the last good one is in force.
    LastGood,
    /// A security resource with errors, in force in its fail-closed form (it denies
    /// or refuses more than written until it is fixed).
    FailClosed,
    /// Rejected, with no earlier version to fall back on.
    Rejected,
}

impl ResourceState {
    /// The metric's name for a state other than applied.
    pub fn not_applied(self) -> Option<&'static str> {
        match self {
            Self::Applied => None,
            Self::LastGood => Some("last_good"),
            Self::FailClosed => Some("fail_closed"),
            Self::Rejected => Some("rejected"),
        }
    }
}

/// A resource's status, for the admin config dump and logs.
#[derive(Debug, Clone)]
pub struct ResourceStatus {
    /// `kind/namespace/name`.
    pub id: ResourceRef,
    /// `file:line` of the version in force (empty when none).
    pub origin: String,
    /// Applied, last good, or rejected.
    pub state: ResourceState,
    /// Errors naming it in this reload.
    pub errors: Vec<String>,
}

/// State kept across snapshots: loaded certificates (they rotate) and remote JWKS
/// sets (fetched in the background), so a reload neither reloads nor refetches them.
#[derive(Debug, Default)]
pub struct Caches {
    /// Certificate and key files.
    pub certs: CertStore,
    /// Remote JWKS sets.
    pub jwks: JwksCache,
    /// Wasm engine, compiled modules and running plugins.
    pub wasm: Arc<crate::wasm::Runtime>,
    /// The workload's mesh identity (sidecar mode, or a gateway given one), for mutual
    /// TLS between workloads.
    pub identity: Option<Arc<crate::tls::identity::WorkloadIdentity>>,
    /// What span export needs from the running gateway (unset in `validate`).
    pub tracing: std::sync::OnceLock<(crate::upstream::Upstreams, crate::telemetry::trace::TraceCounters)>,
}

/// The request-level security of this gateway: normalization, JWT, authorization.
#[derive(Debug, Default)]
pub struct Security {
    /// Path normalization (Istio default BASE).
    pub normalization: Normalization,
    /// Trusted proxies in front (X-Forwarded-For hops) for `remote.ip`.
    pub trusted_hops: u32,
    /// RequestAuthentication rules, when any apply.
    pub jwt: Option<JwtAuthn>,
    /// AuthorizationPolicies that apply to HTTP requests.
    pub authz: AuthzEngine,
    /// The same policies as they apply to TCP connections.
    pub tcp_authz: AuthzEngine,
}

/// One consistent, immutable configuration.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every publish.
    pub version: u64,
    /// Listeners to keep open.
    pub listeners: Vec<ListenerSpec>,
    /// What each listener port serves.
    pub ports: HashMap<u16, PortPlan>,
    /// Every cluster referenced by a route.
    pub clusters: Vec<Arc<Cluster>>,
    /// Normalization, authentication and authorization.
    pub security: Security,
    /// Access log format (mesh config `accessLogEncoding`/`accessLogFormat`).
    pub access_log: Arc<LogFormat>,
    /// Istio request metrics on (a Telemetry resource can turn them off).
    pub request_metrics: bool,
    /// The tracer (mesh config `defaultProviders.tracing` → an `opentelemetry` provider).
    pub tracer: Option<Arc<crate::telemetry::trace::Tracer>>,
    /// WasmPlugins, in chain order.
    pub wasm: crate::wasm::Chain,
    /// Clusters Wasm HTTP calls may name, by Envoy name, `host:port` and `host`.
    pub services: HashMap<String, Arc<Cluster>>,
    /// Access log file (mesh config `accessLogFile`); `None` keeps the gateway's output.
    pub access_log_file: Option<std::path::PathBuf>,
    /// Problems found while compiling (warnings and reference errors).
    pub diagnostics: Vec<Diagnostic>,
    /// Every resource read and what became of it.
    pub resources: Vec<ResourceStatus>,
    /// When it was compiled.
    pub created: Option<SystemTime>,
}

impl Snapshot {
    /// A configured cluster for a Wasm HTTP call.
    pub fn service_cluster(&self, name: &str) -> Option<Arc<Cluster>> {
        self.services.get(name).cloned()
    }

    /// The HTTP route table for a connection: the port's, or on a TLS port the one of
    /// the server its SNI chose, with that server's names (to answer 421 for others).
    pub fn route_table(&self, port: u16, sni: Option<&str>) -> Option<(&RouteTable, Option<&[String]>)> {
        match self.ports.get(&port)? {
            PortPlan::Http(table) => Some((table, None)),
            PortPlan::Tls(chains) => {
                let chain = select_chain(chains, sni)?;
                match &chain.action {
                    ChainAction::Https { table, .. } => Some((table, Some(chain.server_names.as_slice()))),
                    _ => None,
                }
            }
            PortPlan::Outbound(plan) => Some((&plan.table, None)),
            PortPlan::Inbound(plan) => Some((&plan.table, None)),
            PortPlan::Tcp(_) => None,
        }
    }
}

/// The live configuration. Cloning the handle is cheap; every clone sees every publish.
#[derive(Debug, Clone, Default)]
pub struct SnapshotHandle(Arc<ArcSwap<Snapshot>>);

impl SnapshotHandle {
    /// One consistent view: call once per request and keep the `Arc`.
    pub fn current(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Only `snapshot::reload` publishes.
    pub(crate) fn publish(&self, next: Arc<Snapshot>) {
        self.0.store(next);
    }
}

/// Wasm `proxy_http_call`s resolve against the live snapshot's clusters.
impl crate::wasm::ClusterLookup for SnapshotHandle {
    fn cluster(&self, name: &str) -> Option<Arc<Cluster>> {
        self.0.load().service_cluster(name)
    }
}
