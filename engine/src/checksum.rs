//! Checksums computed while bytes stream, and how each store names them.
//!
//! CRC32C is the default: it runs at memory speed with SSE4.2, S3 accepts it as
//! `x-amz-checksum-crc32c`, and part CRCs combine into the whole object's CRC
//! without a second pass, so parallel parts still give an end-to-end check.
//! MD5 is computed alongside when the source or destination can only vouch for an
//! object through a plain-MD5 ETag.

use base64::Engine as _;
use md5::Digest as _;

/// A checksum algorithm the relay can compute and send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumAlgo {
    /// CRC32C (Castagnoli); the default.
    Crc32c,
    /// CRC64/NVME.
    Crc64nvme,
    /// SHA-256.
    Sha256,
    /// MD5 (sent as Content-MD5).
    Md5,
}

impl ChecksumAlgo {
    /// Parses a `--checksum` value.
    pub fn parse(s: &str) -> Option<ChecksumAlgo> {
        match s.to_ascii_lowercase().as_str() {
            "crc32c" => Some(ChecksumAlgo::Crc32c),
            "crc64nvme" => Some(ChecksumAlgo::Crc64nvme),
            "sha256" => Some(ChecksumAlgo::Sha256),
            "md5" => Some(ChecksumAlgo::Md5),
            _ => None,
        }
    }

    /// Lower-case name, as in `x-amz-checksum-<name>`.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgo::Crc32c => "crc32c",
            ChecksumAlgo::Crc64nvme => "crc64nvme",
            ChecksumAlgo::Sha256 => "sha256",
            ChecksumAlgo::Md5 => "md5",
        }
    }

    /// The S3 request/response header that carries this checksum, base64-encoded.
    pub fn s3_header(self) -> &'static str {
        match self {
            ChecksumAlgo::Crc32c => "x-amz-checksum-crc32c",
            ChecksumAlgo::Crc64nvme => "x-amz-checksum-crc64nvme",
            ChecksumAlgo::Sha256 => "x-amz-checksum-sha256",
            ChecksumAlgo::Md5 => "content-md5",
        }
    }

    /// Length of the digest in bytes.
    pub fn digest_bytes(self) -> usize {
        match self {
            ChecksumAlgo::Crc32c => 4,
            ChecksumAlgo::Crc64nvme => 8,
            ChecksumAlgo::Sha256 => 32,
            ChecksumAlgo::Md5 => 16,
        }
    }

    /// Length of the digest in base64, as S3 headers and trailers carry it.
    pub fn base64_len(self) -> usize {
        self.digest_bytes().div_ceil(3) * 4
    }

    /// The value of `x-amz-checksum-algorithm` / `x-amz-sdk-checksum-algorithm`.
    pub fn s3_algorithm(self) -> Option<&'static str> {
        match self {
            ChecksumAlgo::Crc32c => Some("CRC32C"),
            ChecksumAlgo::Crc64nvme => Some("CRC64NVME"),
            ChecksumAlgo::Sha256 => Some("SHA256"),
            ChecksumAlgo::Md5 => None,
        }
    }

    /// Whether part checksums combine into the whole object's without rereading.
    pub fn combinable(self) -> bool {
        self == ChecksumAlgo::Crc32c
    }
}

/// A finished checksum.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checksum {
    /// The algorithm.
    pub algo: ChecksumAlgo,
    /// The digest bytes, big-endian for CRCs (as S3 encodes them).
    pub bytes: Vec<u8>,
}

impl Checksum {
    /// Base64 of the digest, as S3 headers carry it.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }

    /// Parses a base64 header value.
    pub fn from_base64(algo: ChecksumAlgo, value: &str) -> Option<Checksum> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(value.trim()).ok()?;
        Some(Checksum { algo, bytes })
    }

    /// Lower-case hex of the digest.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    /// The CRC32C value, if this is one.
    pub fn crc32c(&self) -> Option<u32> {
        (self.algo == ChecksumAlgo::Crc32c && self.bytes.len() == 4)
            .then(|| u32::from_be_bytes(self.bytes[..4].try_into().expect("4 bytes")))
    }

    /// A CRC32C checksum from its value.
    pub fn from_crc32c(crc: u32) -> Checksum {
        Checksum { algo: ChecksumAlgo::Crc32c, bytes: crc.to_be_bytes().to_vec() }
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algo.name(), self.to_hex())
    }
}

/// Combines the CRC32C of two adjacent byte ranges; `len_b` is the second's length.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    crc32c::crc32c_combine(crc_a, crc_b, len_b as usize)
}

#[derive(Clone)]
enum State {
    Crc32c(u32),
    Crc64(crc64fast_nvme::Digest),
    Sha256(sha2::Sha256),
    Md5(md5::Md5),
}

