//! The workload's mesh identity (SPIFFE): its certificate and key, the mesh trust
//! bundle, and the rustls configs of mutual TLS between sidecars. The files are
//! written by whoever issues identities (istio-agent, SPIRE, cert-manager's CSI
//! driver, `wicket ca issue`); rotation is picked up without dropping connections.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use arc_swap::ArcSwap;
use rustls::{
    client::danger::ServerCertVerified,
    crypto::{ring, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        ParsedCertificate, WebPkiClientVerifier,
    },
    ClientConfig, RootCertStore, ServerConfig,
};

use super::{
    certs::{read_certs, CertStore, RotatingCert},
    peer::sans,
    verify::{ClientCheck, ServerCheck, Verifier},
};

/// ALPN a sidecar's inbound listener accepts: Istio's mesh protocols and plain HTTP.
const INBOUND_ALPN: [&[u8]; 7] =
    [b"istio-h2", b"istio-http/1.1", b"istio-http/1.0", b"istio-peer-exchange", b"istio", b"h2", b"http/1.1"];

/// The three files of an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf.
    pub key: PathBuf,
    /// Trust bundle: the mesh's root certificates.
    pub roots: PathBuf,
}

/// File names of the layouts in use: istio-agent, SPIRE's helper, Kubernetes TLS secrets.
const LAYOUTS: [[&str; 3]; 3] = [
    ["cert-chain.pem", "key.pem", "root-cert.pem"],
    ["svid.pem", "svid_key.pem", "bundle.pem"],
    ["tls.crt", "tls.key", "ca.crt"],
];

impl IdentityFiles {
    /// Finds the identity in `dir`, in the first layout whose certificate exists.
    pub fn in_dir(dir: &Path) -> Result<Self, String> {
        let [cert, key, roots] = LAYOUTS.iter().find(|[cert, ..]| dir.join(cert).is_file()).ok_or_else(|| {
            let names: Vec<&str> = LAYOUTS.iter().map(|l| l[0]).collect();
            format!("{}: no workload certificate ({})", dir.display(), names.join(", "))
        })?;
        Ok(Self { cert: dir.join(cert), key: dir.join(key), roots: dir.join(roots) })
    }
}

/// A SPIFFE identity `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
pub(crate) fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The trust domain of a SPIFFE URI.
fn trust_domain_of(uri: &str) -> Option<&str> {
    uri.strip_prefix("spiffe://")?.split('/').next()
}

