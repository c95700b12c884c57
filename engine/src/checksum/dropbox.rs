//! Dropbox's `content_hash`, computed while bytes stream.
//!
//! Dropbox names a file's content by the SHA-256 of its 4 MiB blocks' SHA-256 digests,
//! concatenated in order; a file of no bytes has no blocks, so its hash is the SHA-256
//! of the empty string. [`DropboxHasher`] keeps one running SHA-256 for the block being
//! filled and one for the concatenation of finished blocks' digests: it never buffers a
//! block, and its state is a few hundred bytes whatever the file's size.
//!
//! Parts hashed apart (on different workers) combine without a second pass when every
//! boundary between them falls on a multiple of [`DROPBOX_BLOCK_BYTES`]: each block then
//! lies wholly inside one part, so the file's block digests are the parts' block digests
//! in order. [`DropboxBlocks`] keeps a part's block digests for that (32 bytes per 4 MiB),
//! and [`dropbox_combine`] checks the alignment and combines them.

use sha2::Digest as _;

use super::{Checksum, ChecksumAlgo};

/// The size of the blocks Dropbox hashes one by one: 4 MiB.
pub const DROPBOX_BLOCK_BYTES: u64 = 4 * 1024 * 1024;
const BLOCK_BYTES: usize = DROPBOX_BLOCK_BYTES as usize;
const _: () = assert!(DROPBOX_BLOCK_BYTES.is_power_of_two());
const _: () = assert!(BLOCK_BYTES as u64 == DROPBOX_BLOCK_BYTES);

/// The SHA-256 of one block.
pub type BlockDigest = [u8; 32];

/// The block being filled: a running SHA-256 and how many bytes it has taken.
#[derive(Clone)]
struct Block {
    sha: sha2::Sha256,
    fill_bytes: usize,
}

impl Block {
    fn new() -> Block {
        Block { sha: sha2::Sha256::new(), fill_bytes: 0 }
    }

    /// Feeds bytes, handing each block's digest to `done` as the block fills.
    #[inline]
    fn update(&mut self, mut bytes: &[u8], mut done: impl FnMut(BlockDigest)) {
        // Bounded: each turn fills the block or uses up `bytes`.
        while !bytes.is_empty() {
            assert!(self.fill_bytes < BLOCK_BYTES);
            let take = (BLOCK_BYTES - self.fill_bytes).min(bytes.len());
            let (now, rest) = bytes.split_at(take);
            self.sha.update(now);
            self.fill_bytes += take;
            bytes = rest;
            if self.fill_bytes == BLOCK_BYTES {
                done(self.sha.finalize_reset().into());
                self.fill_bytes = 0;
            }
        }
    }

    /// The digest of the last, short block, if it holds any bytes. A full block was
    /// handed over when it filled, so a file of exactly 4 MiB has one block, not two.
    fn finish(self) -> Option<BlockDigest> {
        (self.fill_bytes > 0).then(|| self.sha.finalize().into())
    }
}

/// A running Dropbox `content_hash` of a whole file.
#[derive(Clone)]
pub struct DropboxHasher {
    block: Block,
    /// SHA-256 of the finished blocks' digests, concatenated.
    blocks: sha2::Sha256,
}

impl Default for DropboxHasher {
    fn default() -> Self {
        DropboxHasher::new()
    }
}

impl DropboxHasher {
    /// Starts a hash.
    pub fn new() -> DropboxHasher {
        DropboxHasher { block: Block::new(), blocks: sha2::Sha256::new() }
    }

    /// Feeds bytes; they may cross block boundaries anywhere.
    #[inline]
    pub fn update(&mut self, bytes: &[u8]) {
        let blocks = &mut self.blocks;
        self.block.update(bytes, |digest| blocks.update(digest));
    }

    /// Finishes: the `content_hash` digest.
    pub fn finish(self) -> [u8; 32] {
        let mut blocks = self.blocks;
        if let Some(last) = self.block.finish() {
            blocks.update(last);
        }
        blocks.finalize().into()
    }
}

/// The block digests of one part of a file, for parts hashed apart and combined with
/// [`dropbox_combine`]. The part must start at a multiple of [`DROPBOX_BLOCK_BYTES`].
#[derive(Clone)]
pub struct DropboxBlocks {
    block: Block,
    len_bytes: u64,
    digests: Vec<BlockDigest>,
}

