//! TLS, in one room: certificate files and their rotation (`certs`), the gateway's
//! server configs and client-certificate pinning (`server`, `peer`), upstream client
//! configs (`client`), the workload's mesh identity and SPIFFE checks (`identity`),
//! the rustls verifiers (`verify`), and the bounded server handshake every listener
//! runs (`handshake`). Above `config`, below everything that opens connections.

pub(crate) mod certs;
mod client;
pub(crate) mod handshake;
pub(crate) mod identity;
pub(crate) mod peer;
pub(crate) mod server;
mod verify;

pub(crate) use client::{system_client_config, UpstreamTls};
