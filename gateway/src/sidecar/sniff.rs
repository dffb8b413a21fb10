//! Protocol detection on captured connections (Envoy's TLS and HTTP inspectors): the
//! first bytes say TLS, HTTP (a method and a space, or the HTTP/2 preface) or neither.

use std::{net::SocketAddr, time::Duration};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a connection starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// A TLS handshake record.
    Tls,
    /// HTTP/1.x or HTTP/2 with prior knowledge.
    Http,
    /// Anything else, or nothing within the wait (a server-first protocol).
    Opaque,
}

/// How long a captured connection may stay silent before it is taken for a
/// server-first protocol and proxied as TCP.
pub(super) const DETECTION_WAIT: Duration = Duration::from_secs(1);

/// Longest method token looked at before deciding it is not HTTP.
const MAX_METHOD: usize = 24;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Decides from `buf` alone, or `None` when more bytes are needed.
fn classify(buf: &[u8]) -> Option<Sniffed> {
    let first = *buf.first()?;
    if first == 0x16 {
        return Some(Sniffed::Tls);
    }
    if buf.starts_with(H2_PREFACE) {
        return Some(Sniffed::Http);
    }
    if H2_PREFACE.starts_with(buf) {
        return None; // maybe the preface: wait for all of it
    }
    for (i, b) in buf.iter().enumerate() {
        match b {
            b' ' if i > 0 => return Some(Sniffed::Http),
            b'A'..=b'Z' | b'-' if i < MAX_METHOD => {}
            _ => return Some(Sniffed::Opaque),
        }
    }
    None
}

/// Reads the first bytes of `io` (waiting at most `wait` for a client that speaks
/// first) and says what they start; the bytes read come back for replay.
pub(crate) async fn sniff<S: AsyncRead + Unpin>(io: &mut S, wait: Duration) -> std::io::Result<(Sniffed, Bytes)> {
    let mut buf = BytesMut::with_capacity(64);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(kind) = classify(&buf) {
            return Ok((kind, buf.freeze()));
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => {
                // Closed or silent: too little to call it HTTP.
                let kind = if buf.is_empty() { Sniffed::Opaque } else { classify(&buf).unwrap_or(Sniffed::Opaque) };
                return Ok((kind, buf.freeze()));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// `sniff` on a captured connection from `peer`: one that fails before its first
/// bytes is logged and given up (`None`).
pub(super) async fn first_bytes<S: AsyncRead + Unpin>(io: &mut S, peer: SocketAddr) -> Option<(Sniffed, Bytes)> {
    match sniff(io, DETECTION_WAIT).await {
        Ok(sniffed) => Some(sniffed),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection failed before its first bytes");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_name_the_protocol() {
        assert_eq!(classify(b"\x16\x03\x01"), Some(Sniffed::Tls));
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Sniffed::Http));
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1"), Some(Sniffed::Http));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(Sniffed::Http));
        assert_eq!(classify(b"PRI * HT"), None, "a partial preface waits");
        assert_eq!(classify(b"POS"), None, "a partial method waits");
        assert_eq!(classify(b"\x00\x00\x00\x01"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Sniffed::Opaque), "methods are upper case");
        assert_eq!(classify(b"*3\r\n$3\r\nSET"), Some(Sniffed::Opaque), "redis");
        assert_eq!(classify(b""), None);
    }

    #[tokio::test]
    async fn a_silent_client_is_opaque_and_bytes_are_kept() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let (kind, bytes) = sniff(&mut a, Duration::from_millis(20)).await.unwrap();
        assert_eq!((kind, bytes.len()), (Sniffed::Opaque, 0));
        tokio::io::AsyncWriteExt::write_all(&mut b, b"DELETE /x HTTP/1.1\r\n").await.unwrap();
        let (kind, bytes) = sniff(&mut a, Duration::from_secs(5)).await.unwrap();
        assert_eq!(kind, Sniffed::Http);
        assert!(bytes.starts_with(b"DELETE"));
    }
}
