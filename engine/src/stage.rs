//! Tier 2: the NVMe stage. When the destination is slower than the source (or can
//! only take one ordered stream), a large object's parts are read from the source at
//! the source's pace into a stage file, and sent on from there at the destination's.
//!
//! - Files are opened with O_DIRECT (falling back to buffered I/O, with one warning,
//!   where the file system refuses it) and written and read through the worker's
//!   event loop (io_uring, or `pread`/`pwrite` under epoll) from the RAM pool's
//!   4 KiB-aligned chunks. Part offsets and chunk sizes are multiples of 1 MiB, so
//!   every request is aligned; an object's unaligned tail is written padded with zeros
//!   to the block size and read back the same way, then cut to its length.
//! - Registered buffers and fixed files are not used: a worker's pool is usually far
//!   larger than the memlock limit allows to register (8 MiB here), and the stage is
//!   bound by the device, not by per-request cost (see `laminar-bench stage`).
//! - Space: the quota is reserved whole, per object, and the file allocated whole
//!   (`fallocate`) before any byte is read, and both are returned when the file is
//!   removed. No room: the object streams RAM to RAM.
//! - Lifetime: each process stages under its own `run-PID` directory, locked with
//!   `flock`. A file is removed when its object is done (completed, failed or
//!   aborted); the run directory when the engine stops; and at start-up, any run
//!   directory whose lock no process holds is a crash's leftover and is removed.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::checksum::{Checksum, ChecksumAlgo, Hashers};
use crate::error::{Error, Result};
use crate::pool::ring::{Drain, Filler, Next};

/// How the stage is set up (from the plan or flags).
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// Directory holding stage files.
    pub dir: PathBuf,
    /// Bytes the stage may hold at once.
    pub quota_bytes: u64,
}

/// The stage of one engine, shared by its workers.
pub struct Stage {
    run_dir: PathBuf,
    /// Held for the engine's life: its lock marks `run_dir` as alive.
    _lock: std::fs::File,
    lock_path: PathBuf,
    quota_bytes: u64,
    used_bytes: AtomicU64,
    o_direct: bool,
    block_bytes: u64,
    next_file: AtomicU64,
    warned_full: AtomicBool,
    /// Bytes written to and read from stage files, for metrics.
    pub bytes_written: AtomicU64,
    /// See `bytes_written`.
    pub bytes_read: AtomicU64,
}

fn stage_err(path: &Path, e: std::io::Error) -> Error {
    Error::Usage(format!(
        "stage directory {}: {e}; give --stage-dir on a writable local file system, or --route ram",
        path.display()
    ))
}