impl Default for DropboxBlocks {
    fn default() -> Self {
        DropboxBlocks::new()
    }
}

impl DropboxBlocks {
    /// Starts a part.
    pub fn new() -> DropboxBlocks {
        DropboxBlocks::with_capacity(0)
    }

    /// Starts a part, with room for the digests of `len_bytes` bytes so that `update`
    /// does not allocate when the part is that long or shorter.
    pub fn with_capacity(len_bytes: u64) -> DropboxBlocks {
        let blocks = usize::try_from(len_bytes.div_ceil(DROPBOX_BLOCK_BYTES)).expect("block count fits in memory");
        DropboxBlocks { block: Block::new(), len_bytes: 0, digests: Vec::with_capacity(blocks) }
    }

    /// Feeds bytes; they may cross block boundaries anywhere.
    #[inline]
    pub fn update(&mut self, bytes: &[u8]) {
        self.len_bytes += bytes.len() as u64;
        let digests = &mut self.digests;
        self.block.update(bytes, |digest| digests.push(digest));
    }

    /// Finishes the part.
    pub fn finish(self) -> DropboxPart {
        let mut digests = self.digests;
        digests.extend(self.block.finish());
        assert_eq!(digests.len() as u64, self.len_bytes.div_ceil(DROPBOX_BLOCK_BYTES));
        DropboxPart { len_bytes: self.len_bytes, block_digests: digests }
    }
}

/// A finished part: its length and its blocks' digests, the last of them of a short
/// block unless the length is a multiple of [`DROPBOX_BLOCK_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DropboxPart {
    len_bytes: u64,
    block_digests: Vec<BlockDigest>,
}

impl DropboxPart {
    /// The part's length.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// The digests of the part's blocks, in order.
    pub fn block_digests(&self) -> &[BlockDigest] {
        &self.block_digests
    }

    /// Whether the part ends on a block boundary, as every part but the last must.
    pub fn is_aligned(&self) -> bool {
        self.len_bytes.is_multiple_of(DROPBOX_BLOCK_BYTES)
    }

    /// Whether the digest count matches the length (a part read back from a journal
    /// might not).
    fn is_consistent(&self) -> bool {
        self.block_digests.len() as u64 == self.len_bytes.div_ceil(DROPBOX_BLOCK_BYTES)
    }
}

