//! Header maps as filters see them (ABI §7.3, §9.6): HTTP/2-style pseudo-headers
//! (`:method`, `:path`, `:authority`, `:scheme`, `:status`) over the request and
//! response heads, lower-case names, one entry per header line.

use http::{uri::PathAndQuery, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

use super::{
    host::{Host, Stage},
    status::{Status, BAD_ARGUMENT, NOT_FOUND},
};

/// `proxy_map_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    CallResponseHeaders,
    CallResponseTrailers,
}

impl MapType {
    pub(super) fn from_abi(v: u32) -> Result<Self, Status> {
        Ok(match v {
            0 => Self::RequestHeaders,
            1 => Self::RequestTrailers,
            2 => Self::ResponseHeaders,
            3 => Self::ResponseTrailers,
            6 => Self::CallResponseHeaders,
            7 => Self::CallResponseTrailers,
            // gRPC metadata maps exist only during gRPC callbacks, which Wicket never makes.
            4 | 5 => return Err(NOT_FOUND),
            _ => return Err(BAD_ARGUMENT),
        })
    }
}

/// Every entry of a map, pseudo-headers first. Missing maps read as empty.
pub(super) fn pairs(host: &mut Host, map: MapType) -> Vec<(Vec<u8>, Vec<u8>)> {
    match map {
        MapType::CallResponseHeaders => host.call.as_ref().map(|c| c.headers.clone()).unwrap_or_default(),
        MapType::CallResponseTrailers => host.call.as_ref().map(|c| c.trailers.clone()).unwrap_or_default(),
        _ => {
            let Some(s) = host.stream() else { return Vec::new() };
            let scheme = s.facts.info.scheme;
            match map {
                MapType::RequestHeaders => s.request_view().map_or_else(Vec::new, |r| {
                    let mut out = vec![
                        (b":authority".to_vec(), authority(&r.uri, &r.headers).unwrap_or_default().to_vec()),
                        (b":path".to_vec(), path(&r.uri).as_bytes().to_vec()),
                        (b":method".to_vec(), r.method.as_str().as_bytes().to_vec()),
                        (b":scheme".to_vec(), scheme.as_bytes().to_vec()),
                    ];
                    out.extend(plain(&r.headers));
                    out
                }),
                MapType::ResponseHeaders => s.response.as_ref().map_or_else(Vec::new, |r| {
                    let mut out = vec![(b":status".to_vec(), r.status.as_str().as_bytes().to_vec())];
                    out.extend(plain(&r.headers));
                    out
                }),
                MapType::RequestTrailers => s.request_trailers.as_ref().map(|h| plain(h).collect()).unwrap_or_default(),
                MapType::ResponseTrailers => {
                    s.response_trailers.as_ref().map(|h| plain(h).collect()).unwrap_or_default()
                }
                _ => Vec::new(),
            }
        }
    }
}

fn plain(h: &HeaderMap) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    h.iter()
        .filter(|(k, _)| *k != http::header::HOST)
        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
}

fn path(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", PathAndQuery::as_str)
}

fn authority<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    uri.authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| headers.get(http::header::HOST).map(HeaderValue::as_bytes))
}

/// First value of `key` (lower-cased by the caller).
pub(super) fn value(host: &mut Host, map: MapType, key: &[u8]) -> Option<Vec<u8>> {
    if matches!(map, MapType::CallResponseHeaders | MapType::CallResponseTrailers) {
        return pairs(host, map).into_iter().find(|(k, _)| k == key).map(|(_, v)| v);
    }
    let s = host.stream()?;
    let scheme = s.facts.info.scheme;
    match map {
        MapType::RequestHeaders => {
            let r = s.request_view()?;
            match key {
                b":authority" | b"host" => authority(&r.uri, &r.headers).map(<[u8]>::to_vec),
                b":path" => Some(path(&r.uri).as_bytes().to_vec()),
                b":method" => Some(r.method.as_str().as_bytes().to_vec()),
                b":scheme" => Some(scheme.as_bytes().to_vec()),
                _ => r.headers.get(name(key).ok()?).map(|v| v.as_bytes().to_vec()),
            }
        }
        MapType::ResponseHeaders => {
            let r = s.response.as_ref()?;
            match key {
                b":status" => Some(r.status.as_str().as_bytes().to_vec()),
                _ => r.headers.get(name(key).ok()?).map(|v| v.as_bytes().to_vec()),
            }
        }
        MapType::RequestTrailers => s.request_trailers.as_ref()?.get(name(key).ok()?).map(|v| v.as_bytes().to_vec()),
        MapType::ResponseTrailers => s.response_trailers.as_ref()?.get(name(key).ok()?).map(|v| v.as_bytes().to_vec()),
        _ => None,
    }
}

fn name(key: &[u8]) -> Result<HeaderName, Status> {
    HeaderName::from_bytes(key).map_err(|_| BAD_ARGUMENT)
}

