//! `networking.istio.io` Gateway: the listeners of a standalone proxy.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::not_applied::NotApplied;

istio_enum! {
    /// Gateway server `tls.mode`.
    pub enum ServerTlsMode {
        /// Pass the connection through by SNI.
        Passthrough = ("PASSTHROUGH", 0),
        /// Terminate TLS.
        Simple = ("SIMPLE", 1),
        /// Terminate, requiring a client certificate.
        Mutual = ("MUTUAL", 2),
        /// Pass through by Istio's SNI (east-west gateways).
        AutoPassthrough = ("AUTO_PASSTHROUGH", 3),
        /// Terminate Istio's mutual TLS.
        IstioMutual = ("ISTIO_MUTUAL", 4),
        /// Terminate, verifying a client certificate when one is sent.
        OptionalMutual = ("OPTIONAL_MUTUAL", 5),
    }
}

istio_enum! {
    /// Gateway server `tls.minProtocolVersion` / `maxProtocolVersion`.
    pub enum TlsProtocol {
        /// The proxy's choice.
        TlsAuto = ("TLS_AUTO", 0),
        /// TLS 1.0.
        TlsV1_0 = ("TLSV1_0", 1),
        /// TLS 1.1.
        TlsV1_1 = ("TLSV1_1", 2),
        /// TLS 1.2.
        TlsV1_2 = ("TLSV1_2", 3),
        /// TLS 1.3.
        TlsV1_3 = ("TLSV1_3", 4),
    }
}

/// Gateway spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Gateway {
    /// Labels of the proxies this Gateway applies to; empty means every gateway.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// The servers (ports, hosts, TLS) this Gateway opens.
    #[serde(default)]
    pub servers: Vec<Server>,
}

/// One server of a Gateway.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Server {
    /// Port, name and protocol.
    pub port: ServerPort,
    /// `[namespace/]dnsName` hosts exposed on this server.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// IP to bind instead of all interfaces.
    pub bind: Option<String>,
    /// TLS settings (and `httpsRedirect` on plaintext servers).
    pub tls: Option<ServerTlsSettings>,
    /// Sidecar-only default endpoint.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub default_endpoint: NotApplied<Option<String>>,
    /// Optional unique server name.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub name: NotApplied<Option<String>>,
}

/// Istio `Port` as used by Gateway servers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ServerPort {
    /// Port number as written.
    pub number: u32,
    /// Protocol name (HTTP, HTTPS, HTTP2, GRPC, TCP, TLS, ...).
    pub protocol: String,
    /// Label, unique per Gateway.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub name: NotApplied<String>,
    /// Deprecated target port.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub target_port: NotApplied<Option<u32>>,
}

/// Istio `ServerTLSSettings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Answer plaintext requests with 301 to https.
    #[serde(default)]
    pub https_redirect: bool,
    /// PASSTHROUGH (zero value), SIMPLE, MUTUAL, OPTIONAL_MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL.
    pub mode: Option<ServerTlsMode>,
    /// Server certificate PEM file.
    pub server_certificate: Option<String>,
    /// Private key PEM file.
    pub private_key: Option<String>,
    /// Client CA bundle file.
    pub ca_certificates: Option<String>,
    /// Client certificate revocation list.
    pub ca_crl: Option<String>,
    /// Named secret holding the key pair.
    pub credential_name: Option<String>,
    /// Several named secrets (RSA and ECDSA pairs).
    #[serde(default)]
    pub credential_names: Vec<String>,
    /// Named secret holding the client CA.
    pub ca_cert_credential_name: Option<String>,
    /// Accepted client certificate SANs.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// Pinned client SPKI hashes.
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    /// Pinned client certificate hashes.
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    /// Lowest TLS version.
    pub min_protocol_version: Option<TlsProtocol>,
    /// Highest TLS version.
    pub max_protocol_version: Option<TlsProtocol>,
    /// Allowed cipher suites (OpenSSL names).
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// Verify client certificates but let failures through.
    pub insecure_skip_verify: Option<bool>,
}
