//! Test support for Wicket's end-to-end tests: real upstreams, a real gateway on
//! ephemeral loopback ports, and a small HTTP client.

// Test support is test code: a failed setup step should panic with its cause.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod apiserver;
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

/// The shared corpus of real Istio YAML beside the repository (`../shared/corpus`).
pub fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus")
}

/// A file of the shared corpus. Tests that read it start with [`require_corpus!`].
pub fn corpus(path: &str) -> String {
    let full = corpus_dir().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Returns from the calling test, saying so, when the shared corpus is absent (a clone
/// of the repository alone): such a test checks Istio's own YAML on top of what the
/// project's own fixtures check.
#[macro_export]
macro_rules! require_corpus {
    () => {
        if !$crate::corpus_dir().is_dir() {
            eprintln!("skipped: {} is not here (a clone of the repository alone)", $crate::corpus_dir().display());
            return;
        }
    };
}
