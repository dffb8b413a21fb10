//! Kubernetes core objects the service registry and the credential store read:
//! `Service`, `EndpointSlice`, `Pod` and `Secret`, as `kubectl get -o yaml` prints
//! them or the API server returns them. Only the fields Wicket reads are typed; the
//! rest of such an object is written by Kubernetes, not by the user, and is skipped.

use std::{collections::BTreeMap, fmt};

use base64::Engine;
use serde::{Deserialize, Deserializer};

/// A `null` (which the API server writes for some empty lists) reads as the default.
fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// core/v1 Service.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Service {
    /// The spec.
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// The fields of a Service spec the registry reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceSpec {
    /// ClusterIP (default), NodePort, LoadBalancer or ExternalName.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The DNS name an ExternalName Service stands for.
    pub external_name: Option<String>,
    /// Service ports.
    #[serde(default, deserialize_with = "null_default")]
    pub ports: Vec<ServicePort>,
}

impl ServiceSpec {
    /// The `externalName` of an ExternalName Service.
    pub(crate) fn external_name(&self) -> Option<&str> {
        match self.kind.as_deref() {
            Some("ExternalName") => self.external_name.as_deref().filter(|n| !n.is_empty()),
            _ => None,
        }
    }
}

/// A port of a Service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServicePort {
    /// Port name; EndpointSlice ports carry the same name.
    #[serde(default)]
    pub name: String,
    /// The service port.
    pub port: u16,
    /// TCP (default), UDP or SCTP.
    pub protocol: Option<String>,
    /// The application protocol (`http`, `kubernetes.io/h2c`, ...).
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// Istio's protocol of a Kubernetes service port (`kube.ConvertProtocol`):
    /// `appProtocol` first, then the port name's `<protocol>[-suffix]` prefix, else
    /// TCP on a well-known TCP port, else unknown (`""`, sniffed as HTTP/1.1 here). `None`
    /// for UDP, which Istio does not proxy.
    pub(crate) fn istio_protocol(&self) -> Option<&'static str> {
        if self.protocol.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("UDP")) {
            return None;
        }
        let name = match self.app_protocol.as_deref() {
            Some("kubernetes.io/h2c") => return Some("HTTP2"),
            Some("kubernetes.io/ws") => return Some("HTTP"),
            Some("kubernetes.io/wss") => return Some("HTTPS"),
            Some(app) => app,
            None => &self.name,
        };
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("grpc-web") {
            return Some("GRPC-WEB");
        }
        let prefix = lower.split('-').next().unwrap_or_default();
        let known = ["HTTP", "HTTP2", "HTTPS", "GRPC", "TCP", "TLS", "MONGO", "MYSQL", "REDIS", "HTTP_PROXY"];
        match known.iter().find(|p| p.eq_ignore_ascii_case(prefix)) {
            Some(p) => Some(p),
            // Istio's well-known TCP ports: SSH, MySQL, PostgreSQL, MongoDB.
            None if matches!(self.port, 22 | 3306 | 5432 | 27017) => Some("TCP"),
            None => Some(""),
        }
    }
}

/// discovery.k8s.io/v1 EndpointSlice.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EndpointSlice {
    /// IPv4, IPv6 or FQDN (which Istio does not read).
    #[serde(default)]
    pub address_type: String,
    /// The endpoints.
    #[serde(default, deserialize_with = "null_default")]
    pub endpoints: Vec<SliceEndpoint>,
    /// The ports every endpoint of the slice serves, named as the Service's, with the
    /// `targetPort` resolved (by number or container port name) by Kubernetes.
    #[serde(default, deserialize_with = "null_default")]
    pub ports: Vec<SlicePort>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SliceEndpoint {
    /// Its addresses (one per family in practice).
    #[serde(default, deserialize_with = "null_default")]
    pub addresses: Vec<String>,
    /// Readiness.
    #[serde(default)]
    pub conditions: Conditions,
    /// The Pod behind it.
    pub target_ref: Option<ObjectReference>,
}

/// EndpointSlice conditions; an absent condition is unknown, which Kubernetes says to
/// read as ready.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(crate) struct Conditions {
    /// Ready to receive traffic (false for terminating endpoints).
    pub ready: Option<bool>,
    /// Shutting down.
    pub terminating: Option<bool>,
}

