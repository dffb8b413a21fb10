//! Certificates made at test time: a CA per test, server and client leaves it signs,
//! and rustls client configs that trust it.

use std::{path::Path, sync::Arc};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// A test certificate authority.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    /// Certificate chain (leaf only).
    pub cert_pem: String,
    /// Private key.
    pub key_pem: String,
}

impl Leaf {
    /// Writes `<stem>.crt` and `<stem>.key` into `dir`; returns their paths as strings.
    pub fn write(&self, dir: &Path, stem: &str) -> (String, String) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert.display().to_string(), key.display().to_string())
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new("wicket test ca")
    }
}

impl Pki {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self { ca_pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf for DNS names (and `spiffe://` URIs), valid now.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    /// A leaf whose parameters `tune` changes (e.g. an expired validity).
    pub fn leaf_with(&self, names: &[&str], tune: impl FnOnce(&mut CertificateParams)) -> Leaf {
        self.leaf_keyed(names, KeyPair::generate().unwrap(), tune)
    }

    /// A leaf with an Ed25519 key (the default is ECDSA P-256).
    pub fn leaf_ed25519(&self, names: &[&str]) -> Leaf {
        self.leaf_keyed(names, KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(), |_| {})
    }

    fn leaf_keyed(&self, names: &[&str], key: KeyPair, tune: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        for n in names {
            params.subject_alt_names.push(if n.starts_with("spiffe://") {
                SanType::URI(n.to_string().try_into().unwrap())
            } else {
                SanType::DnsName(n.to_string().try_into().unwrap())
            });
        }
        tune(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A CRL (PEM) revoking the certificates with these serial numbers.
    pub fn crl(&self, serials: &[u64]) -> String {
        let revoked = serials
            .iter()
            .map(|n| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(*n),
                revocation_time: rcgen::date_time_ymd(2020, 1, 2),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }

    /// Writes the CA certificate to `dir/<stem>.crt`.
    pub fn write_ca(&self, dir: &Path, stem: &str) -> String {
        let path = dir.join(format!("{stem}.crt"));
        std::fs::write(&path, &self.ca_pem).unwrap();
        path.display().to_string()
    }

    /// A client config trusting this CA, offering `alpn`, optionally with a client cert.
    pub fn client(&self, alpn: &[&str], client_cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
        self.client_with_versions(alpn, client_cert, rustls::ALL_VERSIONS)
    }

    /// Like `client`, limited to some TLS versions.
    pub fn client_with_versions(
        &self,
        alpn: &[&str],
        client_cert: Option<&Leaf>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client_cert {
            None => builder.with_no_client_auth(),
            Some(leaf) => {
                let certs = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
                let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
                builder.with_client_auth_cert(certs, key).unwrap()
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }

    /// A rustls server config for a test upstream with a leaf for `names`.
    pub fn server(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        self.server_with(names, None, &["h2", "http/1.1"])
    }

    /// A server config that, with `clients`, requires client certificates that CA
    /// signed, and offers `alpn`.
    pub fn server_with(&self, names: &[&str], clients: Option<&Pki>, alpn: &[&str]) -> Arc<rustls::ServerConfig> {
        let leaf = self.leaf(names);
        let certs = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(CertificateDer::from_pem_slice(ca.ca_pem.as_bytes()).unwrap()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}
