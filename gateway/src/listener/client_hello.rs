//! Reading the TLS ClientHello before deciding what to do with a connection: the SNI
//! picks the Gateway server (terminate or pass through), and the bytes read are
//! replayed to rustls or to the passthrough upstream.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// TLS handshake record type.
const HANDSHAKE: u8 = 0x16;
/// Largest TLS record payload.
const MAX_RECORD: usize = 16 * 1024 + 256;

/// What the first ClientHello record says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ClientHello {
    /// Server name indication, lower-cased.
    pub sni: Option<String>,
    /// ALPN protocols offered.
    pub alpn: Vec<Vec<u8>>,
}

/// Why a connection is not a TLS connection we can read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelloError {
    /// The first bytes are not a TLS handshake record (e.g. plaintext HTTP).
    #[error("not a TLS handshake (first byte {0:#04x})")]
    NotTls(u8),
    /// The record is malformed.
    #[error("malformed ClientHello")]
    Malformed,
    /// No ClientHello within the handshake deadline.
    #[error("no ClientHello within {0:?}")]
    Timeout(Duration),
    /// Reading failed.
    #[error("reading the ClientHello failed")]
    Io(#[from] io::Error),
}

/// Reads the first TLS record from `io` (within `deadline`), parses it, and returns
/// the parse with the raw bytes to replay.
pub(crate) async fn read<R: AsyncRead + Unpin>(
    io: &mut R,
    deadline: Duration,
) -> Result<(ClientHello, Bytes), HelloError> {
    tokio::time::timeout(deadline, read_record(io)).await.map_err(|_| HelloError::Timeout(deadline))?
}

async fn read_record<R: AsyncRead + Unpin>(io: &mut R) -> Result<(ClientHello, Bytes), HelloError> {
    let mut buf = BytesMut::with_capacity(1024);
    while buf.len() < 5 {
        if io.read_buf(&mut buf).await? == 0 {
            return Err(HelloError::Malformed);
        }
    }
    if buf[0] != HANDSHAKE {
        return Err(HelloError::NotTls(buf[0]));
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if len > MAX_RECORD {
        return Err(HelloError::Malformed);
    }
    while buf.len() < 5 + len {
        if io.read_buf(&mut buf).await? == 0 {
            return Err(HelloError::Malformed);
        }
    }
    let hello = parse(&buf[5..5 + len]).unwrap_or_default();
    Ok((hello, buf.freeze()))
}

/// Parses a handshake message holding a ClientHello; `None` when it is not one.
fn parse(msg: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(msg);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let body_len = r.u24()?;
    let mut r = Reader(r.take(body_len).unwrap_or(r.0));
    r.take(2 + 32)?; // version, random
    let session = usize::from(r.u8()?);
    r.take(session)?;
    let suites = usize::from(r.u16()?);
    r.take(suites)?;
    let compression = usize::from(r.u8()?);
    r.take(compression)?;
    let mut hello = ClientHello::default();
    if r.0.is_empty() {
        return Some(hello);
    }
    let ext_len = usize::from(r.u16()?);
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let mut data = Reader(exts.take(len)?);
        match kind {
            0 => {
                let list_len = usize::from(data.u16()?);
                let mut list = Reader(data.take(list_len)?);
                while !list.0.is_empty() {
                    let name_type = list.u8()?;
                    let name_len = usize::from(list.u16()?);
                    let name = list.take(name_len)?;
                    if name_type == 0 {
                        hello.sni = std::str::from_utf8(name).ok().map(str::to_ascii_lowercase);
                    }
                }
            }
            16 => {
                let list_len = usize::from(data.u16()?);
                let mut list = Reader(data.take(list_len)?);
                while !list.0.is_empty() {
                    let proto_len = usize::from(list.u8()?);
                    let proto = list.take(proto_len)?;
                    hello.alpn.push(proto.to_vec());
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3).map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

/// A stream that first yields bytes already read from it.
pub(crate) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Replays `prefix`, then reads from `inner`.
    pub(crate) fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }

    /// Replays `read` (bytes already taken from this stream), then what this stream
    /// had left to replay, then the rest of the inner stream.
    pub(crate) fn rewound(self, read: Bytes) -> Self {
        if self.prefix.is_empty() {
            return Self::new(read, self.inner);
        }
        let mut both = bytes::BytesMut::from(&read[..]);
        both.extend_from_slice(&self.prefix);
        Self::new(both.freeze(), self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for `shop.example.com` with ALPN h2.
    async fn rustls_hello() -> Bytes {
        let mut roots = rustls::RootCertStore::empty();
        let cert = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        roots.add(cert.cert.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("Shop.Example.com").unwrap();
        let mut conn = rustls::ClientConnection::new(config.into(), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        Bytes::from(out)
    }

    #[tokio::test]
    async fn reads_sni_and_alpn_and_keeps_the_bytes() {
        let bytes = rustls_hello().await;
        let mut io = &bytes[..];
        let (hello, raw) = read(&mut io, Duration::from_secs(1)).await.unwrap();
        assert_eq!(hello.sni.as_deref(), Some("shop.example.com"));
        assert_eq!(hello.alpn, vec![b"h2".to_vec()]);
        assert_eq!(raw, bytes);
    }

    #[tokio::test]
    async fn plaintext_is_not_tls() {
        let mut io = &b"GET / HTTP/1.1\r\n\r\n"[..];
        assert!(matches!(read(&mut io, Duration::from_secs(1)).await, Err(HelloError::NotTls(b'G'))));
    }
}
