//! Micro-benchmarks of the per-request hot paths and of compiling a snapshot:
//! `cargo bench -p wicket --bench hot_paths`. Figures go in bench/RESULTS.md; no
//! test asserts on them.

#![allow(missing_docs, clippy::unwrap_used)]

use std::{hint::black_box, path::Path, time::SystemTime};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue, Request};
use wicket::{
    config::Bootstrap,
    route::RequestView,
    snapshot::{compile, Caches, Snapshot},
    wasm::{Phase, StreamInfo, Traffic, WasmStream},
};

const GATEWAY: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n";

/// A Gateway, and `n` VirtualServices whose prefix routes all miss but the last.
fn routes(n: usize) -> String {
    let mut docs = vec![GATEWAY.to_string()];
    for i in 0..n {
        docs.push(format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs-{i:05}, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - match: [{{uri: {{prefix: /svc-{i}/}}}}, {{headers: {{x-tenant: {{exact: t{i}}}}}}}]\n    directResponse: {{status: 200}}\n"
        ));
    }
    docs.join("---\n")
}

fn snapshot(yaml: &str, caches: &Caches) -> Snapshot {
    let loaded = wicket::config::load_text(yaml, Path::new("bench.yaml"), "default");
    let bootstrap = Bootstrap { config_dir: Some(std::env::temp_dir()), ..Bootstrap::default() };
    compile(&loaded.resources, &bootstrap, caches).snapshot
}

fn route_matching(c: &mut Criterion) {
    let caches = Caches::default();
    let headers = HeaderMap::new();
    for n in [10, 1_000, 10_000] {
        let s = snapshot(&routes(n), &caches);
        let path = format!("/svc-{}/x", n - 1);
        c.bench_function(&format!("route match, {n} routes, last one"), |b| {
            b.iter(|| {
                let (table, _) = s.route_table(80, None).unwrap();
                let vhost = table.find_vhost("api.test").unwrap();
                let view = RequestView {
                    path: &path,
                    query: None,
                    method: "GET",
                    scheme: "http",
                    authority: "api.test",
                    headers: &headers,
                    port: 80,
                    claims: None,
                };
                black_box(vhost.find_route(&view).is_some())
            })
        });
    }
}

fn snapshot_compile(c: &mut Criterion) {
    let caches = Caches::default();
    let yaml = routes(1_000);
    c.bench_function("load and compile 1,000 VirtualServices", |b| {
        b.iter(|| black_box(snapshot(&yaml, &caches).version))
    });
}

const SECRET: &[u8] = b"wicket-bench-secret-wicket-bench-secret";

fn jwt_verification(c: &mut Criterion) {
    use base64::Engine as _;
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    let jwks = format!(r#"{{"keys":[{{"kty":"oct","kid":"bench","alg":"HS256","k":"{k}"}}]}}"#);
    let yaml = format!(
        "{GATEWAY}---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: default}}\nspec:\n  jwtRules:\n  - issuer: https://bench.local\n    jwks: '{jwks}'\n"
    );
    let caches = Caches::default();
    let s = snapshot(&yaml, &caches);
    let jwt = s.security.jwt.as_ref().unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("bench".into());
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    let exp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let token = |sub: u64| {
        let claims = serde_json::json!({"iss": "https://bench.local", "sub": format!("u{sub}"), "exp": exp});
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let bearer = |t: &str| {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
        h
    };
    let cached = token(0);
    c.bench_function("jwt verify, cached token", |b| {
        b.iter_batched(
            || bearer(&cached),
            |mut h| black_box(jwt.authenticate(&mut h, None).is_ok()),
            BatchSize::SmallInput,
        )
    });
    let mut n = 1;
    c.bench_function("jwt verify, new token (signature checked)", |b| {
        b.iter_batched(
            || {
                n += 1;
                bearer(&token(n))
            },
            |mut h| black_box(jwt.authenticate(&mut h, None).is_ok()),
            BatchSize::SmallInput,
        )
    });
}

/// A filter adding one request header through the ABI.
const FILTER: &str = r#"(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (data (i32.const 256) "x-benchyes")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 256) (i32.const 7) (i32.const 263) (i32.const 3)))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))"#;

fn wasm_header_callback(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("filter.wasm");
    std::fs::write(&module, wat::parse_str(FILTER).unwrap()).unwrap();
    let yaml = format!(
        "{GATEWAY}---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: bench, namespace: default}}\nspec:\n  url: file://{}\n",
        module.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let caches = Caches::default();
    let s = rt.block_on(async { snapshot(&yaml, &caches) });
    assert_eq!(s.wasm.filters.len(), 1, "{:?}", s.diagnostics);
    let info = StreamInfo {
        source: "127.0.0.1:40000".parse().unwrap(),
        destination_port: 80,
        scheme: "http",
        protocol: "HTTP/1.1",
        request_id: "bench".into(),
        start: SystemTime::now(),
        connection_id: 1,
        sni: None,
        mtls: false,
        peer_uri_san: None,
        tls_version: None,
    };
    c.bench_function("wasm stream: context, request headers callback, teardown", |b| {
        b.iter(|| {
            let mut req = Request::get("/x").header("host", "api.test").body(()).unwrap();
            let mut stream = WasmStream::new(info.clone());
            rt.block_on(stream.request_headers(
                &s.wasm,
                Phase::Unspecified,
                Traffic { server: false, port: 80 },
                &mut req,
                true,
            ))
            .unwrap();
            black_box(req.headers().contains_key("x-bench"))
        })
    });
}

criterion_group!(benches, route_matching, snapshot_compile, jwt_verification, wasm_header_callback);
criterion_main!(benches);
