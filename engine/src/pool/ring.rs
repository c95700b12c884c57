//! A ring of pool chunks between two tasks of one worker: a reader fills chunks from
//! the source while a writer sends them to the destination, and each chunk goes back
//! to the reader once written.
//!
//! This is how a part streams: the reader is at most the ring's chunks ahead of the
//! writer, so a 16 MiB part moves through a few MiB of memory, and each byte is
//! sent while still in the CPU cache it was received into. The ring owns its chunks
//! for its whole life (granted all at once by the pool), so two rings can never wait on
//! each other. Both sides are on one thread: no atomics, no locks.
//!
//! Ending: the reader calls [`Filler::finish`] with the checksum of what it read, and
//! the writer sees [`Next::End`]. If the reader is dropped without finishing (its read
//! failed), the writer sees [`Next::Aborted`] and must not complete its request. If the
//! writer is dropped (its request failed), the reader's [`Filler::empty_chunk`]
//! returns None.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::Chunk;
use crate::checksum::Checksum;

struct State {
    /// Empty chunks the reader may fill.
    free: VecDeque<Chunk>,
    /// Filled chunks, in order, for the writer.
    filled: VecDeque<Chunk>,
    /// Chunks the ring owns, for the bound checks.
    chunk_count: usize,
    /// Set once: Ok(checksum) when the reader finished, Err when it gave up.
    end: Option<Result<Checksum, ()>>,
    writer_gone: bool,
    reader_waker: Option<Waker>,
    writer_waker: Option<Waker>,
    /// Since when the reader has waited for an empty chunk, and how long it waited
    /// in all: a reader that waits most of the time has a slower writer.
    reader_waiting_since: Option<std::time::Instant>,
    reader_waited: std::time::Duration,
    /// The same for the writer, waiting for a filled chunk: a writer that waits most
    /// of the time has a slower reader.
    writer_waiting_since: Option<std::time::Instant>,
    writer_waited: std::time::Duration,
}

impl State {
    fn check(&self) {
        assert!(self.free.len() + self.filled.len() <= self.chunk_count, "a ring holds more chunks than it owns");
    }
}

/// The reader's end.
pub struct Filler {
    state: Rc<RefCell<State>>,
}

/// The writer's end.
pub struct Drain {
    state: Rc<RefCell<State>>,
}

/// What the writer gets next.
pub enum Next {
    /// A filled chunk, to write and then [`Drain::recycle`].
    Chunk(Chunk),
    /// Every byte was read; their checksum.
    End(Checksum),
    /// The reader failed: the bytes are incomplete.
    Aborted,
}

/// Makes a ring of `chunks` (at least one).
pub fn ring(chunks: Vec<Chunk>) -> (Filler, Drain) {
    assert!(!chunks.is_empty(), "a ring needs a chunk");
    let chunk_count = chunks.len();
    let free = chunks
        .into_iter()
        .map(|mut c| {
            c.clear();
            c
        })
        .collect();
    let state = Rc::new(RefCell::new(State {
        free,
        filled: VecDeque::new(),
        chunk_count,
        end: None,
        writer_gone: false,
        reader_waker: None,
        writer_waker: None,
        reader_waiting_since: None,
        reader_waited: std::time::Duration::ZERO,
        writer_waiting_since: None,
        writer_waited: std::time::Duration::ZERO,
    }));
    (Filler { state: state.clone() }, Drain { state })
}

impl Filler {
    /// Waits for an empty chunk; None once the writer has gone.
    pub async fn empty_chunk(&self) -> Option<Chunk> {
        std::future::poll_fn(|cx| {
            let mut s = self.state.borrow_mut();
            if s.writer_gone {
                if let Some(since) = s.reader_waiting_since.take() {
                    s.reader_waited += since.elapsed();
                }
                return Poll::Ready(None);
            }
            if let Some(chunk) = s.free.pop_front() {
                debug_assert!(chunk.is_empty());
                if let Some(since) = s.reader_waiting_since.take() {
                    s.reader_waited += since.elapsed();
                }
                return Poll::Ready(Some(chunk));
            }
            s.reader_waker = Some(cx.waker().clone());
            if s.reader_waiting_since.is_none() {
                s.reader_waiting_since = Some(std::time::Instant::now());
            }
            Poll::Pending
        })
        .await
    }

    /// A handle on both sides' waiting times that outlives the two ends.
    pub fn waits(&self) -> Waits {
        Waits { state: self.state.clone() }
    }

    /// Whether the writer has gone (its request failed).
    pub fn writer_gone(&self) -> bool {
        self.state.borrow().writer_gone
    }

    /// Hands a filled chunk to the writer.
    pub fn send(&self, chunk: Chunk) {
        let mut s = self.state.borrow_mut();
        assert!(s.end.is_none(), "send after finish");
        s.filled.push_back(chunk);
        s.check();
        if let Some(w) = s.writer_waker.take() {
            w.wake();
        }
    }

