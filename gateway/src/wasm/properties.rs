//! `proxy_get_property` / `proxy_set_property` (ABI §12): Envoy's attribute paths with
//! Envoy's encodings (strings raw, integers 8 bytes little-endian, booleans 1 byte,
//! timestamps as nanoseconds). Unknown names fall back to values the filters set.

use std::time::UNIX_EPOCH;

use http::HeaderMap;

use super::{host::Host, pairs};

/// Splits a path: NUL-separated segments, or one dotted string (a common mistake in
/// filters written against the dotted documentation).
fn segments(path: &[u8]) -> Vec<&[u8]> {
    if path.contains(&0) {
        path.split(|b| *b == 0).collect()
    } else {
        path.split(|b| *b == b'.').collect()
    }
}

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn map(h: &HeaderMap) -> Vec<u8> {
    let mut joined: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, v) in h {
        match joined.iter_mut().find(|(n, _)| n == k.as_str()) {
            Some((_, prev)) => {
                prev.push(b',');
                prev.extend_from_slice(v.as_bytes());
            }
            None => joined.push((k.as_str().to_string(), v.as_bytes().to_vec())),
        }
    }
    pairs::encode(joined.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())))
}

/// The value of a property, or `None` (NOT_FOUND).
pub(super) fn get(host: &mut Host, path: &[u8]) -> Option<Vec<u8>> {
    let segs = segments(path);
    let plugin = host.plugin.clone();
    match segs.as_slice() {
        [b"plugin_name"] => return Some(plugin.name.as_bytes().to_vec()),
        [b"plugin_root_id"] => return Some(plugin.root_id.as_bytes().to_vec()),
        [b"plugin_vm_id"] => return Some(plugin.vm_id.as_bytes().to_vec()),
        [b"node", b"id"] | [b"xds", b"node", b"id"] => return Some(plugin.node_id.as_bytes().to_vec()),
        [b"node", b"cluster"] => return Some(b"wicket".to_vec()),
        [b"listener_direction"] | [b"xds", b"listener_direction"] => return Some(int(1)), // OUTBOUND at a gateway
        _ => {}
    }
    let Some(s) = host.stream() else {
        return host.root_props.get(path).cloned();
    };
    let facts = s.facts.clone();
    let info = &facts.info;
    let req = s.request_view();
    let header = |name: &str| req.and_then(|r| r.headers.get(name)).map(|v| v.as_bytes().to_vec());
    let v = match segs.as_slice() {
        [b"request", b"path"] => req.map(|r| r.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes().to_vec()),
        [b"request", b"url_path"] => req.map(|r| r.uri.path().as_bytes().to_vec()),
        [b"request", b"host"] => {
            req.and_then(|r| r.uri.authority().map(|a| a.as_str().as_bytes().to_vec()).or_else(|| header("host")))
        }
        [b"request", b"scheme"] => Some(info.scheme.as_bytes().to_vec()),
        [b"request", b"method"] => req.map(|r| r.method.as_str().as_bytes().to_vec()),
        [b"request", b"headers"] => req.map(|r| map(&r.headers)),
        [b"request", b"headers", name] => {
            let name = std::str::from_utf8(name).ok()?.to_ascii_lowercase();
            let all: Vec<&[u8]> = req?.headers.get_all(name.as_str()).iter().map(|v| v.as_bytes()).collect();
            (!all.is_empty()).then(|| all.join(&b","[..]))
        }
        [b"request", b"referer"] => header("referer"),
        [b"request", b"useragent"] => header("user-agent"),
        [b"request", b"id"] => Some(info.request_id.as_bytes().to_vec()),
        [b"request", b"protocol"] => Some(info.protocol.as_bytes().to_vec()),
        [b"request", b"query"] => req.map(|r| r.uri.query().unwrap_or("").as_bytes().to_vec()),
        [b"request", b"time"] => Some(int(info.start.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64))),
        [b"response", b"code"] => {
            s.response.as_ref().map(|r| r.status.as_u16()).or(s.response_code).map(|c| int(c.into()))
        }
        [b"response", b"code_details"] => s.response_code.map(|_| b"via_upstream".to_vec()),
        [b"response", b"headers"] => s.response.as_ref().map(|r| map(&r.headers)),
        [b"response", b"headers", name] => {
            let name = std::str::from_utf8(name).ok()?.to_ascii_lowercase();
            s.response.as_ref()?.headers.get(name.as_str()).map(|v| v.as_bytes().to_vec())
        }
        [b"response", b"trailers"] => s.response_trailers.as_ref().map(map),
        [b"source", b"address"] => Some(info.source.to_string().into_bytes()),
        [b"source", b"port"] => Some(int(info.source.port().into())),
        [b"destination", b"port"] => Some(int(info.destination_port.into())),
        [b"connection", b"id"] => Some(int(info.connection_id as i64)),
        [b"connection", b"mtls"] => Some(vec![u8::from(info.mtls)]),
        [b"connection", b"requested_server_name"] => Some(info.sni.as_deref().unwrap_or("").as_bytes().to_vec()),
        [b"connection", b"tls_version"] => info.tls_version.map(|v| v.as_bytes().to_vec()),
        [b"connection", b"uri_san_peer_certificate"] => info.peer_uri_san.as_ref().map(|u| u.as_bytes().to_vec()),
        [b"request", b"auth", b"principal"] => facts.identity.get()?.principal.clone().map(String::into_bytes),
        [b"request", b"auth", b"issuer"] => Some(facts.identity.get()?.issuer.clone().into_bytes()),
        [b"request", b"auth", b"audiences"] => {
            let aud = facts.identity.get()?.claims.get("aud")?;
            Some(match aud {
                serde_json::Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            })
        }
        [b"request", b"auth", b"presenter"] => {
            facts.identity.get()?.claims.get("azp")?.as_str().map(|s| s.as_bytes().to_vec())
        }
        [b"request", b"auth", b"claims"] => Some(facts.identity.get()?.claims.to_string().into_bytes()),
        [b"request", b"auth", b"claims", rest @ ..] => {
            // Nested claims by segment; strings raw, anything else as JSON.
            let mut v = &facts.identity.get()?.claims;
            for seg in rest {
                v = v.get(std::str::from_utf8(seg).ok()?)?;
            }
            Some(match v {
                serde_json::Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            })
        }
        [b"xds", b"route_name"] | [b"route_name"] => s.route_name.as_ref().map(|r| r.as_bytes().to_vec()),
        [b"xds", b"cluster_name"] | [b"cluster_name"] => s.cluster_name.as_ref().map(|r| r.as_bytes().to_vec()),
        _ => None,
    };
    v.or_else(|| s.props.get(path).cloned()).or_else(|| {
        // Envoy stores user properties under `wasm.<path>`; accept either spelling.
        let stripped = path.strip_prefix(b"wasm.").or_else(|| path.strip_prefix(b"wasm\0"))?;
        s.props.get(stripped).cloned()
    })
}

/// Stores a user property on the stream (or the root when no stream is current).
pub(super) fn set(host: &mut Host, path: Vec<u8>, value: Vec<u8>) {
    match host.stream() {
        Some(s) => {
            s.props.insert(path, value);
        }
        None => {
            host.root_props.insert(path, value);
        }
    }
}
