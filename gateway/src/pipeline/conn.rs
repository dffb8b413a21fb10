//! The connection a request arrived on, as every phase of the pipeline reads it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::telemetry::{metrics::Reporter, Prehashed, SourceLabels};

/// The connection a request arrived on.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// Client address.
    pub peer: SocketAddr,
    /// The address the connection was made to (`destination.ip`): the listener's, or
    /// for captured traffic the original destination's.
    pub local: IpAddr,
    /// The listener's port as written (it picks the route table).
    pub listener_port: u16,
    /// The destination port routes and policies match on: the listener port, or for
    /// captured traffic the port the connection was originally headed to.
    pub port: u16,
    /// Which way the traffic flows, for telemetry's `reporter`.
    pub direction: Direction,
    /// Where captured traffic was headed (`SO_ORIGINAL_DST`), for passthrough clusters;
    /// inbound, the application's address.
    pub original_dst: Option<SocketAddr>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// SNI of a TLS connection (selects the server's route table).
    pub sni: Option<Arc<str>>,
    /// The client's verified certificate (mutual TLS).
    pub peer_cert: Option<Arc<crate::tls::peer::PeerCert>>,
    /// Unique per process (Envoy's `connection.id`).
    pub id: u64,
    /// Negotiated TLS version (`TLSv1.3`), for TLS connections.
    pub tls_version: Option<&'static str>,
}

/// Which way a connection's traffic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    /// Into the mesh through the ingress gateway (Istio reports it as `source`).
    Gateway,
    /// From the local application out (sidecar outbound; `reporter="source"`).
    Outbound,
    /// From a peer to the local application (sidecar inbound; `reporter="destination"`).
    Inbound,
}

impl ConnInfo {
    /// A plaintext connection accepted on a gateway listener at `local`.
    pub(crate) fn plain(peer: SocketAddr, local: IpAddr, port: u16) -> Self {
        Self {
            peer,
            local,
            listener_port: port,
            port,
            direction: Direction::Gateway,
            original_dst: None,
            scheme: "http",
            sni: None,
            peer_cert: None,
            id: Self::next_id(),
            tls_version: None,
        }
    }

    /// The peer's identity as AuthorizationPolicy `principals` name it: its SPIFFE URI
    /// without the scheme (`cluster.local/ns/default/sa/sleep`).
    pub(crate) fn peer_principal(&self) -> Option<&str> {
        let uri = self.peer_cert.as_ref()?.uris.first()?;
        Some(uri.strip_prefix("spiffe://").unwrap_or(uri))
    }

    /// Istio's `reporter` and `source_*` labels for this connection: inbound, the
    /// destination reports and the source is the peer; otherwise this workload.
    pub(crate) fn reporter_and_source(
        &self,
        own: &Arc<Prehashed<SourceLabels>>,
    ) -> (Reporter, Arc<Prehashed<SourceLabels>>) {
        match self.direction {
            Direction::Inbound => {
                let spiffe = self.peer_cert.as_ref().and_then(|p| p.uris.first()).map(String::as_str);
                (Reporter::Destination, SourceLabels::peer(spiffe))
            }
            Direction::Gateway | Direction::Outbound => (Reporter::Source, own.clone()),
        }
    }

    /// What WasmPlugin `match[]` selects on: direction and destination port.
    pub(crate) fn traffic(&self) -> crate::wasm::Traffic {
        crate::wasm::Traffic { server: self.direction == Direction::Inbound, port: self.port }
    }

    /// A fresh connection id.
    pub(crate) fn next_id() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}
