//! Gateway `ServerTLSSettings` → rustls server configuration: key pair from files or a
//! credential directory, client certificate verification (MUTUAL, OPTIONAL_MUTUAL),
//! protocol versions, cipher suites with Envoy's names, ALPN, session tickets.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    crypto::ring,
    pki_types::{CertificateDer, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        ClientHello, ResolvesServerCert, WebPkiClientVerifier,
    },
    sign::CertifiedKey,
    DistinguishedName, RootCertStore, ServerConfig, SupportedCipherSuite,
};

use super::{
    certs::{read_certs, read_crls, CertStore, RotatingCert},
    peer::PeerPolicy,
    verify::{ClientCheck, Verifier},
};
use crate::config::istio::{ServerTlsMode, ServerTlsSettings, TlsProtocol};

/// Where `credentialName` secrets live, laid out like Kubernetes TLS secrets:
/// `<dir>/<namespace>/<name>/{tls.crt,tls.key,ca.crt}` (or Istio's `cert`, `key`,
/// `cacert`), the CA optionally in a separate `<name>-cacert` secret.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    /// Root directories, searched in order: the first holding the secret has it.
    pub dirs: Vec<PathBuf>,
    /// Namespace the gateway reads secrets from (its own).
    pub namespace: String,
}

impl Credentials {
    /// The directory of secret `name`: in the first root that has it, else in the last
    /// (where a missing file is then reported).
    fn secret_dir(&self, name: &str) -> PathBuf {
        let candidates = self.dirs.iter().map(|d| d.join(&self.namespace).join(name));
        let mut last = PathBuf::new();
        for dir in candidates {
            if dir.is_dir() {
                return dir;
            }
            last = dir;
        }
        last
    }

    /// Certificate, key and CA files of secret `name`.
    fn files(&self, name: &str) -> (PathBuf, PathBuf, Option<PathBuf>) {
        let dir = self.secret_dir(name);
        let pick =
            |a: &str, b: &str| if dir.join(a).exists() || !dir.join(b).exists() { dir.join(a) } else { dir.join(b) };
        let ca_in = |dir: &Path| [dir.join("ca.crt"), dir.join("cacert")].into_iter().find(|p| p.exists());
        let ca = ca_in(&dir).or_else(|| ca_in(&self.secret_dir(&format!("{name}-cacert"))));
        (pick("tls.crt", "cert"), pick("tls.key", "key"), ca)
    }
}

/// How a server terminates TLS: the rustls config and the client-certificate pins.
#[derive(Debug)]
pub struct TlsTermination {
    /// The rustls config (its certificate resolver follows rotation).
    pub config: Arc<ServerConfig>,
    /// `subjectAltNames` / SPKI / hash pins on client certificates.
    pub peer: PeerPolicy,
}

/// A compiled TLS server plus the problems worth a warning.
pub(crate) struct CompiledTls {
    /// The termination settings.
    pub tls: TlsTermination,
    /// Non-fatal problems (e.g. cipher names rustls does not implement).
    pub warnings: Vec<String>,
}