/// A running checksum of one algorithm.
#[derive(Clone)]
pub struct Hasher {
    algo: ChecksumAlgo,
    state: State,
}

impl Hasher {
    /// The algorithm.
    pub fn algo(&self) -> ChecksumAlgo {
        self.algo
    }

    /// Starts a checksum.
    pub fn new(algo: ChecksumAlgo) -> Hasher {
        let state = match algo {
            ChecksumAlgo::Crc32c => State::Crc32c(0),
            ChecksumAlgo::Crc64nvme => State::Crc64(crc64fast_nvme::Digest::new()),
            ChecksumAlgo::Sha256 => State::Sha256(sha2::Sha256::new()),
            ChecksumAlgo::Md5 => State::Md5(md5::Md5::new()),
        };
        Hasher { algo, state }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, bytes),
            State::Crc64(d) => d.write(bytes),
            State::Sha256(d) => d.update(bytes),
            State::Md5(d) => d.update(bytes),
        }
    }

    /// Finishes.
    pub fn finish(self) -> Checksum {
        let bytes = match self.state {
            State::Crc32c(crc) => crc.to_be_bytes().to_vec(),
            State::Crc64(d) => d.sum64().to_be_bytes().to_vec(),
            State::Sha256(d) => d.finalize().to_vec(),
            State::Md5(d) => d.finalize().to_vec(),
        };
        Checksum { algo: self.algo, bytes }
    }
}

/// The checksums a transfer computes while bytes stream: the chosen algorithm, and MD5
/// when an ETag has to be checked.
#[derive(Clone)]
pub struct Hashers {
    /// The `--checksum` algorithm.
    pub primary: Hasher,
    /// MD5, when a plain-MD5 ETag must be checked.
    pub md5: Option<Hasher>,
}

impl Hashers {
    /// Starts the checksums.
    pub fn new(algo: ChecksumAlgo, with_md5: bool) -> Hashers {
        let with_md5 = with_md5 && algo != ChecksumAlgo::Md5;
        Hashers { primary: Hasher::new(algo), md5: with_md5.then(|| Hasher::new(ChecksumAlgo::Md5)) }
    }

    /// Stops computing MD5, before the first byte: the source vouches for the bytes
    /// with a checksum of the primary algorithm, which checks them end to end at a
    /// fraction of MD5's cost (the destination verifies the primary checksum too).
    pub fn skip_md5(&mut self) {
        self.md5 = None;
    }

    /// Feeds bytes to every checksum.
    pub fn update(&mut self, bytes: &[u8]) {
        self.primary.update(bytes);
        if let Some(md5) = &mut self.md5 {
            md5.update(bytes);
        }
    }

    /// Finishes: (primary, md5 hex if computed or if primary is MD5).
    pub fn finish(self) -> (Checksum, Option<String>) {
        let primary = self.primary.finish();
        let md5 = match self.md5 {
            Some(h) => Some(h.finish().to_hex()),
            None if primary.algo == ChecksumAlgo::Md5 => Some(primary.to_hex()),
            None => None,
        };
        (primary, md5)
    }
}

/// Whether an ETag is a plain MD5 of the content (32 hex digits, no `-N` suffix).
pub fn etag_is_md5(etag: &str) -> bool {
    let etag = etag.trim_matches('"');
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        let mut h = Hasher::new(ChecksumAlgo::Crc32c);
        h.update(b"123456789");
        assert_eq!(h.finish().crc32c(), Some(0xE306_9283));
        let mut h = Hasher::new(ChecksumAlgo::Md5);
        h.update(b"");
        assert_eq!(h.finish().to_hex(), "d41d8cd98f00b204e9800998ecf8427e");
        let mut h = Hasher::new(ChecksumAlgo::Crc64nvme);
        h.update(b"123456789");
        assert_eq!(h.finish().bytes, 0xAE8B_1486_0A79_9888u64.to_be_bytes());
    }

    #[test]
    fn crc_combines_across_parts() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = crc32c::crc32c(&data);
        for split in [0, 1, 4096, 99_999, 100_000] {
            let (a, b) = data.split_at(split);
            assert_eq!(crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len() as u64), whole);
        }
    }

    #[test]
    fn base64_round_trip() {
        let c = Checksum::from_crc32c(0xdeadbeef);
        assert_eq!(Checksum::from_base64(ChecksumAlgo::Crc32c, &c.to_base64()), Some(c));
        assert!(etag_is_md5("\"d41d8cd98f00b204e9800998ecf8427e\""));
        assert!(!etag_is_md5("d41d8cd98f00b204e9800998ecf8427e-3"));
    }
}
