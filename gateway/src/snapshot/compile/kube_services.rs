//! Kubernetes Services as registry services, the way Istio's Kubernetes registry
//! reads them: host `name.namespace.svc.<domain suffix>`, ports with Istio's protocol,
//! endpoints from the ready endpoints of the Service's EndpointSlices, each with the
//! labels and service account of the Pod behind it (DestinationRule subsets select on
//! them), and ExternalName Services as DNS names.

use std::collections::HashMap;

use super::registry::Service;
use crate::config::{
    istio::{ServicePort, WorkloadEntry},
    kubernetes::{self, EndpointSlice},
    Bootstrap, Resource, Spec,
};

/// The label naming the Service an EndpointSlice belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Istio's annotation restricting where a Service is visible.
const EXPORT_TO: &str = "networking.istio.io/exportTo";

/// Every Kubernetes Service visible from the bootstrap's namespace, by host.
pub(super) fn services(resources: &[Resource], bootstrap: &Bootstrap) -> Vec<(String, Service)> {
    let mut pods = HashMap::new();
    let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for r in resources {
        match &r.spec {
            Spec::Pod(pod) => {
                pods.insert((r.id.namespace.as_str(), r.id.name.as_str()), (&r.meta.labels, pod));
            }
            Spec::EndpointSlice(slice) => {
                if let Some(service) = r.meta.labels.get(SERVICE_NAME_LABEL) {
                    slices.entry((r.id.namespace.as_str(), service.as_str())).or_default().push(slice);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for r in resources {
        let Spec::Service(svc) = &r.spec else { continue };
        let namespace = r.id.namespace.as_str();
        let export_to: Vec<String> =
            r.meta.annotations.get(EXPORT_TO).map_or_else(Vec::new, |v| {
                v.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect()
            });
        if !super::exported_to(&export_to, namespace, &bootstrap.namespace) {
            continue;
        }
        let host = format!("{}.{namespace}.svc.{}", r.id.name, bootstrap.domain_suffix);
        let ports: Vec<ServicePort> = svc
            .spec
            .ports
            .iter()
            .filter_map(|p| {
                let protocol = p.istio_protocol()?;
                Some(ServicePort {
                    number: u32::from(p.port),
                    protocol: protocol.into(),
                    name: p.name.clone(),
                    target_port: None,
                })
            })
            .collect();
        let service = match svc.spec.external_name() {
            Some(name) => Service {
                ports,
                endpoints: vec![WorkloadEntry { address: name.to_string(), ..Default::default() }],
                dns: true,
                namespace: namespace.to_string(),
                ports_from_endpoints: false,
            },
            None => {
                let of_service = slices.get(&(namespace, r.id.name.as_str())).map_or(&[][..], Vec::as_slice);
                let endpoints = of_service.iter().flat_map(|s| endpoints(s, namespace, &pods)).collect();
                Service { ports, endpoints, dns: false, namespace: namespace.to_string(), ports_from_endpoints: true }
            }
        };
        out.push((host, service));
    }
    out
}

type Pods<'r> = HashMap<(&'r str, &'r str), (&'r std::collections::BTreeMap<String, String>, &'r kubernetes::Pod)>;

/// The endpoints of one slice that receive traffic, one per address.
fn endpoints(slice: &EndpointSlice, namespace: &str, pods: &Pods<'_>) -> Vec<WorkloadEntry> {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return Vec::new();
    }
    let ports: std::collections::BTreeMap<String, u32> =
        slice.ports.iter().filter_map(|p| Some((p.name.clone(), p.port?))).collect();
    let mut out = Vec::new();
    for ep in slice.endpoints.iter().filter(|e| e.conditions.receives_traffic()) {
        let pod = ep.target_ref.as_ref().filter(|t| t.kind == "Pod").and_then(|t| {
            let ns = t.namespace.as_deref().unwrap_or(namespace);
            pods.get(&(ns, t.name.as_str()))
        });
        for address in &ep.addresses {
            out.push(WorkloadEntry {
                address: address.clone(),
                ports: ports.clone(),
                labels: pod.map(|(labels, _)| (*labels).clone()).unwrap_or_default(),
                service_account: pod.and_then(|(_, p)| p.spec.service_account_name.clone()),
                ..Default::default()
            });
        }
    }
    out
}
