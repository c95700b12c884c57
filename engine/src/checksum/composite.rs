//! A hash of part hashes, by which a store names an object uploaded in parts when it
//! keeps no hash of the whole: S3's multipart ETag, `hex(MD5(MD5(part 1) ‖ … ‖
//! MD5(part N)))-N`, and S3's COMPOSITE checksums (`x-amz-checksum-sha256:
//! base64(SHA256(SHA256(part 1) ‖ …))-N`, likewise SHA-1 and CRC32C, the CRCs
//! big-endian).
//!
//! Such a hash vouches for the bytes only together with the part layout it was made
//! from, which the store gives apart ([`Composite`]: every part `part_bytes` long but
//! the last). The relay then reads with parts that are whole multiples of the source's
//! parts, so each source part lies inside one of the relay's; [`PartDigester`] keeps
//! the digest of each source part a relay part holds as its bytes stream (one pass),
//! and [`composite_of`] puts the relay's parts together into the object's hash without
//! a second read. This is Dropbox's content_hash scheme ([`super::dropbox`]) with the
//! source's own algorithm and block size.

use base64::Engine as _;

use super::{ChecksumAlgo, Hasher};

/// What a source vouches for an object with: the hash of its parts' hashes, and the
/// part layout it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composite {
    /// The algorithm of the part hashes and of the hash of them.
    pub algo: ChecksumAlgo,
    /// Length of every part but the last, which is at most this long.
    pub part_bytes: u64,
    /// How many parts.
    pub parts: u32,
    /// The hash of the parts' hashes, concatenated in order.
    pub digest: Vec<u8>,
}

/// The algorithms S3 makes COMPOSITE checksums with that the relay computes.
fn composes(algo: ChecksumAlgo) -> bool {
    matches!(algo, ChecksumAlgo::Md5 | ChecksumAlgo::Sha256 | ChecksumAlgo::Sha1 | ChecksumAlgo::Crc32c)
}

/// `VALUE-N` split, N a positive count in plain digits.
fn split_count(value: &str) -> Option<(&str, u32)> {
    let (value, count) = value.trim().trim_matches('"').rsplit_once('-')?;
    let digits = !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit());
    let parts: u32 = count.parse().ok().filter(|&n| digits && n > 0)?;
    Some((value, parts))
}

impl Composite {
    /// The hash an ETag such as `"0123…cdef-5"` names, for an object of `size` bytes
    /// whose first part is `part_bytes` long. None when the ETag is not of that form or
    /// the layout cannot be one of `parts` equal parts but a shorter last.
    pub fn from_etag(etag: &str, size: u64, part_bytes: u64) -> Option<Composite> {
        let (hex_md5, parts) = split_count(etag)?;
        let mut md5 = [0u8; 16];
        hex::decode_to_slice(hex_md5, &mut md5).ok()?;
        let composite = Composite { algo: ChecksumAlgo::Md5, part_bytes, parts, digest: md5.to_vec() };
        composite.fits(size).then_some(composite)
    }

    /// The hash a COMPOSITE checksum such as `x-amz-checksum-sha256: "…=-5"` names, as
    /// [`from_etag`](Self::from_etag) does for an ETag.
    pub fn from_checksum(algo: ChecksumAlgo, value: &str, size: u64, part_bytes: u64) -> Option<Composite> {
        let (b64, parts) = split_count(value)?;
        let digest = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        if !composes(algo) || digest.len() != algo.digest_bytes() {
            return None;
        }
        let composite = Composite { algo, part_bytes, parts, digest };
        composite.fits(size).then_some(composite)
    }

    /// The part count a COMPOSITE checksum value (`…-N`) names.
    pub fn checksum_parts(value: &str) -> Option<u32> {
        split_count(value).map(|(_, n)| n)
    }

    /// Whether `size` bytes cut into parts of `part_bytes` make `parts` parts, the last
    /// one not empty.
    pub fn fits(&self, size: u64) -> bool {
        if self.part_bytes == 0 {
            return false;
        }
        let before_last = u64::from(self.parts - 1).checked_mul(self.part_bytes);
        before_last.is_some_and(|b| b < size && size - b <= self.part_bytes)
    }

    /// As the store writes it: `hex-N` for an ETag (MD5), `base64-N` for a checksum.
    pub fn to_etag(&self) -> String {
        match self.algo {
            ChecksumAlgo::Md5 => format!("{}-{}", hex::encode(&self.digest), self.parts),
            _ => format!("{}-{}", base64::engine::general_purpose::STANDARD.encode(&self.digest), self.parts),
        }
    }