/// The `content_hash` of a file from its consecutive parts, the first starting at
/// offset 0. Alignment rule: every part but the last must be a multiple of
/// [`DROPBOX_BLOCK_BYTES`] long (so that each part starts on a block boundary); the
/// last may have any length. None when a part breaks the rule or its digests do not
/// match its length; then the file must be hashed in one pass instead.
pub fn dropbox_combine(parts: &[DropboxPart]) -> Option<Checksum> {
    let before_last = &parts[..parts.len().saturating_sub(1)];
    if !before_last.iter().all(DropboxPart::is_aligned) || !parts.iter().all(DropboxPart::is_consistent) {
        return None;
    }
    let mut blocks = sha2::Sha256::new();
    for digest in parts.iter().flat_map(|p| &p.block_digests) {
        blocks.update(digest);
    }
    Some(Checksum { algo: ChecksumAlgo::DropboxContentHash, bytes: blocks.finalize().to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    const MIB: usize = 1 << 20;

    /// The straightforward definition: every byte in memory, split, hashed.
    fn reference(data: &[u8]) -> [u8; 32] {
        let mut blocks = sha2::Sha256::new();
        for block in data.chunks(BLOCK_BYTES) {
            blocks.update(sha2::Sha256::digest(block));
        }
        blocks.finalize().into()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
    }

    /// Feeds `data` in chunks of the given sizes, cycled.
    fn feed(data: &[u8], sizes: &[usize], mut update: impl FnMut(&[u8])) {
        let mut rest = data;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at(size.min(rest.len()));
            update(now);
            rest = later;
        }
    }

    /// Chunk sizes from `small` bytes to past a block, and a block give or take a byte.
    /// Tiny chunks make a multi-MiB input slow to feed in a debug build, so those tests
    /// start higher.
    fn chunk_sizes(small: usize) -> impl Strategy<Value = Vec<usize>> {
        let size = prop_oneof![small..=small + 64, small..=MIB, BLOCK_BYTES - 1..=BLOCK_BYTES + 1, small..=5 * MIB];
        prop::collection::vec(size, 1..12)
    }

    #[test]
    fn empty_is_sha256_of_nothing() {
        let empty: [u8; 32] = sha2::Sha256::digest(b"").into();
        assert_eq!(DropboxHasher::new().finish(), empty);
        assert_eq!(reference(b""), empty);
        assert_eq!(dropbox_combine(&[]).expect("no parts is the empty file").bytes, empty);
        assert_eq!(dropbox_combine(&[DropboxBlocks::new().finish()]).expect("aligned").bytes, empty);
    }

    #[test]
    fn one_block_is_hashed_twice() {
        let data = pattern(BLOCK_BYTES);
        let block = sha2::Sha256::digest(&data);
        let want: [u8; 32] = sha2::Sha256::digest(block).into();
        let mut h = DropboxHasher::new();
        h.update(&data);
        assert_eq!(h.finish(), want);
    }

    #[test]
    fn chunked_equals_reference() {
        let lens = [0, 1, BLOCK_BYTES - 1, BLOCK_BYTES, BLOCK_BYTES + 1, 9 * MIB + 7];
        for len in lens {
            let data = pattern(len);
            let want = reference(&data);
            let (cases, small) = match len {
                0..=MIB => (32, 1),
                _ if len <= BLOCK_BYTES + 1 => (6, 1),
                _ => (3, 4096),
            };
            let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
            runner
                .run(&chunk_sizes(small), |sizes| {
                    let mut whole = DropboxHasher::new();
                    let mut part = DropboxBlocks::new();
                    feed(&data, &sizes, |chunk| {
                        whole.update(chunk);
                        part.update(chunk);
                    });
                    prop_assert_eq!(whole.finish(), want, "len {}", len);
                    let part = part.finish();
                    prop_assert_eq!(part.len_bytes(), len as u64);
                    prop_assert_eq!(dropbox_combine(&[part]).expect("one part").bytes, want.to_vec());
                    Ok(())
                })
                .expect("content_hash of chunked input");
        }
    }

    #[test]
    fn aligned_parts_combine() {
        let data = pattern(9 * MIB + 7);
        let want = reference(&data).to_vec();
        // Every block boundary inside the file (its end is not one).
        let boundaries = data.len() / BLOCK_BYTES;
        let strategy = (prop::collection::vec(0..=boundaries, 0..4), chunk_sizes(4096));
        let mut runner = TestRunner::new(Config { cases: 4, failure_persistence: None, ..Config::default() });
        runner
            .run(&strategy, |(mut cuts, sizes)| {
                // Cuts at block boundaries (an empty part included, when two coincide).
                cuts.sort_unstable();
                let mut parts = Vec::new();
                let mut start = 0;
                for end in cuts.into_iter().map(|b| b * BLOCK_BYTES).chain([data.len()]) {
                    let mut part = DropboxBlocks::with_capacity((end - start) as u64);
                    feed(&data[start..end], &sizes, |chunk| part.update(chunk));
                    parts.push(part.finish());
                    start = end;
                }
                prop_assert_eq!(dropbox_combine(&parts).expect("aligned parts").bytes, want.clone());
                Ok(())
            })
            .expect("aligned parts combine");
    }

    #[test]
    fn misaligned_parts_refuse() {
        let data = pattern(BLOCK_BYTES + 10);
        let part = |range: std::ops::Range<usize>| {
            let mut p = DropboxBlocks::new();
            p.update(&data[range]);
            p.finish()
        };
        let split = BLOCK_BYTES - 1;
        assert_eq!(dropbox_combine(&[part(0..split), part(split..data.len())]), None);
        // A short part is fine last.
        let split = BLOCK_BYTES;
        let got = dropbox_combine(&[part(0..split), part(split..data.len())]).expect("aligned");
        assert_eq!(got.bytes, reference(&data).to_vec());
        // Digests that do not match the length.
        let mut bad = part(0..split);
        bad.block_digests.push([0; 32]);
        assert_eq!(dropbox_combine(&[bad]), None);
    }

    #[test]
    fn capacity_covers_the_part() {
        let data = pattern(2 * BLOCK_BYTES + 1);
        let mut p = DropboxBlocks::with_capacity(data.len() as u64);
        let capacity = p.digests.capacity();
        p.update(&data);
        assert_eq!(p.digests.capacity(), capacity, "update reallocated");
        assert_eq!(p.finish().block_digests().len(), 3);
    }
}
