//! The outbound listener: connections the application made, redirected here. The
//! original destination picks the service (by address and port); HTTP goes through
//! the pipeline with the mesh routes, anything else is proxied as TCP, and unknown
//! destinations pass through unless the mesh is `REGISTRY_ONLY`.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;

use super::{
    original_dst::original_dst,
    sniff::{first_bytes, Sniffed},
};
use crate::{
    listener::{client_hello::Prefixed, l4, serve_http, Server},
    pipeline::{ConnInfo, Direction},
    security::authz::AuthzEngine,
    snapshot::sidecar::{AppProtocol, OutboundPlan},
};

/// Serves one captured outbound connection.
pub(crate) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener_port: u16,
    plan: &OutboundPlan,
    server: Arc<Server>,
) {
    let dst = match original_dst(&stream) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::info!(%peer, error = %e, "no original destination; connection closed");
            return;
        }
    };
    if dst.port() == listener_port {
        tracing::info!(%peer, %dst, "connection made to the outbound listener itself (not captured); closed");
        return;
    }
    let service = plan.services.get(&dst);
    let protocol = service.map_or(AppProtocol::Detect, |s| s.protocol);
    let (http, prefix) = match protocol {
        AppProtocol::Http => (true, Default::default()),
        AppProtocol::Opaque => (false, Default::default()),
        AppProtocol::Detect => match first_bytes(&mut stream, peer).await {
            Some((kind, bytes)) => (kind == Sniffed::Http, bytes),
            None => return,
        },
    };
    let conn = ConnInfo {
        port: dst.port(),
        direction: Direction::Outbound,
        original_dst: Some(dst),
        ..ConnInfo::plain(peer, dst.ip(), listener_port)
    };
    let stream = Prefixed::new(prefix, stream);
    if http {
        return serve_http(stream, Arc::new(conn), server).await;
    }
    // AuthorizationPolicy guards a workload's inbound side, not what it calls.
    let no_policy = AuthzEngine::default();
    match service {
        Some(s) => l4::proxy(stream, &s.tcp, &conn, &server.proxy, &no_policy).await,
        None if plan.allow_any => l4::proxy(stream, &plan.passthrough, &conn, &server.proxy, &no_policy).await,
        None => tracing::info!(%peer, %dst, "destination is not in the registry (REGISTRY_ONLY); connection closed"),
    }
}