    /// How a report names a check by this hash: `md5-of-parts`, `sha256-of-parts`, ...
    pub fn check_name(&self) -> &'static str {
        match self.algo {
            ChecksumAlgo::Md5 => "md5-of-parts",
            ChecksumAlgo::Sha256 => "sha256-of-parts",
            ChecksumAlgo::Sha1 => "sha1-of-parts",
            ChecksumAlgo::Crc32c => "crc32c-of-parts",
            ChecksumAlgo::Crc64nvme => "crc64nvme-of-parts",
            ChecksumAlgo::DropboxContentHash => "dropbox-of-parts",
        }
    }

    /// The hash of `data` cut into parts of `part_bytes` (the definition; for tests
    /// and for bytes already in memory).
    pub fn of_slices<'a>(algo: ChecksumAlgo, part_bytes: u64, slices: impl IntoIterator<Item = &'a [u8]>) -> Composite {
        let mut blocks = PartDigester::new(algo, part_bytes, 0);
        for slice in slices {
            blocks.update(slice);
        }
        let part = blocks.finish();
        let parts = u32::try_from(part.digests.len()).expect("part count fits in u32");
        Composite { algo, part_bytes, parts, digest: hash_of(algo, &part.digests) }
    }
}

impl std::fmt::Display for Composite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.algo.name().to_ascii_uppercase();
        write!(f, "{name} of {} part {name}s {}", self.parts, self.to_etag())
    }
}

fn hash_of(algo: ChecksumAlgo, digests: &[Vec<u8>]) -> Vec<u8> {
    let mut all = Hasher::new(algo);
    for d in digests {
        all.update(d);
    }
    all.finish().bytes
}

/// The digests of the source parts in one relay part, which must start on a source
/// part boundary; fed as the bytes stream.
#[derive(Clone)]
pub struct PartDigester {
    hasher: Hasher,
    block_bytes: u64,
    fill_bytes: u64,
    len_bytes: u64,
    digests: Vec<Vec<u8>>,
}

impl PartDigester {
    /// Starts a relay part of source parts of `block_bytes`, hashed with `algo`, with
    /// room for the digests of `len_bytes` so that `update` does not allocate the list.
    pub fn new(algo: ChecksumAlgo, block_bytes: u64, len_bytes: u64) -> PartDigester {
        assert!(block_bytes > 0, "source parts have bytes");
        let blocks = usize::try_from(len_bytes.div_ceil(block_bytes)).expect("part count fits in memory");
        PartDigester {
            hasher: Hasher::new(algo),
            block_bytes,
            fill_bytes: 0,
            len_bytes: 0,
            digests: Vec::with_capacity(blocks),
        }
    }

    /// Feeds bytes; they may cross source part boundaries anywhere.
    #[inline]
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len_bytes += bytes.len() as u64;
        // Bounded: each turn fills the source part or uses up `bytes`.
        while !bytes.is_empty() {
            assert!(self.fill_bytes < self.block_bytes);
            let room = usize::try_from(self.block_bytes - self.fill_bytes).unwrap_or(usize::MAX);
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.hasher.update(now);
            self.fill_bytes += now.len() as u64;
            bytes = rest;
            if self.fill_bytes == self.block_bytes {
                let next = Hasher::new(self.hasher.algo());
                let done = std::mem::replace(&mut self.hasher, next);
                self.digests.push(done.finish().bytes);
                self.fill_bytes = 0;
            }
        }
    }

    /// Finishes the relay part. A source part filled exactly was handed over when it
    /// filled, so a part of exactly `block_bytes` has one digest, not two.
    pub fn finish(self) -> PartDigests {
        let algo = self.hasher.algo();
        let mut digests = self.digests;
        if self.fill_bytes > 0 {
            digests.push(self.hasher.finish().bytes);
        }
        PartDigests { len_bytes: self.len_bytes, block_bytes: self.block_bytes, algo, digests }
    }
}

fn md5_algo() -> ChecksumAlgo {
    ChecksumAlgo::Md5
}

/// A finished relay part: its length, the source part size it was cut by, and the
/// digest of each source part in it (a journal written when these were MD5s only
/// reads back as MD5s).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartDigests {
    len_bytes: u64,
    block_bytes: u64,
    #[serde(default = "md5_algo")]
    algo: ChecksumAlgo,
    digests: Vec<Vec<u8>>,
}

