//! Upstreams: clusters and their endpoints, load balancing, the pooled HTTP client,
//! retries and timeouts, outlier detection and circuit breaking, DNS refresh. The pipeline hands a request to `call` and gets a response
//! or a `ProxyError` that says what failed.

mod call;
mod client;
mod cluster;
mod dns;
mod lb;
mod outlier;
mod retry;

pub(crate) use crate::error::BoxError;
pub(crate) use call::{call, Attempt, ReplayBody, RequestHead};
pub(crate) use client::{connect_tcp, UpstreamBody, Upstreams};
pub(crate) use cluster::{Breakers, Cluster, Endpoint, EndpointGuard, PoolSettings, Protocol};
pub(crate) use dns::{refresh_dns, DnsTarget};
pub(crate) use lb::{HashOn, LbPolicy};
pub(crate) use outlier::{Outcome, OutlierPolicy};
pub(crate) use retry::RetryPolicy;
