//! The rustls verifiers, with what every one of them shares written once: a verifier
//! here decides only which chains and names it accepts (a `ServerCheck` or a
//! `ClientCheck`), and the handshake's signatures are checked with the crypto
//! provider's algorithms, as rustls's own WebPKI verifiers do.

use std::{fmt, sync::Arc};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    DigitallySignedStruct, DistinguishedName, SignatureScheme,
};

/// What a server-certificate verifier decides: whether the server's chain and name
/// are acceptable.
pub(crate) trait ServerCheck: fmt::Debug + Send + Sync {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error>;
}

/// What a client-certificate verifier decides: whether the client's chain is
/// acceptable, and whether a client without one is refused at the handshake.
pub(crate) trait ClientCheck: fmt::Debug + Send + Sync {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error>;

    /// Whether a client that sends no certificate fails the handshake.
    fn mandatory(&self) -> bool;

    /// Whether the server asks for a certificate at all.
    fn offer(&self) -> bool {
        true
    }

    /// The CA names sent in the certificate request.
    fn root_hints(&self) -> &[DistinguishedName] {
        &[]
    }
}

/// A rustls verifier made of a check and the provider's signature algorithms.
#[derive(Debug)]
pub(crate) struct Verifier<C> {
    check: C,
    algorithms: WebPkiSupportedAlgorithms,
}

impl<C> Verifier<C> {
    pub(crate) fn new(check: C, provider: &CryptoProvider) -> Arc<Self> {
        Arc::new(Self { check, algorithms: provider.signature_verification_algorithms })
    }
}

/// The three signature methods both verifier traits have, on `self.algorithms`.
macro_rules! signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

impl<C: ServerCheck> ServerCertVerifier for Verifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check.verify(end_entity, intermediates, name, ocsp, now)
    }

    signatures!();
}

impl<C: ClientCheck> ClientCertVerifier for Verifier<C> {
    fn offer_client_auth(&self) -> bool {
        self.check.offer()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.check.mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.check.root_hints()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check.verify(end_entity, intermediates, now)
    }

    signatures!();
}
