//! Idle client connections: the time of a connection's last byte, read or
//! written, so `server::serve` can close one that has been silent for
//! `limits.idle_timeout` (gracefully: an HTTP/2 connection gets GOAWAY and
//! its open streams finish). hyper closes an idle HTTP/1.1 keep-alive
//! connection by its header read timeout, but has no idle timeout for an
//! HTTP/2 server connection, which a client could otherwise hold open for
//! ever at the cost of a socket each.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Whether a connection moves bytes: a count of its reads and writes,
/// bumped on the data path without reading the clock (the clock is read
/// only by the watcher, a few times per `idle_timeout`).
#[derive(Debug, Default)]
pub struct Activity {
    /// Reads and writes that moved bytes; written by the connection's own
    /// I/O only.
    ops: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity::default())
    }

    fn touch(&self) {
        // One writer (the connection's I/O): no read-modify-write needed.
        let n = self.ops.load(Ordering::Relaxed);
        self.ops.store(n.wrapping_add(1), Ordering::Relaxed);
    }

    /// Resolves once the connection has moved no byte for `idle` (looked
    /// at every quarter of it: closed after between `idle` and 1.25 ×
    /// `idle` of silence); never when `idle` is zero.
    pub async fn silent_for(&self, idle: Duration) {
        if idle.is_zero() {
            return std::future::pending().await;
        }
        let step = (idle / 4).max(Duration::from_millis(1));
        let mut seen = self.ops.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        loop {
            tokio::time::sleep(step).await;
            let now = self.ops.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= idle {
                return;
            }
        }
    }
}

/// `io`, noting each byte read or written in its `Activity`.
#[derive(Debug)]
pub struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO> Watched<IO> {
    pub fn new(io: IO, activity: Arc<Activity>) -> Self {
        Watched { io, activity }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
