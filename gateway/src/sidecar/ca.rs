//! `wicket ca`: a development certificate authority for meshes without istiod, SPIRE
//! or cert-manager. `init` makes a root; `issue` signs a workload's SPIFFE certificate
//! into istio-agent's file layout (`cert-chain.pem`, `key.pem`, `root-cert.pem`),
//! which is what `wicket sidecar --identity-dir` reads.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use crate::tls::identity::spiffe_id;

/// Root files inside a CA directory.
const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";

/// Why a CA command failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `init` would overwrite an existing root.
    #[error("{0} already holds a root certificate; remove it to start over")]
    Exists(PathBuf),
    /// The root or the request is unusable.
    #[error("{0}")]
    Invalid(String),
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CaError::Io { path: path.to_path_buf(), source };
    // Written beside and renamed, so a watching sidecar never reads half a file.
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(if private { 0o600 } else { 0o644 });
    std::io::Write::write_all(&mut options.open(&tmp).map_err(io)?, contents.as_bytes()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn read(path: &Path) -> Result<String, CaError> {
    crate::config::files::read_bounded(path, 64 * 1024)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|source| CaError::Io { path: path.to_path_buf(), source })
}

fn validity(params: &mut CertificateParams, ttl: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A minute of slack for clocks that disagree a little.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + ttl;
}

/// `wicket ca init`: a new root (ECDSA P-256, ten years) in `dir`.
pub fn init(dir: &Path, trust_domain: &str) -> Result<PathBuf, CaError> {
    let cert_path = dir.join(ROOT_CERT);
    if cert_path.exists() {
        return Err(CaError::Exists(cert_path));
    }
    std::fs::create_dir_all(dir).map_err(|source| CaError::Io { path: dir.to_path_buf(), source })?;
    let key = KeyPair::generate().map_err(|e| CaError::Invalid(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.distinguished_name.push(DnType::OrganizationName, trust_domain);
    params.distinguished_name.push(DnType::CommonName, "Wicket development root CA");
    validity(&mut params, Duration::from_secs(10 * 365 * 24 * 3600));
    let cert = params.self_signed(&key).map_err(|e| CaError::Invalid(e.to_string()))?;
    write(&dir.join(ROOT_KEY), &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok(cert_path)
}

/// What `wicket ca issue` signs.
#[derive(Debug, Clone)]
pub struct IssueRequest<'a> {
    /// Trust domain of the SPIFFE identity.
    pub trust_domain: &'a str,
    /// Workload namespace.
    pub namespace: &'a str,
    /// Workload service account.
    pub service_account: &'a str,
    /// Lifetime (Istio's default workload certificate TTL is 24 h).
    pub ttl: Duration,
}

/// `wicket ca issue`: signs a workload certificate with the root in `ca_dir` and
/// writes `cert-chain.pem`, `key.pem` and `root-cert.pem` into `out`. Issuing again
/// into the same directory is a rotation.
pub fn issue(ca_dir: &Path, out: &Path, request: &IssueRequest<'_>) -> Result<String, CaError> {
    let root_pem = read(&ca_dir.join(ROOT_CERT))?;
    let root_key = KeyPair::from_pem(&read(&ca_dir.join(ROOT_KEY))?)
        .map_err(|e| CaError::Invalid(format!("{}: {e}", ca_dir.join(ROOT_KEY).display())))?;
    let issuer = Issuer::from_ca_cert_pem(&root_pem, root_key)
        .map_err(|e| CaError::Invalid(format!("{}: {e}", ca_dir.join(ROOT_CERT).display())))?;
    let id = spiffe_id(request.trust_domain, request.namespace, request.service_account);
    let uri = id.clone().try_into().map_err(|e| CaError::Invalid(format!("{id}: {e}")))?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, request.ttl);
    let key = KeyPair::generate().map_err(|e| CaError::Invalid(e.to_string()))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| CaError::Invalid(e.to_string()))?;
    std::fs::create_dir_all(out).map_err(|source| CaError::Io { path: out.to_path_buf(), source })?;
    write(&out.join("root-cert.pem"), &root_pem, false)?;
    write(&out.join("key.pem"), &key.serialize_pem(), true)?;
    write(&out.join("cert-chain.pem"), &cert.pem(), false)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        tls::certs::CertStore,
        tls::identity::{IdentityFiles, WorkloadIdentity},
    };

    #[test]
    fn issued_identity_loads_and_names_its_spiffe_id() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init(&ca, "cluster.local").unwrap();
        assert!(matches!(init(&ca, "cluster.local"), Err(CaError::Exists(_))), "init never overwrites a root");
        let out = dir.path().join("certs");
        let request = IssueRequest {
            trust_domain: "cluster.local",
            namespace: "shop",
            service_account: "cart",
            ttl: Duration::from_secs(3600),
        };
        let id = issue(&ca, &out, &request).unwrap();
        assert_eq!(id, "spiffe://cluster.local/ns/shop/sa/cart");
        let files = IdentityFiles::in_dir(&out).unwrap();
        let identity = WorkloadIdentity::load(files, "cluster.local", &CertStore::default()).unwrap();
        assert_eq!(identity.spiffe_uri().as_deref(), Some(id.as_str()));
        let leaf = identity_leaf(&out);
        assert_eq!(identity.check_peer(Some(&leaf)).unwrap(), id);
        let other = WorkloadIdentity::load(IdentityFiles::in_dir(&out).unwrap(), "other.domain", &CertStore::default())
            .unwrap();
        let refused = other.check_peer(Some(&leaf)).unwrap_err();
        assert!(refused.contains("trust domain \"cluster.local\""), "{refused}");
        assert!(other.check_peer(None).unwrap_err().contains("no client certificate"));
    }

    fn identity_leaf(dir: &Path) -> rustls::pki_types::CertificateDer<'static> {
        crate::tls::certs::read_certs(&dir.join("cert-chain.pem")).unwrap().remove(0)
    }
}
