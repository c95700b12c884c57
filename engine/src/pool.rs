//! The RAM tier: a per-worker pool of fixed-size, 4 KiB-aligned buffers.
//!
//! Each worker allocates its whole share of `--ram-buffer` once, at start-up, as one
//! aligned region cut into chunks. Transfers borrow chunks for the bytes they hold and
//! give them back on drop, so a transfer can never read further ahead of its writer
//! than the chunks it was granted, and memory stays bounded whatever the object sizes.
//! Alignment makes the chunks usable for O_DIRECT I/O.
//!
//! The pool is worker-local (`Rc`, not `Send`): chunks never cross threads, so no
//! locks or atomics sit on the byte path. Waiters are served in FIFO order and a
//! request for `n` chunks is granted all at once, so two transfers can never each hold
//! half of what the other needs.

pub mod ring;

use std::alloc::{alloc, dealloc, Layout};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Alignment of every chunk, for O_DIRECT.
pub const CHUNK_ALIGN_BYTES: usize = 4096;
const _: () = assert!(CHUNK_ALIGN_BYTES.is_power_of_two());

struct Region {
    base: NonNull<u8>,
    layout: Layout,
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc(layout)` in `BufferPool::new` and every
        // chunk holds an `Rc` to the pool, so no chunk outlives the region.
        unsafe { dealloc(self.base.as_ptr(), self.layout) };
    }
}

struct State {
    free: Vec<u32>,
    /// FIFO of waiting acquisitions: (ticket, chunks wanted, waker).
    waiters: VecDeque<(u64, usize, Waker)>,
    next_ticket: u64,
}

impl State {
    /// Wakes the first waiter if what is free, less `reserved`, would satisfy it.
    fn wake_front(&self, reserved: usize) {
        if let Some((_, wanted, waker)) = self.waiters.front() {
            if self.free.len() - reserved >= *wanted {
                waker.wake_by_ref();
            }
        }
    }
}

struct Inner {
    region: Region,
    chunk_bytes: usize,
    chunk_count: usize,
    state: RefCell<State>,
    /// Chunks in use, for the control plane; only this worker writes it.
    in_use: Arc<AtomicUsize>,
}

/// A worker's pool of aligned chunks. Cheap to clone (an `Rc`).
#[derive(Clone)]
pub struct BufferPool {
    inner: Rc<Inner>,
}

impl BufferPool {
    /// Allocates `chunk_count` chunks of `chunk_bytes` each, up front.
    pub fn new(chunk_bytes: usize, chunk_count: usize) -> BufferPool {
        BufferPool::with_gauge(chunk_bytes, chunk_count, Arc::default())
    }

    /// Like [`BufferPool::new`], keeping `in_use` current with the chunks in use, for
    /// readers on other threads.
    pub fn with_gauge(chunk_bytes: usize, chunk_count: usize, in_use: Arc<AtomicUsize>) -> BufferPool {
        assert!(
            chunk_bytes > 0 && chunk_bytes.is_multiple_of(CHUNK_ALIGN_BYTES),
            "chunk size must be a multiple of 4 KiB"
        );
        assert!(chunk_count > 0 && chunk_count <= u32::MAX as usize);
        let layout = Layout::from_size_align(chunk_bytes * chunk_count, CHUNK_ALIGN_BYTES).expect("pool layout");
        // SAFETY: the layout has non-zero size (both factors are positive).
        let base = unsafe { alloc(layout) };
        let base = NonNull::new(base).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        BufferPool {
            inner: Rc::new(Inner {
                region: Region { base, layout },
                chunk_bytes,
                chunk_count,
                state: RefCell::new(State {
                    free: (0..chunk_count as u32).rev().collect(),
                    waiters: VecDeque::new(),
                    next_ticket: 0,
                }),
                in_use,
            }),
        }
    }

    /// Size of each chunk.
    pub fn chunk_bytes(&self) -> usize {
        self.inner.chunk_bytes
    }

    /// Number of chunks the pool owns.
    pub fn chunk_count(&self) -> usize {
        self.inner.chunk_count
    }

    /// Chunks free right now.
    pub fn free_chunks(&self) -> usize {
        self.inner.state.borrow().free.len()
    }

    /// A gauge of the chunks in use, kept current by the pool, readable from any thread.
    pub fn in_use_gauge(&self) -> Arc<AtomicUsize> {
        self.inner.in_use.clone()
    }

    fn publish(&self, state: &State) {
        // A gauge read by other threads; nothing is ordered by it.
        self.inner.in_use.store(self.inner.chunk_count - state.free.len(), Ordering::Relaxed);
    }

    /// Chunks needed to hold `bytes` (at least one, so even empty objects are paced).
    pub fn chunks_for(&self, bytes: u64) -> usize {
        (bytes.div_ceil(self.inner.chunk_bytes as u64) as usize).max(1)
    }

    /// Waits until `n` chunks are free, then takes them all at once.
    /// Panics if `n` exceeds the pool: that request could never be granted.
    pub fn acquire(&self, n: usize) -> Acquire {
        assert!(n <= self.inner.chunk_count, "asked for {n} chunks from a pool of {}", self.inner.chunk_count);
        Acquire { pool: self.clone(), n, ticket: None }
    }

    fn take(&self, n: usize) -> Vec<Chunk> {
        let mut state = self.inner.state.borrow_mut();
        assert!(state.free.len() >= n);
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            let index = state.free.pop().expect("checked above");
            chunks.push(Chunk { pool: self.clone(), index, len: 0, initialised: 0 });
        }
        self.publish(&state);
        chunks
    }

    fn release(&self, index: u32) {
        let mut state = self.inner.state.borrow_mut();
        debug_assert!(!state.free.contains(&index), "chunk {index} released twice");
        state.free.push(index);
        assert!(state.free.len() <= self.inner.chunk_count);
        self.publish(&state);
        state.wake_front(0);
    }
}

/// The future returned by [`BufferPool::acquire`].
pub struct Acquire {
    pool: BufferPool,
    n: usize,
    ticket: Option<u64>,
}

impl Future for Acquire {
    type Output = Vec<Chunk>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<Chunk>> {
        let this = &mut *self;
        let mut state = this.pool.inner.state.borrow_mut();
        let first_in_line = match this.ticket {
            None => state.waiters.is_empty(),
            Some(ticket) => state.waiters.front().map(|w| w.0) == Some(ticket),
        };
        if first_in_line && state.free.len() >= this.n {
            if this.ticket.is_some() {
                state.waiters.pop_front();
            }
            this.ticket = None;
            // Let the next waiter check whether what is left is enough for it.
            state.wake_front(this.n);
            drop(state);
            return Poll::Ready(this.pool.take(this.n));
        }
        match this.ticket {
            None => {
                let ticket = state.next_ticket;
                state.next_ticket += 1;
                state.waiters.push_back((ticket, this.n, cx.waker().clone()));
                this.ticket = Some(ticket);
            }
            Some(ticket) => {
                if let Some(w) = state.waiters.iter_mut().find(|w| w.0 == ticket) {
                    w.2 = cx.waker().clone();
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            let mut state = self.pool.inner.state.borrow_mut();
            let was_first = state.waiters.front().map(|w| w.0) == Some(ticket);
            state.waiters.retain(|w| w.0 != ticket);
            if was_first {
                state.wake_front(0);
            }
        }
    }
}

/// One aligned chunk borrowed from a [`BufferPool`]; returns to it on drop.
/// `len` bytes at the start are initialised.
pub struct Chunk {
    pool: BufferPool,
    index: u32,
    len: usize,
    /// Bytes initialised since the chunk was taken from the pool (survives `clear`).
    initialised: usize,
}

impl Chunk {
    fn ptr(&self) -> *mut u8 {
        let offset = self.index as usize * self.pool.inner.chunk_bytes;
        // SAFETY: index < chunk_count, so the offset stays inside the region.
        unsafe { self.pool.inner.region.base.as_ptr().add(offset) }
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.pool.inner.chunk_bytes
    }

    /// Initialised bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bytes are initialised.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left after the initialised bytes.
    pub fn remaining(&self) -> usize {
        self.capacity() - self.len
    }

    /// The initialised bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the chunk owns [ptr, ptr + capacity) exclusively while borrowed
        // from the pool, and the first `len` bytes were written.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }

    /// The initialised bytes, mutably (fault injection and tests).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len) }
    }

    /// Appends as much of `bytes` as fits; returns how many were taken.
    pub fn extend_from(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.remaining());
        // SAFETY: [len, len + n) lies inside the chunk, which we own exclusively,
        // and `bytes` can't overlap it (pool memory is never handed out as a slice
        // beyond `len`).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr().add(self.len), n) };
        self.len += n;
        self.initialised = self.initialised.max(self.len);
        n
    }

    /// Takes back, after a `clear`, the bytes the chunk held before: for benchmarks
    /// that send the same bytes again without copying them in again.
    pub fn reuse_contents(&mut self) {
        self.len = self.initialised;
    }

    /// Keeps only the first `n` initialised bytes.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// Forgets the contents, keeping the chunk.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.pool.release(self.index);
    }
}

// SAFETY: the pointer stays valid while the chunk exists (it holds the pool), and
// `bytes_init` never exceeds the chunk's capacity.
unsafe impl monoio::buf::IoBuf for Chunk {
    fn read_ptr(&self) -> *const u8 {
        self.ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len
    }
}

// SAFETY: `bytes_total` is the chunk's capacity, which the region backs, and
// `set_init` is only called by the runtime after the kernel wrote that many bytes.
unsafe impl monoio::buf::IoBufMut for Chunk {
    fn write_ptr(&mut self) -> *mut u8 {
        self.ptr()
    }

    fn bytes_total(&mut self) -> usize {
        self.capacity()
    }

    unsafe fn set_init(&mut self, pos: usize) {
        debug_assert!(pos <= self.capacity());
        self.len = pos;
        self.initialised = self.initialised.max(pos);
    }
}

/// The bytes of one object or part, held in pool chunks in order.
#[derive(Default)]
pub struct Body {
    /// The chunks, each full except possibly the last.
    pub chunks: Vec<Chunk>,
}

impl Body {
    /// Wraps chunks granted by the pool.
    pub fn new(chunks: Vec<Chunk>) -> Body {
        Body { chunks }
    }

    /// Total initialised bytes.
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }

    /// Whether the body holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties every chunk, keeping them, so the body can be read into again.
    pub fn clear(&mut self) {
        self.chunks.iter_mut().for_each(Chunk::clear);
    }

    /// Iterates over the initialised bytes, chunk by chunk.
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks.iter().map(Chunk::as_slice).filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn poll_once<F: Future + Unpin>(f: &mut F, flag: &Arc<Flag>) -> Poll<F::Output> {
        let waker = Waker::from(flag.clone());
        Pin::new(f).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn chunks_are_aligned_and_return() {
        let pool = BufferPool::new(8192, 4);
        let flag = Arc::new(Flag(false.into()));
        let mut a = pool.acquire(3);
        let Poll::Ready(chunks) = poll_once(&mut a, &flag) else { panic!("should be ready") };
        for c in &chunks {
            assert_eq!(c.read_ptr_addr() % CHUNK_ALIGN_BYTES, 0);
        }
        assert_eq!(pool.free_chunks(), 1);
        drop(chunks);
        assert_eq!(pool.free_chunks(), 4);
    }

    impl Chunk {
        fn read_ptr_addr(&self) -> usize {
            self.ptr() as usize
        }
    }

    #[test]
    fn waiters_are_fifo_and_all_or_nothing() {
        let pool = BufferPool::new(4096, 4);
        let flag = Arc::new(Flag(false.into()));
        let Poll::Ready(held) = poll_once(&mut pool.acquire(3), &flag) else { panic!() };
        // Wants 2, only 1 free: waits.
        let mut big = pool.acquire(2);
        assert!(poll_once(&mut big, &flag).is_pending());
        // A later small request may not jump the queue.
        let mut small = pool.acquire(1);
        assert!(poll_once(&mut small, &flag).is_pending());
        drop(held);
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        let Poll::Ready(b) = poll_once(&mut big, &flag) else { panic!("big first") };
        assert_eq!(b.len(), 2);
        let Poll::Ready(s) = poll_once(&mut small, &flag) else { panic!("small next") };
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn dropped_waiter_unblocks_next() {
        let pool = BufferPool::new(4096, 2);
        let flag = Arc::new(Flag(false.into()));
        let Poll::Ready(held) = poll_once(&mut pool.acquire(1), &flag) else { panic!() };
        let mut big = pool.acquire(2);
        assert!(poll_once(&mut big, &flag).is_pending());
        let mut small = pool.acquire(1);
        assert!(poll_once(&mut small, &flag).is_pending());
        drop(big);
        assert!(poll_once(&mut small, &flag).is_ready());
        drop(held);
    }

    #[test]
    fn extend_fills_chunks() {
        let pool = BufferPool::new(4096, 2);
        let flag = Arc::new(Flag(false.into()));
        let Poll::Ready(chunks) = poll_once(&mut pool.acquire(2), &flag) else { panic!() };
        let mut body = Body::new(chunks);
        let data = vec![7u8; 5000];
        let mut rest = &data[..];
        for c in &mut body.chunks {
            let n = c.extend_from(rest);
            rest = &rest[n..];
        }
        assert!(rest.is_empty());
        assert_eq!(body.len(), 5000);
        assert_eq!(body.slices().map(<[u8]>::len).collect::<Vec<_>>(), vec![4096, 904]);
    }
}
