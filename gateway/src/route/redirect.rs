//! Istio `HTTPRedirect`: building the `Location` of a redirect response.

use http::StatusCode;

use super::{matchers::StringMatcher, MatchedBlock};
use crate::config::istio::{HttpRedirect, RedirectPortSelection};

/// How the redirect changes the path.
#[derive(Debug, Clone)]
pub enum RedirectPath {
    /// Keep the request path.
    Keep,
    /// Replace the whole path (query kept).
    Whole(String),
    /// Replace the matched prefix.
    Prefix(String),
}

/// Which port the `Location` carries.
#[derive(Debug, Clone, Copy)]
pub enum RedirectPort {
    /// Keep the port the client sent in Host, if any.
    Keep,
    /// An explicit port.
    Explicit(u16),
    /// The scheme's default port (no port in Location).
    ProtocolDefault,
    /// The port the request arrived on.
    RequestPort,
}

/// A compiled redirect.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// Path change.
    pub path: RedirectPath,
    /// Host replacement.
    pub authority: Option<String>,
    /// Scheme replacement.
    pub scheme: Option<String>,
    /// Port choice.
    pub port: RedirectPort,
    /// 301, 302, 303, 307 or 308.
    pub code: StatusCode,
}

/// The request facts a redirect reads.
#[derive(Debug, Clone, Copy)]
pub struct RedirectInput<'a> {
    /// Request scheme.
    pub scheme: &'a str,
    /// Authority as sent.
    pub authority: &'a str,
    /// Path without query.
    pub path: &'a str,
    /// Query without `?`.
    pub query: Option<&'a str>,
    /// Listener port.
    pub listener_port: u16,
}

impl Redirect {
    /// Compiles an Istio redirect; refuses codes Envoy cannot express.
    pub fn compile(r: &HttpRedirect) -> Result<Self, String> {
        let code = match r.redirect_code.unwrap_or(301) {
            c @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(c as u16).map_err(|e| e.to_string())?,
            c => return Err(format!("redirectCode {c} is not supported (use 301, 302, 303, 307 or 308)")),
        };
        let path = match (&r.uri, &r.prefix_rewrite) {
            (Some(_), Some(_)) => return Err("uri and prefixRewrite are mutually exclusive".into()),
            (Some(u), None) => RedirectPath::Whole(u.clone()),
            (None, Some(p)) => RedirectPath::Prefix(p.clone()),
            (None, None) => RedirectPath::Keep,
        };
        if let Some(s) = &r.scheme {
            if s != "http" && s != "https" {
                return Err(format!("scheme {s:?} must be http or https"));
            }
        }
        let port = match (r.port, r.derive_port) {
            (Some(p), _) => RedirectPort::Explicit(u16::try_from(p).map_err(|_| format!("port {p} is out of range"))?),
            (None, Some(RedirectPortSelection::FromRequestPort)) => RedirectPort::RequestPort,
            (None, Some(RedirectPortSelection::FromProtocolDefault)) => RedirectPort::ProtocolDefault,
            (None, None) => RedirectPort::Keep,
        };
        if matches!(path, RedirectPath::Keep)
            && r.authority.is_none()
            && r.scheme.is_none()
            && matches!(port, RedirectPort::Keep)
        {
            return Err("a redirect must set uri, prefixRewrite, authority, scheme or port".into());
        }
        Ok(Self { path, authority: r.authority.clone(), scheme: r.scheme.clone(), port, code })
    }

    /// The `Location` for a request; `matched` is the block that selected the rule.
    pub fn location(&self, req: &RedirectInput<'_>, matched: MatchedBlock<'_>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(req.scheme);
        let (orig_host, orig_port) = split_host_port(req.authority);
        let host = match &self.authority {
            Some(a) => split_host_port(a).0,
            None => orig_host,
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port = match self.port {
            RedirectPort::Explicit(p) => Some(p),
            RedirectPort::ProtocolDefault => None,
            RedirectPort::RequestPort => Some(req.listener_port),
            // Envoy keeps the client's explicit port unless the scheme changes it away.
            RedirectPort::Keep if self.authority.is_some() => {
                split_host_port(self.authority.as_deref().unwrap_or("")).1
            }
            RedirectPort::Keep => {
                orig_port.filter(|&p| scheme == req.scheme || p != if req.scheme == "https" { 443 } else { 80 })
            }
        }
        .filter(|&p| {
            !(p == default_port && matches!(self.port, RedirectPort::ProtocolDefault | RedirectPort::RequestPort))
        });
        let path = match &self.path {
            RedirectPath::Keep => req.path.to_string(),
            RedirectPath::Whole(p) => p.clone(),
            RedirectPath::Prefix(p) => {
                let matched_len = match matched.and_then(|m| m.uri.as_ref()) {
                    Some(StringMatcher::Prefix(prefix)) => prefix.len(),
                    _ => 0,
                };
                format!("{p}{}", req.path.get(matched_len..).unwrap_or_default())
            }
        };
        let mut out = format!("{scheme}://{host}");
        if let Some(p) = port {
            out.push_str(&format!(":{p}"));
        }
        out.push_str(&path);
        if let Some(q) = req.query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    let host = crate::http_parts::strip_port(authority);
    let port = authority.get(host.len() + 1..).and_then(|p| p.parse().ok());
    (host, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(authority: &'a str, scheme: &'a str) -> RedirectInput<'a> {
        RedirectInput { scheme, authority, path: "/old/x", query: Some("a=1"), listener_port: 8080 }
    }

    #[test]
    fn uri_redirect_keeps_query_and_host_port() {
        let r = Redirect::compile(&HttpRedirect { uri: Some("/new".into()), ..Default::default() }).unwrap();
        assert_eq!(r.location(&input("b:8080", "http"), None), "http://b:8080/new?a=1");
        assert_eq!(r.code, StatusCode::MOVED_PERMANENTLY);
    }

    #[test]
    fn scheme_change_drops_default_port_and_request_port_is_kept() {
        let https = Redirect::compile(&HttpRedirect { scheme: Some("https".into()), ..Default::default() }).unwrap();
        assert_eq!(https.location(&input("b:80", "http"), None), "https://b/old/x?a=1");
        let from_req = HttpRedirect {
            scheme: Some("https".into()),
            derive_port: Some(RedirectPortSelection::FromRequestPort),
            ..Default::default()
        };
        let r = Redirect::compile(&from_req).unwrap();
        assert_eq!(r.location(&input("b", "http"), None), "https://b:8080/old/x?a=1");
    }

    #[test]
    fn unsupported_codes_are_refused() {
        let r = HttpRedirect { uri: Some("/x".into()), redirect_code: Some(305), ..Default::default() };
        assert!(Redirect::compile(&r).is_err());
    }
}
