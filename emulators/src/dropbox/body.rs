//! Bytes on the wire: response bodies served as slices of stored buffers (and cut
//! short on demand, to emulate a connection dropped mid-download), request bodies read
//! frame by frame into one buffer and hashed as they arrive (so an upload is held
//! once), and a connection wrapper that caps throughput in each direction.

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::sessions::BodyHasher;

/// Largest frame of a response body.
const FRAME_BYTES_MAX: usize = 1 << 20;
/// Largest piece moved at once through a throttled connection.
const THROTTLE_SLICE_BYTES: usize = 16 << 10;
const _: () = assert!(THROTTLE_SLICE_BYTES <= FRAME_BYTES_MAX);

/// A response body: buffers sent in order, optionally cut after `cut_after` bytes (the
/// connection is then reset, as a dropped download).
pub(crate) struct EmuBody {
    chunks: VecDeque<Bytes>,
    left: u64,
    cut_after: Option<u64>,
    sent: u64,
    sent_counter: Option<Arc<AtomicU64>>,
    /// Waited out before a cut, so hyper flushes what was sent (else the client could
    /// see no answer at all rather than a short one).
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How long a cut body waits, with its last bytes written, before it fails.
const CUT_PAUSE: Duration = Duration::from_millis(20);

impl EmuBody {
    pub(crate) fn empty() -> EmuBody {
        EmuBody::full(Bytes::new())
    }

    pub(crate) fn full(b: impl Into<Bytes>) -> EmuBody {
        EmuBody::chunks(vec![b.into()], None, None)
    }

    /// `chunks`, counted into `sent_counter`, cut after `cut_after` bytes if given.
    pub(crate) fn chunks(chunks: Vec<Bytes>, cut_after: Option<u64>, sent_counter: Option<Arc<AtomicU64>>) -> EmuBody {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let left = chunks.iter().map(|c| c.len() as u64).sum();
        EmuBody { chunks, left, cut_after, sent: 0, sent_counter, pause: None }
    }
}

impl Body for EmuBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if let Some(cut) = this.cut_after {
            if this.sent >= cut {
                let pause = this.pause.get_or_insert_with(|| Box::pin(tokio::time::sleep(CUT_PAUSE)));
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.chunks.clear();
                this.left = 0;
                let e = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "emulated connection drop");
                return Poll::Ready(Some(Err(e)));
            }
        }
        let Some(mut c) = this.chunks.pop_front() else { return Poll::Ready(None) };
        if c.len() > FRAME_BYTES_MAX {
            this.chunks.push_front(c.split_off(FRAME_BYTES_MAX));
        }
        if let Some(cut) = this.cut_after {
            let room = (cut - this.sent) as usize;
            if c.len() > room {
                this.chunks.push_front(c.split_off(room));
            }
        }
        this.sent += c.len() as u64;
        this.left -= c.len() as u64;
        if let Some(n) = &this.sent_counter {
            // Relaxed: a statistic, read with no other data.
            n.fetch_add(c.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(Some(Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.cut_after.is_none_or(|c| self.sent < c)
    }

    fn size_hint(&self) -> SizeHint {
        // The full length even when the body will be cut: the client is promised it.
        SizeHint::with_exact(self.left)
    }
}

/// Why a request body was not read to its end.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Longer than the limit (read to the end and discarded).
    TooLarge,
    /// The emulator dropped the connection on purpose.
    Dropped,
    /// The client went away or sent a broken body.
    Broken,
}

/// Reads `body` into one buffer, at most `max` bytes, feeding `hasher` as frames
/// arrive; past `max` the rest is read and discarded. Stops (`Dropped`) once
/// `drop_at` bytes have arrived.
pub(crate) async fn read_body(
    mut body: Incoming,
    content_length: Option<u64>,
    max: u64,
    drop_at: Option<u64>,
    hasher: &mut BodyHasher,
    received: &AtomicU64,
) -> Result<Bytes, ReadError> {
    let mut buf = BytesMut::with_capacity(content_length.unwrap_or(64 << 10).min(max) as usize);
    let mut total = 0u64;
    let mut too_large = content_length.is_some_and(|n| n > max);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ReadError::Broken)?;
        let Ok(data) = frame.into_data() else { continue };
        let before = total;
        total += data.len() as u64;
        if let Some(d) = drop_at.filter(|&d| total >= d) {
            // What came past the cut in this frame is dropped unread: the counter says
            // exactly how much of the body arrived. Relaxed: a statistic.
            received.fetch_add(d.saturating_sub(before), Ordering::Relaxed);
            return Err(ReadError::Dropped);
        }
        // Relaxed: a statistic.
        received.fetch_add(data.len() as u64, Ordering::Relaxed);
        if too_large || buf.len() as u64 + data.len() as u64 > max {
            too_large = true;
            continue;
        }
        hasher.update(&data);
        buf.extend_from_slice(&data);
    }
    if too_large {
        return Err(ReadError::TooLarge);
    }
    assert_eq!(buf.len() as u64, total);
    Ok(buf.freeze())
}

