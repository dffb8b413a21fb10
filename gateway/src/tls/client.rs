//! DestinationRule `trafficPolicy.tls` → a rustls client config for an upstream
//! cluster: SIMPLE (verify the server) and MUTUAL (present a client certificate), with
//! `caCertificates` or the system roots, `sni`, `subjectAltNames`, `insecureSkipVerify`.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    sync::{Arc, OnceLock},
};

use rustls::{
    client::{
        danger::{ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    crypto::ring,
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, RootCertStore,
};

use super::{
    certs::{read_certs, read_crls, CertStore},
    identity::WorkloadIdentity,
    peer::sans,
    verify::{ServerCheck, Verifier},
};
use crate::config::istio::{ClientTlsMode, ClientTlsSettings};

/// TLS towards one cluster's endpoints.
#[derive(Debug)]
pub struct UpstreamTls {
    /// The client config (ALPN set for the cluster's protocol).
    pub config: Arc<ClientConfig>,
    /// SNI to send; `None` means the request's own host ("auto SNI", Istio).
    pub sni: Option<ServerName<'static>>,
    /// Identity of the settings, so equal settings share pooled connections.
    pub key: u64,
}

impl UpstreamTls {
    /// Compiles TLS settings offering `alpn` (the cluster's protocol); `Ok(None)` for
    /// `DISABLE` (plaintext).
    pub fn compile(s: &ClientTlsSettings, alpn: &[&[u8]], certs: &CertStore) -> Result<Option<Self>, String> {
        let mode = s.mode.unwrap_or(ClientTlsMode::Disable);
        match mode {
            ClientTlsMode::Disable => return Ok(None),
            ClientTlsMode::Simple | ClientTlsMode::Mutual => {}
            // Built by `mesh` where a workload identity exists; without one, traffic is
            // plaintext (compile warns).
            ClientTlsMode::IstioMutual => return Ok(None),
        }
        if s.credential_name.is_some() {
            return Err("credentialName for upstream TLS is not supported yet; use file paths".into());
        }
        let provider = Arc::new(ring::default_provider());
        let roots = match &s.ca_certificates {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(path.as_ref()).map_err(|e| e.describe())? {
                    roots.add(c).map_err(|e| format!("{path}: unusable CA certificate: {e}"))?;
                }
                Arc::new(roots)
            }
            None => system_roots(),
        };
        let verifier: Arc<dyn ServerCertVerifier> = if s.insecure_skip_verify.unwrap_or(false) {
            Verifier::new(SkipVerify, &provider)
        } else {
            let crls = s.ca_crl.as_ref().map(|p| read_crls(p.as_ref())).transpose().map_err(|e| e.describe())?;
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .with_crls(crls.unwrap_or_default())
                .build()
                .map_err(|e| format!("server verification: {e}"))?;
            if s.subject_alt_names.is_empty() {
                webpki
            } else {
                Verifier::new(SanCheck { inner: webpki, sans: s.subject_alt_names.clone() }, &provider)
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (mode, &s.client_certificate, &s.private_key) {
            (ClientTlsMode::Mutual, Some(cert), Some(key)) => {
                let pair = certs.get(cert.as_ref(), key.as_ref()).map_err(|e| e.describe())?;
                builder.with_client_cert_resolver(pair)
            }
            (ClientTlsMode::Mutual, _, _) => {
                return Err("tls mode MUTUAL needs clientCertificate and privateKey".into())
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let sni = s
            .sni
            .as_deref()
            .map(|n| ServerName::try_from(n.to_string()).map_err(|_| format!("sni {n:?} is not a valid server name")))
            .transpose()?;
        let mut hasher = DefaultHasher::new();
        format!("{s:?}{alpn:?}").hash(&mut hasher);
        Ok(Some(Self { config: Arc::new(config), sni, key: hasher.finish() }))
    }
}

impl UpstreamTls {
    /// Istio mutual TLS to a peer sidecar: this workload's identity, the peer checked
    /// against the mesh bundle and `sans` (its SPIFFE identities; any in the trust
    /// domain when empty), Istio's SNI `outbound_.<port>_.<subset>_.<host>` and its
    /// mesh ALPN (`alpn`).
    pub fn mesh(
        identity: &Arc<WorkloadIdentity>,
        alpn: &[&[u8]],
        sni: &str,
        sans: Vec<String>,
    ) -> Result<Self, String> {
        let mut hasher = DefaultHasher::new();
        format!("mesh{sni}{sans:?}{alpn:?}").hash(&mut hasher);
        let server_name =
            ServerName::try_from(sni.to_string()).map_err(|_| format!("sni {sni:?} is not a valid server name"))?;
        Ok(Self { config: identity.client_config(alpn, sans), sni: Some(server_name), key: hasher.finish() })
    }
}

/// A client config trusting the system roots (JWKS fetches and the like).
pub(crate) fn system_client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(system_roots()).with_no_client_auth())
                .expect("the ring provider supports the default TLS versions");
            Arc::new(config)
        })
        .clone()
}

/// The system's trusted roots, read once (empty when the system has none).
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, "system roots loaded");
            Arc::new(roots)
        })
        .clone()
}

/// Verifies the chain, then accepts the certificate only if one of its SANs is listed
/// (Istio `subjectAltNames` replaces the host name check).
#[derive(Debug)]
struct SanCheck {
    inner: Arc<WebPkiServerVerifier>,
    sans: Vec<String>,
}

impl ServerCheck for SanCheck {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        let (uris, dns) = sans(&cert);
        if !uris.iter().chain(&dns).any(|n| self.sans.contains(n)) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName));
        }
        // Chain validation needs a name the certificate holds: use one of its DNS SANs.
        let dns = dns.into_iter().next().unwrap_or_default();
        let name = ServerName::try_from(dns)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))?;
        self.inner.verify_server_cert(end_entity, intermediates, &name, ocsp, now)
    }
}

/// `insecureSkipVerify: true`: no chain or name check (signatures still verified).
#[derive(Debug)]
struct SkipVerify;

impl ServerCheck for SkipVerify {
    fn verify(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
}
