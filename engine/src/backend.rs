//! What differs between stores, behind two traits: [`Source`] and [`Sink`].
//!
//! A relay lists both sides page by page, reads from the source (whole objects or
//! ranges) into pool chunks, and writes to the sink as a single put or a multipart
//! upload. The traits also describe each store's rules (part sizes and alignment,
//! whether parts may go up in parallel, which hash families it reports) so the
//! scheduler can plan without knowing which store it talks to.
//!
//! Backends are opened once per worker (`Rc`, not `Send`): each worker owns its
//! connections. Futures are boxed once per operation (never per chunk) so that the
//! traits stay object-safe and adding a backend is adding a module.

pub mod file;
pub mod s3;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::checksum::{Checksum, ChecksumAlgo, Hashers};
use crate::error::{Error, Result};
use crate::http::HttpClient;
use crate::pool::ring::{Drain, Filler};
use crate::pool::Body;

/// A boxed future local to one worker.
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Full key in the store.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes, if the store has one.
    pub etag: Option<String>,
    /// Laminar's provenance record, when the listing carries it for free
    /// (file backend xattr); see [`ObjectInfo::provenance`].
    pub provenance: Option<String>,
    /// A version token for change detection when the store has no content hash
    /// (file backend: size and mtime).
    pub version: Option<String>,
}

/// A page of a listing, in byte order of keys.
#[derive(Debug, Default)]
pub struct ListPage {
    /// Entries, sorted by key bytes.
    pub entries: Vec<Entry>,
    /// Token for the next page; None at the end.
    pub next: Option<String>,
}

/// Metadata that travels with an object where both stores can hold it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    /// Content-Type.
    pub content_type: Option<String>,
    /// Content-Encoding.
    pub content_encoding: Option<String>,
    /// Content-Disposition.
    pub content_disposition: Option<String>,
    /// Cache-Control.
    pub cache_control: Option<String>,
    /// User metadata (S3 `x-amz-meta-*`, names lower-case without the prefix),
    /// excluding `mtime` and Laminar's own keys.
    pub user: Vec<(String, String)>,
    /// Modification time as (seconds, nanoseconds) since the epoch.
    pub mtime: Option<(i64, u32)>,
}

impl ObjectMeta {
    /// Formats an mtime the way rclone stores it (`x-amz-meta-mtime`): decimal seconds.
    pub fn mtime_string(&self) -> Option<String> {
        let (secs, nanos) = self.mtime?;
        Some(if nanos == 0 { format!("{secs}") } else { format!("{secs}.{nanos:09}") })
    }

    /// Parses a decimal-seconds mtime.
    pub fn parse_mtime(value: &str) -> Option<(i64, u32)> {
        let value = value.trim();
        let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
        let secs: i64 = secs.parse().ok()?;
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let nanos: u32 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().ok()? };
        Some((secs, nanos))
    }

    /// The mtime as a `SystemTime`.
    pub fn mtime_system(&self) -> Option<SystemTime> {
        let (secs, nanos) = self.mtime?;
        let secs = u64::try_from(secs).ok()?;
        Some(UNIX_EPOCH + Duration::new(secs, nanos))
    }

    /// Sets the mtime from a `SystemTime`.
    pub fn set_mtime(&mut self, t: SystemTime) {
        if let Ok(d) = t.duration_since(UNIX_EPOCH) {
            self.mtime = Some((d.as_secs() as i64, d.subsec_nanos()));
        }
    }
}

/// What a store says about one object.
#[derive(Debug, Clone, Default)]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes.
    pub etag: Option<String>,
    /// Metadata.
    pub meta: ObjectMeta,
    /// Whole-object checksums the store reported (not composite ones).
    pub checksums: Vec<Checksum>,
    /// Laminar's provenance record: the source's version token and checksum at the
    /// time Laminar wrote this object, so a re-run can skip it.
    pub provenance: Option<String>,
}

/// A store's rules for uploads.
#[derive(Debug, Clone, Copy)]
pub struct PartLimits {
    /// Smallest part but the last.
    pub min_part_bytes: u64,
    /// Largest part.
    pub max_part_bytes: u64,
    /// Most parts in one upload.
    pub max_parts: u32,
    /// Parts but the last must be a multiple of this.
    pub part_alignment_bytes: u64,
    /// Whether parts may go up in parallel (false: one ordered stream, e.g. Google
    /// Drive resumable uploads).
    pub parallel_parts: bool,
    /// Largest single-shot put.
    pub max_single_put_bytes: u64,
}