impl PartDigests {
    /// The part's length.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Whether the digest count and sizes match the length and algorithm (a part read
    /// back from a journal might not).
    fn is_consistent(&self) -> bool {
        self.digests.len() as u64 == self.len_bytes.div_ceil(self.block_bytes)
            && self.digests.iter().all(|d| d.len() == self.algo.digest_bytes())
    }
}

/// The object's [`Composite`] from its consecutive relay parts, the first starting at
/// offset 0, cut by `wanted`'s layout. Every relay part but the last must be a whole
/// number of source parts. None when a part breaks that rule, was cut by another size
/// or hashed by another algorithm, or the parts do not make `wanted`'s count; then the
/// hash cannot be checked this way.
pub fn composite_of(parts: &[PartDigests], wanted: &Composite) -> Option<Composite> {
    let before_last = &parts[..parts.len().saturating_sub(1)];
    let aligned = before_last.iter().all(|p| p.len_bytes.is_multiple_of(wanted.part_bytes));
    let same_layout =
        parts.iter().all(|p| p.block_bytes == wanted.part_bytes && p.algo == wanted.algo && p.is_consistent());
    if !aligned || !same_layout {
        return None;
    }
    let digests: Vec<Vec<u8>> = parts.iter().flat_map(|p| p.digests.iter().cloned()).collect();
    let parts = u32::try_from(digests.len()).ok().filter(|&n| n == wanted.parts)?;
    Some(Composite { algo: wanted.algo, part_bytes: wanted.part_bytes, parts, digest: hash_of(wanted.algo, &digests) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest as _;
    use proptest::prelude::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
    }

    /// The definition, every byte in memory.
    fn reference(data: &[u8], part_bytes: usize) -> Composite {
        let digests: Vec<Vec<u8>> = data.chunks(part_bytes).map(|c| md5::Md5::digest(c).to_vec()).collect();
        let all = md5::Md5::digest(digests.concat()).to_vec();
        Composite { algo: ChecksumAlgo::Md5, part_bytes: part_bytes as u64, parts: digests.len() as u32, digest: all }
    }

    #[test]
    fn an_s3_etag_is_parsed_with_its_layout() {
        let etag = "\"5189df53abb431690856bd2d4ad5efcf-5\"";
        let c = Composite::from_etag(etag, 23_000_000, 5 << 20).unwrap();
        assert_eq!((c.parts, c.part_bytes), (5, 5 << 20));
        assert_eq!(c.to_etag(), etag.trim_matches('"'));
        // Four parts of 5 MiB cannot hold 23 MB; six leave the last one empty.
        assert_eq!(Composite::from_etag(etag, 20 << 20, 5 << 20), None);
        assert_eq!(Composite::from_etag(etag, 30 << 20, 5 << 20), None);
        for bad in ["5189df53abb431690856bd2d4ad5efcf", "5189df53-5", "5189df53abb431690856bd2d4ad5efcf-0", "x-5"] {
            assert_eq!(Composite::from_etag(bad, 23_000_000, 5 << 20), None, "{bad}");
        }
        assert_eq!(Composite::from_etag("5189df53abb431690856bd2d4ad5efcf-+5", 23_000_000, 5 << 20), None);
        assert_eq!(Composite::from_etag("5189df53abb431690856bd2d4ad5efcf-5", 23_000_000, 0), None);
        let huge = format!("{}-{}", "0".repeat(32), u32::MAX);
        assert_eq!(Composite::from_etag(&huge, u64::MAX, u64::MAX), None, "no overflow");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Relay parts that are whole multiples of the source's parts, fed in any
        /// chunks, combine into the reference hash; a part off the layout gives None.
        #[test]
        fn relay_parts_combine_into_the_composite(
            part_bytes in 1usize..64,
            len in 1usize..2000,
            multiples in prop::collection::vec(1usize..5, 1..8),
            chunk in 1usize..97,
        ) {
            let data = pattern(len);
            let wanted = reference(&data, part_bytes);
            let mut parts = Vec::new();
            let mut rest = &data[..];
            for &m in multiples.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (now, later) = rest.split_at((m * part_bytes).min(rest.len()));
                let mut blocks = PartDigester::new(ChecksumAlgo::Md5, part_bytes as u64, now.len() as u64);
                for c in now.chunks(chunk) {
                    blocks.update(c);
                }
                parts.push(blocks.finish());
                rest = later;
            }
            prop_assert_eq!(composite_of(&parts, &wanted), Some(wanted.clone()));
            prop_assert_eq!(Composite::of_slices(ChecksumAlgo::Md5, part_bytes as u64, data.chunks(chunk)), wanted.clone());
            // A relay part cut off a source part boundary cannot combine.
            if len > part_bytes + 1 && part_bytes > 1 {
                let (a, b) = data.split_at(part_bytes + 1);
                let halves: Vec<PartDigests> = [a, b].iter().map(|h| {
                    let mut blocks = PartDigester::new(ChecksumAlgo::Md5, part_bytes as u64, 0);
                    blocks.update(h);
                    blocks.finish()
                }).collect();
                prop_assert_eq!(composite_of(&halves, &wanted), None);
            }
        }
    }

    #[test]
    fn a_flipped_byte_changes_the_hash() {
        let mut data = pattern(10_000);
        let wanted = reference(&data, 1000);
        data[4321] ^= 1;
        assert_ne!(Composite::of_slices(ChecksumAlgo::Md5, 1000, [&data[..]]), wanted);
    }

    #[test]
    fn a_composite_checksum_is_parsed_and_made_as_s3_makes_it() {
        // SeaweedFS's x-amz-checksum-sha256 for 12 MiB uploaded in parts of 5 MiB: the
        // SHA-256 of the three parts' SHA-256s.
        let data = pattern(12 << 20);
        let made = Composite::of_slices(ChecksumAlgo::Sha256, 5 << 20, data.chunks(1 << 20));
        let parts: Vec<u8> = data.chunks(5 << 20).flat_map(|c| sha2::Sha256::digest(c).to_vec()).collect();
        assert_eq!(made.digest, sha2::Sha256::digest(&parts).to_vec());
        let value = made.to_etag();
        assert!(value.ends_with("=-3"), "{value}");
        assert_eq!(Composite::from_checksum(ChecksumAlgo::Sha256, &value, 12 << 20, 5 << 20), Some(made.clone()));
        assert_eq!(Composite::checksum_parts(&value), Some(3));
        assert_eq!(made.check_name(), "sha256-of-parts");
        // The wrong length for the algorithm, a count that does not fit, an algorithm S3
        // does not compose with.
        assert_eq!(Composite::from_checksum(ChecksumAlgo::Sha1, &value, 12 << 20, 5 << 20), None);
        assert_eq!(Composite::from_checksum(ChecksumAlgo::Sha256, &value, 20 << 20, 5 << 20), None);
        assert_eq!(Composite::from_checksum(ChecksumAlgo::Crc64nvme, "AAAAAAAAAAA=-3", 12 << 20, 5 << 20), None);
        assert_eq!(Composite::from_checksum(ChecksumAlgo::Sha256, "not base64!-3", 12 << 20, 5 << 20), None);
        // CRC32C parts are combined by the CRC32C of their big-endian values.
        let crc = Composite::of_slices(ChecksumAlgo::Crc32c, 5 << 20, [&data[..]]);
        let be: Vec<u8> = data.chunks(5 << 20).flat_map(|c| crc32c::crc32c(c).to_be_bytes()).collect();
        assert_eq!(crc.digest, crc32c::crc32c(&be).to_be_bytes().to_vec());
    }

    #[test]
    fn part_digests_read_back_from_the_journal_as_written_and_as_older_journals_wrote_them() {
        for algo in [ChecksumAlgo::Md5, ChecksumAlgo::Sha256, ChecksumAlgo::Crc32c] {
            let mut d = PartDigester::new(algo, 4, 10);
            d.update(b"0123456789");
            let part = super::super::PartBlocks::Parts(d.finish());
            let json = serde_json::to_string(&part).unwrap();
            assert_eq!(serde_json::from_str::<super::super::PartBlocks>(&json).unwrap(), part, "{json}");
        }
        // Before other algorithms: MD5s, no `algo`.
        let old = format!(r#"{{"len_bytes":4,"block_bytes":4,"digests":[{:?}]}}"#, md5::Md5::digest(b"0123").to_vec());
        let super::super::PartBlocks::Parts(p) = serde_json::from_str(&old).unwrap() else { panic!("{old}") };
        assert_eq!(p.algo, ChecksumAlgo::Md5);
        assert!(p.is_consistent());
    }
}
