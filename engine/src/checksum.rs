//! Checksums computed while bytes stream, and how each store names them.
//!
//! CRC32C is the default: it runs at memory speed with SSE4.2, S3 accepts it as
//! `x-amz-checksum-crc32c`, and part CRCs combine into the whole object's CRC
//! without a second pass, so parallel parts still give an end-to-end check.
//! CRC64/NVME combines the same way. MD5 is computed alongside when the source or
//! destination can only vouch for an object through a plain-MD5 ETag; SHA-1 and
//! Dropbox's `content_hash` (see [`dropbox`]) are what other stores name files by.
//!
//! [`Hashers`] computes any [`DigestSet`] of these in one pass: each `update` feeds
//! every digest in the set, window by window so that the bytes are still in cache
//! for the next digest. Its states are a fixed struct of `Option`s, not boxed trait
//! objects, so a chunk costs one branch per algorithm the relay does not compute.

use base64::Engine as _;
use md5::Digest as _;

pub mod composite;
pub mod dropbox;

pub use composite::{composite_of, Composite, PartDigester, PartDigests};
pub use dropbox::{dropbox_combine, DropboxBlocks, DropboxHasher, DropboxPart, DROPBOX_BLOCK_BYTES};

/// Which digests of a source's own blocks a part's read keeps, to be combined with the
/// other parts' into the hash the source names the whole object by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Dropbox's 4 MiB block SHA-256s ([`dropbox_combine`]).
    Dropbox,
    /// The digest of each source part of `block_bytes` ([`composite_of`]).
    Parts {
        /// The source's algorithm.
        algo: ChecksumAlgo,
        /// The source's part size.
        block_bytes: u64,
    },
}

/// A part's block digests, as [`Hashers::take_blocks`] gives them and the journal
/// keeps them (a Dropbox part is stored as it was before MD5 parts existed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum PartBlocks {
    /// Dropbox blocks.
    Dropbox(DropboxPart),
    /// Source parts' digests.
    Parts(PartDigests),
}

/// The block digests being kept while a part's bytes stream.
#[derive(Clone)]
enum BlockKeeper {
    Dropbox(DropboxBlocks),
    Parts(PartDigester),
}

/// A checksum algorithm the relay can compute.
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
    /// SHA-1.
    Sha1,
    /// Dropbox's `content_hash`: SHA-256 of the SHA-256 digests of the 4 MiB blocks.
    /// S3 has no header for it.
    #[serde(rename = "dropbox")]
    DropboxContentHash,
}

impl ChecksumAlgo {
    /// Every algorithm, in the order [`DigestSet::iter`] and [`Digests::iter`] give them.
    pub const ALL: [ChecksumAlgo; 6] = [
        ChecksumAlgo::Crc32c,
        ChecksumAlgo::Crc64nvme,
        ChecksumAlgo::Sha256,
        ChecksumAlgo::Md5,
        ChecksumAlgo::Sha1,
        ChecksumAlgo::DropboxContentHash,
    ];

    /// Parses a `--checksum` value: only an algorithm the relay can send to S3.
    pub fn parse(s: &str) -> Option<ChecksumAlgo> {
        ChecksumAlgo::from_name(s).filter(|algo| algo.s3_header().is_some())
    }

    /// Parses any algorithm's [`name`](Self::name), as configuration and saved state
    /// spell it.
    pub fn from_name(s: &str) -> Option<ChecksumAlgo> {
        ChecksumAlgo::ALL.into_iter().find(|algo| s.eq_ignore_ascii_case(algo.name()))
    }

    /// Lower-case name, as in `x-amz-checksum-<name>`.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgo::Crc32c => "crc32c",
            ChecksumAlgo::Crc64nvme => "crc64nvme",
            ChecksumAlgo::Sha256 => "sha256",
            ChecksumAlgo::Md5 => "md5",
            ChecksumAlgo::Sha1 => "sha1",
            ChecksumAlgo::DropboxContentHash => "dropbox",
        }
    }

    /// The S3 request/response header that carries this checksum, base64-encoded;
    /// None for one S3 cannot take.
    pub fn s3_header(self) -> Option<&'static str> {
        match self {
            ChecksumAlgo::Crc32c => Some("x-amz-checksum-crc32c"),
            ChecksumAlgo::Crc64nvme => Some("x-amz-checksum-crc64nvme"),
            ChecksumAlgo::Sha256 => Some("x-amz-checksum-sha256"),
            ChecksumAlgo::Md5 => Some("content-md5"),
            ChecksumAlgo::Sha1 => Some("x-amz-checksum-sha1"),
            ChecksumAlgo::DropboxContentHash => None,
        }
    }

    /// Length of the digest in bytes.
    pub fn digest_bytes(self) -> usize {
        match self {
            ChecksumAlgo::Crc32c => 4,
            ChecksumAlgo::Crc64nvme => 8,
            ChecksumAlgo::Sha256 => 32,
            ChecksumAlgo::Md5 => 16,
            ChecksumAlgo::Sha1 => 20,
            ChecksumAlgo::DropboxContentHash => 32,
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
            ChecksumAlgo::Sha1 => Some("SHA1"),
            ChecksumAlgo::Md5 | ChecksumAlgo::DropboxContentHash => None,
        }
    }

    /// Whether part checksums combine into the whole object's without rereading, at
    /// any split point (see [`combine`]). Dropbox's hash combines only at 4 MiB
    /// boundaries and through its block digests, so it is not one of these; see
    /// [`dropbox_combine`].
    pub fn combinable(self) -> bool {
        matches!(self, ChecksumAlgo::Crc32c | ChecksumAlgo::Crc64nvme)
    }

    /// The algorithm's position in [`ALL`](Self::ALL), and its bit in a [`DigestSet`].
    const fn index(self) -> usize {
        self as usize
    }
}

