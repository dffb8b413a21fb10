//! Where a captured connection was headed before iptables redirected it
//! (`SO_ORIGINAL_DST`, and `IP6T_SO_ORIGINAL_DST` for IPv6).

use std::{io, net::SocketAddr};

use tokio::net::TcpStream;

/// The original destination of a connection redirected by the `nat` table; for a
/// connection that was not redirected, its own local address.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let local = stream.local_addr()?;
    let addr = match local {
        SocketAddr::V4(_) => socket.original_dst_v4(),
        SocketAddr::V6(_) => socket.original_dst_v6(),
    }?;
    addr.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "original destination is not an IP address"))
}
