//! Body types shared by the request path: what is sent upstream and what is
//! returned to the client, plus small constructors.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;

/// Error type carried by boxed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the client receives.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A body with nothing in it.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body holding `data`.
pub fn full(data: impl Into<Bytes>) -> ProxyBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The client's request body went over the route's `max_body_bytes`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body larger than the route's max_body_bytes ({limit} bytes)")]
pub struct BodyTooLarge {
    pub limit: u64,
}

pin_project_lite::pin_project! {
    /// The client's request body as it streams in, cut with `BodyTooLarge`
    /// at the first frame that takes it over the route's limit (the frame
    /// is not passed on, so no byte over the limit reaches a backend).
    pub struct ClientBody {
        #[pin]
        inner: Incoming,
        limit: Option<u64>,
        seen: u64,
        failed: bool,
    }
}

impl ClientBody {
    pub fn new(inner: Incoming, limit: Option<u64>) -> Self {
        ClientBody {
            inner,
            limit,
            seen: 0,
            failed: false,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let polled = this.inner.poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(limit)) = (&polled, *this.limit) {
            if let Some(d) = frame.data_ref() {
                *this.seen += d.len() as u64;
                if *this.seen > limit {
                    *this.failed = true;
                    return Poll::Ready(Some(Err(BodyTooLarge { limit }.into())));
                }
            }
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `e` (or an error behind it) is a `BodyTooLarge`.
pub fn is_body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<BodyTooLarge>() {
            return true;
        }
        next = e.source();
    }
    false
}

pin_project_lite::pin_project! {
    /// The body of a request sent upstream: the client's body as it
    /// streams in (possibly teed for mirrors), or a buffered copy (mirrors).
    #[project = UpstreamBodyProj]
    pub enum UpstreamBody {
        /// The client's body, streamed.
        Streamed { #[pin] inner: ClientBody },
        /// A body of another room, boxed so that this room does not
        /// depend on it: the client's body passed through the mirrors' tee
        /// (`crate::mirror::tee::TeeBody`) or a recording tap, or a mirror
        /// copy's body streamed from its queue (`crate::mirror::client`).
        Teed { #[pin] inner: UnsyncBoxBody<Bytes, BoxError> },
        /// A body already in memory (a mirror's copy).
        Buffered { #[pin] inner: Full<Bytes> },
        /// A body in memory followed by trailer fields (a mirror's copy of
        /// a request that ended in trailers): one data frame, then the
        /// trailers frame.
        WithTrailers { data: Option<Bytes>, trailers: Option<http::HeaderMap> },
    }
}

impl UpstreamBody {
    pub fn buffered(data: Bytes) -> Self {
        UpstreamBody::Buffered {
            inner: Full::new(data),
        }
    }

    /// The client's body passed through the mirrors' tee.
    pub fn teed(tee: impl Body<Data = Bytes, Error = BoxError> + Send + 'static) -> Self {
        UpstreamBody::Teed {
            inner: UnsyncBoxBody::new(tee),
        }
    }

    /// `data`, then `trailers` as the last frame.
    pub fn with_trailers(data: Bytes, trailers: http::HeaderMap) -> Self {
        UpstreamBody::WithTrailers {
            data: Some(data).filter(|d| !d.is_empty()),
            trailers: Some(trailers),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            UpstreamBodyProj::Streamed { inner } => inner.poll_frame(cx),
            UpstreamBodyProj::Teed { inner } => inner.poll_frame(cx),
            UpstreamBodyProj::Buffered { inner } => {
                inner.poll_frame(cx).map_err(|never| match never {})
            }
            UpstreamBodyProj::WithTrailers { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Streamed { inner } => inner.is_end_stream(),
            UpstreamBody::Teed { inner } => inner.is_end_stream(),
            UpstreamBody::Buffered { inner } => inner.is_end_stream(),
            UpstreamBody::WithTrailers { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Streamed { inner } => inner.size_hint(),
            UpstreamBody::Teed { inner } => inner.size_hint(),
            UpstreamBody::Buffered { inner } => inner.size_hint(),
            // Not exact: an HTTP/1.1 connection then sends it chunked, the
            // only framing that carries trailers.
            UpstreamBody::WithTrailers { data, .. } => {
                let mut hint = SizeHint::new();
                hint.set_lower(data.as_ref().map_or(0, |d| d.len() as u64));
                hint
            }
        }
    }
}
