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
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    crypto::ring,
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::Protocol;
use crate::{
    config::istio::ClientTlsSettings,
    listener::certs::{read_certs, read_crls, CertStore},
    security::identity::WorkloadIdentity,
};

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
    /// Compiles TLS settings; `Ok(None)` for `DISABLE` (plaintext).
    pub fn compile(s: &ClientTlsSettings, protocol: Protocol, certs: &CertStore) -> Result<Option<Self>, String> {
        let mode = s.mode.as_deref().unwrap_or("DISABLE");
        match mode {
            "DISABLE" => return Ok(None),
            "SIMPLE" | "MUTUAL" => {}
            // Built by `mesh` where a workload identity exists; without one, traffic is
            // plaintext (compile warns).
            "ISTIO_MUTUAL" => return Ok(None),
            other => return Err(format!("unknown tls mode {other:?}")),
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
            Arc::new(SkipVerify(provider.clone()))
        } else {
            let crls = s.ca_crl.as_ref().map(|p| read_crls(p.as_ref())).transpose().map_err(|e| e.describe())?;
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .with_crls(crls.unwrap_or_default())
                .build()
                .map_err(|e| format!("server verification: {e}"))?;
            if s.subject_alt_names.is_empty() {
                webpki
            } else {
                Arc::new(SanVerifier { inner: webpki, sans: s.subject_alt_names.clone() })
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (mode, &s.client_certificate, &s.private_key) {
            ("MUTUAL", Some(cert), Some(key)) => {
                let pair = certs.get(cert.as_ref(), key.as_ref()).map_err(|e| e.describe())?;
                builder.with_client_cert_resolver(pair)
            }
            ("MUTUAL", _, _) => return Err("tls mode MUTUAL needs clientCertificate and privateKey".into()),
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = match protocol {
            Protocol::Http2 => vec![b"h2".to_vec()],
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
        };
        let sni = s
            .sni
            .as_deref()
            .map(|n| ServerName::try_from(n.to_string()).map_err(|_| format!("sni {n:?} is not a valid server name")))
            .transpose()?;
        let mut hasher = DefaultHasher::new();
        format!("{s:?}{protocol:?}").hash(&mut hasher);
        Ok(Some(Self { config: Arc::new(config), sni, key: hasher.finish() }))
    }
}

impl UpstreamTls {
    /// Istio mutual TLS to a peer sidecar: this workload's identity, the peer checked
    /// against the mesh bundle and `sans` (its SPIFFE identities; any in the trust
    /// domain when empty), Istio's SNI `outbound_.<port>_.<subset>_.<host>` and ALPN.
    /// `protocol` is `None` for TCP.
    pub fn mesh(
        identity: &Arc<WorkloadIdentity>,
        protocol: Option<Protocol>,
        sni: &str,
        sans: Vec<String>,
    ) -> Result<Self, String> {
        let alpn: &[&[u8]] = match protocol {
            Some(Protocol::Http1) => &[b"istio-http/1.1"],
            Some(Protocol::Http2) => &[b"istio-h2"],
            None => &[b"istio-peer-exchange", b"istio"],
        };
        let mut hasher = DefaultHasher::new();
        format!("mesh{sni}{sans:?}{protocol:?}").hash(&mut hasher);
        let server_name =
            ServerName::try_from(sni.to_string()).map_err(|_| format!("sni {sni:?} is not a valid server name"))?;
        Ok(Self { config: identity.client_config(alpn, sans), sni: Some(server_name), key: hasher.finish() })
    }
}

/// A client config trusting the system roots (JWKS fetches and the like).
pub fn system_client_config() -> Arc<ClientConfig> {
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
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    sans: Vec<String>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        let (uris, dns) = crate::security::peer::sans(&cert);
        if !uris.iter().chain(&dns).any(|n| self.sans.contains(n)) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName));
        }
        // Chain validation needs a name the certificate holds: use one of its DNS SANs.
        let dns = dns.into_iter().next().unwrap_or_default();
        let name = ServerName::try_from(dns)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))?;
        self.inner.verify_server_cert(end_entity, intermediates, &name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecureSkipVerify: true`: no chain or name check (signatures still verified).
#[derive(Debug)]
struct SkipVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
