//! `networking.istio.io` ServiceEntry and WorkloadEntry: the service registry.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::not_applied::NotApplied;

use super::WorkloadSelector;

istio_enum! {
    /// ServiceEntry `location`.
    pub(crate) enum Location {
        /// Outside the mesh.
        MeshExternal = ("MESH_EXTERNAL", 0),
        /// Inside the mesh.
        MeshInternal = ("MESH_INTERNAL", 1),
    }
}

istio_enum! {
    /// ServiceEntry `resolution`.
    pub(crate) enum Resolution {
        /// The connection's original destination.
        None = ("NONE", 0),
        /// The endpoints' addresses.
        Static = ("STATIC", 1),
        /// Endpoint names resolved by DNS, every address used.
        Dns = ("DNS", 2),
        /// Endpoint names resolved by DNS, the first address used.
        DnsRoundRobin = ("DNS_ROUND_ROBIN", 3),
        /// Wildcard hosts resolved per request.
        DynamicDns = ("DYNAMIC_DNS", 4),
    }
}

/// ServiceEntry spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ServiceEntry {
    /// Hosts of the service (FQDN or `*.suffix`).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Service ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// MESH_EXTERNAL or MESH_INTERNAL.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub location: NotApplied<Option<Location>>,
    /// NONE, STATIC, DNS, DNS_ROUND_ROBIN, DYNAMIC_DNS.
    pub resolution: Option<Resolution>,
    /// Inline endpoints.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    /// Selects WorkloadEntries in the same namespace.
    pub workload_selector: Option<WorkloadSelector>,
    /// Namespaces that may see this entry.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// SANs to verify on upstream certificates.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub subject_alt_names: NotApplied<Vec<String>>,
}

/// A port of a ServiceEntry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ServicePort {
    /// Service port number.
    pub number: u32,
    /// Protocol, case-insensitive (HTTP, HTTP2, GRPC, TCP, TLS, HTTPS, ...).
    #[serde(default)]
    pub protocol: String,
    /// Port name; WorkloadEntry `ports` are keyed by it.
    #[serde(default)]
    pub name: String,
    /// Endpoint port when different from `number`.
    pub target_port: Option<u32>,
}

/// WorkloadEntry spec, standalone or inline in a ServiceEntry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WorkloadEntry {
    /// IP, DNS name or `unix://` socket.
    #[serde(default)]
    pub address: String,
    /// Service port name to endpoint port.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Endpoint labels; DestinationRule subsets select on them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network name.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub network: NotApplied<Option<String>>,
    /// `region/zone/subzone`.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub locality: NotApplied<Option<String>>,
    /// Relative load-balancing weight (0: unset).
    pub weight: Option<u32>,
    /// Workload identity.
    pub service_account: Option<String>,
}
