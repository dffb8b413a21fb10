//! Body plumbing: the boxed body type sent downstream, empty/full constructors, a
//! counter for streamed request bodies, and the client's body with its errors marked.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};

use hyper::body::Incoming;

use crate::{
    error::{cause, DownstreamError},
    upstream::{BoxError, UpstreamBody},
};

/// The body of every response the gateway sends.
pub(crate) type ResponseBody = UpstreamBody;

/// A full body from bytes.
pub(super) fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).map_err(|e: std::convert::Infallible| -> BoxError { match e {} }).boxed_unsync()
}

/// Any body, boxed with its error erased.
pub(super) fn boxed<B>(body: B) -> ResponseBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Counts the data bytes of a streamed body into a shared counter.
pub(super) struct Counting<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> Counting<B> {
    pub(super) fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Self { inner, count }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counting<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(d) = frame.data_ref() {
                self.count.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's request body, its errors marked as the client's (`DownstreamError`),
/// so that a send upstream that fails because of them blames the right side.
pub(super) struct Downstream(pub(super) Incoming);

impl Body for Downstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx).map(|frame| frame.map(|r| r.map_err(marked)))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A client body error, marked; `gone` when the client closed or reset mid-body
/// (hyper reports an early end as an I/O error under its body error).
fn marked(e: hyper::Error) -> BoxError {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let early_end = cause::<std::io::Error>(&e)
        .is_some_and(|io| matches!(io.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe));
    let gone = early_end || e.is_incomplete_message() || e.is_canceled() || e.is_closed();
    Box::new(DownstreamError { gone, source: Box::new(e) })
}
