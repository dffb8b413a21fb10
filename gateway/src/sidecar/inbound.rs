//! The inbound listener: connections from peers to the application, redirected here.
//! PeerAuthentication decides per application port: mutual TLS is terminated with the
//! workload identity (the peer's SPIFFE identity becomes `source.principal`), plaintext
//! is accepted or refused, and the traffic goes to the application at its port.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{
    original_dst::original_dst,
    sniff::{first_bytes, Sniffed},
};
use crate::{
    listener::{client_hello, client_hello::Prefixed, l4, serve_http, Server},
    pipeline::{ConnInfo, Direction},
    security::authz::AuthzEngine,
    snapshot::sidecar::{InboundPlan, MtlsMode},
    tls::handshake::{self, HANDSHAKE_TIMEOUT},
};

/// ALPN values Istio's sidecars offer for mesh mutual TLS; other TLS is the
/// application's own and is passed through when plaintext is allowed.
const MESH_ALPN: [&[u8]; 5] = [b"istio-peer-exchange", b"istio", b"istio-http/1.0", b"istio-http/1.1", b"istio-h2"];

/// Serves one captured inbound connection.
pub(crate) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener_port: u16,
    plan: &InboundPlan,
    tcp_authz: &AuthzEngine,
    server: Arc<Server>,
) {
    let dst = match original_dst(&stream) {
        Ok(dst) if dst.port() != listener_port => dst,
        Ok(_) => {
            tracing::info!(%peer, "connection made to the inbound listener itself (not captured); closed");
            return;
        }
        Err(e) => {
            tracing::info!(%peer, error = %e, "no original destination; connection closed");
            return;
        }
    };
    let mode = plan.mtls.mode(dst.port());
    let Some((kind, prefix)) = first_bytes(&mut stream, peer).await else { return };
    let conn = ConnInfo {
        port: dst.port(),
        direction: Direction::Inbound,
        original_dst: Some(
            plan.endpoints.get(&dst.port()).copied().unwrap_or(SocketAddr::new(plan.app_ip, dst.port())),
        ),
        ..ConnInfo::plain(peer, dst.ip(), listener_port)
    };
    let mut stream = Prefixed::new(prefix, stream);
    let mesh_tls = kind == Sniffed::Tls && mode != MtlsMode::Disable && {
        match client_hello::read(&mut stream, HANDSHAKE_TIMEOUT).await {
            Ok((hello, raw)) => {
                stream = stream.rewound(raw);
                hello.alpn.iter().any(|p| MESH_ALPN.contains(&p.as_slice()))
            }
            Err(e) => {
                tracing::info!(%peer, port = dst.port(), error = %e, "unreadable TLS ClientHello; connection closed");
                return;
            }
        }
    };
    if mesh_tls {
        return terminate(stream, conn, plan, tcp_authz, server).await;
    }
    if mode == MtlsMode::Strict {
        let what = if kind == Sniffed::Tls { "TLS without Istio's ALPN" } else { "plaintext" };
        tracing::warn!(%peer, port = dst.port(), "{what} connection refused: PeerAuthentication requires mutual TLS (STRICT)");
        return;
    }
    // Plaintext, or TLS the application terminates itself.
    deliver(stream, conn, kind == Sniffed::Http, plan, tcp_authz, server).await
}

/// Terminates mesh mutual TLS and checks the peer's identity, then delivers.
async fn terminate<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    mut conn: ConnInfo,
    plan: &InboundPlan,
    tcp_authz: &AuthzEngine,
    server: Arc<Server>,
) {
    let peer = conn.peer;
    let Some(identity) = &plan.identity else {
        tracing::warn!(%peer, "mutual TLS connection refused: this sidecar has no workload identity (--identity-dir)");
        return;
    };
    let accepted = handshake::accept(identity.server_config(), stream, |leaf| identity.check_peer(leaf).map(drop));
    let mut tls = match accepted.await {
        Ok(tls) => tls,
        Err(why) => {
            tracing::warn!(%peer, port = conn.port, %why, "mutual TLS connection refused");
            return;
        }
    };
    conn.peer_cert = tls.peer_cert;
    conn.scheme = "https";
    conn.tls_version = tls.version;
    let Some((kind, prefix)) = first_bytes(&mut tls.stream, peer).await else { return };
    deliver(Prefixed::new(prefix, tls.stream), conn, kind == Sniffed::Http, plan, tcp_authz, server).await
}

/// HTTP through the pipeline (authorization, telemetry) to the application, or TCP.
async fn deliver<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    conn: ConnInfo,
    http: bool,
    plan: &InboundPlan,
    tcp_authz: &AuthzEngine,
    server: Arc<Server>,
) {
    if http {
        serve_http(stream, Arc::new(conn), server).await
    } else {
        l4::proxy(stream, &plan.tcp, &conn, &server.proxy, tcp_authz).await
    }
}