/// Reads a body to its end, keeping nothing (so an error answer reaches a client that
/// is still sending).
pub(crate) async fn drain(mut body: Incoming, received: &AtomicU64) {
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(d) = frame.into_data() {
            // Relaxed: a statistic.
            received.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
    }
}

/// Reads a small body whole (JSON, forms), at most `max` bytes.
pub(crate) async fn read_small(body: Incoming, max: usize) -> Result<Bytes, ReadError> {
    let limited = http_body_util::Limited::new(body, max);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
        Err(_) => Err(ReadError::Broken),
    }
}

/// A token bucket: `rate` bytes a second, at most a second's worth banked.
struct Bucket {
    tokens: f64,
    at: Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket { tokens: 0.0, at: Instant::now(), sleep: None }
    }

    /// How many bytes may move now (at most `want`), or Pending with a wake-up set.
    fn poll_take(&mut self, cx: &mut Context<'_>, rate: u64, want: usize) -> Poll<usize> {
        if let Some(s) = &mut self.sleep {
            if s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let now = Instant::now();
        let rate_f = rate as f64;
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate_f).min(rate_f.max(1.0));
        self.at = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((want.min(THROTTLE_SLICE_BYTES) as f64 / rate_f).max(0.001));
            let mut s = Box::pin(tokio::time::sleep(wait));
            // Registers the waker; a sleep of at least a millisecond is not ready yet.
            if s.as_mut().poll(cx).is_ready() {
                return self.poll_take(cx, rate, want);
            }
            self.sleep = Some(s);
            return Poll::Pending;
        }
        Poll::Ready((self.tokens as usize).min(want).clamp(1, THROTTLE_SLICE_BYTES))
    }

    fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// A connection whose reads and writes are each capped at the live rate in `cap`
/// (bytes a second; 0 is no cap).
pub(crate) struct Throttled<S> {
    inner: S,
    cap: Arc<AtomicU64>,
    read: Bucket,
    write: Bucket,
}

impl<S> Throttled<S> {
    pub(crate) fn new(inner: S, cap: Arc<AtomicU64>) -> Throttled<S> {
        Throttled { inner, cap, read: Bucket::new(), write: Bucket::new() }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        // Relaxed: a setting, read on its own.
        let rate = this.cap.load(Ordering::Relaxed);
        if rate == 0 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = match this.read.poll_take(cx, rate, buf.remaining()) {
            Poll::Ready(n) => n,
            Poll::Pending => return Poll::Pending,
        };
        let mut local = [0u8; THROTTLE_SLICE_BYTES];
        let mut small = ReadBuf::new(&mut local[..n]);
        match Pin::new(&mut this.inner).poll_read(cx, &mut small) {
            Poll::Ready(Ok(())) => {
                let got = small.filled();
                this.read.spend(got.len());
                buf.put_slice(got);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        // Relaxed: a setting, read on its own.
        let rate = this.cap.load(Ordering::Relaxed);
        if rate == 0 {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        let n = match this.write.poll_take(cx, rate, data.len()) {
            Poll::Ready(n) => n,
            Poll::Pending => return Poll::Pending,
        };
        match Pin::new(&mut this.inner).poll_write(cx, &data[..n.min(data.len())]) {
            Poll::Ready(Ok(w)) => {
                this.write.spend(w);
                Poll::Ready(Ok(w))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_body_sends_exactly_the_cut_then_fails() {
        let body =
            EmuBody::chunks(vec![Bytes::from(vec![1u8; 3 << 20]), Bytes::from_static(b"tail")], Some(1_500_000), None);
        assert_eq!(body.size_hint().exact(), Some((3 << 20) + 4));
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let (sent, failed) = rt.block_on(async move {
            let mut body = body;
            let mut sent = 0;
            loop {
                match body.frame().await {
                    Some(Ok(f)) => sent += f.into_data().unwrap().len(),
                    Some(Err(_)) => return (sent, true),
                    None => return (sent, false),
                }
            }
        });
        assert_eq!((sent, failed), (1_500_000, true));
    }
}