/// Takes an exclusive, non-blocking `flock` on `file`.
fn try_lock(file: &std::fs::File) -> bool {
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl Stage {
    /// Opens the stage: creates the directory, removes what crashed runs left, and
    /// starts this run's directory.
    pub fn open(opts: &StageOptions) -> Result<Stage> {
        let dir = &opts.dir;
        std::fs::create_dir_all(dir).map_err(|e| stage_err(dir, e))?;
        let removed = Stage::clean_leftovers(dir);
        if removed > 0 {
            tracing::info!("removed {removed} stage file(s) left in {} by a run that ended uncleanly", dir.display());
        }
        let pid = std::process::id();
        let lock_path = dir.join(format!("run-{pid}.lock"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| stage_err(dir, e))?;
        if !try_lock(&lock) {
            return Err(Error::Usage(format!(
                "stage directory {}: run lock is held by another process",
                dir.display()
            )));
        }
        let run_dir = dir.join(format!("run-{pid}"));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir).map_err(|e| stage_err(dir, e))?;
        let o_direct = match laminar_tuning::host::probe_o_direct(&run_dir) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!("{why}; stage files use buffered I/O");
                false
            }
        };
        Ok(Stage {
            run_dir,
            _lock: lock,
            lock_path,
            quota_bytes: opts.quota_bytes,
            used_bytes: AtomicU64::new(0),
            o_direct,
            block_bytes: 4096,
            next_file: AtomicU64::new(0),
            warned_full: AtomicBool::new(false),
            bytes_written: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
        })
    }

    /// Removes run directories (and their locks) that no live process holds; returns
    /// the files removed.
    pub fn clean_leftovers(dir: &Path) -> usize {
        let mut removed = 0;
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("run-").and_then(|n| n.strip_suffix(".lock")) else { continue };
            let Ok(lock) = std::fs::OpenOptions::new().write(true).open(e.path()) else { continue };
            if !try_lock(&lock) {
                continue; // A live run holds it.
            }
            let run = dir.join(format!("run-{pid}"));
            removed += std::fs::read_dir(&run).map(|d| d.count()).unwrap_or(0);
            let _ = std::fs::remove_dir_all(&run);
            let _ = std::fs::remove_file(e.path());
        }
        removed
    }

    /// Whether stage files use O_DIRECT.
    pub fn o_direct(&self) -> bool {
        self.o_direct
    }

    /// Bytes reserved now.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// The quota.
    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    /// This run's directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn round_up(&self, n: u64) -> u64 {
        n.div_ceil(self.block_bytes) * self.block_bytes
    }

    /// Reserves room for `size` bytes and creates a file for them; Err says why not
    /// (the quota is spent, with one warning per engine, or the file cannot be made).
    pub fn create(self: &Arc<Self>, size: u64) -> Result<StageFile, String> {
        let need = self.round_up(size.max(1));
        let reserved = self
            .used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + need <= self.quota_bytes).then_some(used + need)
            })
            .is_ok();
        if !reserved {
            if !self.warned_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the stage quota ({}) is full; objects that would spill stream RAM to RAM instead (raise --stage-max or free space)",
                    laminar_tuning::HumanBytes(self.quota_bytes)
                );
            }
            return Err("the stage quota is full".into());
        }
        let path = self.run_dir.join(format!("obj-{}", self.next_file.fetch_add(1, Ordering::Relaxed)));
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create_new(true);
        if self.o_direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let opened = options.open(&path).and_then(|file| {
            // Allocate the whole file now: writes then land inside it rather than
            // extending it (which ext4 serialises), and a full disk shows here, before
            // any byte is read from the source, not half-way through.
            // SAFETY: fallocate on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, need as libc::off_t) };
            let err = std::io::Error::last_os_error();
            match rc {
                0 => Ok(file),
                _ if err.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(file),
                _ => {
                    let _ = std::fs::remove_file(&path);
                    Err(err)
                }
            }
        });
        match opened {
            Ok(file) => Ok(StageFile { stage: self.clone(), path, file, reserved_bytes: need, size }),
            Err(e) => {
                self.used_bytes.fetch_sub(need, Ordering::AcqRel);
                tracing::warn!(
                    "cannot make a stage file of {} in {}: {e}; this object streams RAM to RAM",
                    laminar_tuning::HumanBytes(need),
                    self.run_dir.display()
                );
                Err(format!("the stage file could not be made ({e})"))
            }
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// One object's stage file. Removed, and its reservation returned, on drop.
pub struct StageFile {
    stage: Arc<Stage>,
    path: PathBuf,
    file: std::fs::File,
    reserved_bytes: u64,
    size: u64,
}

impl StageFile {
    /// The file's path (for tests and logs).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_local(&self) -> Result<monoio::fs::File> {
        let fd = self.file.try_clone().map_err(|e| Error::io("stage", self.path.display().to_string(), e))?;
        monoio::fs::File::from_std(fd).map_err(|e| Error::io("stage", self.path.display().to_string(), e))
    }

    fn io_err(&self, op: &'static str, e: std::io::Error) -> Error {
        Error::io(op, self.path.display().to_string(), e)
    }

    /// Writes what `drain` delivers at `offset` (block-aligned), until its end;
    /// returns the checksum the reader computed.
    /// The drain is dropped on return, so on a write error the reader sees the writer
    /// gone instead of waiting for chunks that will never come back.
    pub async fn write_from(&self, offset: u64, drain: Drain) -> Result<Checksum> {
        assert!(offset.is_multiple_of(self.stage.block_bytes), "stage writes start on a block");
        let file = self.open_local()?;
        let mut at = offset;
        loop {
            match drain.next().await {
                Next::Chunk(mut chunk) => {
                    let len = chunk.len() as u64;
                    let padded = self.stage.round_up(len) as usize;
                    if padded > chunk.len() {
                        // The object's tail: pad to the block with zeros.
                        const ZEROS: [u8; 4096] = [0; 4096];
                        while chunk.len() < padded {
                            let n = (padded - chunk.len()).min(ZEROS.len());
                            chunk.extend_from(&ZEROS[..n]);
                        }
                    }
                    let (res, chunk) = file.write_all_at(chunk, at).await;
                    drain.recycle(chunk);
                    res.map_err(|e| self.io_err("stage-write", e))?;
                    self.stage.bytes_written.fetch_add(len, Ordering::Relaxed);
                    at += len;
                }
                Next::End(sum) => return Ok(sum),
                Next::Aborted => {
                    return Err(Error::protocol(
                        "stage-write",
                        self.path.display().to_string(),
                        "the source read failed",
                    ))
                }
            }
        }
    }

    /// Reads `[offset, offset + len)` into `filler`, hashing with `algo`, and finishes
    /// the ring with the checksum; returns it.
    pub async fn read_into(&self, offset: u64, len: u64, filler: Filler, algo: ChecksumAlgo) -> Result<Checksum> {
        assert!(offset + len <= self.size, "stage reads stay inside the object");
        let file = self.open_local()?;
        let mut hashers = Hashers::new(algo, false);
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let Some(chunk) = filler.empty_chunk().await else {
                return Err(Error::protocol("stage-read", self.path.display().to_string(), "the upload ended early"));
            };
            let want = ((end - at) as usize).min(chunk.capacity());
            let aligned = (self.stage.round_up(want as u64) as usize).min(chunk.capacity());
            let (res, slice) = file.read_exact_at(monoio::buf::IoBufMut::slice_mut(chunk, 0..aligned), at).await;
            let mut chunk = slice.into_inner();
            res.map_err(|e| self.io_err("stage-read", e))?;
            chunk.truncate(want);
            hashers.update(chunk.as_slice());
            self.stage.bytes_read.fetch_add(want as u64, Ordering::Relaxed);
            filler.send(chunk);
            at += want as u64;
        }
        let sum = hashers.finish().0;
        filler.finish(sum.clone());
        Ok(sum)
    }
}