const ALGO_COUNT: usize = ChecksumAlgo::ALL.len();
const _: () = {
    assert!(ALGO_COUNT <= u8::BITS as usize, "a DigestSet is a u8");
    let mut i = 0;
    while i < ALGO_COUNT {
        assert!(ChecksumAlgo::ALL[i].index() == i, "ALL is in declaration order");
        i += 1;
    }
};

/// A set of checksum algorithms: one bit each.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DigestSet {
    bits: u8,
}

impl DigestSet {
    /// No algorithm.
    pub const EMPTY: DigestSet = DigestSet { bits: 0 };

    /// No algorithm.
    pub const fn new() -> DigestSet {
        DigestSet::EMPTY
    }

    /// One algorithm.
    pub const fn of(algo: ChecksumAlgo) -> DigestSet {
        DigestSet::EMPTY.with(algo)
    }

    /// This set and `algo`.
    pub const fn with(self, algo: ChecksumAlgo) -> DigestSet {
        DigestSet { bits: self.bits | 1 << algo.index() }
    }

    /// This set without `algo`.
    pub const fn without(self, algo: ChecksumAlgo) -> DigestSet {
        DigestSet { bits: self.bits & !(1 << algo.index()) }
    }

    /// Adds `algo`; whether it was not there before.
    pub fn insert(&mut self, algo: ChecksumAlgo) -> bool {
        let added = !self.contains(algo);
        *self = self.with(algo);
        added
    }

    /// Removes `algo`; whether it was there.
    pub fn remove(&mut self, algo: ChecksumAlgo) -> bool {
        let removed = self.contains(algo);
        *self = self.without(algo);
        removed
    }

    /// Whether `algo` is in the set.
    pub const fn contains(self, algo: ChecksumAlgo) -> bool {
        self.bits & 1 << algo.index() != 0
    }

    /// How many algorithms are in the set.
    pub const fn len(self) -> usize {
        self.bits.count_ones() as usize
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.bits == 0
    }

    /// The algorithms, in [`ChecksumAlgo::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = ChecksumAlgo> {
        ChecksumAlgo::ALL.into_iter().filter(move |&algo| self.contains(algo))
    }
}

impl FromIterator<ChecksumAlgo> for DigestSet {
    fn from_iter<I: IntoIterator<Item = ChecksumAlgo>>(iter: I) -> DigestSet {
        iter.into_iter().fold(DigestSet::EMPTY, DigestSet::with)
    }
}

impl std::fmt::Debug for DigestSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter().map(ChecksumAlgo::name)).finish()
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

    /// The CRC64/NVME value, if this is one.
    pub fn crc64nvme(&self) -> Option<u64> {
        (self.algo == ChecksumAlgo::Crc64nvme && self.bytes.len() == 8)
            .then(|| u64::from_be_bytes(self.bytes[..8].try_into().expect("8 bytes")))
    }

    /// A CRC64/NVME checksum from its value.
    pub fn from_crc64nvme(crc: u64) -> Checksum {
        Checksum { algo: ChecksumAlgo::Crc64nvme, bytes: crc.to_be_bytes().to_vec() }
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algo.name(), self.to_hex())
    }
}

/// Whether this CPU computes SHA-256 in hardware (x86 SHA extensions, ARMv8 SHA2), where
/// it runs several times faster than MD5 (about 1.9 GiB/s against 0.55 per core).
pub fn sha256_in_hardware() -> bool {
    static CACHED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CACHED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("sha") && std::arch::is_x86_feature_detected!("sse4.1")
        }
        #[cfg(target_arch = "aarch64")]
        {
            std::arch::is_aarch64_feature_detected!("sha2")
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            false
        }
    })
}

