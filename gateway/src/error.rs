//! The request-path error vocabulary: who failed, which status the client sees and
//! which Envoy response flag the access log shows. Chosen here and nowhere else.

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use http::StatusCode;

/// Boxed error of request and response bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why sending a request upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (TCP or TLS handshake).
    #[error("connect failed")]
    Connect(#[source] BoxError),
    /// The connection failed or was reset before a response arrived.
    #[error("connection failed before a response")]
    Protocol(#[source] BoxError),
}

impl SendError {
    /// True when the connection could not be made (Envoy `connect-failure`).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

/// Envoy response flags, combinable (`DI,FI`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    /// No route (404).
    pub const NR: Self = Self(1);
    /// No healthy upstream.
    pub const UH: Self = Self(1 << 1);
    /// Upstream connection failure.
    pub const UF: Self = Self(1 << 2);
    /// Upstream request timeout.
    pub const UT: Self = Self(1 << 3);
    /// Upstream retry limit exceeded.
    pub const URX: Self = Self(1 << 4);
    /// Delay injected.
    pub const DI: Self = Self(1 << 5);
    /// Fault (abort) injected.
    pub const FI: Self = Self(1 << 6);
    /// Upstream connection terminated.
    pub const UC: Self = Self(1 << 7);
    /// Cluster not found.
    pub const NC: Self = Self(1 << 8);
    /// Downstream connection terminated.
    pub const DC: Self = Self(1 << 9);
    /// Denied by an external authorizer.
    pub const UAEX: Self = Self(1 << 10);
    /// Upstream overflow (circuit breaker).
    pub const UO: Self = Self(1 << 11);
    /// Downstream protocol error (the client's request was malformed).
    pub const DPE: Self = Self(1 << 12);

    const NAMES: [(Self, &'static str); 13] = [
        (Self::NR, "NR"),
        (Self::UH, "UH"),
        (Self::UF, "UF"),
        (Self::UT, "UT"),
        (Self::URX, "URX"),
        (Self::DI, "DI"),
        (Self::FI, "FI"),
        (Self::UC, "UC"),
        (Self::NC, "NC"),
        (Self::DC, "DC"),
        (Self::UAEX, "UAEX"),
        (Self::UO, "UO"),
        (Self::DPE, "DPE"),
    ];

    /// Adds `other`.
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// The first flag set, as a static name (for metric labels).
    pub fn first_name(self) -> &'static str {
        Self::NAMES.iter().find(|(f, _)| self.contains(*f)).map_or("-", |(_, n)| n)
    }

    /// True when all flags of `other` are set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Which side of the proxy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The client sent something we cannot serve.
    Downstream,
    /// The upstream failed.
    Upstream,
    /// The gateway's configuration led here.
    Gateway,
}

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// No virtual host or rule matched.
    #[error("no route for {authority}{path}")]
    NoRoute {
        /// Request authority.
        authority: String,
        /// Request path.
        path: String,
    },
    /// The route points at a host or subset that does not exist.
    #[error("cluster {cluster} not found")]
    ClusterNotFound {
        /// Cluster name.
        cluster: Arc<str>,
    },
    /// The cluster has no endpoint to send to.
    #[error("cluster {cluster}: no healthy upstream")]
    NoHealthyUpstream {
        /// Cluster name.
        cluster: Arc<str>,
    },
    /// Connecting to the endpoint failed.
    #[error("cluster {cluster}: connect to {addr} failed")]
    UpstreamConnect {
        /// Cluster name.
        cluster: Arc<str>,
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: SendError,
    },
    /// The upstream reset or closed before answering.
    #[error("cluster {cluster}: {addr} reset before answering")]
    UpstreamReset {
        /// Cluster name.
        cluster: Arc<str>,
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: SendError,
    },
    /// No response within the route timeout (or the last per-try timeout).
    #[error("cluster {cluster}: no response within {after:?}")]
    UpstreamTimeout {
        /// Cluster name.
        cluster: Arc<str>,
        /// The timeout that fired.
        after: Duration,
    },
    /// The cluster's circuit breaker is open (`http2MaxRequests`).
    #[error("cluster {cluster}: too many requests in flight")]
    Overflow {
        /// Cluster name.
        cluster: Arc<str>,
    },
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The client's request body failed while it was streamed upstream (bad chunked
    /// encoding, a length that lies, a reset): the client's fault, never the endpoint's.
    #[error("cluster {cluster}: the request body from the client failed")]
    DownstreamBody {
        /// Cluster name.
        cluster: Arc<str>,
        /// DC when the client went away, DPE when what it sent was wrong.
        flag: ResponseFlags,
        /// Cause.
        #[source]
        source: SendError,
    },
}

