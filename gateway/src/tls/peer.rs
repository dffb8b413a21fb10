//! The verified client certificate of a TLS connection: what later stages see
//! (`x-forwarded-client-cert`, the SANs for authorization), and the server's pinning
//! rules (`subjectAltNames`, `verifyCertificateSpki`, `verifyCertificateHash`).

use base64::Engine;
use http::HeaderValue;
use ring::digest::{digest, SHA256};
use rustls::pki_types::CertificateDer;
use x509_parser::{extensions::GeneralName, prelude::X509Certificate};

use crate::config::istio::ServerTlsSettings;

/// What the gateway knows of a client that presented a verified certificate.
#[derive(Debug)]
pub(crate) struct PeerCert {
    /// Envoy's `x-forwarded-client-cert` value (SANITIZE_SET with Istio's details).
    pub xfcc: HeaderValue,
    /// URI SANs (SPIFFE identities).
    pub uris: Vec<String>,
}

/// Client certificate pinning of a terminating server.
#[derive(Debug, Default)]
pub struct PeerPolicy {
    sans: Vec<String>,
    spki: Vec<String>,
    hashes: Vec<String>,
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Option<X509Certificate<'a>> {
    x509_parser::parse_x509_certificate(der).ok().map(|(_, c)| c)
}

/// A certificate's URI and DNS subject alternative names.
pub(crate) fn sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::URI(u) => uris.push(u.to_string()),
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                _ => {}
            }
        }
    }
    (uris, dns)
}

impl PeerCert {
    /// Reads the leaf certificate a client presented (already verified by rustls).
    pub(crate) fn from_leaf(leaf: &CertificateDer<'_>) -> Option<Self> {
        let cert = parse(leaf)?;
        let (uris, dns) = sans(&cert);
        let subject = cert.subject().to_string().replace('"', "\\\"");
        let mut xfcc = format!("Hash={};Subject=\"{subject}\"", crate::hex::sha256(leaf));
        if let Some(uri) = uris.first() {
            xfcc.push_str(&format!(";URI={uri}"));
        }
        for d in &dns {
            xfcc.push_str(&format!(";DNS={d}"));
        }
        Some(Self { xfcc: HeaderValue::from_str(&xfcc).ok()?, uris })
    }
}

impl PeerPolicy {
    /// The pinning rules of a server's TLS settings.
    pub fn compile(s: &ServerTlsSettings) -> Self {
        let normalize = |h: &String| h.replace(':', "").to_ascii_lowercase();
        Self {
            sans: s.subject_alt_names.clone(),
            spki: s.verify_certificate_spki.clone(),
            hashes: s.verify_certificate_hash.iter().map(normalize).collect(),
        }
    }

    /// Checks a presented leaf; a client without a certificate (OPTIONAL_MUTUAL) passes.
    pub fn check(&self, leaf: Option<&CertificateDer<'_>>) -> Result<(), String> {
        let Some(leaf) = leaf else { return Ok(()) };
        if self.sans.is_empty() && self.spki.is_empty() && self.hashes.is_empty() {
            return Ok(());
        }
        let cert = parse(leaf).ok_or("unparsable client certificate")?;
        if !self.sans.is_empty() {
            let (uris, dns) = sans(&cert);
            if !uris.iter().chain(&dns).any(|n| self.sans.contains(n)) {
                return Err("client certificate SANs do not match subjectAltNames".into());
            }
        }
        // Envoy: a certificate passes when either pin list matches.
        if !self.spki.is_empty() || !self.hashes.is_empty() {
            let spki = base64::engine::general_purpose::STANDARD.encode(digest(&SHA256, cert.public_key().raw));
            let hash = crate::hex::sha256(leaf);
            if !self.spki.contains(&spki) && !self.hashes.contains(&hash) {
                return Err("client certificate matches no pinned SPKI or hash".into());
            }
        }
        Ok(())
    }
}
