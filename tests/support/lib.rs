//! Test support for Wicket's end-to-end tests: real upstreams, a real gateway on
//! ephemeral loopback ports, and a small HTTP client.

// Test support is test code: a failed setup step should panic with its cause.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod client;
pub mod gateway;
pub mod jwt;
pub mod netns;
pub mod otlp;
pub mod pki;
pub mod upstream;
pub mod wasm;
pub mod yaml;

pub use client::Resp;
pub use gateway::TestGateway;
pub use pki::Pki;
pub use upstream::Upstream;

/// A file of the shared corpus of real Istio YAML (`../shared/corpus/<path>`).
pub fn corpus(path: &str) -> String {
    let full = format!("{}/../../shared/corpus/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}
