//! Values inside a request that routing, JWT extraction, load balancing and upstream
//! TLS all read: the host of an authority, query parameters and cookies.

use http::HeaderMap;

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
pub(crate) fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The value of the first `name` parameter in a raw query string (no decoding; a bare
/// `name` has the empty value).
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The value of the first cookie called `name` across every `Cookie` header.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
        c.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_query_params_and_cookies() {
        assert_eq!(query_param(Some("a=1&b&c=3"), "b"), Some(""));
        assert_eq!(query_param(Some("a=1&c=3"), "c"), Some("3"));
        assert_eq!(query_param(None, "c"), None);
        let mut h = HeaderMap::new();
        h.append("cookie", "x=1; user=ann".parse().unwrap());
        h.append("cookie", "user=bob".parse().unwrap());
        assert_eq!(cookie(&h, "user"), Some("ann"));
        assert_eq!(cookie(&h, "nope"), None);
    }
}