impl Drop for StageFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        self.stage.used_bytes.fetch_sub(self.reserved_bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::BufferPool;

    /// O_DIRECT round trips on a real disk (the temp dir is on ext4 here; /dev/shm
    /// would not enforce alignment), at sizes around the block and chunk bounds.
    #[test]
    fn sizes_round_trip_through_a_stage_file() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let stage =
            Arc::new(Stage::open(&StageOptions { dir: dir.path().to_path_buf(), quota_bytes: 64 << 20 }).unwrap());
        for size in [0u64, 1, 4095, 4096, 4097, (3 << 20) + 123] {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
            let file = stage.create(size).expect("room in the quota");
            crate::runtime::block_on(crate::runtime::Driver::Epoll, async {
                let pool = BufferPool::new(1 << 20, 8);
                // Write through a ring fed from memory.
                let (filler, drain) = crate::pool::ring::ring(pool.acquire(2).await);
                let write = file.write_from(0, drain);
                let feed = async {
                    let mut h = Hashers::new(ChecksumAlgo::Crc32c, false);
                    for piece in bytes.chunks(1 << 20) {
                        let mut c = filler.empty_chunk().await.unwrap();
                        c.extend_from(piece);
                        h.update(piece);
                        filler.send(c);
                    }
                    filler.finish(h.finish().0);
                };
                let (written, ()) = monoio::join!(write, feed);
                let written = written.unwrap();
                // Read back through another ring.
                let (filler, drain) = crate::pool::ring::ring(pool.acquire(2).await);
                let read = file.read_into(0, size, filler, ChecksumAlgo::Crc32c);
                let collect = async {
                    let mut out = Vec::new();
                    loop {
                        match drain.next().await {
                            Next::Chunk(c) => {
                                out.extend_from_slice(c.as_slice());
                                drain.recycle(c);
                            }
                            Next::End(_) => return out,
                            Next::Aborted => panic!("aborted"),
                        }
                    }
                };
                let (sum, out) = monoio::join!(read, collect);
                assert_eq!(sum.unwrap(), written, "size {size}");
                assert_eq!(out, bytes, "size {size}");
            })
            .unwrap();
            assert!(file.path().exists());
            let path = file.path().to_path_buf();
            drop(file);
            assert!(!path.exists(), "removed on drop");
        }
        assert_eq!(stage.used_bytes(), 0);
        if laminar_tuning::host::probe_o_direct(dir.path()).is_ok() {
            assert!(stage.o_direct());
        }
    }

    #[test]
    fn the_quota_is_respected_and_leftovers_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        // A crashed run: its files, and a lock nobody holds.
        let dead = dir.path().join("run-999999999");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("obj-0"), b"left over").unwrap();
        std::fs::write(dir.path().join("run-999999999.lock"), b"").unwrap();
        let stage =
            Arc::new(Stage::open(&StageOptions { dir: dir.path().to_path_buf(), quota_bytes: 3 << 20 }).unwrap());
        assert!(!dead.exists(), "a dead run's directory is removed at start-up");
        let a = stage.create(2 << 20).expect("fits");
        assert!(stage.create(2 << 20).err().expect("over the quota").contains("quota"));
        drop(a);
        assert!(stage.create(2 << 20).is_ok(), "room again once the file is gone");
        // A live run's directory is left alone.
        let other = Stage::clean_leftovers(dir.path());
        assert_eq!(other, 0);
        assert!(stage.run_dir().exists());
        let run_dir = stage.run_dir().to_path_buf();
        drop(stage);
        assert!(!run_dir.exists(), "the run directory goes with the engine");
    }
}
