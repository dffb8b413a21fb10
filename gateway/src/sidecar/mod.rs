//! Sidecar mode: the same engine inside a pod, serving traffic that iptables captured
//! (outbound from the app, inbound from peers), with mutual TLS between workloads;
//! and the pod tools: capture rules, injection and its webhook, a development CA,
//! the probe listener. What the two listeners serve is compiled into the snapshot
//! (`snapshot::sidecar`).

pub mod ca;
pub mod capture;
pub(crate) mod inbound;
pub mod inject;
pub(crate) mod original_dst;
pub(crate) mod outbound;
pub(crate) mod probes;
pub(crate) mod sniff;
pub mod webhook;

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use tokio::net::TcpStream;

use crate::{
    listener::{self, Server},
    snapshot::PortPlan,
};

/// The sidecar's connection handler (`listener::Handler`): its captured outbound and
/// inbound ports by their plans, any other port as a gateway serves it.
pub(crate) fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    server: Arc<Server>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let snapshot = server.proxy.snapshot.current();
        match snapshot.ports.get(&port) {
            // Already in the handler's box: no second one.
            Some(PortPlan::Outbound(plan)) => outbound::serve(stream, peer, port, plan, server.clone()).await,
            Some(PortPlan::Inbound(plan)) => {
                let authz = &snapshot.security.tcp_authz;
                inbound::serve(stream, peer, port, plan, authz, server.clone()).await
            }
            _ => {
                drop(snapshot);
                listener::connection(stream, peer, port, server).await
            }
        }
    })
}
