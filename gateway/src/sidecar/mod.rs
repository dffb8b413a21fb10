//! Sidecar mode: the same engine inside a pod, serving traffic that iptables captured
//! (outbound from the app, inbound from peers), with mutual TLS between workloads.

pub mod ca;
pub mod capture;
pub(crate) mod inbound;
pub mod inject;
pub mod original_dst;
pub(crate) mod outbound;
pub mod plan;
pub mod probes;
pub mod sniff;
pub mod webhook;