/// The running workload's identity, shared by every snapshot.
pub struct WorkloadIdentity {
    files: IdentityFiles,
    /// Trust domain peers must belong to.
    pub trust_domain: String,
    cert: Arc<RotatingCert>,
    roots: ArcSwap<RootCertStore>,
    /// Client-certificate verification against `roots`, rebuilt when they rotate.
    client_verifier: ArcSwap<Arc<dyn ClientCertVerifier>>,
    roots_loaded: Mutex<Option<SystemTime>>,
    provider: Arc<CryptoProvider>,
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("files", &self.files)
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(path).map_err(|e| e.describe())? {
        roots.add(c).map_err(|e| format!("{}: unusable root certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl WorkloadIdentity {
    /// Loads the identity; the key pair is registered in `certs`, which rotates it.
    pub fn load(files: IdentityFiles, trust_domain: &str, certs: &CertStore) -> Result<Arc<Self>, String> {
        let cert = certs.get(&files.cert, &files.key).map_err(|e| e.describe())?;
        let stamp = modified(&files.roots);
        let roots = Arc::new(read_roots(&files.roots)?);
        let provider = Arc::new(ring::default_provider());
        let client_verifier = client_verifier(roots.clone(), &provider)?;
        let identity = Arc::new_cyclic(|me: &std::sync::Weak<Self>| {
            let verifier = Verifier::new(PeerCheck { identity: me.clone() }, &provider);
            let mut server = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default TLS versions")
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(cert.clone());
            server.alpn_protocols = INBOUND_ALPN.iter().map(|p| p.to_vec()).collect();
            Self {
                files,
                trust_domain: trust_domain.to_string(),
                cert,
                roots: ArcSwap::new(roots),
                client_verifier: ArcSwap::from_pointee(client_verifier),
                roots_loaded: Mutex::new(stamp),
                provider,
                server: Arc::new(server),
            }
        });
        Ok(identity)
    }

    /// This workload's own SPIFFE URI, from its certificate.
    pub fn spiffe_uri(&self) -> Option<String> {
        let pair = self.cert.current();
        let (_, cert) = x509_parser::parse_x509_certificate(pair.cert.first()?).ok()?;
        sans(&cert).0.into_iter().find(|u| u.starts_with("spiffe://"))
    }

    /// Re-reads the trust bundle when it changed (the key pair rotates in `CertStore`).
    /// A broken bundle is reported and the previous one kept.
    pub fn refresh(&self) {
        let now = modified(&self.files.roots);
        let Ok(mut loaded) = self.roots_loaded.lock() else { return };
        if *loaded == now {
            return;
        }
        *loaded = now;
        let loaded = read_roots(&self.files.roots)
            .map(Arc::new)
            .and_then(|roots| Ok((roots.clone(), client_verifier(roots, &self.provider)?)));
        match loaded {
            Ok((roots, verifier)) => {
                self.roots.store(roots);
                self.client_verifier.store(Arc::new(verifier));
                tracing::info!(bundle = %self.files.roots.display(), "trust bundle rotated");
            }
            Err(e) => tracing::error!(error = %e, "rotated trust bundle rejected; the previous one stays"),
        }
    }

    /// The inbound mTLS server config. A client certificate is asked for but not
    /// required at the TLS layer, so that a plaintext-less peer without one is refused
    /// afterwards with a reason (`check_peer`).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// A client config for ISTIO_MUTUAL: presents this identity and accepts a server
    /// whose chain leads to the bundle and whose SPIFFE identity is one of `sans` (any
    /// in the trust domain when empty).
    pub fn client_config(self: &Arc<Self>, alpn: &[&[u8]], sans: Vec<String>) -> Arc<ClientConfig> {
        let verifier = Verifier::new(MeshServerCheck { identity: self.clone(), sans }, &self.provider);
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.cert.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Every new connection does a full handshake: a resumed session would carry the
        // certificate of its first handshake past a rotation (and past its expiry).
        // Connections are pooled, so handshakes stay rare.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }

    /// The SPIFFE identity of a verified peer certificate, or why it is refused: no
    /// certificate, no SPIFFE URI, or another trust domain.
    pub fn check_peer(&self, leaf: Option<&CertificateDer<'_>>) -> Result<String, String> {
        let leaf = leaf.ok_or("no client certificate (mutual TLS required)")?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|_| "unreadable client certificate")?;
        let uris = sans(&cert).0;
        let uri = uris.iter().find(|u| u.starts_with("spiffe://")).ok_or("client certificate has no SPIFFE URI")?;
        match trust_domain_of(uri) {
            Some(td) if td == self.trust_domain => Ok(uri.clone()),
            other => Err(format!(
                "peer identity {uri} is in trust domain {:?}, not {:?}",
                other.unwrap_or_default(),
                self.trust_domain
            )),
        }
    }

    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots.load(),
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
    }
}

/// A client verifier trusting `roots`; peers without a certificate pass the handshake
/// and are judged by `check_peer`.
fn client_verifier(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("trust bundle: {e}"))
}

/// Verifies client certificates with the identity's current verifier, so a rotated
/// bundle applies to the next handshake. Holds the identity weakly: the identity owns
/// the server config that owns this.
struct PeerCheck {
    identity: std::sync::Weak<WorkloadIdentity>,
}

impl std::fmt::Debug for PeerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerCheck")
    }
}

impl ClientCheck for PeerCheck {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let identity = self.identity.upgrade().ok_or_else(|| rustls::Error::General("identity dropped".into()))?;
        let verifier = identity.client_verifier.load_full();
        verifier.verify_client_cert(end_entity, intermediates, now)
    }

    fn mandatory(&self) -> bool {
        false
    }
}

/// Verifies a peer sidecar: chain to the bundle, then its SPIFFE identity instead of
/// a host name (Istio checks the service accounts behind the destination).
#[derive(Debug)]
struct MeshServerCheck {
    identity: Arc<WorkloadIdentity>,
    sans: Vec<String>,
}

impl ServerCheck for MeshServerCheck {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.identity.verify_chain(end_entity, intermediates, now)?;
        let name_error = || rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        let uri = self.identity.check_peer(Some(end_entity)).map_err(|_| name_error())?;
        if !self.sans.is_empty() && !self.sans.contains(&uri) {
            return Err(name_error());
        }
        Ok(ServerCertVerified::assertion())
    }
}