/// Every algorithm, cheapest first at the CPU cost per byte on this machine: the CRCs,
/// then SHA-256 before MD5 where the CPU hashes SHA-256 in hardware, MD5 before it
/// where it does not.
pub fn cheapest_first() -> [ChecksumAlgo; 6] {
    use ChecksumAlgo::*;
    if sha256_in_hardware() {
        [Crc32c, Crc64nvme, Sha256, Sha1, Md5, DropboxContentHash]
    } else {
        [Crc32c, Crc64nvme, Md5, Sha1, Sha256, DropboxContentHash]
    }
}

/// The checksum among `reported` that is cheapest to compute here.
pub fn cheapest_of(reported: &[Checksum]) -> Option<&Checksum> {
    cheapest_first().into_iter().find_map(|a| reported.iter().find(|c| c.algo == a))
}

/// Combines the CRC32C of two adjacent byte ranges; `len_b` is the second's length.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    crc32c::crc32c_combine(crc_a, crc_b, len_b as usize)
}

/// Combines the CRC64/NVME of two adjacent byte ranges; `len_b` is the second's length.
///
/// For a CRC whose initial value equals its final XOR (all ones here),
/// `crc(a ‖ b) = crc(a)·x^(8·len_b) mod P ⊕ crc(b)`: feeding `b` into a register that
/// holds `crc(a)` differs from feeding it into a fresh one by `crc(a)` shifted past
/// `len_b` bytes, and shifting is multiplication by `x^(8·len_b)` modulo the
/// polynomial. zlib's `crc32_combine` works the same way.
pub fn crc64nvme_combine(crc_a: u64, crc_b: u64, len_b: u64) -> u64 {
    crc64::mul_mod_p(crc64::x8n_mod_p(len_b), crc_a) ^ crc_b
}

/// Carry-less arithmetic modulo CRC-64/NVME's polynomial, in the reflected bit order
/// the CRC uses (bit 63 holds the coefficient of x^0).
mod crc64 {
    /// CRC-64/NVME's polynomial, reflected. crc64fast-nvme gives it in normal order
    /// (0xAD93D23594C93659), with initial value and final XOR all ones, reflected
    /// input and output.
    const POLY_REFLECTED: u64 = 0x9A6C_9329_AC4B_C9B5;
    const _: () = assert!(POLY_REFLECTED == 0xAD93_D235_94C9_3659u64.reverse_bits());

    /// The polynomial 1 (x^0).
    const ONE: u64 = 1 << 63;

    /// `a(x)·b(x) mod P(x)`.
    pub(super) const fn mul_mod_p(a: u64, mut b: u64) -> u64 {
        let mut product = 0;
        let mut bit = ONE;
        // 64 turns: one per coefficient of `a`, while `b` steps through b·x^k mod P.
        while bit != 0 {
            if a & bit != 0 {
                product ^= b;
            }
            bit >>= 1;
            b = if b & 1 != 0 { (b >> 1) ^ POLY_REFLECTED } else { b >> 1 };
        }
        product
    }

    /// `X2N[k] = x^(2^k) mod P`, for k up to 3 + 63: `x8n_mod_p` starts at k = 3
    /// (8 = 2^3) and takes one entry per bit of a u64.
    const X2N: [u64; 67] = {
        let mut table = [0u64; 67];
        let mut p = ONE >> 1; // x^1
        let mut k = 0;
        while k < table.len() {
            table[k] = p;
            p = mul_mod_p(p, p);
            k += 1;
        }
        table
    };

    /// `x^(8·n) mod P`: the shift of a register past `n` zero bytes.
    pub(super) fn x8n_mod_p(n: u64) -> u64 {
        let mut power = ONE;
        let mut n = n;
        let mut k = 3;
        // At most 64 turns, one per bit of `n`.
        while n != 0 {
            if n & 1 != 0 {
                power = mul_mod_p(X2N[k], power);
            }
            n >>= 1;
            k += 1;
        }
        power
    }
}

/// Combines the checksums of two adjacent byte ranges; `len_b` is the second's length.
/// None unless both are of the same [`combinable`](ChecksumAlgo::combinable) algorithm
/// and well formed.
pub fn combine(a: &Checksum, b: &Checksum, len_b: u64) -> Option<Checksum> {
    if a.algo != b.algo {
        return None;
    }
    match a.algo {
        ChecksumAlgo::Crc32c => Some(Checksum::from_crc32c(crc32c_combine(a.crc32c()?, b.crc32c()?, len_b))),
        ChecksumAlgo::Crc64nvme => {
            Some(Checksum::from_crc64nvme(crc64nvme_combine(a.crc64nvme()?, b.crc64nvme()?, len_b)))
        }
        ChecksumAlgo::Sha256 | ChecksumAlgo::Md5 | ChecksumAlgo::Sha1 | ChecksumAlgo::DropboxContentHash => None,
    }
}

#[derive(Clone)]
enum State {
    Crc32c(u32),
    Crc64(crc64fast_nvme::Digest),
    Sha256(sha2::Sha256),
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    // Boxed: twice the size of the others. Allocated once when the hasher starts.
    Dropbox(Box<DropboxHasher>),
}