/// An error of the client's request body, marked so that whoever sees it upstream
/// (as the cause of a failed send) knows which side failed.
#[derive(Debug, thiserror::Error)]
#[error("request body from the client: {source}")]
pub(crate) struct DownstreamError {
    /// The client closed or reset before its body was complete.
    pub(crate) gone: bool,
    #[source]
    pub(crate) source: BoxError,
}

impl DownstreamError {
    /// The client's own fault among `e` and its causes, as Envoy flags it: DC for a
    /// client that went away, DPE for a malformed body (or one over the gateway's
    /// limit); `None` when the client is not to blame.
    pub(crate) fn fault(e: &(dyn std::error::Error + 'static)) -> Option<ResponseFlags> {
        match cause::<DownstreamError>(e) {
            Some(d) => Some(if d.gone { ResponseFlags::DC } else { ResponseFlags::DPE }),
            None => cause::<http_body_util::LengthLimitError>(e).map(|_| ResponseFlags::DPE),
        }
    }
}

/// The first error of type `T` among `e` and its causes.
pub(crate) fn cause<'e, T: std::error::Error + 'static>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e T> {
    let mut next = Some(e);
    while let Some(c) = next {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        next = c.source();
    }
    None
}

impl ProxyError {
    /// Who failed.
    pub(crate) fn side(&self) -> Side {
        match self {
            Self::NoRoute { .. } | Self::ClusterNotFound { .. } => Side::Gateway,
            Self::BadRequest(_) | Self::DownstreamBody { .. } => Side::Downstream,
            _ => Side::Upstream,
        }
    }

    /// The status the client sees: the only place that picks it.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::BadRequest(_) | Self::DownstreamBody { .. } => StatusCode::BAD_REQUEST,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::ClusterNotFound { .. }
            | Self::Overflow { .. }
            | Self::NoHealthyUpstream { .. }
            | Self::UpstreamConnect { .. }
            | Self::UpstreamReset { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The Envoy response flag for the access log.
    pub(crate) fn flag(&self) -> ResponseFlags {
        match self {
            Self::NoRoute { .. } => ResponseFlags::NR,
            Self::ClusterNotFound { .. } => ResponseFlags::NC,
            Self::NoHealthyUpstream { .. } => ResponseFlags::UH,
            Self::UpstreamConnect { .. } => ResponseFlags::UF,
            Self::UpstreamReset { .. } => ResponseFlags::UC,
            Self::UpstreamTimeout { .. } => ResponseFlags::UT,
            Self::Overflow { .. } => ResponseFlags::UO,
            Self::BadRequest(_) => ResponseFlags::default(),
            Self::DownstreamBody { flag, .. } => *flag,
        }
    }

    /// The short body Envoy sends for this failure.
    pub(crate) fn body(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "",
            Self::ClusterNotFound { .. } | Self::NoHealthyUpstream { .. } => "no healthy upstream",
            Self::UpstreamConnect { .. } | Self::UpstreamReset { .. } => {
                "upstream connect error or disconnect/reset before headers"
            }
            Self::UpstreamTimeout { .. } => "upstream request timeout",
            Self::Overflow { .. } => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow"
            }
            Self::BadRequest(_) | Self::DownstreamBody { .. } => "bad request",
        }
    }
}
