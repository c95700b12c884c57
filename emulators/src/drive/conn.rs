//! One accepted connection's socket, wrapped for two faults that belong to the
//! connection rather than to a request:
//!
//! - a throughput cap, each direction, read live from the faults on every poll (a token
//!   bucket with a burst of 50 ms worth of bytes);
//! - a kill switch: a handler that drops the connection mid-body sets it, and from then
//!   on the socket fails every read and write and closes with a reset (`SO_LINGER` 0), so
//!   the client sees a dropped connection, not a clean end.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::faults::FaultState;

/// Largest read or write while a cap is on (the scratch buffer's size).
const PACED_IO_BYTES_MAX: usize = 64 << 10;

/// What a connection's handlers share with its socket.
#[derive(Default)]
pub(crate) struct ConnShared {
    killed: AtomicBool,
}

impl ConnShared {
    /// Drops the connection: every later read and write fails, and the close is a reset.
    pub(crate) fn kill(&self) {
        // Release pairs with the Acquire in `killed`: the socket sees the kill before the
        // handler's error reaches hyper.
        self.killed.store(true, Ordering::Release);
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

/// A token bucket for one direction.
struct Pacer {
    tokens: f64,
    last: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Pacer {
    fn new() -> Pacer {
        Pacer { tokens: 0.0, last: Instant::now(), sleep: None }
    }

    /// How many bytes may move now (at least one), or Pending until some may.
    fn poll_allow(&mut self, cx: &mut Context<'_>, rate: u64, want: usize) -> Poll<usize> {
        let rate_f = rate as f64;
        let burst = (rate_f / 20.0).max(1.0);
        loop {
            let now = Instant::now();
            self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate_f).min(burst);
            self.last = now;
            if self.tokens >= 1.0 {
                self.sleep = None;
                // Truncation is intended: whole bytes.
                let allowed = (self.tokens as usize).min(want).clamp(1, PACED_IO_BYTES_MAX);
                return Poll::Ready(allowed);
            }
            let need = (want.min(PACED_IO_BYTES_MAX) as f64).min(burst) - self.tokens;
            let wait = Duration::from_secs_f64(need.max(1.0) / rate_f);
            let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
        }
    }

    fn consume(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// The wrapped socket.
pub(crate) struct ConnIo {
    stream: TcpStream,
    shared: Arc<ConnShared>,
    faults: Arc<FaultState>,
    read: Pacer,
    write: Pacer,
    scratch: Vec<u8>,
}

impl ConnIo {
    pub(crate) fn new(stream: TcpStream, shared: Arc<ConnShared>, faults: Arc<FaultState>) -> ConnIo {
        ConnIo { stream, shared, faults, read: Pacer::new(), write: Pacer::new(), scratch: Vec::new() }
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "the emulator dropped this connection")
}

impl AsyncRead for ConnIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shared.killed() {
            return Poll::Ready(Err(reset()));
        }
        let rate = this.faults.throughput();
        if rate == 0 || buf.remaining() == 0 {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let allowed = ready!(this.read.poll_allow(cx, rate, buf.remaining()));
        if this.scratch.len() < PACED_IO_BYTES_MAX {
            this.scratch.resize(PACED_IO_BYTES_MAX, 0);
        }
        let mut rb = ReadBuf::new(&mut this.scratch[..allowed]);
        ready!(Pin::new(&mut this.stream).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        buf.put_slice(rb.filled());
        this.read.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shared.killed() {
            return Poll::Ready(Err(reset()));
        }
        let rate = this.faults.throughput();
        if rate == 0 || buf.is_empty() {
            return Pin::new(&mut this.stream).poll_write(cx, buf);
        }
        let allowed = ready!(this.write.poll_allow(cx, rate, buf.len()));
        let n = ready!(Pin::new(&mut this.stream).poll_write(cx, &buf[..allowed]))?;
        this.write.consume(n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shared.killed() {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shared.killed() {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.shared.killed() {
            // An abortive close: the peer gets a reset, as from a dropped connection.
            let _ = self.stream.set_zero_linger();
        }
    }
}