impl State {
    fn finish(self) -> Vec<u8> {
        match self {
            State::Crc32c(crc) => crc.to_be_bytes().to_vec(),
            State::Crc64(d) => d.sum64().to_be_bytes().to_vec(),
            State::Sha256(d) => d.finalize().to_vec(),
            State::Md5(d) => d.finalize().to_vec(),
            State::Sha1(d) => d.finalize().to_vec(),
            State::Dropbox(d) => d.finish().to_vec(),
        }
    }
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
            ChecksumAlgo::Sha1 => State::Sha1(sha1::Sha1::new()),
            ChecksumAlgo::DropboxContentHash => State::Dropbox(Box::default()),
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
            State::Sha1(d) => d.update(bytes),
            State::Dropbox(d) => d.update(bytes),
        }
    }

    /// Finishes.
    pub fn finish(self) -> Checksum {
        Checksum { algo: self.algo, bytes: self.state.finish() }
    }
}

/// Bytes fed to every digest in turn when [`Hashers`] computes more than one: small
/// enough to stay in a core's L2 cache between digests, large enough that the call
/// per window costs nothing beside hashing it.
const WINDOW_BYTES: usize = 64 * 1024;

/// The checksums a transfer computes while bytes stream: any [`DigestSet`], each fed
/// by one `update` per chunk. Made by [`new`](Self::new) it also has a primary
/// algorithm (the `--checksum` one), which [`finish`](Self::finish) returns.
#[derive(Clone)]
pub struct Hashers {
    primary: Option<ChecksumAlgo>,
    /// Which of the states below are Some.
    set: DigestSet,
    fed_bytes: u64,
    crc32c: Option<u32>,
    crc64nvme: Option<crc64fast_nvme::Digest>,
    sha256: Option<sha2::Sha256>,
    md5: Option<md5::Md5>,
    sha1: Option<sha1::Sha1>,
    dropbox: Option<DropboxHasher>,
    /// A part's source block digests, kept to combine parts hashed apart.
    blocks: Option<BlockKeeper>,
}

impl Hashers {
    /// Starts the checksums: `algo`, the primary one, and MD5 when `with_md5` (when a
    /// plain-MD5 ETag must be checked).
    pub fn new(algo: ChecksumAlgo, with_md5: bool) -> Hashers {
        let mut set = DigestSet::of(algo);
        if with_md5 {
            set.insert(ChecksumAlgo::Md5);
        }
        Hashers { primary: Some(algo), ..Hashers::with_set(set) }
    }

    /// Starts every checksum in `set`, with no primary one: finish with
    /// [`finish_all`](Self::finish_all).
    pub fn with_set(set: DigestSet) -> Hashers {
        let mut hashers = Hashers {
            primary: None,
            set: DigestSet::EMPTY,
            fed_bytes: 0,
            crc32c: None,
            crc64nvme: None,
            sha256: None,
            md5: None,
            sha1: None,
            dropbox: None,
            blocks: None,
        };
        for algo in set.iter() {
            hashers.add(algo);
        }
        hashers
    }

    /// Adds a checksum, before the first byte.
    pub fn add(&mut self, algo: ChecksumAlgo) {
        assert_eq!(self.fed_bytes, 0, "{} added after bytes were hashed", algo.name());
        if !self.set.insert(algo) {
            return;
        }
        match algo {
            ChecksumAlgo::Crc32c => self.crc32c = Some(0),
            ChecksumAlgo::Crc64nvme => self.crc64nvme = Some(crc64fast_nvme::Digest::new()),
            ChecksumAlgo::Sha256 => self.sha256 = Some(sha2::Sha256::new()),
            ChecksumAlgo::Md5 => self.md5 = Some(md5::Md5::new()),
            ChecksumAlgo::Sha1 => self.sha1 = Some(sha1::Sha1::new()),
            ChecksumAlgo::DropboxContentHash => self.dropbox = Some(DropboxHasher::new()),
        }
    }

    /// Also keeps the source's block digests of the bytes, a part of `len_bytes` that
    /// starts on a block boundary, for [`dropbox_combine`] or [`composite_of`]; before
    /// the first byte.
    pub fn keep_blocks(&mut self, kind: BlockKind, len_bytes: u64) {
        assert_eq!(self.fed_bytes, 0, "block digests kept after bytes were hashed");
        self.blocks = Some(match kind {
            BlockKind::Dropbox => BlockKeeper::Dropbox(DropboxBlocks::with_capacity(len_bytes)),
            BlockKind::Parts { algo, block_bytes } => {
                BlockKeeper::Parts(PartDigester::new(algo, block_bytes, len_bytes))
            }
        });
    }

    /// The block digests kept by [`keep_blocks`](Self::keep_blocks).
    pub fn take_blocks(&mut self) -> Option<PartBlocks> {
        self.blocks.take().map(|b| match b {
            BlockKeeper::Dropbox(d) => PartBlocks::Dropbox(d.finish()),
            BlockKeeper::Parts(m) => PartBlocks::Parts(m.finish()),
        })
    }

