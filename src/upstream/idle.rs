//! Idle keep-alive connections of one endpoint, kept between the mirror
//! copies that run their own HTTP/1.1 exchange over them
//! (`crate::mirror::client`): the newest is handed out first, closed or
//! expired ones are dropped, and a sweep closes them in the background.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

use super::stream::UpstreamStream;

/// Idle keep-alive connections of one endpoint, newest last.
#[derive(Debug, Default)]
pub struct IdleConns {
    conns: parking_lot::Mutex<Vec<IdleConn>>,
}

#[derive(Debug)]
struct IdleConn {
    stream: UpstreamStream,
    since: Instant,
}

impl IdleConns {
    /// The most recently used connection that is still open and not older
    /// than `max_idle`. Closed or expired ones found on the way are dropped.
    pub fn take(&self, max_idle: Duration) -> Option<UpstreamStream> {
        loop {
            let conn = self.conns.lock().pop()?;
            let mut stream = conn.stream;
            if conn.since.elapsed() <= max_idle && still_open(&mut stream) {
                return Some(stream);
            }
        }
    }

    /// Keeps `stream` for reuse (at most `max` kept; expired ones dropped).
    pub fn put(&self, stream: UpstreamStream, max: usize, max_idle: Duration) {
        let mut conns = self.conns.lock();
        let expired = conns
            .iter()
            .take_while(|c| c.since.elapsed() > max_idle)
            .count();
        conns.drain(..expired);
        if conns.len() < max {
            conns.push(IdleConn {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// Closes the connections idle longer than `max_idle` and those the
    /// server has closed; returns how many are left.
    pub fn sweep(&self, max_idle: Duration) -> usize {
        let mut conns = self.conns.lock();
        conns.retain_mut(|c| c.since.elapsed() <= max_idle && still_open(&mut c.stream));
        conns.len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns.lock().len()
    }
}

/// An idle connection is usable when reading from it would block: the
/// server has neither closed it nor sent anything unasked.
fn still_open(stream: &mut UpstreamStream) -> bool {
    let mut probe = [0u8; 1];
    let mut read = ReadBuf::new(&mut probe);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        Pin::new(stream).poll_read(&mut cx, &mut read),
        Poll::Pending
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn idle_connections_closed_by_the_server_are_not_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idle = IdleConns::default();
        let open = TcpStream::connect(addr).await.unwrap();
        let (_kept, _) = listener.accept().await.unwrap();
        let closing = TcpStream::connect(addr).await.unwrap();
        let (gone, _) = listener.accept().await.unwrap();
        drop(gone);
        // The server's FIN has arrived once the socket turns readable.
        closing.readable().await.unwrap();
        let max_idle = Duration::from_secs(90);
        idle.put(UpstreamStream::Plain(open), 8, max_idle);
        idle.put(UpstreamStream::Plain(closing), 8, max_idle);
        assert!(idle.take(max_idle).is_some(), "the open connection");
        assert!(idle.take(max_idle).is_none(), "the closed one was dropped");
        assert_eq!(idle.len(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_and_expire() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idle = IdleConns::default();
        let mut server_sides = Vec::new();
        for _ in 0..3 {
            let c = TcpStream::connect(addr).await.unwrap();
            server_sides.push(listener.accept().await.unwrap().0);
            idle.put(UpstreamStream::Plain(c), 2, Duration::from_secs(90));
        }
        assert_eq!(idle.len(), 2);
        assert!(idle.take(Duration::ZERO).is_none(), "both expired");
        assert_eq!(idle.len(), 0);
    }

    #[tokio::test]
    async fn a_sweep_closes_expired_and_closed_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idle = IdleConns::default();
        let max_idle = Duration::from_secs(90);
        let kept = TcpStream::connect(addr).await.unwrap();
        let (_kept_peer, _) = listener.accept().await.unwrap();
        let closed = TcpStream::connect(addr).await.unwrap();
        let (closed_peer, _) = listener.accept().await.unwrap();
        drop(closed_peer);
        closed.readable().await.unwrap();
        idle.put(UpstreamStream::Plain(kept), 8, max_idle);
        idle.put(UpstreamStream::Plain(closed), 8, max_idle);
        assert_eq!(idle.sweep(max_idle), 1, "the closed one went");
        assert_eq!(idle.sweep(Duration::ZERO), 0, "the expired one went");
    }
}
