//! Where a captured connection was headed before iptables redirected it
//! (`SO_ORIGINAL_DST`, and `IP6T_SO_ORIGINAL_DST` for IPv6).

use std::{io, net::SocketAddr};

use tokio::net::TcpStream;

/// The original destination of a connection redirected by the `nat` table; for a
/// connection that was not redirected, its own local address.
pub(crate) fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let local = stream.local_addr()?;
    // A dual-stack listener sees IPv4 connections as IPv4-mapped IPv6 addresses; their
    // NAT state is IPv4's.
    let addr = match local {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => socket.original_dst_v6(),
        _ => socket.original_dst_v4(),
    }?;
    let addr = addr
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "original destination is not an IP address"))?;
    Ok(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
}
