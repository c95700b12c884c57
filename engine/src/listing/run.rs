//! Run files: the sorted stretches of a listing that [`ExternalSorter`](super::ExternalSorter)
//! spills to disk and merges back.
//!
//! A run is written once, front to back, and read once, front to back, by the process
//! that wrote it; it never outlives the sort. So the format is built for speed and for
//! failing clearly, not for compatibility:
//!
//! ```text
//! file   = magic "LMSRUN" | version u8 | codec u8 (0) | block* | end
//! block  = stored_len u32 | raw_len u32 | entries u32 (>0) | crc32c u32 | payload
//! end    = 8 u32 | 8 u32 | 0 u32 | crc32c u32 | total entries u64
//! entry  = shared varint | suffix_len varint | suffix | size varint | etag | provenance | version | time
//! option = 0 (None) | len+1 varint, bytes
//! time   = 0 (None) | 1, zigzag varint of the Unix milliseconds
//! ```
//!
//! All integers are little-endian; varints are LEB128. A block holds whole entries,
//! closes once it passes its target size (a few KiB to 64 KiB, see the sorter) and
//! is read into one buffer, so a reader holds one block, not the file. Keys are
//! prefix-compressed against the previous key of the same block (sorted keys of real
//! trees share long directory prefixes), and each block starts afresh, so a block
//! decodes on its own. The CRC covers the header's first three fields and the stored
//! payload; the end marker carries the entry count, and the reader requires it and
//! end-of-file right after it. So a truncated, shortened or altered file is an
//! [`Error`] naming the file, never a panic and never a silently shorter listing.
//!
//! Payloads are stored as encoded. zstd (level 1) on top was measured with
//! `laminar-bench sort` on 10 million keys of a tree (bench/RESULTS.md, "Sorting
//! unordered listings"): it spilled 42% fewer bytes (337 against 578 MiB) for 18%
//! more CPU time (8.2 against 6.9 s) and a slower sort, on a 2-core machine whose
//! page cache took the runs whole. Prefix compression already takes the keys' shared
//! directories; what zstd still finds is mostly the hex ETags' 4 bits a byte. So
//! runs are not compressed; the codec byte (0) leaves room to add it for hosts whose
//! runs miss the page cache on a scratch disk slower than about 350 MB/s.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::backend::Entry;
use crate::error::{Error, Result};

const MAGIC: &[u8; 6] = b"LMSRUN";
const VERSION: u8 = 2;
const FILE_HEADER_BYTES: usize = 8;
const BLOCK_HEADER_BYTES: usize = 16;
/// Bytes of the end marker's payload (the entry count).
const END_PAYLOAD_BYTES: usize = 8;

/// The largest encoded entry a run takes; the sorter refuses larger ones up front.
pub(crate) const ENTRY_BYTES_MAX: usize = 4 << 20;
/// The largest block target a writer is given.
pub(crate) const BLOCK_BYTES_MAX: usize = 64 << 10;
/// A block closes once past its target, so it holds at most the target plus one entry.
const BLOCK_RAW_BYTES_MAX: usize = BLOCK_BYTES_MAX + ENTRY_BYTES_MAX;
/// Encoded bytes of an entry beyond its strings: eight varints of at most 10 bytes.
const ENTRY_OVERHEAD_BYTES_MAX: usize = 80;

const _: () = assert!(BLOCK_RAW_BYTES_MAX < u32::MAX as usize / 2);
const _: () = assert!(BLOCK_BYTES_MAX.is_power_of_two());

/// The codec byte: payloads as encoded, the only codec.
const CODEC_RAW: u8 = 0;

/// A finished run file.
#[derive(Debug)]
pub(crate) struct Run {
    pub path: PathBuf,
    pub entries: u64,
    pub bytes: u64,
}

