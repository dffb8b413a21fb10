//! Security: who the caller is and what it may do — path normalization, JWT
//! authentication (RequestAuthentication) and authorization (AuthorizationPolicy,
//! external authorizers). Compiled into the snapshot; nothing here blocks. The
//! verified client certificate comes from `tls`.

pub(crate) mod authz;
pub(crate) mod ext_authz;
pub(crate) mod jwks;
pub(crate) mod jwt;
pub mod normalize;

use std::net::IpAddr;

/// Envoy `xff_num_trusted_hops`: with N trusted proxies in front of the gateway, the
/// client is the Nth address from the right of `X-Forwarded-For`; with none (Istio's
/// default at a gateway) it is the TCP peer.
pub fn remote_ip(headers: &http::HeaderMap, peer: IpAddr, trusted_hops: u32) -> IpAddr {
    if trusted_hops == 0 {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    let n = trusted_hops as usize;
    if hops.len() >= n {
        hops[hops.len() - n]
    } else {
        peer
    }
}
