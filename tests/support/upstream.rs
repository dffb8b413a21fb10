//! Real upstream servers for tests (HTTP/1.1 and h2c on one port). Each answers with
//! its name and records what it received. Paths drive behaviour:
//! `/status/N` answers N, `/delay/MS` waits first, `/grpc` answers with trailers,
//! a WebSocket upgrade is accepted and echoed.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What an upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1).
    pub authority: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// The client side of the connection it came on (one per connection).
    pub peer: SocketAddr,
}

/// A running upstream.
pub struct Upstream {
    /// Bound address.
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Recorded>>>,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
}

/// What a TLS upstream saw of a handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// SNI sent by the gateway.
    pub sni: Option<String>,
    /// Whether the gateway presented a client certificate.
    pub client_cert: bool,
    /// ALPN protocol agreed.
    pub alpn: Option<String>,
}

type Body = BoxBody<Bytes, Infallible>;

impl Upstream {
    /// An upstream answering 200 with `name`.
    pub async fn start(name: &str) -> Self {
        Self::failing_first(name, 0, StatusCode::OK).await
    }

    /// An upstream whose first `n` requests get `status`, then 200.
    pub async fn failing_first(name: &str, n: usize, status: StatusCode) -> Self {
        Self::spawn(name, n, status, Duration::ZERO).await
    }

    /// An upstream that waits `delay` before answering every request.
    pub async fn slow(name: &str, delay: Duration) -> Self {
        Self::spawn(name, 0, StatusCode::OK, delay).await
    }

    /// An upstream speaking TLS with `config`; it records each handshake's SNI and
    /// whether the client presented a certificate.
    pub async fn tls(name: &str, config: Arc<rustls::ServerConfig>) -> Self {
        Self::serve(name, (0, StatusCode::OK, Duration::ZERO), Some(config)).await
    }

    async fn spawn(name: &str, n: usize, status: StatusCode, delay: Duration) -> Self {
        Self::serve(name, (n, status, delay), None).await
    }

    async fn serve(name: &str, behaviour: Behaviour, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let (n, status, delay) = behaviour;
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let hs = handshakes.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let name: Arc<str> = name.into();
        let (h, s) = (hits.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let (name, hits, seen) = (name.clone(), h.clone(), s.clone());
                let (acceptor, hs) = (acceptor.clone(), hs.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (name, hits, seen) = (name.clone(), hits.clone(), seen.clone());
                        async move { Ok::<_, Infallible>(answer(req, &name, &hits, &seen, (n, status, delay), peer).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        None => {
                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(stream).await else { return };
                            let (_, conn) = tls.get_ref();
                            let seen = Handshake {
                                sni: conn.server_name().map(str::to_string),
                                client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                                alpn: conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
                            };
                            hs.lock().unwrap().push(seen);
                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc).await;
                        }
                    }
                });
            }
        });
        Self { addr, hits, seen, handshakes }
    }

    /// TLS handshakes accepted so far.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().unwrap().clone()
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Recorded {
        self.seen().pop().expect("the upstream received a request")
    }
}

/// `(fail first n, with status, delay every answer)`.
type Behaviour = (usize, StatusCode, Duration);

async fn answer(
    mut req: Request<hyper::body::Incoming>,
    name: &str,
    hits: &AtomicUsize,
    seen: &Mutex<Vec<Recorded>>,
    behaviour: Behaviour,
    peer: SocketAddr,
) -> Response<Body> {
    let (n, status, delay) = behaviour;
    let count = hits.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(delay).await;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    if req.headers().get("upgrade").is_some_and(|v| v == "websocket") {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(io) = upgrade.await {
                let mut io = TokioIo::new(io);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let authority = match parts.uri.authority() {
        Some(a) => a.to_string(),
        None => parts.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or_default().to_string(),
    };
    seen.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path: path.clone(),
        authority,
        headers: parts.headers,
        body,
        peer,
    });
    if let Some(ms) = path.strip_prefix("/delay/").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path == "/grpc" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames =
            vec![Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))), Ok(Frame::trailers(trailers))];
        return Response::builder()
            .header("content-type", "application/grpc")
            .body(StreamBody::new(futures_stream(frames)).boxed())
            .unwrap();
    }
    let code = match path.strip_prefix("/status/").and_then(|v| v.parse::<u16>().ok()) {
        Some(c) => StatusCode::from_u16(c).unwrap(),
        None if count < n => status,
        None => StatusCode::OK,
    };
    Response::builder()
        .status(code)
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(name.to_string())).boxed())
        .unwrap()
}

fn futures_stream<T: Send + 'static>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Send {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    impl<T> Unpin for Iter<T> {}
    Iter(items.into_iter())
}

/// A raw TCP server on loopback: `handle` runs for every accepted connection (each in
/// its own task). Returns the bound port.
pub async fn raw<F, Fut>(handle: F) -> u16
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(handle(s));
        }
    });
    port
}

/// A TCP server echoing what it reads. Returns its port.
pub async fn tcp_echo() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw(|mut s| async move {
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    })
    .await
}