/// An upper bound of the bytes `entry` takes encoded (before prefix compression).
pub(crate) fn encoded_bytes_max(entry: &Entry) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    ENTRY_OVERHEAD_BYTES_MAX + entry.key.len() + opt(&entry.etag) + opt(&entry.provenance) + opt(&entry.version)
}

/// The error for an I/O failure on a sort file or directory, with what to do about
/// the failures an operator can fix.
pub(crate) fn disk_error(path: &Path, e: io::Error) -> Error {
    let hint = match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "; the disk is full: free space there or point LAMINAR_DATA_DIR at a disk with room \
             (a listing spills about 60 bytes a key)"
        }
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            "; it is not writable: point LAMINAR_DATA_DIR at a writable directory"
        }
        io::ErrorKind::NotFound => "; it does not exist: create it or point LAMINAR_DATA_DIR elsewhere",
        _ => "",
    };
    Error::io("sort", path.display().to_string(), io::Error::new(e.kind(), format!("{e}{hint}")))
}

/// The error for a run file that does not read back as written.
pub(crate) fn corrupt(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::io(
        "sort",
        path.display().to_string(),
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "run file is corrupt: {detail}; it is this sort's own scratch file, so something else changed it \
                 or the disk lost it: run again, with LAMINAR_DATA_DIR on a sound local disk"
            ),
        ),
    )
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

