//! A tiny built-in upstream for demos: answers every request with a JSON description of
//! it and its own name, so a newcomer can see routing decisions with curl.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

/// Binds `addr` and serves echo responses naming `name`; returns the bound address.
pub async fn serve(addr: SocketAddr, name: String) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let name: Arc<str> = name.into();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(describe(&name, &req)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(local)
}

fn describe(name: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.to_str().unwrap_or_default())))
        .collect();
    let body = serde_json::json!({
        "upstream": name,
        "method": req.method().as_str(),
        "version": format!("{:?}", req.version()),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}
