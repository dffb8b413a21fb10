//! Wicket's own process settings: what the command line decides, not Istio resources.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

/// How to reach the Kubernetes API server.
#[derive(Debug, Clone, Default)]
pub struct KubernetesSettings {
    /// A kubeconfig file; else `KUBECONFIG`, `~/.kube/config`, or the in-cluster
    /// service account.
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces to watch (every namespace when empty). The gateway's own and Istio's
    /// root namespace are added.
    pub namespaces: Vec<String>,
    /// This replica's name in the status leader election (the Pod's name).
    pub identity: String,
}

impl KubernetesSettings {
    /// This replica's identity as the chart's downward API gives it (`POD_NAME`), else
    /// the host name.
    pub fn default_identity() -> String {
        std::env::var("POD_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
            .unwrap_or_else(|| format!("wicket-{}", std::process::id()))
    }
}

/// Settings of one gateway process.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Directory of Istio YAML; `None` when the Kubernetes source is the only one.
    pub config_dir: Option<PathBuf>,
    /// Read resources from the Kubernetes API too (merged with the directory's).
    pub kubernetes: Option<KubernetesSettings>,
    /// Namespace of the gateway, and of resources that name none.
    pub namespace: String,
    /// The gateway's own labels, matched by Gateway `selector`.
    pub labels: BTreeMap<String, String>,
    /// Admin listener address.
    pub admin: Option<SocketAddr>,
    /// Gateway server port → port actually bound (like a Service's targetPort).
    pub port_map: BTreeMap<u16, u16>,
    /// Address listeners bind when a server has no `bind`.
    pub bind_ip: IpAddr,
    /// Cluster domain suffix for short host names.
    pub domain_suffix: String,
    /// Port of the mesh (outbound) listener serving VirtualServices bound to `mesh`.
    pub mesh_port: Option<u16>,
    /// Where `credentialName` secrets are read: `<dir>/<namespace>/<name>/tls.crt`.
    pub credentials_dir: PathBuf,
    /// Where Secret objects (from the config or the Kubernetes API) are projected as
    /// `<namespace>/<name>/<key>`; searched before `credentials_dir`. Set by the reloader.
    pub secrets_dir: Option<PathBuf>,
    /// Open connections allowed per listener; more are closed as soon as accepted
    /// (Envoy's downstream connection limit), so a flood cannot exhaust descriptors.
    pub max_connections: usize,
    /// Where compiled Wasm modules are cached by sha256 (`None`: compile every start).
    pub wasm_cache_dir: Option<PathBuf>,
    /// Largest request body accepted (Envoy's buffer filter `max_request_bytes`): 413
    /// for a larger `content-length`, a reset stream for a larger streamed body.
    pub max_request_body: Option<u64>,
    /// Directory holding the workload's identity (certificate, key, trust bundle).
    pub identity_dir: Option<PathBuf>,
    /// SPIFFE trust domain peers must belong to (Istio's `trustDomain`).
    pub trust_domain: String,
    /// Sidecar mode: the captured-traffic listeners instead of Gateway servers.
    pub sidecar: Option<SidecarSettings>,
}

/// What a sidecar knows of its pod (Istio's injector passes the same facts).
#[derive(Debug, Clone)]
pub struct SidecarSettings {
    /// Listener for the application's captured outbound traffic (Istio: 15001).
    pub outbound_port: u16,
    /// Listener for captured inbound traffic (Istio: 15006).
    pub inbound_port: u16,
    /// The workload's service account (its SPIFFE identity's `sa`).
    pub service_account: String,
    /// `SO_MARK` on the sidecar's own upstream sockets, which `wicket capture --mark`
    /// exempts from redirection (the uid rule does this when the proxy runs as its
    /// own user).
    pub mark: Option<u32>,
    /// Where inbound traffic is delivered: the application's address (Istio: localhost).
    pub app_ip: IpAddr,
    /// Port of the health listener: the sidecar's readiness and the application's
    /// rewritten kubelet probes (Istio's agent port 15020).
    pub probe_port: Option<u16>,
    /// The application's probes by their rewritten path (`ISTIO_KUBE_APP_PROBERS`).
    pub probers: super::probers::Probers,
}

impl Default for SidecarSettings {
    fn default() -> Self {
        Self {
            outbound_port: 15001,
            inbound_port: 15006,
            service_account: "default".into(),
            mark: None,
            app_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            probe_port: None,
            probers: Default::default(),
        }
    }
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self {
            config_dir: Some(PathBuf::from("config")),
            kubernetes: None,
            namespace: "default".into(),
            labels: BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
            admin: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 15000))),
            port_map: BTreeMap::new(),
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            domain_suffix: "cluster.local".into(),
            mesh_port: None,
            credentials_dir: PathBuf::from("credentials"),
            secrets_dir: None,
            max_connections: 100_000,
            wasm_cache_dir: Some(std::env::temp_dir().join("wicket-wasm-cache")),
            max_request_body: None,
            identity_dir: None,
            trust_domain: "cluster.local".into(),
            sidecar: None,
        }
    }
}

impl Bootstrap {
    /// Where relative paths in resources (local Wasm modules) are read from: the
    /// config directory, else the working directory.
    pub fn base_dir(&self) -> &std::path::Path {
        self.config_dir.as_deref().unwrap_or(std::path::Path::new("."))
    }

    /// Istio short-name expansion: a host without a dot becomes
    /// `host.<namespace>.svc.<suffix>`; `*`, IPs and dotted names stay as written.
    pub fn fqdn(&self, host: &str, namespace: &str) -> String {
        let host = host.to_ascii_lowercase();
        if host == "*" || host.contains('.') || host.contains(':') || host.parse::<IpAddr>().is_ok() {
            return host;
        }
        format!("{host}.{namespace}.svc.{}", self.domain_suffix)
    }
}