impl Conditions {
    /// Istio sends traffic to ready endpoints only; a terminating endpoint is never ready.
    pub(crate) fn receives_traffic(self) -> bool {
        self.ready != Some(false) && self.terminating != Some(true)
    }
}

/// A reference to another object.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ObjectReference {
    /// Its kind (`Pod`).
    #[serde(default)]
    pub kind: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its namespace (the slice's when absent).
    pub namespace: Option<String>,
}

/// A port of an EndpointSlice.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct SlicePort {
    /// The Service port's name.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// The endpoints' port number (the resolved `targetPort`).
    pub port: Option<u32>,
}

/// core/v1 Pod: its labels are in the metadata; the spec gives its identity.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Pod {
    /// The spec (absent when only metadata is watched).
    #[serde(default)]
    pub spec: PodSpec,
}

/// The field of a Pod spec Wicket reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PodSpec {
    /// The service account, which is its SPIFFE identity.
    pub service_account_name: Option<String>,
}

/// core/v1 Secret, its values decoded. `Debug` never prints them.
#[derive(Clone, Default)]
pub(crate) struct Secret {
    /// Key to value, `stringData` over `data` as the API server merges them.
    pub data: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret").field("keys", &self.data.keys().collect::<Vec<_>>()).finish()
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            #[serde(default, deserialize_with = "null_default")]
            data: BTreeMap<String, String>,
            #[serde(default, deserialize_with = "null_default")]
            string_data: BTreeMap<String, String>,
        }
        let raw = Raw::deserialize(d)?;
        let mut data = BTreeMap::new();
        for (key, value) in raw.data {
            // The value is secret: the error names the key only.
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|_| serde::de::Error::custom(format!("data.{key} is not valid base64")))?;
            data.insert(key, bytes);
        }
        data.extend(raw.string_data.into_iter().map(|(k, v)| (k, v.into_bytes())));
        Ok(Secret { data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, app: Option<&str>, number: u16) -> ServicePort {
        ServicePort { name: name.into(), app_protocol: app.map(Into::into), port: number, ..Default::default() }
    }

    #[test]
    fn protocols_follow_istio_app_protocol_then_port_name() {
        assert_eq!(port("http-web", None, 80).istio_protocol(), Some("HTTP"));
        assert_eq!(port("grpc-web-x", None, 80).istio_protocol(), Some("GRPC-WEB"));
        assert_eq!(port("GRPC", None, 80).istio_protocol(), Some("GRPC"));
        assert_eq!(port("web", Some("kubernetes.io/h2c"), 80).istio_protocol(), Some("HTTP2"));
        assert_eq!(port("http", Some("tcp"), 80).istio_protocol(), Some("TCP"), "appProtocol wins");
        assert_eq!(port("db", None, 5432).istio_protocol(), Some("TCP"));
        assert_eq!(port("web", None, 8080).istio_protocol(), Some(""));
        let udp = ServicePort { protocol: Some("UDP".into()), ..port("dns", None, 53) };
        assert_eq!(udp.istio_protocol(), None);
    }

    #[test]
    fn a_secret_decodes_data_and_never_prints_it() {
        let doc = |data: &str| format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\n{data}");
        let loaded = crate::config::load_text(
            &doc("data: {tls.crt: aGVsbG8=}\nstringData: {key: plain}\n"),
            std::path::Path::new("s.yaml"),
            "default",
        );
        let crate::config::Spec::Secret(s) = &loaded.resources[0].spec else { panic!("a Secret") };
        assert_eq!(s.data["tls.crt"], b"hello");
        assert_eq!(s.data["key"], b"plain");
        assert!(!format!("{s:?}").contains("hello"));
        let bad = crate::config::load_text(&doc("data: {tls.key: '!!!'}\n"), std::path::Path::new("s.yaml"), "default");
        let text = bad.diagnostics[0].to_string();
        assert!(
            text.contains("s.yaml:1: Secret/default/s") && text.contains("data.tls.key is not valid base64"),
            "{text}"
        );
        assert!(!text.contains("!!!"), "{text}");
    }
}
