//! Responses the gateway makes itself: errors, redirects, direct responses, fault
//! aborts, CORS preflights. Each carries the response flags for the access log.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::body::{full, ResponseBody};
use crate::{error::ProxyError, error::ResponseFlags, route::Cors, telemetry::AccessRecord};

/// A response made by the gateway. Boxed: it travels in `Err` on the request path.
#[derive(Debug)]
pub(super) struct LocalReply(Box<Reply>);

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    flags: ResponseFlags,
    details: Option<String>,
}

impl LocalReply {
    pub(super) fn bytes(status: StatusCode, body: Bytes) -> Self {
        Self(Box::new(Reply {
            status,
            headers: HeaderMap::new(),
            body,
            flags: ResponseFlags::default(),
            details: None,
        }))
    }

    pub(super) fn text(status: StatusCode, body: &'static str) -> Self {
        let mut reply = Self::bytes(status, Bytes::from_static(body.as_bytes()));
        if !body.is_empty() {
            reply.0.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        reply
    }

    /// The answer to a proxy error: status, body and flag from `ProxyError`. A
    /// malformed request also closes its connection, as Envoy does at the edge.
    pub(super) fn error(e: &ProxyError) -> Self {
        let mut reply = Self::text(e.status(), e.body()).with_flags(e.flag());
        if e.side() == crate::error::Side::Downstream {
            reply.0.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        reply.0.details = Some(e.to_string());
        reply
    }

    /// 401 for an invalid JWT, with Envoy's body and `www-authenticate`.
    pub(super) fn unauthenticated(reason: &str, realm: &str) -> Self {
        let mut reply = Self::bytes(StatusCode::UNAUTHORIZED, Bytes::from(reason.to_string()));
        let challenge = format!("Bearer realm=\"{realm}\", error=\"invalid_token\"");
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            reply.0.headers.insert(header::WWW_AUTHENTICATE, v);
        }
        reply.0.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        reply.0.details = Some(format!("jwt_authn_access_denied{{{reason}}}"));
        reply
    }

    /// 403 from AuthorizationPolicy; the policy is named in the access log only.
    pub(super) fn forbidden(policy: &str) -> Self {
        let mut reply = Self::text(StatusCode::FORBIDDEN, "RBAC: access denied");
        reply.0.details = Some(format!("rbac_access_denied_matched_policy[{policy}]"));
        reply
    }

    pub(super) fn redirect(status: StatusCode, location: &str) -> Self {
        let mut reply = Self::bytes(status, Bytes::new());
        if let Ok(v) = HeaderValue::from_str(location) {
            reply.0.headers.insert(header::LOCATION, v);
        }
        reply
    }

    /// A trailers-only gRPC answer.
    pub(super) fn grpc(code: u32, message: &'static str) -> Self {
        let mut reply = Self::bytes(StatusCode::OK, Bytes::new());
        reply.0.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        reply.0.headers.insert("grpc-status", HeaderValue::from(code));
        reply.0.headers.insert("grpc-message", HeaderValue::from_static(message));
        reply
    }

    pub(super) fn preflight(cors: &Cors, origin: &HeaderValue) -> Self {
        let mut reply = Self::bytes(StatusCode::OK, Bytes::new());
        cors.preflight_headers(origin, &mut reply.0.headers);
        reply
    }

    /// A filter's local reply (`proxy_send_local_response`); UAEX in the access log.
    pub(super) fn wasm(r: crate::wasm::LocalResponse) -> Self {
        let mut reply = match r.grpc_status {
            Some(code) => {
                let mut g = Self::bytes(StatusCode::OK, Bytes::new());
                g.0.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                g.0.headers.insert("grpc-status", HeaderValue::from(code));
                if let Ok(v) = HeaderValue::from_bytes(&r.body) {
                    g.0.headers.insert("grpc-message", v);
                }
                g
            }
            None => Self::bytes(r.status, r.body),
        };
        for (k, v) in r.headers {
            reply.0.headers.append(k, v);
        }
        reply.0.details = Some(if r.details.is_empty() { "wasm_local_reply".into() } else { r.details });
        reply.with_flags(ResponseFlags::UAEX)
    }

    pub(super) fn with_flags(mut self, flags: ResponseFlags) -> Self {
        self.0.flags.insert(flags);
        self
    }

    pub(super) fn with_details(mut self, details: String) -> Self {
        self.0.details = Some(details);
        self
    }

    pub(super) fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.0.headers
    }

    /// The response; records flags and details in the access log record.
    pub(super) fn into_response(self, record: &mut AccessRecord) -> Response<ResponseBody> {
        let reply = *self.0;
        record.flags(reply.flags);
        record.response_details = reply.details;
        let mut resp = Response::new(full(reply.body));
        *resp.status_mut() = reply.status;
        *resp.headers_mut() = reply.headers;
        resp
    }
}
