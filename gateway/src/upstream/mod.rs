//! Upstreams: clusters and their endpoints, load balancing, the pooled HTTP client,
//! retries and timeouts. The pipeline hands a request to `call` and gets a response
//! or a `ProxyError` that says what failed.

mod call;
mod client;
mod cluster;
mod dns;
mod lb;
mod outlier;
mod retry;

pub use crate::error::{BoxError, SendError};
pub use call::{call, Attempt, CallFailure, CallOutcome, ReplayBody, RequestHead};
pub use client::{connect_tcp, UpstreamBody, Upstreams, CONNECT_TIMEOUT, IDLE_TIMEOUT};
pub use cluster::{Breakers, Cluster, Endpoint, EndpointGuard, PoolSettings, Protocol, TLS_MODE_LABEL};
pub use dns::{refresh_dns, DnsTarget};
pub use lb::{HashOn, LbPolicy};
pub use outlier::{Outcome, OutlierPolicy};
pub use retry::RetryPolicy;