/// Hash families a store can report for an object, to pick a common checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashFamily {
    /// Plain-MD5 ETag of single-part objects.
    EtagMd5,
    /// `x-amz-checksum-crc32c`.
    Crc32c,
    /// `x-amz-checksum-crc64nvme`.
    Crc64nvme,
    /// `x-amz-checksum-sha256` (S3) or a SHA-256 field (Drive).
    Sha256,
    /// MD5 field (Drive).
    Md5,
    /// Dropbox content_hash (SHA-256 of 4 MiB block SHA-256s).
    DropboxContentHash,
}

/// Arguments of a put or multipart creation.
#[derive(Debug, Clone, Default)]
pub struct PutArgs {
    /// Metadata to store.
    pub meta: ObjectMeta,
    /// Provenance record to store.
    pub provenance: Option<String>,
}

/// One finished part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartRecord {
    /// 1-based part number.
    pub number: u32,
    /// Byte offset of the part in the object.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The ETag the store returned.
    pub etag: String,
    /// The checksum computed while streaming it.
    pub checksum: Checksum,
}

/// A multipart upload the store has started.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Upload {
    /// The store's upload id.
    pub id: String,
    /// The checksum algorithm the store was told the parts carry; None when the store
    /// refused one (parts then carry their checksum headers alone).
    pub checksum: Option<ChecksumAlgo>,
    /// Whether the store takes a whole-object checksum at completion (S3 FULL_OBJECT).
    pub full_object: bool,
}

/// Where a server-side copy reads from: opaque to everyone but the backend.
#[derive(Debug, Clone)]
pub struct CopySource {
    /// Identity of the endpoint and credentials; copies happen only between equals.
    pub identity: String,
    /// Backend-specific reference to the object (S3: `bucket/key`, encoded).
    pub reference: String,
}

/// The common part of sources and sinks.
pub trait Store {
    /// Lists keys starting with `prefix` in byte order, one page per call.
    fn list<'a>(&'a self, prefix: &'a str, token: Option<String>) -> LocalFuture<'a, Result<ListPage>>;
    /// Metadata of one object; None if it does not exist.
    fn stat<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Option<ObjectInfo>>>;
    /// A short human description, e.g. `s3 http://127.0.0.1:9000 bucket`.
    fn describe(&self) -> String;
    /// Checks that the store is reachable and the bucket or root exists, with a clear
    /// error if not. Called once before a relay starts.
    fn check<'a>(&'a self, writable: bool) -> LocalFuture<'a, Result<()>>;
}

/// A store objects are read from.
pub trait Source: Store {
    /// Reads `range` (or the whole object) into `body`, feeding `hashers`. Returns
    /// the filled body and what the response said about the object.
    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Option<(u64, u64)>,
        body: Body,
        hashers: &'a mut Hashers,
    ) -> LocalFuture<'a, Result<(Body, ObjectInfo)>>;
    /// Reads `range` through a ring, feeding `hashers`: each chunk goes to the ring's
    /// writer as soon as it is full, so the bytes can be sent on while they are read.
    fn read_stream<'a>(
        &'a self,
        key: &'a str,
        range: (u64, u64),
        filler: &'a Filler,
        hashers: &'a mut Hashers,
    ) -> LocalFuture<'a, Result<()>>;
    /// Hash families this store reports.
    fn hash_families(&self) -> &'static [HashFamily];
    /// A reference for server-side copies, when the store supports them.
    fn copy_source(&self, key: &str) -> Option<CopySource>;
}

