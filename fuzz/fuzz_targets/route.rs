//! Route matching on arbitrary requests against a table using every match kind.
#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wicket::{route::RequestView, snapshot::Snapshot};

const CONFIG: &str = include_str!("../seeds/route.yaml");
static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let snapshot = common::snapshot(&SNAPSHOT, CONFIG);
    // Lines: method, authority, path[?query], then `name: value` headers.
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or("GET");
    let authority = lines.next().unwrap_or("");
    let target = lines.next().unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut headers = http::HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (http::HeaderName::try_from(k.trim()), http::HeaderValue::from_str(v.trim())) {
                headers.append(k, v);
            }
        }
    }
    let Some((table, _)) = snapshot.route_table(80, None) else { return };
    let Some(vhost) = table.find_vhost(authority) else { return };
    let view =
        RequestView { path, query, method, scheme: "http", authority, headers: &headers, port: 80, claims: None };
    let _ = vhost.find_route(&view);
});