/// Envoy (OpenSSL) cipher names rustls implements, and their suites.
fn suite(name: &str) -> Option<SupportedCipherSuite> {
    use ring::cipher_suite as cs;
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        "TLS_AES_128_GCM_SHA256" => cs::TLS13_AES_128_GCM_SHA256,
        "TLS_AES_256_GCM_SHA384" => cs::TLS13_AES_256_GCM_SHA384,
        "TLS_CHACHA20_POLY1305_SHA256" => cs::TLS13_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

/// Names Envoy accepts that rustls deliberately does not implement (CBC, RSA key
/// exchange, 3DES): filtered out with a warning, as Istio filters unsupported names.
const LEGACY_SUITES: [&str; 12] = [
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "AES128-SHA256",
];

/// A protocol version as `1x` (12 for TLS 1.2); 0 for TLS_AUTO.
fn version(v: Option<TlsProtocol>) -> u8 {
    match v.unwrap_or(TlsProtocol::TlsAuto) {
        TlsProtocol::TlsAuto => 0,
        TlsProtocol::TlsV1_0 => 10,
        TlsProtocol::TlsV1_1 => 11,
        TlsProtocol::TlsV1_2 => 12,
        TlsProtocol::TlsV1_3 => 13,
    }
}

/// Builds the config of a terminating server. `alpn` is offered in order
/// (`h2`, `http/1.1` for HTTPS; none for TLS-terminated TCP).
pub(crate) fn server_config(
    s: &ServerTlsSettings,
    creds: &Credentials,
    store: &CertStore,
    alpn: &[&[u8]],
) -> Result<CompiledTls, String> {
    let mut warnings = Vec::new();
    let mode = s.mode.unwrap_or(ServerTlsMode::Passthrough);
    let secret = |name: &str| creds.files(name);
    // `credentialNames` holds several pairs (RSA and ECDSA); the CA comes from the first.
    let mut names: Vec<&String> = s.credential_name.iter().chain(&s.credential_names).collect();
    names.dedup();
    let (pairs, ca) = match (names.as_slice(), &s.server_certificate, &s.private_key) {
        ([], Some(c), Some(k)) => (vec![(PathBuf::from(c), PathBuf::from(k))], None),
        ([], None, None) => {
            return Err(format!("mode {mode} needs serverCertificate and privateKey, or credentialName"))
        }
        ([first, ..], None, None) => {
            let ca = secret(first).2;
            (names.iter().map(|n| secret(n)).map(|(c, k, _)| (c, k)).collect(), ca)
        }
        _ => return Err("set either credentialName(s) or serverCertificate with privateKey".into()),
    };
    let ca = s.ca_certificates.as_ref().map(PathBuf::from).or(ca);
    let mut keys = Vec::new();
    for (cert, key) in &pairs {
        keys.push(store.get(cert, key).map_err(|e| e.describe())?);
    }
    let resolver: Arc<dyn ResolvesServerCert> = match keys.len() {
        1 => keys.remove(0),
        _ => Arc::new(ByScheme(keys)),
    };

    let mut provider = ring::default_provider();
    if !s.cipher_suites.is_empty() {
        let mut chosen: Vec<SupportedCipherSuite> =
            provider.cipher_suites.iter().filter(|cs| cs.tls13().is_some()).copied().collect();
        for name in &s.cipher_suites {
            match suite(name) {
                Some(cs) if !chosen.contains(&cs) => chosen.push(cs),
                Some(_) => {}
                None if LEGACY_SUITES.contains(&name.as_str()) => {
                    warnings.push(format!("cipher suite {name} is not supported by rustls; ignored"))
                }
                None => return Err(format!("unknown cipher suite {name:?}")),
            }
        }
        if !chosen.iter().any(|cs| cs.tls13().is_none()) {
            warnings.push("no TLS 1.2 cipher suite left; only TLS 1.3 clients can connect".into());
        }
        provider.cipher_suites = chosen;
    }
    let (min, max) = (version(s.min_protocol_version), version(s.max_protocol_version));
    if matches!(min, 10 | 11) {
        warnings.push("TLS 1.0 and 1.1 are not supported by rustls; TLS 1.2 is the minimum".into());
    }
    let (min, max) = (min.max(12), if max == 0 { 13 } else { max });
    if max < min {
        return Err(format!(
            "maxProtocolVersion (TLS 1.{}) is below minProtocolVersion (TLS 1.{})",
            max - 10,
            min - 10
        ));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();
    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS settings are inconsistent: {e}"))?;
    let builder = match mode {
        ServerTlsMode::Simple => builder.with_no_client_auth(),
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
            let ca = ca.ok_or_else(|| format!("mode {mode} needs caCertificates (or ca.crt in the credential)"))?;
            let mut roots = RootCertStore::empty();
            for c in read_certs(&ca).map_err(|e| e.describe())? {
                roots.add(c).map_err(|e| format!("{}: unusable CA certificate: {e}", ca.display()))?;
            }
            let crls = s.ca_crl.as_ref().map(|p| read_crls(p.as_ref())).transpose().map_err(|e| e.describe())?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
                .with_crls(crls.unwrap_or_default());
            let verifier =
                if mode == ServerTlsMode::OptionalMutual { verifier.allow_unauthenticated() } else { verifier };
            let verifier = verifier.build().map_err(|e| format!("client verification: {e}"))?;
            if s.insecure_skip_verify.unwrap_or(false) {
                builder.with_client_cert_verifier(Verifier::new(LetThrough(verifier), &provider))
            } else {
                builder.with_client_cert_verifier(verifier)
            }
        }
        other => return Err(format!("tls mode {other} cannot terminate here")),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.ticketer = ring::Ticketer::new().map_err(|e| format!("session tickets: {e}"))?;
    Ok(CompiledTls { tls: TlsTermination { config: Arc::new(config), peer: PeerPolicy::compile(s) }, warnings })
}

/// Several key pairs (`credentialNames`): the first whose key can sign with a scheme
/// the client offers, so ECDSA and RSA clients both get a certificate.
#[derive(Debug)]
struct ByScheme(Vec<Arc<RotatingCert>>);

impl ResolvesServerCert for ByScheme {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes().to_vec();
        let keys: Vec<Arc<CertifiedKey>> = self.0.iter().map(|c| c.current()).collect();
        keys.iter().find(|k| k.key.choose_scheme(&schemes).is_some()).or(keys.first()).cloned()
    }
}

/// Istio server `insecureSkipVerify`: client certificates are verified, and a failure
/// is logged but lets the connection through.
#[derive(Debug)]
struct LetThrough(Arc<dyn ClientCertVerifier>);

impl ClientCheck for LetThrough {
    fn verify(
        &self,
        end: &CertificateDer<'_>,
        mids: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end, mids, now).or_else(|e| {
            tracing::info!(error = %e, "client certificate failed verification; let through (insecureSkipVerify)");
            Ok(ClientCertVerified::assertion())
        })
    }

    fn mandatory(&self) -> bool {
        false
    }

    fn offer(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn root_hints(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }
}
