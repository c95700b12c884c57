//! Dropbox's `content_hash`, written from the documented algorithm
//! (<https://www.dropbox.com/developers/reference/content-hash>): split the bytes into
//! 4 MiB blocks (the last may be shorter), SHA-256 each block, and SHA-256 the
//! concatenation of those digests. No bytes hash to SHA-256 of nothing.
//!
//! The hasher can also keep each block's digest, so that a piece of a concurrent
//! upload session (which starts on a block boundary) is hashed when it arrives, in any
//! order, and the file's hash is put together from the pieces' digests at finish.

use sha2::{Digest as _, Sha256};

/// The block the hash is defined over: 4 MiB.
pub const BLOCK_BYTES: usize = 4 << 20;
const _: () = assert!(BLOCK_BYTES.is_power_of_two());

/// One block's SHA-256.
pub(crate) type BlockDigest = [u8; 32];

/// Streams bytes into a Dropbox content hash.
#[derive(Clone)]
pub struct ContentHasher {
    overall: Sha256,
    block: Sha256,
    block_len: usize,
    /// Every finished block's digest, when the caller asked for them.
    digests: Option<Vec<BlockDigest>>,
}

impl Default for ContentHasher {
    fn default() -> Self {
        ContentHasher::new()
    }
}

impl std::fmt::Debug for ContentHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentHasher").field("block_len", &self.block_len).finish_non_exhaustive()
    }
}

impl ContentHasher {
    /// A hasher of nothing yet.
    pub fn new() -> ContentHasher {
        ContentHasher { overall: Sha256::new(), block: Sha256::new(), block_len: 0, digests: None }
    }

    /// A hasher that also keeps every block's digest (see [`ContentHasher::finish_blocks`]).
    pub(crate) fn recording() -> ContentHasher {
        ContentHasher { digests: Some(Vec::new()), ..ContentHasher::new() }
    }

    /// Adds `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.block_len == BLOCK_BYTES {
                self.close_block();
            }
            let take = data.len().min(BLOCK_BYTES - self.block_len);
            self.block.update(&data[..take]);
            self.block_len += take;
            data = &data[take..];
        }
        debug_assert!(self.block_len <= BLOCK_BYTES);
    }

    fn close_block(&mut self) {
        assert!(self.block_len > 0, "an empty block is never closed");
        let digest: BlockDigest = std::mem::take(&mut self.block).finalize().into();
        self.overall.update(digest);
        if let Some(d) = &mut self.digests {
            d.push(digest);
        }
        self.block_len = 0;
    }

    /// The hash, as 32 bytes.
    pub fn finish(mut self) -> [u8; 32] {
        if self.block_len > 0 {
            self.close_block();
        }
        self.overall.finalize().into()
    }

    /// The hash, as the 64 lower-case hex digits Dropbox reports.
    pub fn finish_hex(self) -> String {
        hex::encode(self.finish())
    }

    /// Every block's digest, the last (possibly short) block included.
    pub(crate) fn finish_blocks(mut self) -> Vec<BlockDigest> {
        if self.block_len > 0 {
            self.close_block();
        }
        self.digests.expect("finish_blocks needs a recording hasher")
    }
}

/// The content hash of `data`, in hex.
pub fn content_hash_hex(data: &[u8]) -> String {
    let mut h = ContentHasher::new();
    h.update(data);
    h.finish_hex()
}

/// The content hash of a file made of blocks with these digests, in order.
pub(crate) fn hash_of_blocks<'a>(blocks: impl IntoIterator<Item = &'a BlockDigest>) -> String {
    let mut overall = Sha256::new();
    for b in blocks {
        overall.update(b);
    }
    hex::encode(overall.finalize())
}

/// Whether `s` has the shape of a content hash (64 lower- or upper-case hex digits).
pub(crate) fn is_hash_shaped(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(data: &[u8]) -> String {
        // The documented algorithm, spelled out with no streaming.
        let mut overall = Vec::new();
        for block in data.chunks(BLOCK_BYTES) {
            overall.extend_from_slice(&Sha256::digest(block));
        }
        hex::encode(Sha256::digest(&overall))
    }

    #[test]
    fn empty_is_sha256_of_nothing() {
        assert_eq!(content_hash_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn matches_the_documented_algorithm_across_block_boundaries() {
        let mut rng = fastrand::Rng::with_seed(7);
        for len in [1, BLOCK_BYTES - 1, BLOCK_BYTES, BLOCK_BYTES + 1, 2 * BLOCK_BYTES + 17] {
            let data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            // Fed in odd-sized pieces, so updates straddle block boundaries.
            let mut h = ContentHasher::new();
            for piece in data.chunks(1_000_003) {
                h.update(piece);
            }
            assert_eq!(h.finish_hex(), reference(&data), "len {len}");
        }
    }

    #[test]
    fn pieces_on_block_boundaries_combine() {
        let mut rng = fastrand::Rng::with_seed(8);
        let data: Vec<u8> = (0..3 * BLOCK_BYTES + 5).map(|_| rng.u8(..)).collect();
        let mut all = Vec::new();
        // Two pieces hashed separately, the first two blocks long.
        for piece in [&data[..2 * BLOCK_BYTES], &data[2 * BLOCK_BYTES..]] {
            let mut h = ContentHasher::recording();
            h.update(piece);
            all.extend(h.finish_blocks());
        }
        assert_eq!(all.len(), 4);
        assert_eq!(hash_of_blocks(&all), reference(&data));
    }
}