fn put_option(buf: &mut Vec<u8>, s: &Option<String>) {
    match s {
        None => buf.push(0),
        Some(s) => {
            put_varint(buf, s.len() as u64 + 1);
            buf.extend_from_slice(s.as_bytes());
        }
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Writes one run, entries in order.
pub(crate) struct RunWriter {
    file: File,
    path: PathBuf,
    block_bytes: usize,
    /// The block being filled: header room, then encoded entries.
    buf: Vec<u8>,
    /// The last key written (for the order check and prefix compression).
    last_key: Vec<u8>,
    block_entries: u32,
    entries: u64,
    bytes: u64,
}

impl RunWriter {
    /// Creates `path` (which must not exist) for a run of blocks of about `block_bytes`.
    pub fn create(path: PathBuf, block_bytes: usize) -> Result<RunWriter> {
        assert!(block_bytes > 0 && block_bytes <= BLOCK_BYTES_MAX, "block target {block_bytes}");
        let mut file = File::options().write(true).create_new(true).open(&path).map_err(|e| disk_error(&path, e))?;
        let mut header = [0u8; FILE_HEADER_BYTES];
        header[..6].copy_from_slice(MAGIC);
        header[6] = VERSION;
        header[7] = CODEC_RAW;
        file.write_all(&header).map_err(|e| disk_error(&path, e))?;
        let mut buf = Vec::with_capacity(BLOCK_HEADER_BYTES + block_bytes * 2);
        buf.resize(BLOCK_HEADER_BYTES, 0);
        Ok(RunWriter {
            file,
            path,
            block_bytes,
            buf,
            last_key: Vec::new(),
            block_entries: 0,
            entries: 0,
            bytes: FILE_HEADER_BYTES as u64,
        })
    }

    /// Appends an entry; keys must come in byte order (equal keys allowed).
    pub fn push(&mut self, entry: &Entry) -> Result<()> {
        let key = entry.key.as_bytes();
        assert!(self.entries == 0 || key >= self.last_key.as_slice(), "run entries out of order");
        assert!(encoded_bytes_max(entry) <= ENTRY_BYTES_MAX, "the sorter admits only entries a run takes");
        let shared = if self.block_entries == 0 { 0 } else { common_prefix(&self.last_key, key) };
        put_varint(&mut self.buf, shared as u64);
        put_bytes(&mut self.buf, &key[shared..]);
        put_varint(&mut self.buf, entry.size);
        put_option(&mut self.buf, &entry.etag);
        put_option(&mut self.buf, &entry.provenance);
        put_option(&mut self.buf, &entry.version);
        match entry.modified_unix_ms {
            None => put_varint(&mut self.buf, 0),
            Some(ms) => {
                put_varint(&mut self.buf, 1);
                put_varint(&mut self.buf, ((ms << 1) ^ (ms >> 63)) as u64);
            }
        }
        self.last_key.truncate(shared);
        self.last_key.extend_from_slice(&key[shared..]);
        self.block_entries += 1;
        self.entries += 1;
        if self.buf.len() - BLOCK_HEADER_BYTES >= self.block_bytes {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Writes `buf` as a block of `entries` entries (0: the end marker).
    fn write_block(&mut self, entries: u32) -> Result<()> {
        let block = &mut self.buf;
        let stored_len = block.len() - BLOCK_HEADER_BYTES;
        block[0..4].copy_from_slice(&(stored_len as u32).to_le_bytes());
        block[8..12].copy_from_slice(&entries.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&block[..12]), &block[BLOCK_HEADER_BYTES..]);
        block[12..16].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all(block).map_err(|e| disk_error(&self.path, e))?;
        self.bytes += block.len() as u64;
        Ok(())
    }

    fn flush_block(&mut self) -> Result<()> {
        if self.block_entries == 0 {
            return Ok(());
        }
        let raw_len = self.buf.len() - BLOCK_HEADER_BYTES;
        assert!(raw_len <= BLOCK_RAW_BYTES_MAX);
        self.buf[4..8].copy_from_slice(&(raw_len as u32).to_le_bytes());
        self.write_block(self.block_entries)?;
        self.buf.truncate(BLOCK_HEADER_BYTES);
        self.block_entries = 0;
        Ok(())
    }

    /// Writes the last block and the end marker, and closes the file.
    pub fn finish(mut self) -> Result<Run> {
        self.flush_block()?;
        self.buf.truncate(BLOCK_HEADER_BYTES);
        self.buf[4..8].copy_from_slice(&(END_PAYLOAD_BYTES as u32).to_le_bytes());
        self.buf.extend_from_slice(&self.entries.to_le_bytes());
        self.write_block(0)?;
        // No fsync: a run lives only as long as this process's sort.
        Ok(Run { path: self.path, entries: self.entries, bytes: self.bytes })
    }
}

/// Reads one run back, front to back.
pub(crate) struct RunReader {
    file: File,
    path: PathBuf,
    /// The current block's encoded entries.
    raw: Vec<u8>,
    pos: usize,
    block_left: u32,
    block_start: bool,
    /// The last key read.
    key: Vec<u8>,
    entries: u64,
    done: bool,
}

/// Reads exactly `buf.len()` bytes; false if the file ended first (at any point).
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<bool> {
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

impl RunReader {
    /// Opens a run and checks its header.
    pub fn open(path: PathBuf) -> Result<RunReader> {
        let mut file = File::open(&path).map_err(|e| disk_error(&path, e))?;
        let mut header = [0u8; FILE_HEADER_BYTES];
        if !read_full(&mut file, &mut header).map_err(|e| disk_error(&path, e))? {
            return Err(corrupt(&path, "truncated inside its file header"));
        }
        if &header[..6] != MAGIC || header[6] != VERSION {
            return Err(corrupt(&path, "not a run file of this version"));
        }
        if header[7] != CODEC_RAW {
            return Err(corrupt(&path, format!("unknown codec {}", header[7])));
        }
        Ok(RunReader {
            file,
            path,
            raw: Vec::new(),
            pos: 0,
            block_left: 0,
            block_start: true,
            key: Vec::new(),
            entries: 0,
            done: false,
        })
    }

    /// Loads the next block; false at the end marker (checked, and end-of-file after it).
    fn load_block(&mut self) -> Result<bool> {
        let path = &self.path;
        let io_err = |e| disk_error(path, e);
        let mut header = [0u8; BLOCK_HEADER_BYTES];
        if !read_full(&mut self.file, &mut header).map_err(io_err)? {
            return Err(corrupt(path, format!("truncated after {} entries, before its end marker", self.entries)));
        }
        let field = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
        let (stored_len, raw_len, entries, crc) = (field(0) as usize, field(4) as usize, field(8), field(12));
        if raw_len > BLOCK_RAW_BYTES_MAX {
            return Err(corrupt(path, format!("block of {raw_len} bytes, beyond the limit")));
        }
        if entries == 0 && (stored_len != END_PAYLOAD_BYTES || raw_len != END_PAYLOAD_BYTES) {
            return Err(corrupt(path, "malformed end marker"));
        }
        if stored_len != raw_len {
            return Err(corrupt(path, "uncompressed block whose lengths differ"));
        }
        self.raw.clear();
        self.raw.resize(stored_len, 0);
        if !read_full(&mut self.file, &mut self.raw).map_err(io_err)? {
            return Err(corrupt(path, format!("truncated inside a block after {} entries", self.entries)));
        }
        if crc32c::crc32c_append(crc32c::crc32c(&header[..12]), &self.raw) != crc {
            return Err(corrupt(path, format!("checksum mismatch in the block after {} entries", self.entries)));
        }
        if entries == 0 {
            let total = u64::from_le_bytes(self.raw[..8].try_into().unwrap());
            if total != self.entries {
                return Err(corrupt(path, format!("end marker counts {total} entries, {} read", self.entries)));
            }
            let mut byte = [0u8; 1];
            if self.file.read(&mut byte).map_err(io_err)? != 0 {
                return Err(corrupt(path, "bytes after its end marker"));
            }
            self.raw = Vec::new();
            return Ok(false);
        }
        // A block far above the target (one huge entry) does not keep its buffer.
        if self.raw.capacity() > 4 * BLOCK_BYTES_MAX && raw_len <= BLOCK_BYTES_MAX * 2 {
            self.raw.shrink_to(BLOCK_BYTES_MAX * 2);
        }
        self.pos = 0;
        self.block_left = entries;
        self.block_start = true;
        Ok(true)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.raw.get(self.pos) else {
                return Err(corrupt(&self.path, "entry runs past its block"));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt(&self.path, "varint longer than 64 bits"))
    }

    /// The next `len` bytes of the block, as a range of `raw`.
    fn span(&mut self, len: u64) -> Result<std::ops::Range<usize>> {
        let end = usize::try_from(len).ok().and_then(|l| self.pos.checked_add(l)).filter(|&e| e <= self.raw.len());
        let Some(end) = end else {
            return Err(corrupt(&self.path, "entry runs past its block"));
        };
        let start = std::mem::replace(&mut self.pos, end);
        Ok(start..end)
    }

    fn string(&mut self, len: u64, what: &str) -> Result<String> {
        let span = self.span(len)?;
        let bytes = self.raw[span].to_vec();
        String::from_utf8(bytes).map_err(|_| corrupt(&self.path, format!("{what} is not UTF-8")))
    }

    fn option(&mut self, what: &str) -> Result<Option<String>> {
        match self.varint()? {
            0 => Ok(None),
            n => self.string(n - 1, what).map(Some),
        }
    }

    /// The next entry, None after the last one.
    pub fn next(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        if self.block_left == 0 && !self.load_block()? {
            self.done = true;
            return Ok(None);
        }
        let shared = self.varint()?;
        if shared > self.key.len() as u64 || (self.block_start && shared != 0) {
            return Err(corrupt(&self.path, "key prefix longer than the previous key"));
        }
        let shared = shared as usize;
        let suffix_len = self.varint()?;
        let suffix = self.span(suffix_len)?;
        let mut key = Vec::with_capacity(shared + suffix.len());
        key.extend_from_slice(&self.key[..shared]);
        key.extend_from_slice(&self.raw[suffix]);
        if self.entries > 0 && key < self.key {
            return Err(corrupt(&self.path, "keys out of order"));
        }
        self.key.clear();
        self.key.extend_from_slice(&key);
        let key = String::from_utf8(key).map_err(|_| corrupt(&self.path, "key is not UTF-8"))?;
        let size = self.varint()?;
        let etag = self.option("etag")?;
        let provenance = self.option("provenance")?;
        let version = self.option("version")?;
        let modified_unix_ms = match self.varint()? {
            0 => None,
            1 => {
                let z = self.varint()?;
                Some((z >> 1) as i64 ^ -((z & 1) as i64))
            }
            _ => return Err(corrupt(&self.path, "a time's tag is neither 0 nor 1")),
        };
        self.block_start = false;
        self.block_left -= 1;
        self.entries += 1;
        if self.block_left == 0 && self.pos != self.raw.len() {
            return Err(corrupt(&self.path, "bytes after the last entry of a block"));
        }
        Ok(Some(Entry { key, size, etag, provenance, version, modified_unix_ms }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Vec<Entry> {
        let mut v: Vec<Entry> = (0..n)
            .map(|i| Entry {
                key: format!("dir{:02}/é{}/file-{i:04}", i % 7, i % 3),
                size: (i as u64) << (i % 40),
                etag: (i % 2 == 0).then(|| format!("{i:032x}")),
                provenance: (i % 5 == 0).then(String::new),
                version: (i % 3 == 0).then(|| format!("v{i}")),
                modified_unix_ms: (i % 4 != 0).then(|| (i as i64 - 20) << (i % 50)),
            })
            .collect();
        v.push(v[10].clone());
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    fn write(path: &Path, block_bytes: usize, entries: &[Entry]) -> Run {
        let mut w = RunWriter::create(path.to_path_buf(), block_bytes).unwrap();
        for e in entries {
            w.push(e).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(path: &Path) -> Result<Vec<Entry>> {
        let mut r = RunReader::open(path.to_path_buf())?;
        let mut out = Vec::new();
        while let Some(e) = r.next()? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn round_trips_with_each_block_size() {
        let dir = tempfile::tempdir().unwrap();
        let want = entries(200);
        for block_bytes in [1, 100, 4096, BLOCK_BYTES_MAX] {
            let path = dir.path().join(format!("run-{block_bytes}"));
            let run = write(&path, block_bytes, &want);
            assert_eq!(run.entries, want.len() as u64);
            assert_eq!(run.bytes, std::fs::metadata(&path).unwrap().len());
            assert_eq!(read_all(&path).unwrap(), want, "{block_bytes}");
        }
        let path = dir.path().join("empty");
        write(&path, 4096, &[]);
        assert!(read_all(&path).unwrap().is_empty());
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let want = entries(60);
        let path = dir.path().join("run");
        write(&path, 128, &want);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 4 * 128, "several blocks");
        let bad = dir.path().join("bad");
        for len in 0..bytes.len() {
            std::fs::write(&bad, &bytes[..len]).unwrap();
            let err = read_all(&bad).expect_err("a truncated run is an error").to_string();
            assert!(err.contains("run file is corrupt") && err.contains(&bad.display().to_string()), "{err}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            std::fs::write(&bad, &flipped).unwrap();
            assert!(read_all(&bad).is_err(), "flipping byte {at} went unnoticed");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        std::fs::write(&bad, &longer).unwrap();
        assert!(read_all(&bad).unwrap_err().to_string().contains("after its end marker"));
    }

    #[test]
    fn disk_errors_say_what_to_do() {
        let path = Path::new("/data/sort");
        let full = disk_error(path, io::Error::from(io::ErrorKind::StorageFull)).to_string();
        assert!(
            full.starts_with("sort /data/sort: ") && full.contains("free space") && full.contains("LAMINAR_DATA_DIR")
        );
        let ro = disk_error(path, io::Error::from(io::ErrorKind::PermissionDenied)).to_string();
        assert!(ro.contains("not writable") && ro.contains("LAMINAR_DATA_DIR"), "{ro}");
    }
}
