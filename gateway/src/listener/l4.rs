//! Connection-level proxying for TCP servers, TLS-terminated TCP and TLS passthrough:
//! the first matching rule picks a weighted destination, the bytes are copied both
//! ways, and one access log line records the byte counts when the connection ends.

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    addr_text,
    error::ResponseFlags,
    pipeline::{ConnInfo, Proxy},
    route::L4Route,
    security::authz::{AuthzEngine, AuthzRequest, Decision},
    telemetry::{metrics::TcpLabels, DestinationLabels, TcpRecord},
    upstream::{connect_tcp, Cluster, Endpoint},
};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Proxies `client` by `routes`; closes it when no rule or no endpoint is found.
pub(crate) async fn proxy<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    routes: &[L4Route],
    conn: &ConnInfo,
    proxy: &Proxy,
    authz: &AuthzEngine,
) {
    let (sni, port, peer) = (conn.sni.as_deref(), conn.port, conn.peer);
    let mut record = TcpRecord::start(peer, sni);
    let telemetry = &proxy.telemetry;
    let (reporter, source) = conn.reporter_and_source(&telemetry.source);
    let mutual_tls = conn.peer_cert.is_some();
    let labels = |destination, flags| TcpLabels { reporter, mutual_tls, source: source.clone(), destination, flags };
    let fail = |mut record: TcpRecord, flag: ResponseFlags| {
        record.response_flags = flag.to_string();
        let l = labels(DestinationLabels::unknown(), flag);
        telemetry.metrics.tcp_opened(&l);
        telemetry.metrics.tcp_closed(&l, 0, 0);
        record.finish(&telemetry.log);
    };
    if !authz.is_empty() {
        let none = http::HeaderMap::new();
        let request = AuthzRequest {
            source_ip: peer.ip(),
            remote_ip: peer.ip(),
            destination_ip: conn.local,
            peer_principal: conn.peer_principal(),
            identity: None,
            host: "",
            port,
            method: "",
            path: "",
            path_and_query: "",
            scheme: "",
            headers: &none,
            sni,
        };
        if let Decision::Deny(policy) = authz.evaluate(&request) {
            tracing::info!(%peer, port, %policy, "connection denied by AuthorizationPolicy");
            record.response_details = Some(format!("rbac_access_denied_matched_policy[{policy}]"));
            record.finish(&telemetry.log);
            return;
        }
    }
    let Some(route) = routes.iter().find(|r| r.matches(sni, port)) else {
        tracing::info!(%peer, port, sni, "no tls/tcp route matches; connection closed");
        return fail(record, ResponseFlags::NR);
    };
    record.route_name = Some(route.name.to_string());
    let Some(target) = route.choose() else { return fail(record, ResponseFlags::NR) };
    record.upstream_cluster = Some(target.name.to_string());
    let Some(cluster) = &target.cluster else { return fail(record, ResponseFlags::NC) };
    let Ok(_connection) = cluster.breakers.tcp_connection() else { return fail(record, ResponseFlags::UO) };
    let hash = cluster.lb.hash_key(&http::HeaderMap::new(), None, peer.ip());
    let Some(endpoint) = cluster.endpoint_for(conn.original_dst, None, hash) else {
        return fail(record, ResponseFlags::UH);
    };
    record.upstream_host = Some(addr_text::socket_addr(endpoint.addr));
    let mut upstream = match connect(cluster, &endpoint, proxy.upstreams.mark()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%peer, upstream = %endpoint.addr, error = %e, "upstream connect failed");
            return fail(record, ResponseFlags::UF);
        }
    };
    // Opened and closed share one label set (Istio labels TCP metrics at open).
    let open = labels(endpoint.metrics.clone(), ResponseFlags::default());
    telemetry.metrics.tcp_opened(&open);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((received, sent)) => {
            record.bytes_received = received;
            record.bytes_sent = sent;
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "tcp proxying ended with an error");
            record.response_flags = ResponseFlags::UC.to_string();
        }
    }
    telemetry.metrics.tcp_closed(&open, record.bytes_sent, record.bytes_received);
    record.finish(&telemetry.log);
}

/// Connects to a cluster endpoint, with the cluster's TLS towards it if any (the SNI
/// configured, else the endpoint's address).
async fn connect(cluster: &Cluster, endpoint: &Endpoint, mark: Option<u32>) -> std::io::Result<Box<dyn Io>> {
    let timeout = cluster.pool.connect_timeout;
    let tcp = connect_tcp(endpoint.addr, timeout, mark).await?;
    let Some(tls) = cluster.tls_for(endpoint) else { return Ok(Box::new(tcp)) };
    let sni = tls.sni.clone().unwrap_or_else(|| ServerName::IpAddress(endpoint.addr.ip().into()));
    let handshake = tokio_rustls::TlsConnector::from(tls.config.clone()).connect(sni, tcp);
    let stream = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    Ok(Box::new(stream))
}
