//! Security: who the peer is. Today the verified client certificate of a TLS
//! connection; JWT authentication and authorization arrive with issue #4.

pub mod authz;
pub mod jwks;
pub mod jwt;
pub mod normalize;
pub mod peer;