/// How an entry changes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Edit {
    Add,
    Replace,
    Remove,
}

/// Applies one edit. Writes outside the phase that owns the map are filter bugs:
/// BAD_ARGUMENT, as Envoy answers.
pub(super) fn edit(host: &mut Host, map: MapType, key: &[u8], val: &[u8], how: Edit) -> Result<(), Status> {
    let stage = host.stage;
    let s = host.stream().ok_or(BAD_ARGUMENT)?;
    let writable = match map {
        MapType::RequestHeaders | MapType::RequestTrailers => !matches!(
            stage,
            Stage::Log | Stage::Teardown | Stage::ResponseHeaders | Stage::ResponseBody | Stage::ResponseTrailers
        ),
        MapType::ResponseHeaders | MapType::ResponseTrailers => !matches!(stage, Stage::Log | Stage::Teardown),
        _ => false,
    };
    if !writable {
        tracing::debug!(?map, ?stage, "filter wrote a header map that is read-only now");
        return Err(BAD_ARGUMENT);
    }
    let value = || HeaderValue::from_bytes(val).map_err(|_| BAD_ARGUMENT);
    match map {
        MapType::RequestHeaders => {
            let r = s.request.as_mut().ok_or(BAD_ARGUMENT)?;
            match key {
                b":method" => {
                    if !matches!(how, Edit::Remove) {
                        r.method = Method::from_bytes(val).map_err(|_| BAD_ARGUMENT)?;
                    }
                    Ok(())
                }
                b":path" => {
                    if !matches!(how, Edit::Remove) {
                        let pq = PathAndQuery::try_from(val).map_err(|_| BAD_ARGUMENT)?;
                        let mut parts = std::mem::take(&mut r.uri).into_parts();
                        parts.path_and_query = Some(pq);
                        r.uri = Uri::from_parts(parts).map_err(|_| BAD_ARGUMENT)?;
                    }
                    Ok(())
                }
                b":authority" | b"host" => {
                    if !matches!(how, Edit::Remove) {
                        if r.uri.authority().is_some() {
                            let mut parts = std::mem::take(&mut r.uri).into_parts();
                            parts.authority = Some(val.try_into().map_err(|_| BAD_ARGUMENT)?);
                            r.uri = Uri::from_parts(parts).map_err(|_| BAD_ARGUMENT)?;
                        }
                        r.headers.insert(http::header::HOST, value()?);
                    }
                    Ok(())
                }
                b":scheme" => Ok(()),
                _ => edit_map(&mut r.headers, key, value, how),
            }
        }
        MapType::ResponseHeaders => {
            let r = s.response.as_mut().ok_or(BAD_ARGUMENT)?;
            if key == b":status" {
                if !matches!(how, Edit::Remove) {
                    let code = std::str::from_utf8(val).ok().and_then(|v| v.parse::<u16>().ok());
                    r.status = code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(BAD_ARGUMENT)?;
                }
                return Ok(());
            }
            edit_map(&mut r.headers, key, value, how)
        }
        MapType::RequestTrailers => edit_map(s.request_trailers.get_or_insert_with(HeaderMap::new), key, value, how),
        MapType::ResponseTrailers => edit_map(s.response_trailers.get_or_insert_with(HeaderMap::new), key, value, how),
        _ => Err(BAD_ARGUMENT),
    }
}

fn edit_map(
    map: &mut HeaderMap,
    key: &[u8],
    value: impl FnOnce() -> Result<HeaderValue, Status>,
    how: Edit,
) -> Result<(), Status> {
    let key = name(key)?;
    match how {
        Edit::Add => {
            map.append(key, value()?);
        }
        Edit::Replace => {
            map.insert(key, value()?);
        }
        Edit::Remove => {
            map.remove(key);
        }
    }
    Ok(())
}

/// `proxy_set_header_map_pairs`: the map becomes exactly `pairs` (pseudo-headers
/// update the request line or status).
pub(super) fn set_all(host: &mut Host, map: MapType, pairs: &[(&[u8], &[u8])]) -> Result<(), Status> {
    let s = host.stream().ok_or(BAD_ARGUMENT)?;
    match map {
        MapType::RequestHeaders => s.request.as_mut().ok_or(BAD_ARGUMENT)?.headers.clear(),
        MapType::ResponseHeaders => s.response.as_mut().ok_or(BAD_ARGUMENT)?.headers.clear(),
        MapType::RequestTrailers => s.request_trailers = Some(HeaderMap::new()),
        MapType::ResponseTrailers => s.response_trailers = Some(HeaderMap::new()),
        _ => return Err(BAD_ARGUMENT),
    }
    for (k, v) in pairs {
        edit(host, map, &k.to_ascii_lowercase(), v, Edit::Add)?;
    }
    Ok(())
}