    /// The primary algorithm, when made by [`new`](Self::new).
    pub fn primary(&self) -> Option<ChecksumAlgo> {
        self.primary
    }

    /// The algorithms being computed.
    pub fn set(&self) -> DigestSet {
        self.set
    }

    /// Stops computing MD5, before the first byte: the source vouches for the bytes
    /// with a checksum of the primary algorithm, which checks them end to end at a
    /// fraction of MD5's cost (the destination verifies the primary checksum too).
    /// MD5 stays when it is the primary algorithm.
    pub fn skip_md5(&mut self) {
        if self.primary != Some(ChecksumAlgo::Md5) {
            self.set.remove(ChecksumAlgo::Md5);
            self.md5 = None;
        }
    }

    /// Before the first byte: picks how the bytes are checked against what the source
    /// reports for the object. Nothing more when it reports the primary algorithm;
    /// otherwise the cheapest algorithm it reports is added (a common checksum across
    /// hash families), and MD5 for a plain-MD5 ETag is kept only when it reports none.
    pub fn check_against(&mut self, reported: &[Checksum]) {
        if reported.iter().any(|c| Some(c.algo) == self.primary) {
            self.skip_md5();
            return;
        }
        if let Some(algo) = cheapest_of(reported).map(|c| c.algo) {
            if algo != ChecksumAlgo::Md5 {
                self.skip_md5();
            }
            self.add(algo);
        }
    }

    /// Feeds bytes to every checksum. Does not allocate.
    pub fn update(&mut self, bytes: &[u8]) {
        self.fed_bytes += bytes.len() as u64;
        if self.set.len() <= 1 {
            self.feed(bytes);
        } else {
            for window in bytes.chunks(WINDOW_BYTES) {
                self.feed(window);
            }
        }
    }

    #[inline]
    fn feed(&mut self, bytes: &[u8]) {
        if let Some(crc) = &mut self.crc32c {
            *crc = crc32c::crc32c_append(*crc, bytes);
        }
        if let Some(d) = &mut self.crc64nvme {
            d.write(bytes);
        }
        if let Some(d) = &mut self.sha256 {
            d.update(bytes);
        }
        if let Some(d) = &mut self.md5 {
            d.update(bytes);
        }
        if let Some(d) = &mut self.sha1 {
            d.update(bytes);
        }
        if let Some(d) = &mut self.dropbox {
            d.update(bytes);
        }
        match &mut self.blocks {
            Some(BlockKeeper::Dropbox(b)) => b.update(bytes),
            Some(BlockKeeper::Parts(b)) => b.update(bytes),
            None => {}
        }
    }

    /// Finishes every checksum in the set.
    pub fn finish_all(self) -> Digests {
        let states = [
            self.crc32c.map(State::Crc32c),
            self.crc64nvme.map(State::Crc64),
            self.sha256.map(State::Sha256),
            self.md5.map(State::Md5),
            self.sha1.map(State::Sha1),
            self.dropbox.map(|d| State::Dropbox(Box::new(d))),
        ];
        let mut digests = Digests::default();
        for (algo, state) in ChecksumAlgo::ALL.into_iter().zip(states) {
            digests.sums[algo.index()] = state.map(|s| Checksum { algo, bytes: s.finish() });
        }
        assert_eq!(digests.set(), self.set, "states match the set");
        digests
    }

    /// Finishes: (primary, md5 hex if computed or if primary is MD5). Only for
    /// hashers made by [`new`](Self::new), which have a primary algorithm.
    pub fn finish(self) -> (Checksum, Option<String>) {
        let primary = self.primary.expect("Hashers::finish needs a primary algorithm; use finish_all");
        let mut digests = self.finish_all();
        let sum = digests.remove(primary).expect("the primary algorithm is computed");
        let md5 = match digests.get(ChecksumAlgo::Md5) {
            Some(md5) => Some(md5.to_hex()),
            None if primary == ChecksumAlgo::Md5 => Some(sum.to_hex()),
            None => None,
        };
        (sum, md5)
    }
}

/// The finished checksums of a [`Hashers`]: one per algorithm in its set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Digests {
    sums: [Option<Checksum>; ALGO_COUNT],
}

impl Digests {
    /// The checksum of `algo`, if computed.
    pub fn get(&self, algo: ChecksumAlgo) -> Option<&Checksum> {
        self.sums[algo.index()].as_ref()
    }

    /// Takes the checksum of `algo` out, if computed.
    pub fn remove(&mut self, algo: ChecksumAlgo) -> Option<Checksum> {
        self.sums[algo.index()].take()
    }

