//! The server side of a TLS handshake, bounded in time, as gateway and sidecar
//! listeners run it: the handshake, then the server's own check of the client
//! certificate (pinning, or the mesh identity), then what later stages see of it.

use std::{fmt, sync::Arc, time::Duration};

use rustls::{pki_types::CertificateDer, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use super::peer::PeerCert;

/// Bound on reading the ClientHello and completing a TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A completed handshake whose client the server accepted.
pub(crate) struct Accepted<S> {
    pub(crate) stream: TlsStream<S>,
    /// The client's verified certificate, if it sent one.
    pub(crate) peer_cert: Option<Arc<PeerCert>>,
    /// The negotiated version (`TLSv1.3`).
    pub(crate) version: Option<&'static str>,
}

/// Why a connection did not get past TLS.
#[derive(Debug)]
pub(crate) enum Refused {
    Failed(std::io::Error),
    TimedOut,
    /// The handshake completed, but the server's check refused the client certificate.
    Peer(String),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Failed(e) => write!(f, "TLS handshake failed: {e}"),
            Refused::TimedOut => write!(f, "TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}"),
            Refused::Peer(why) => write!(f, "client certificate refused: {why}"),
        }
    }
}

/// Runs the handshake with `config` and then `check` on the client's leaf certificate.
pub(crate) async fn accept<S, C>(config: Arc<ServerConfig>, stream: S, check: C) -> Result<Accepted<S>, Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: FnOnce(Option<&CertificateDer<'_>>) -> Result<(), String>,
{
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Refused::Failed(e)),
        Err(_) => return Err(Refused::TimedOut),
    };
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first());
    check(leaf).map_err(Refused::Peer)?;
    let peer_cert = leaf.and_then(PeerCert::from_leaf).map(Arc::new);
    let version = version_name(stream.get_ref().1);
    Ok(Accepted { stream, peer_cert, version })
}

/// The negotiated version of a server connection as Envoy names it (`TLSv1.3`), for
/// logs and Wasm's `connection.tls_version`. rustls speaks 1.2 and 1.3 only.
fn version_name(conn: &rustls::ServerConnection) -> Option<&'static str> {
    conn.protocol_version().map(|v| match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        _ => "TLSv1.2",
    })
}
