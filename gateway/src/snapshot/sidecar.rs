//! What a sidecar's two listeners serve, compiled into the snapshot like a gateway
//! port's plan: the outbound service index and mesh routes, and the inbound mutual
//! TLS policy (PeerAuthentication) with the route to the application.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use crate::{
    route::{L4Route, RouteTable},
    tls::identity::WorkloadIdentity,
};

/// PeerAuthentication modes after inheritance (`UNSET` resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    /// Mutual TLS only; plaintext is refused.
    Strict,
    /// Mutual TLS or plaintext on the same port, told apart by sniffing.
    Permissive,
    /// Plaintext only: TLS bytes are passed to the application as they are.
    Disable,
}

impl MtlsMode {
    /// Parses a PeerAuthentication mode; `UNSET` (and absent) is `None`: inherit.
    pub fn parse(mode: Option<&str>) -> Result<Option<Self>, String> {
        match mode.map(str::to_ascii_uppercase).as_deref() {
            None | Some("UNSET") => Ok(None),
            Some("STRICT") => Ok(Some(Self::Strict)),
            Some("PERMISSIVE") => Ok(Some(Self::Permissive)),
            Some("DISABLE") => Ok(Some(Self::Disable)),
            Some(other) => Err(format!("unknown mTLS mode {other:?} (UNSET, DISABLE, PERMISSIVE, STRICT)")),
        }
    }
}

/// The inbound mutual TLS policy of this workload.
#[derive(Debug, Clone)]
pub struct PeerAuthn {
    /// Mode for ports without their own.
    pub default: MtlsMode,
    /// `portLevelMtls` of the workload's policy.
    pub ports: HashMap<u16, MtlsMode>,
}

impl Default for PeerAuthn {
    /// Istio's default without any policy: PERMISSIVE.
    fn default() -> Self {
        Self { default: MtlsMode::Permissive, ports: HashMap::new() }
    }
}

impl PeerAuthn {
    /// The mode for connections to application port `port`.
    pub fn mode(&self, port: u16) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.default)
    }
}

/// How a destination port's traffic is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    /// Declared HTTP, HTTP2 or gRPC.
    Http,
    /// Declared opaque (TCP, TLS, HTTPS, databases).
    Opaque,
    /// Undeclared: sniffed from the first bytes.
    Detect,
}

/// A registry service reached at one of its addresses.
#[derive(Debug)]
pub struct OutboundService {
    /// Service host.
    pub host: Arc<str>,
    /// How its traffic is recognised.
    pub protocol: AppProtocol,
    /// Where its opaque (TCP) traffic goes.
    pub tcp: Vec<L4Route>,
}

/// The outbound listener: traffic the application sent, captured.
#[derive(Debug)]
pub struct OutboundPlan {
    /// VirtualServices bound to the mesh and default routes, by Host (and by the
    /// services' addresses); with `ALLOW_ANY` a catch-all passes other hosts through.
    pub table: RouteTable,
    /// Registry services by address and port (ServiceEntry `addresses`).
    pub services: HashMap<SocketAddr, OutboundService>,
    /// `ALLOW_ANY`: unknown destinations are passed through; `REGISTRY_ONLY`: refused.
    pub allow_any: bool,
    /// TCP to unknown destinations: the original destination (Istio PassthroughCluster).
    pub passthrough: Vec<L4Route>,
}

/// The inbound listener: traffic from peers to the application, captured.
#[derive(Debug)]
pub struct InboundPlan {
    /// PeerAuthentication for this workload.
    pub mtls: PeerAuthn,
    /// Where the application listens: inbound traffic goes to this address at the
    /// port it was headed to.
    pub app_ip: std::net::IpAddr,
    /// Sidecar `ingress[].defaultEndpoint`: ports whose traffic goes elsewhere than
    /// `app_ip` at the same port.
    pub endpoints: HashMap<u16, SocketAddr>,
    /// The identity mutual TLS terminates with (none: plaintext only).
    pub identity: Option<Arc<WorkloadIdentity>>,
    /// HTTP: one catch-all route to the application (Istio InboundPassthroughCluster).
    pub table: RouteTable,
    /// Opaque TCP to the application.
    pub tcp: Vec<L4Route>,
}