    /// The checksums, in [`ChecksumAlgo::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = &Checksum> {
        self.sums.iter().flatten()
    }

    /// The algorithms present.
    pub fn set(&self) -> DigestSet {
        self.iter().map(|c| c.algo).collect()
    }

    /// How many checksums there are.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IntoIterator for Digests {
    type Item = Checksum;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<Checksum>, ALGO_COUNT>>;

    fn into_iter(self) -> Self::IntoIter {
        self.sums.into_iter().flatten()
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
    fn the_check_against_the_source_is_the_cheapest_it_reports() {
        let sha = Checksum { algo: ChecksumAlgo::Sha256, bytes: vec![0; 32] };
        let crc64 = Checksum::from_crc64nvme(1);
        let mut h = Hashers::new(ChecksumAlgo::Crc32c, true);
        h.check_against(&[sha.clone(), crc64.clone()]);
        assert_eq!(h.set(), DigestSet::of(ChecksumAlgo::Crc32c).with(ChecksumAlgo::Crc64nvme));
        let mut h = Hashers::new(ChecksumAlgo::Crc32c, true);
        h.check_against(&[Checksum::from_crc32c(0), sha]);
        assert_eq!(h.set(), DigestSet::of(ChecksumAlgo::Crc32c));
        let mut h = Hashers::new(ChecksumAlgo::Crc32c, true);
        h.check_against(&[]);
        assert!(h.set().contains(ChecksumAlgo::Md5));
    }

    #[test]
    fn drive_s_two_hashes_are_checked_by_the_one_cheaper_here() {
        let md5 = Checksum { algo: ChecksumAlgo::Md5, bytes: vec![0; 16] };
        let sha = Checksum { algo: ChecksumAlgo::Sha256, bytes: vec![0; 32] };
        let want = if sha256_in_hardware() { ChecksumAlgo::Sha256 } else { ChecksumAlgo::Md5 };
        assert_eq!(cheapest_of(&[md5.clone(), sha.clone()]).map(|c| c.algo), Some(want));
        let mut h = Hashers::new(ChecksumAlgo::Crc32c, false);
        h.check_against(&[md5, sha]);
        assert_eq!(h.set(), DigestSet::of(ChecksumAlgo::Crc32c).with(want));
    }
    use proptest::prelude::*;

    fn digest(algo: ChecksumAlgo, bytes: &[u8]) -> Checksum {
        let mut h = Hasher::new(algo);
        h.update(bytes);
        h.finish()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
    }

    #[test]
    fn known_vectors() {
        let check = b"123456789";
        assert_eq!(digest(ChecksumAlgo::Crc32c, check).crc32c(), Some(0xE306_9283));
        assert_eq!(digest(ChecksumAlgo::Crc64nvme, check).crc64nvme(), Some(0xAE8B_1486_0A79_9888));
        assert_eq!(digest(ChecksumAlgo::Crc32c, b"").crc32c(), Some(0));
        assert_eq!(digest(ChecksumAlgo::Crc64nvme, b"").crc64nvme(), Some(0));
        assert_eq!(digest(ChecksumAlgo::Md5, b"").to_hex(), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(digest(ChecksumAlgo::Md5, b"abc").to_hex(), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(digest(ChecksumAlgo::Sha1, b"abc").to_hex(), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(digest(ChecksumAlgo::Sha1, b"").to_hex(), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        let sha256_empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(digest(ChecksumAlgo::Sha256, b"").to_hex(), sha256_empty);
        assert_eq!(
            digest(ChecksumAlgo::Sha256, b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // No blocks: the SHA-256 of nothing.
        assert_eq!(digest(ChecksumAlgo::DropboxContentHash, b"").to_hex(), sha256_empty);
        // One short block: SHA-256(SHA-256("abc")).
        assert_eq!(
            digest(ChecksumAlgo::DropboxContentHash, b"abc").bytes,
            sha2::Sha256::digest(sha2::Sha256::digest(b"abc")).to_vec()
        );
    }

    #[test]
    fn names_and_headers() {
        for algo in ChecksumAlgo::ALL {
            assert_eq!(ChecksumAlgo::from_name(algo.name()), Some(algo));
            assert_eq!(ChecksumAlgo::from_name(&algo.name().to_ascii_uppercase()), Some(algo));
            assert_eq!(serde_json::to_string(&algo).expect("serialises"), format!("\"{}\"", algo.name()));
            assert_eq!(serde_json::from_str::<ChecksumAlgo>(&format!("\"{}\"", algo.name())).ok(), Some(algo));
            let sum = digest(algo, b"abc");
            assert_eq!(sum.bytes.len(), algo.digest_bytes(), "{}", algo.name());
            assert_eq!(sum.to_base64().len(), algo.base64_len(), "{}", algo.name());
            assert_eq!(ChecksumAlgo::parse(algo.name()), algo.s3_header().map(|_| algo));
        }
        assert_eq!(ChecksumAlgo::parse("SHA1"), Some(ChecksumAlgo::Sha1));
        assert_eq!(ChecksumAlgo::parse("dropbox"), None);
        assert_eq!(ChecksumAlgo::from_name("dropbox"), Some(ChecksumAlgo::DropboxContentHash));
        assert_eq!(ChecksumAlgo::from_name("crc32"), None);
        assert_eq!(ChecksumAlgo::Sha1.s3_header(), Some("x-amz-checksum-sha1"));
        assert_eq!(ChecksumAlgo::Sha1.s3_algorithm(), Some("SHA1"));
        assert_eq!(ChecksumAlgo::DropboxContentHash.s3_header(), None);
        assert_eq!(ChecksumAlgo::DropboxContentHash.s3_algorithm(), None);
    }

    #[test]
    fn digest_sets() {
        const CRCS: DigestSet = DigestSet::of(ChecksumAlgo::Crc32c).with(ChecksumAlgo::Crc64nvme);
        assert_eq!(CRCS.len(), 2);
        assert!(CRCS.contains(ChecksumAlgo::Crc64nvme) && !CRCS.contains(ChecksumAlgo::Md5));
        assert_eq!(CRCS.iter().collect::<Vec<_>>(), [ChecksumAlgo::Crc32c, ChecksumAlgo::Crc64nvme]);
        let mut set = DigestSet::new();
        assert!(set.is_empty() && set.iter().next().is_none());
        assert!(set.insert(ChecksumAlgo::DropboxContentHash));
        assert!(!set.insert(ChecksumAlgo::DropboxContentHash));
        assert!(set.insert(ChecksumAlgo::Md5));
        assert_eq!(format!("{set:?}"), r#"{"md5", "dropbox"}"#);
        assert!(set.remove(ChecksumAlgo::Md5) && !set.remove(ChecksumAlgo::Md5));
        assert_eq!(set, DigestSet::of(ChecksumAlgo::DropboxContentHash));
        let all: DigestSet = ChecksumAlgo::ALL.into_iter().collect();
        assert_eq!(all.len(), ChecksumAlgo::ALL.len());
        assert_eq!(all.iter().collect::<Vec<_>>(), ChecksumAlgo::ALL);
        assert_eq!(all.without(ChecksumAlgo::Sha1).len(), ChecksumAlgo::ALL.len() - 1);
    }

    #[test]
    fn hashers_keep_their_meaning() {
        let (sum, md5) = Hashers::new(ChecksumAlgo::Crc32c, false).finish();
        assert_eq!((sum.crc32c(), md5), (Some(0), None));

        let mut h = Hashers::new(ChecksumAlgo::Crc32c, true);
        assert_eq!(h.primary(), Some(ChecksumAlgo::Crc32c));
        h.update(b"123456789");
        let (sum, md5) = h.finish();
        assert_eq!(sum.crc32c(), Some(0xE306_9283));
        assert_eq!(md5, Some(digest(ChecksumAlgo::Md5, b"123456789").to_hex()));

        let mut h = Hashers::new(ChecksumAlgo::Sha256, true);
        h.skip_md5();
        assert_eq!(h.set(), DigestSet::of(ChecksumAlgo::Sha256));
        assert_eq!(h.finish().1, None);

        // MD5 as the primary: reported as the MD5 too, and kept by skip_md5.
        for with_md5 in [false, true] {
            let mut h = Hashers::new(ChecksumAlgo::Md5, with_md5);
            h.skip_md5();
            h.update(b"abc");
            let (sum, md5) = h.finish();
            assert_eq!(sum.to_hex(), "900150983cd24fb0d6963f7d28e17f72");
            assert_eq!(md5.as_deref(), Some("900150983cd24fb0d6963f7d28e17f72"));
        }

        let mut h = Hashers::new(ChecksumAlgo::Crc32c, false);
        h.add(ChecksumAlgo::Sha1);
        h.add(ChecksumAlgo::Sha1);
        h.update(b"abc");
        let digests = h.clone().finish_all();
        assert_eq!(digests.len(), 2);
        assert_eq!(digests.get(ChecksumAlgo::Sha1), Some(&digest(ChecksumAlgo::Sha1, b"abc")));
        assert_eq!(h.finish().0, digest(ChecksumAlgo::Crc32c, b"abc"));

        let digests = Hashers::with_set(DigestSet::EMPTY).finish_all();
        assert!(digests.is_empty() && digests.get(ChecksumAlgo::Crc32c).is_none());
    }

    #[test]
    #[should_panic(expected = "added after bytes were hashed")]
    fn add_after_bytes_is_a_bug() {
        let mut h = Hashers::new(ChecksumAlgo::Crc32c, false);
        h.update(b"x");
        h.add(ChecksumAlgo::Md5);
    }

    #[test]
    #[should_panic(expected = "needs a primary algorithm")]
    fn finish_needs_a_primary() {
        let _ = Hashers::with_set(DigestSet::of(ChecksumAlgo::Crc32c)).finish();
    }

    #[test]
    fn combine_only_what_combines() {
        let a = digest(ChecksumAlgo::Crc32c, b"1234");
        let b = digest(ChecksumAlgo::Crc32c, b"56789");
        assert_eq!(combine(&a, &b, 5), Some(digest(ChecksumAlgo::Crc32c, b"123456789")));
        assert_eq!(combine(&a, &digest(ChecksumAlgo::Crc64nvme, b"56789"), 5), None);
        assert_eq!(combine(&a, &Checksum { algo: ChecksumAlgo::Crc32c, bytes: vec![1] }, 5), None);
        for algo in ChecksumAlgo::ALL {
            let sum = digest(algo, b"abc");
            assert_eq!(combine(&sum, &sum, 3).is_some(), algo.combinable(), "{}", algo.name());
        }
    }

    #[test]
    fn crcs_combine_across_parts() {
        let data = pattern(100_000);
        for algo in [ChecksumAlgo::Crc32c, ChecksumAlgo::Crc64nvme] {
            let whole = digest(algo, &data);
            for split in [0, 1, 4096, 99_999, 100_000] {
                let (a, b) = data.split_at(split);
                assert_eq!(combine(&digest(algo, a), &digest(algo, b), b.len() as u64).as_ref(), Some(&whole));
            }
        }
    }

    #[test]
    fn crc64_shift_powers_compose() {
        // x^(8n) · x^(8m) = x^(8(n+m)), out to lengths no test could hash.
        let lens = [0u64, 1, 7, 4096, 1 << 20, (1 << 40) + 3, (1 << 62) - 1, u64::MAX / 2];
        for n in lens {
            for m in lens {
                let composed = crc64::mul_mod_p(crc64::x8n_mod_p(n), crc64::x8n_mod_p(m));
                assert_eq!(composed, crc64::x8n_mod_p(n + m), "{n} + {m}");
            }
        }
        // Past n zero bytes by hand: x^8 multiplied n times.
        let x8 = crc64::x8n_mod_p(1);
        let mut power = crc64::x8n_mod_p(0);
        for n in 0..64u64 {
            assert_eq!(power, crc64::x8n_mod_p(n));
            power = crc64::mul_mod_p(power, x8);
        }
    }

    #[test]
    fn base64_round_trip() {
        let c = Checksum::from_crc32c(0xdeadbeef);
        assert_eq!(Checksum::from_base64(ChecksumAlgo::Crc32c, &c.to_base64()), Some(c));
        let c = Checksum::from_crc64nvme(0xdead_beef_0123_4567);
        assert_eq!(Checksum::from_base64(ChecksumAlgo::Crc64nvme, &c.to_base64()), Some(c));
        assert!(etag_is_md5("\"d41d8cd98f00b204e9800998ecf8427e\""));
        assert!(!etag_is_md5("d41d8cd98f00b204e9800998ecf8427e-3"));
    }

    /// Input split into chunks: sizes cycled, from a byte to past a window.
    fn chunked(data: &[u8], sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
        let mut ranges = Vec::new();
        let mut start = 0;
        for &size in sizes.iter().cycle() {
            if start == data.len() {
                break;
            }
            let end = (start + size).min(data.len());
            ranges.push(start..end);
            start = end;
        }
        ranges
    }

    fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(prop_oneof![1usize..=64, 1usize..=3 * WINDOW_BYTES], 1..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn crcs_combine_at_any_split(len in 0usize..20_000, split in any::<prop::sample::Index>()) {
            let data = pattern(len);
            let split = split.index(len + 1);
            let (a, b) = data.split_at(split);
            let whole = crc32c::crc32c(&data);
            prop_assert_eq!(crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len() as u64), whole);
            for algo in [ChecksumAlgo::Crc32c, ChecksumAlgo::Crc64nvme] {
                let combined = combine(&digest(algo, a), &digest(algo, b), b.len() as u64);
                prop_assert_eq!(combined, Some(digest(algo, &data)));
            }
        }

        #[test]
        fn one_pass_equals_one_hasher_each(
            len in 0usize..300_000,
            sizes in chunk_sizes(),
            bits in 0u8..1 << ALGO_COUNT,
        ) {
            let data = pattern(len);
            let set: DigestSet = ChecksumAlgo::ALL.into_iter().filter(|a| bits & 1 << a.index() != 0).collect();
            let mut hashers = Hashers::with_set(set);
            for range in chunked(&data, &sizes) {
                hashers.update(&data[range]);
            }
            let digests = hashers.finish_all();
            prop_assert_eq!(digests.set(), set);
            for algo in ChecksumAlgo::ALL {
                prop_assert_eq!(digests.get(algo).cloned(), set.contains(algo).then(|| digest(algo, &data)));
            }
            prop_assert_eq!(digests.into_iter().map(|c| c.algo).collect::<Vec<_>>(), set.iter().collect::<Vec<_>>());
        }
    }
}
