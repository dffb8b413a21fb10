//! A plain HTTP client: one fresh connection per request, HTTP/1.1 or h2c.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A response read to the end.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text.
    pub body: String,
    /// Trailers, if any.
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A GET request for `host` + `path`.
pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("host", host).body(Full::new(Bytes::new())).unwrap()
}

/// Sends over HTTP/1.1.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Resp {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    read(sender.send_request(req).await.unwrap()).await
}

/// Sends over HTTP/2 with prior knowledge; `host` becomes `:authority`.
pub async fn send_h2(addr: SocketAddr, host: &str, mut req: Request<Full<Bytes>>) -> Resp {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    *req.uri_mut() = format!("http://{host}{pq}").parse().unwrap();
    req.headers_mut().remove("host");
    read(sender.send_request(req).await.unwrap()).await
}

async fn read(resp: http::Response<hyper::body::Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        trailers,
    }
}

/// Why a TLS request did not get a response.
#[derive(Debug)]
pub struct TlsFailure(pub String);

/// Connects with TLS (SNI `sni`), then sends `req` over the ALPN-negotiated protocol.
/// The negotiated protocol and the server's leaf certificate come back too.
pub async fn send_tls(
    addr: SocketAddr,
    sni: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    mut req: Request<Full<Bytes>>,
) -> Result<(Resp, Option<Vec<u8>>, Vec<u8>), TlsFailure> {
    let stream = TcpStream::connect(addr).await.map_err(|e| TlsFailure(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let tls =
        tokio_rustls::TlsConnector::from(config).connect(name, stream).await.map_err(|e| TlsFailure(e.to_string()))?;
    let (_, conn) = tls.get_ref();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| TlsFailure(e.to_string()))?;
        tokio::spawn(conn);
        let host = req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or(sni).to_string();
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        *req.uri_mut() = format!("https://{host}{pq}").parse().unwrap();
        req.headers_mut().remove("host");
        sender.send_request(req).await.map_err(|e| TlsFailure(e.to_string()))?
    } else {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| TlsFailure(e.to_string()))?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| TlsFailure(e.to_string()))?
    };
    Ok((read(resp).await, alpn, leaf))
}
