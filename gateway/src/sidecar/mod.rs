//! Sidecar mode: the same engine inside a pod, serving traffic that iptables captured
//! (outbound from the app, inbound from peers), with mutual TLS between workloads.

pub mod ca;