    /// Ends the stream: every byte was sent, and `checksum` is theirs.
    pub fn finish(self, checksum: Checksum) {
        let mut s = self.state.borrow_mut();
        s.end = Some(Ok(checksum));
        if let Some(w) = s.writer_waker.take() {
            w.wake();
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        let mut s = self.state.borrow_mut();
        if s.end.is_none() {
            s.end = Some(Err(()));
        }
        if let Some(w) = s.writer_waker.take() {
            w.wake();
        }
    }
}

impl Drain {
    /// Waits for the next filled chunk or the end.
    pub async fn next(&self) -> Next {
        std::future::poll_fn(|cx| {
            let mut s = self.state.borrow_mut();
            let next = match (s.filled.pop_front(), &s.end) {
                (Some(chunk), _) => Next::Chunk(chunk),
                (None, Some(Ok(sum))) => Next::End(sum.clone()),
                (None, Some(Err(()))) => Next::Aborted,
                (None, None) => {
                    s.writer_waker = Some(cx.waker().clone());
                    if s.writer_waiting_since.is_none() {
                        s.writer_waiting_since = Some(std::time::Instant::now());
                    }
                    return Poll::Pending;
                }
            };
            if let Some(since) = s.writer_waiting_since.take() {
                s.writer_waited += since.elapsed();
            }
            Poll::Ready(next)
        })
        .await
    }

    /// Gives a written chunk back to the reader.
    pub fn recycle(&self, mut chunk: Chunk) {
        chunk.clear();
        let mut s = self.state.borrow_mut();
        s.free.push_back(chunk);
        s.check();
        if let Some(w) = s.reader_waker.take() {
            w.wake();
        }
    }
}

/// Both sides' waiting times, readable after the ends are gone (see [`Filler::waits`]).
pub struct Waits {
    state: Rc<RefCell<State>>,
}

impl Waits {
    /// How long the reader waited for the writer to free a chunk.
    pub fn reader(&self) -> std::time::Duration {
        self.state.borrow().reader_waited
    }

    /// How long the writer waited for the reader to fill a chunk.
    pub fn writer(&self) -> std::time::Duration {
        self.state.borrow().writer_waited
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        let mut s = self.state.borrow_mut();
        s.writer_gone = true;
        // A writer dropped while waiting (its request failed or was cancelled).
        if let Some(since) = s.writer_waiting_since.take() {
            s.writer_waited += since.elapsed();
        }
        if let Some(w) = s.reader_waker.take() {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{ChecksumAlgo, Hasher};
    use crate::pool::BufferPool;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build().expect("runtime").block_on(f)
    }

    #[test]
    fn bytes_arrive_in_order_through_a_small_ring() {
        run(async {
            let pool = BufferPool::new(4096, 8);
            let (filler, drain) = ring(pool.acquire(2).await);
            let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
            let expected = data.clone();
            let reader = async move {
                let mut h = Hasher::new(ChecksumAlgo::Crc32c);
                for piece in data.chunks(4096) {
                    let mut c = filler.empty_chunk().await.expect("writer alive");
                    c.extend_from(piece);
                    h.update(piece);
                    filler.send(c);
                }
                filler.finish(h.finish());
            };
            let writer = async move {
                let mut got = Vec::new();
                loop {
                    match drain.next().await {
                        Next::Chunk(c) => {
                            got.extend_from_slice(c.as_slice());
                            drain.recycle(c);
                        }
                        Next::End(sum) => return (got, sum),
                        Next::Aborted => panic!("aborted"),
                    }
                }
            };
            let ((), (got, sum)) = monoio::join!(reader, writer);
            assert_eq!(got, expected);
            assert_eq!(sum.crc32c(), Some(crc32c::crc32c(&expected)));
            // Every chunk went back to the pool with the ring.
            assert_eq!(pool.free_chunks(), 8);
        });
    }

    #[test]
    fn either_side_failing_is_seen_by_the_other() {
        run(async {
            let pool = BufferPool::new(4096, 2);
            let (filler, drain) = ring(pool.acquire(1).await);
            let c = filler.empty_chunk().await.unwrap();
            filler.send(c);
            drop(filler);
            assert!(matches!(drain.next().await, Next::Chunk(_)));
            assert!(matches!(drain.next().await, Next::Aborted));

            let (filler, drain) = ring(pool.acquire(1).await);
            drop(drain);
            assert!(filler.empty_chunk().await.is_none());
        });
    }

    /// The side that sleeps between chunks is the slow one; the other side's waits
    /// show it, and the slow side itself hardly waits.
    #[test]
    fn each_side_accounts_its_waits_for_the_other() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().expect("runtime");
        let pause = std::time::Duration::from_millis(5);
        for slow_reader in [true, false] {
            let (reader_waited, writer_waited) = rt.block_on(async {
                let pool = BufferPool::new(4096, 2);
                let (filler, drain) = ring(pool.acquire(2).await);
                let waits = filler.waits();
                let reader = async move {
                    for _ in 0..20 {
                        let c = filler.empty_chunk().await.expect("writer alive");
                        if slow_reader {
                            monoio::time::sleep(pause).await;
                        }
                        filler.send(c);
                    }
                    filler.finish(Hasher::new(ChecksumAlgo::Crc32c).finish());
                };
                let writer = async move {
                    while let Next::Chunk(c) = drain.next().await {
                        if !slow_reader {
                            monoio::time::sleep(pause).await;
                        }
                        drain.recycle(c);
                    }
                };
                monoio::join!(reader, writer);
                (waits.reader(), waits.writer())
            });
            let (slow, fast) =
                if slow_reader { (reader_waited, writer_waited) } else { (writer_waited, reader_waited) };
            assert!(fast >= pause * 10, "the fast side waited only {fast:?} (slow reader: {slow_reader})");
            assert!(slow < fast, "the slow side waited {slow:?}, the fast one {fast:?} (slow reader: {slow_reader})");
        }
    }
}
