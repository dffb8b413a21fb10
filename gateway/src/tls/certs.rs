//! Certificate and key files, loaded once, checked (PEM, key matches, not expired) and
//! re-read when they change on disk, so new handshakes use a rotated pair without a
//! restart while a broken new pair is refused and the old one keeps serving.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use arc_swap::ArcSwap;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// Certificate, key and CRL files are small; anything larger is not one.
const MAX_PEM: u64 = 4 * 1024 * 1024;

/// Why a certificate, key or CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no usable PEM object of the expected kind.
    #[error("{path}: {what}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

impl CertError {
    /// The message with its causes, for diagnostics (`cannot read x: No such file`).
    pub fn describe(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            out.push_str(&format!(": {e}"));
            source = e.source();
        }
        out
    }
}

fn invalid(path: &Path, what: impl Into<String>) -> CertError {
    CertError::Invalid { path: path.to_path_buf(), what: what.into() }
}

/// Reads every certificate of a PEM file.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = crate::config::files::read_bounded(path, MAX_PEM)
        .map_err(|source| CertError::Read { path: path.to_path_buf(), source })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no certificate found"));
    }
    for cert in &certs {
        check_validity(path, cert)?;
    }
    Ok(certs)
}

/// Reads every CRL of a PEM file (`caCrl`).
pub(crate) fn read_crls(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>, CertError> {
    let bytes = crate::config::files::read_bounded(path, MAX_PEM)
        .map_err(|source| CertError::Read { path: path.to_path_buf(), source })?;
    let crls = rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("invalid PEM: {e}")))?;
    if crls.is_empty() {
        return Err(invalid(path, "no certificate revocation list found"));
    }
    Ok(crls)
}

fn check_validity(path: &Path, cert: &CertificateDer<'_>) -> Result<(), CertError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| invalid(path, format!("invalid certificate: {e}")))?;
    let validity = parsed.validity();
    if !validity.is_valid() {
        let what = format!(
            "certificate {} is not valid now (valid {} to {})",
            parsed.subject(),
            validity.not_before,
            validity.not_after
        );
        return Err(invalid(path, what));
    }
    Ok(())
}

/// Loads a certificate chain and its private key, checking that they match.
pub(crate) fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let certs = read_certs(cert)?;
    let key_bytes = crate::config::files::read_bounded(key, MAX_PEM)
        .map_err(|source| CertError::Read { path: key.to_path_buf(), source })?;
    let der =
        PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| invalid(key, format!("no private key found: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| invalid(key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|_| invalid(key, format!("private key does not match the certificate in {}", cert.display())))?;
    Ok(certified)
}

/// A key pair that follows its files.
pub struct RotatingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// Modification times of the files `current` was loaded from, and of the last
    /// version that failed (so a broken pair is retried but reported once).
    stamps: Mutex<Stamps>,
}

type Stamp = (Option<SystemTime>, Option<SystemTime>);

#[derive(Default)]
struct Stamps {
    loaded: Stamp,
    failed: Option<Stamp>,
}

impl fmt::Debug for RotatingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatingCert").field("cert", &self.cert_path).field("key", &self.key_path).finish()
    }
}

impl rustls::client::ResolvesClientCert for RotatingCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl RotatingCert {
    /// The pair in use now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    fn stamps(&self) -> Stamp {
        (modified(&self.cert_path), modified(&self.key_path))
    }

    /// Re-reads the files if they changed since the last good load. A broken pair is
    /// reported once and retried (a rotation may be caught half-written).
    fn refresh(&self) {
        let now = self.stamps();
        let Ok(mut stamps) = self.stamps.lock() else { return };
        if stamps.loaded == now {
            return;
        }
        match load_pair(&self.cert_path, &self.key_path) {
            Ok(pair) => {
                self.current.store(Arc::new(pair));
                *stamps = Stamps { loaded: now, failed: None };
                tracing::info!(cert = %self.cert_path.display(), "certificate rotated");
            }
            Err(e) if stamps.failed != Some(now) => {
                stamps.failed = Some(now);
                tracing::error!(error = %e.describe(), "rotated certificate rejected; the previous one keeps serving");
            }
            Err(_) => {}
        }
    }
}

/// Every key pair in use, shared across snapshots so rotation reaches them all.
#[derive(Debug, Default)]
pub struct CertStore {
    pairs: Mutex<HashMap<(PathBuf, PathBuf), Arc<RotatingCert>>>,
}

impl CertStore {
    /// The pair for these files, loaded now if it is not known yet.
    pub fn get(&self, cert: &Path, key: &Path) -> Result<Arc<RotatingCert>, CertError> {
        let id = (cert.to_path_buf(), key.to_path_buf());
        if let Some(found) = self.pairs.lock().ok().and_then(|p| p.get(&id).cloned()) {
            return Ok(found);
        }
        let stamps = (modified(cert), modified(key));
        let pair = load_pair(cert, key)?;
        let rotating = Arc::new(RotatingCert {
            cert_path: id.0.clone(),
            key_path: id.1.clone(),
            current: ArcSwap::from_pointee(pair),
            stamps: Mutex::new(Stamps { loaded: stamps, failed: None }),
        });
        if let Ok(mut pairs) = self.pairs.lock() {
            pairs.insert(id, rotating.clone());
        }
        Ok(rotating)
    }

    /// Checks every pair for changes on disk; forgets pairs no snapshot uses.
    pub fn refresh(&self) {
        let pairs: Vec<Arc<RotatingCert>> = match self.pairs.lock() {
            Ok(mut p) => {
                p.retain(|_, c| Arc::strong_count(c) > 1);
                p.values().cloned().collect()
            }
            Err(_) => return,
        };
        for pair in pairs {
            pair.refresh();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, org: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, org);
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn org(store: &RotatingCert) -> String {
        let key = store.current.load_full();
        let (_, cert) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        let org = cert.subject().iter_organization().next().unwrap().as_str().unwrap().to_string();
        org
    }

    #[test]
    fn refresh_picks_up_a_new_pair_and_refuses_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "first");
        let store = CertStore::default();
        let pair = store.get(&c, &k).unwrap();
        assert_eq!(org(&pair), "first");
        std::fs::write(&k, "not a key").unwrap();
        store.refresh();
        assert_eq!(org(&pair), "first", "a broken pair is refused");
        write_pair(dir.path(), "second");
        store.refresh();
        assert_eq!(org(&pair), "second");
    }
}
