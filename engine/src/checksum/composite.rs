//! The MD5 of part MD5s, by which a store names an object uploaded in parts when it
//! keeps no hash of the whole (S3's multipart ETag, `hex(MD5(MD5(part 1) ‖ … ‖
//! MD5(part N)))-N`).
//!
//! Such a hash vouches for the bytes only together with the part layout it was made
//! from, which the store gives apart ([`Composite`]: every part `part_bytes` long but
//! the last). The relay then reads with parts that are whole multiples of the source's
//! parts, so each source part lies inside one of the relay's; [`Md5Blocks`] keeps the
//! MD5 of each source part a relay part holds as its bytes stream (16 bytes per part,
//! one MD5 pass), and [`composite_of`] puts the relay's parts together into the
//! object's hash without a second read. This is Dropbox's content_hash scheme
//! ([`super::dropbox`]) with MD5 and the source's own block size.

use md5::Digest as _;

/// The MD5 of one source part.
pub type PartMd5 = [u8; 16];

/// What a source vouches for an object with: the MD5 of its parts' MD5s, and the part
/// layout it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composite {
    /// Length of every part but the last, which is at most this long.
    pub part_bytes: u64,
    /// How many parts.
    pub parts: u32,
    /// MD5 of the parts' MD5s, concatenated in order.
    pub md5: PartMd5,
}

impl Composite {
    /// The hash an ETag such as `"0123…cdef-5"` names, for an object of `size` bytes
    /// whose first part is `part_bytes` long. None when the ETag is not of that form or
    /// the layout cannot be one of `parts` equal parts but a shorter last.
    pub fn from_etag(etag: &str, size: u64, part_bytes: u64) -> Option<Composite> {
        let (hex_md5, count) = etag.trim_matches('"').split_once('-')?;
        let parts: u32 = count.parse().ok().filter(|&n| n > 0 && count.bytes().all(|b| b.is_ascii_digit()))?;
        let mut md5 = [0u8; 16];
        hex::decode_to_slice(hex_md5, &mut md5).ok()?;
        let composite = Composite { part_bytes, parts, md5 };
        composite.fits(size).then_some(composite)
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

    /// The part count named as in an ETag: `hex-N`.
    pub fn to_etag(&self) -> String {
        format!("{}-{}", hex::encode(self.md5), self.parts)
    }

    /// The hash of `data` cut into parts of `part_bytes` (the definition; for tests
    /// and for bytes already in memory).
    pub fn of_slices<'a>(part_bytes: u64, slices: impl IntoIterator<Item = &'a [u8]>) -> Composite {
        let mut blocks = Md5Blocks::new(part_bytes, 0);
        for slice in slices {
            blocks.update(slice);
        }
        let part = blocks.finish();
        let parts = u32::try_from(part.digests.len()).expect("part count fits in u32");
        Composite { part_bytes, parts, md5: md5_of(&part.digests) }
    }
}

impl std::fmt::Display for Composite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MD5 of {} part MD5s {}", self.parts, self.to_etag())
    }
}

fn md5_of(digests: &[PartMd5]) -> PartMd5 {
    let mut all = md5::Md5::new();
    for d in digests {
        all.update(d);
    }
    all.finalize().into()
}

/// The MD5s of the source parts in one relay part, which must start on a source part
/// boundary; fed as the bytes stream.
#[derive(Clone)]
pub struct Md5Blocks {
    md5: md5::Md5,
    block_bytes: u64,
    fill_bytes: u64,
    len_bytes: u64,
    digests: Vec<PartMd5>,
}

impl Md5Blocks {
    /// Starts a relay part of source parts of `block_bytes`, with room for the digests
    /// of `len_bytes` so that `update` does not allocate.
    pub fn new(block_bytes: u64, len_bytes: u64) -> Md5Blocks {
        assert!(block_bytes > 0, "source parts have bytes");
        let blocks = usize::try_from(len_bytes.div_ceil(block_bytes)).expect("part count fits in memory");
        Md5Blocks {
            md5: md5::Md5::new(),
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
            self.md5.update(now);
            self.fill_bytes += now.len() as u64;
            bytes = rest;
            if self.fill_bytes == self.block_bytes {
                self.digests.push(self.md5.finalize_reset().into());
                self.fill_bytes = 0;
            }
        }
    }

    /// Finishes the relay part. A source part filled exactly was handed over when it
    /// filled, so a part of exactly `block_bytes` has one digest, not two.
    pub fn finish(self) -> Md5Part {
        let mut digests = self.digests;
        if self.fill_bytes > 0 {
            digests.push(self.md5.finalize().into());
        }
        Md5Part { len_bytes: self.len_bytes, block_bytes: self.block_bytes, digests }
    }
}

/// A finished relay part: its length, the source part size it was cut by, and the
/// MD5 of each source part in it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Md5Part {
    len_bytes: u64,
    block_bytes: u64,
    digests: Vec<PartMd5>,
}

impl Md5Part {
    /// The part's length.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Whether the digest count matches the length (a part read back from a journal
    /// might not).
    fn is_consistent(&self) -> bool {
        self.digests.len() as u64 == self.len_bytes.div_ceil(self.block_bytes)
    }
}

/// The object's [`Composite`] from its consecutive relay parts, the first starting at
/// offset 0, cut by `wanted`'s layout. Every relay part but the last must be a whole
/// number of source parts. None when a part breaks that rule, was cut by another size,
/// or the parts do not make `wanted`'s count; then the hash cannot be checked this way.
pub fn composite_of(parts: &[Md5Part], wanted: &Composite) -> Option<Composite> {
    let before_last = &parts[..parts.len().saturating_sub(1)];
    let aligned = before_last.iter().all(|p| p.len_bytes.is_multiple_of(wanted.part_bytes));
    let same_layout = parts.iter().all(|p| p.block_bytes == wanted.part_bytes && p.is_consistent());
    if !aligned || !same_layout {
        return None;
    }
    let digests: Vec<PartMd5> = parts.iter().flat_map(|p| p.digests.iter().copied()).collect();
    let parts = u32::try_from(digests.len()).ok().filter(|&n| n == wanted.parts)?;
    Some(Composite { part_bytes: wanted.part_bytes, parts, md5: md5_of(&digests) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
    }

    /// The definition, every byte in memory.
    fn reference(data: &[u8], part_bytes: usize) -> Composite {
        let digests: Vec<PartMd5> = data.chunks(part_bytes).map(|c| md5::Md5::digest(c).into()).collect();
        Composite { part_bytes: part_bytes as u64, parts: digests.len() as u32, md5: md5_of(&digests) }
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
                let mut blocks = Md5Blocks::new(part_bytes as u64, now.len() as u64);
                for c in now.chunks(chunk) {
                    blocks.update(c);
                }
                parts.push(blocks.finish());
                rest = later;
            }
            prop_assert_eq!(composite_of(&parts, &wanted), Some(wanted.clone()));
            prop_assert_eq!(Composite::of_slices(part_bytes as u64, data.chunks(chunk)), wanted.clone());
            // A relay part cut off a source part boundary cannot combine.
            if len > part_bytes + 1 && part_bytes > 1 {
                let (a, b) = data.split_at(part_bytes + 1);
                let halves: Vec<Md5Part> = [a, b].iter().map(|h| {
                    let mut blocks = Md5Blocks::new(part_bytes as u64, 0);
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
        assert_ne!(Composite::of_slices(1000, [&data[..]]), wanted);
    }
}
