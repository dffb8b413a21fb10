//! Addresses as text, as `Display` writes them. The request path writes two or three
//! per request (the access log's peer and upstream host, `x-forwarded-for`, the
//! upstream URI), and `core::fmt` spends over a thousand instructions on each IPv4
//! address; these write IPv4 digits directly and leave IPv6 to `Display`.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

/// `ip` as `Display` writes it.
pub(crate) fn ip(ip: IpAddr) -> String {
    let mut out = String::with_capacity(15);
    push_ip(&mut out, ip);
    out
}

/// `addr` as `Display` writes it (`1.2.3.4:80`, `[::1]:80`).
pub(crate) fn socket_addr(addr: SocketAddr) -> String {
    let mut out = String::with_capacity(21);
    match addr.ip() {
        IpAddr::V4(_) => push_ip(&mut out, addr.ip()),
        IpAddr::V6(_) => {
            out.push('[');
            push_ip(&mut out, addr.ip());
            if let SocketAddr::V6(v6) = addr {
                if v6.scope_id() != 0 {
                    let _ = write!(out, "%{}", v6.scope_id());
                }
            }
            out.push(']');
        }
    }
    out.push(':');
    push_decimal(&mut out, addr.port());
    out
}

fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(out, u16::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_decimal(out: &mut String, n: u16) {
    out.push_str(itoa::Buffer::new().format(n));
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use super::*;

    #[test]
    fn writes_what_display_writes() {
        let octets = [0u8, 1, 9, 10, 99, 100, 127, 199, 200, 255];
        let ports = [0u16, 7, 80, 443, 8080, 15001, 65535];
        for (i, a) in octets.iter().enumerate() {
            for b in &octets[i..] {
                let v4 = Ipv4Addr::new(*a, *b, octets[(i + 3) % octets.len()], *b);
                assert_eq!(ip(v4.into()), v4.to_string());
                for port in ports {
                    let addr = SocketAddr::from((v4, port));
                    assert_eq!(socket_addr(addr), addr.to_string());
                }
            }
        }
        let v6s = [Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED, "fe80::1:2".parse().unwrap_or(Ipv6Addr::LOCALHOST)];
        for v6 in v6s.into_iter().chain([Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()]) {
            assert_eq!(ip(v6.into()), v6.to_string());
            for scope in [0, 3] {
                let addr = SocketAddr::V6(SocketAddrV6::new(v6, 8443, 0, scope));
                assert_eq!(socket_addr(addr), addr.to_string());
            }
        }
    }
}