/// A store objects are written to.
pub trait Sink: Store {
    /// Upload rules.
    fn limits(&self) -> PartLimits;
    /// Writes a whole object in one request. `checksum` is sent for the store to
    /// verify; `md5_hex`, when given, is checked against what the store reports.
    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Body,
        checksum: &'a Checksum,
        md5_hex: Option<&'a str>,
        args: &'a PutArgs,
    ) -> LocalFuture<'a, Result<String>>;
    /// Starts a multipart upload whose parts will carry `checksum` (None: parts copied
    /// server-side); the returned upload says what the store agreed to verify.
    fn create_multipart<'a>(
        &'a self,
        key: &'a str,
        size: u64,
        args: &'a PutArgs,
        checksum: Option<ChecksumAlgo>,
    ) -> LocalFuture<'a, Result<Upload>>;
    /// Uploads one part.
    #[allow(clippy::too_many_arguments)]
    fn upload_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        number: u32,
        offset: u64,
        body: Body,
        checksum: &'a Checksum,
        md5_hex: Option<&'a str>,
    ) -> LocalFuture<'a, Result<String>>;
    /// Whether parts carrying `algo` can stream ([`Sink::upload_part_stream`]): sent
    /// as they are read, with the checksum after the bytes.
    fn streams_parts(&self, _algo: ChecksumAlgo) -> bool {
        false
    }
    /// Uploads one part of `len` bytes as they arrive through `drain`, which ends with
    /// their `algo` checksum for the store to verify. Only called when
    /// [`Sink::streams_parts`] says so.
    #[allow(clippy::too_many_arguments)]
    fn upload_part_stream<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        number: u32,
        len: u64,
        algo: ChecksumAlgo,
        drain: Drain,
    ) -> LocalFuture<'a, Result<String>> {
        let _ = (upload_id, number, len, algo, drain);
        Box::pin(async move { Err(Error::protocol("upload-part", key, "this store takes no streamed parts")) })
    }
    /// Completes an upload; `full` is the whole object's checksum when known.
    fn complete_multipart<'a>(
        &'a self,
        key: &'a str,
        upload: &'a Upload,
        parts: &'a [PartRecord],
        full: Option<&'a Checksum>,
        args: &'a PutArgs,
    ) -> LocalFuture<'a, Result<()>>;
    /// Abandons an upload and frees what it stored.
    fn abort_multipart<'a>(&'a self, key: &'a str, upload_id: &'a str) -> LocalFuture<'a, Result<()>>;
    /// Writes a directory marker (zero-byte key ending in `/`).
    fn put_dir_marker<'a>(&'a self, key: &'a str, args: &'a PutArgs) -> LocalFuture<'a, Result<()>>;
    /// Whether a server-side copy from `source` is possible.
    fn can_copy_from(&self, source: &CopySource) -> bool;
    /// Copies a whole object server-side.
    fn copy_object<'a>(
        &'a self,
        source: &'a CopySource,
        key: &'a str,
        args: &'a PutArgs,
    ) -> LocalFuture<'a, Result<()>>;
    /// Copies a byte range server-side as one part of an upload; returns the ETag.
    fn copy_part<'a>(
        &'a self,
        source: &'a CopySource,
        key: &'a str,
        upload_id: &'a str,
        number: u32,
        range: (u64, u64),
    ) -> LocalFuture<'a, Result<String>>;
}

/// What a worker gives a backend when opening it.
#[derive(Clone)]
pub struct WorkerCtx {
    /// The worker's HTTP client (connection pools).
    pub http: HttpClient,
}

/// A configured store that each worker opens for itself.
pub trait Backend: Send + Sync {
    /// Opens a source handle for the calling worker.
    fn open_source(&self, ctx: &WorkerCtx) -> Rc<dyn Source>;
    /// Opens a sink handle for the calling worker.
    fn open_sink(&self, ctx: &WorkerCtx) -> Rc<dyn Sink>;
}

/// Provenance record stored with each object Laminar writes:
/// `<source version token>;<checksum>`.
pub fn provenance(source_version: &str, checksum: Option<&Checksum>) -> String {
    match checksum {
        Some(c) => format!("{source_version};{c}"),
        None => source_version.to_string(),
    }
}

/// Whether an object at the destination is the given source version, by the
/// provenance record Laminar stored with it.
pub fn holds_version(info: &ObjectInfo, size: u64, source_version: &str) -> bool {
    info.size == size && info.provenance.as_deref().map(provenance_version) == Some(source_version)
}

/// The source version recorded in a provenance string.
pub fn provenance_version(record: &str) -> &str {
    record.split(';').next().unwrap_or(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtimes_round_trip() {
        for (s, v) in [("1700000000", (1_700_000_000, 0)), ("1700000000.5", (1_700_000_000, 500_000_000))] {
            assert_eq!(ObjectMeta::parse_mtime(s), Some(v));
        }
        let m = ObjectMeta { mtime: Some((12, 34)), ..Default::default() };
        assert_eq!(m.mtime_string().as_deref(), Some("12.000000034"));
        assert_eq!(ObjectMeta::parse_mtime("12.000000034"), Some((12, 34)));
        assert_eq!(ObjectMeta::parse_mtime("x"), None);
    }
}
