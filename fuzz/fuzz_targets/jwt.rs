//! JWT extraction and verification on arbitrary tokens in headers and the query.
#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wicket::snapshot::Snapshot;

const CONFIG: &str = include_str!("../seeds/jwt.yaml");
static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let snapshot = common::snapshot(&SNAPSHOT, CONFIG);
    let Some(jwt) = &snapshot.security.jwt else { return };
    let token = String::from_utf8_lossy(data);
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert("authorization", v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&token) {
        headers.insert("x-jwt", v);
    }
    let query = format!("access_token={token}");
    let _ = jwt.authenticate(&mut headers, Some(&query));
});
