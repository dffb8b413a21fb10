//! End-to-end tests: the real gateway on loopback against real upstreams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod authn;
mod authz;
mod corpus;
mod fail_closed;
mod inject;
mod kubernetes;
mod plugins;
mod proxying;
mod reload;
mod resilience;
mod routing;
mod sidecar;
mod tls;
mod tracing;
mod upstream_tls;
mod upstreams;
mod wasm;
