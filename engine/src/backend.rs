//! What differs between stores, behind two traits: [`Source`] and [`Sink`].
//!
//! A relay lists both sides page by page, reads from the source (whole objects or
//! ranges) into pool chunks, and writes to the sink as a single put or a multipart
//! upload session. Each backend declares what its store can do in one
//! [`Capabilities`] value (part sizes and alignment, parallel parts or one ordered
//! stream, listing order, hash families, server-side copy, metadata) and classifies
//! its own errors ([`crate::error::ErrorClass`]), so the relay plans without knowing
//! which store it talks to. An upload is an [`UploadSession`] whose state is one
//! serialisable value, so any worker, or a later run, can reopen it.
//!
//! Backends are registered by their `type` name in [`registry`]; adding one is adding
//! a module and a line there.
//!
//! Backends are opened once per worker (`Rc`, not `Send`): each worker owns its
//! connections. Futures are boxed once per operation (never per chunk) so that the
//! traits stay object-safe and adding a backend is adding a module.

pub mod drive;
pub mod dropbox;
pub mod faulty;
pub mod file;
pub mod mem;
pub mod rclone;
pub mod registry;
pub(crate) mod rfc3339;
pub mod s3;

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::checksum::{Checksum, ChecksumAlgo, Composite, Hashers};
use crate::error::{Error, Result};
use crate::http::HttpClient;
use crate::pool::ring::{Drain, Filler};
use crate::pool::Body;

/// A boxed future local to one worker.
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// One listed object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// When the object was last modified, Unix milliseconds, where the listing says.
    pub modified_unix_ms: Option<i64>,
}

/// A page of a listing.
#[derive(Debug, Default)]
pub struct ListPage {
    /// Entries: sorted by key bytes where the store lists in order
    /// ([`ListOrder::Sorted`]).
    pub entries: Vec<Entry>,
    /// Token for the next page; None at the end.
    pub next: Option<String>,
    /// What the store holds under the prefix but leaves out of the listing, with why
    /// (Drive: a Doc with no export format, a shortcut not followed).
    pub left_out: Vec<LeftOut>,
}

/// Something a listing left out, with why: the relay reports it and copies nothing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeftOut {
    /// The key it would have had.
    pub key: String,
    /// Why it was left out, one line.
    pub reason: String,
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
    /// A COMPOSITE checksum the store reported, a hash of its parts' hashes: the
    /// algorithm and the value as given (`base64-N`).
    pub composite_checksum: Option<(ChecksumAlgo, String)>,
    /// Laminar's provenance record: the source's version token and checksum at the
    /// time Laminar wrote this object, so a re-run can skip it.
    pub provenance: Option<String>,
    /// The version token, as the store's listing gives it ([`Entry::version`]), where
    /// the store has one besides the ETag; for a read, of the bytes it returned.
    pub version: Option<String>,
}

impl ObjectInfo {
    /// The token the relay pins a source object's reads to: the ETag, else the
    /// version (as a listing's entry gives it). None when the store says neither.
    pub fn version_token(&self) -> Option<&str> {
        self.etag.as_deref().or(self.version.as_deref())
    }
}

/// A store's rules for the sizes of parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLimits {
    /// Smallest part but the last.
    pub min_part_bytes: u64,
    /// Largest part.
    pub max_part_bytes: u64,
    /// Most parts in one upload.
    pub max_parts: u32,
    /// Parts but the last must be a multiple of this.
    pub part_alignment_bytes: u64,
    /// Largest single-shot put.
    pub max_single_put_bytes: u64,
}

/// How a store takes the parts of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMode {
    /// Parts in any order, several at once (S3 multipart, a local file).
    Parallel,
    /// One ordered stream: each part starts where the store's committed bytes end
    /// (Google Drive resumable uploads, Dropbox upload sessions).
    Ordered,
}

/// In what order a store lists keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOrder {
    /// Pages come sorted by key bytes, across pages (S3, the file backend).
    Sorted,
    /// No particular order: the relay sorts the listing itself, within a bound on
    /// memory, before it merge-joins it with the other side.
    Unordered,
}

/// Which metadata a store keeps with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaSupport {
    /// Content-Type, Content-Encoding, Content-Disposition, Cache-Control.
    pub content_headers: bool,
    /// User metadata.
    pub user: bool,
    /// The modification time.
    pub mtime: bool,
}

/// What a store can do, declared once by its backend; the relay plans from this and
/// never asks which store it talks to.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Parallel parts or one ordered stream.
    pub upload: UploadMode,
    /// Part sizes.
    pub parts: PartLimits,
    /// Listing order.
    pub list_order: ListOrder,
    /// Whether `a` and `A` are different keys.
    pub case_sensitive: bool,
    /// Hash families the store reports for an object it holds.
    pub reports: &'static [HashFamily],
    /// Checksums the store verifies when they come with an upload.
    pub verifies: &'static [ChecksumAlgo],
    /// Checksums the backend computes over the bytes it sends and compares, once the
    /// upload is done, with what the store reports for the object (Drive: MD5;
    /// Dropbox: content_hash): a check on the destination's side for stores that take
    /// no checksum with an upload.
    pub checks_after_upload: &'static [ChecksumAlgo],
    /// Parts each worker keeps in flight into this store unless `--part-streams` says
    /// otherwise; 0 is the engine's default (4). More for a store far away (Dropbox),
    /// whose round trip and per-connection rate leave each part stream idle much of the
    /// time, and whose parts are read whole before they are sent.
    pub part_streams_per_worker: usize,
    /// Objects a second to start a relay into this store at, for a store that limits
    /// how many objects are created a second (Drive): the pace rises from there until
    /// the store refuses, instead of opening with a burst it refuses. 0: no pace.
    pub objects_per_s_at_start: f64,
    /// Whether objects can be copied within the store without moving their bytes.
    pub server_side_copy: bool,
    /// Metadata kept.
    pub metadata: MetaSupport,
}

impl Capabilities {
    /// Whether the store verifies `algo` on upload.
    pub fn verifies(&self, algo: ChecksumAlgo) -> bool {
        self.verifies.contains(&algo)
    }
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

/// Arguments of an upload: what the store keeps with the object.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PutArgs {
    /// Metadata to store.
    pub meta: ObjectMeta,
    /// Provenance record to store.
    pub provenance: Option<String>,
}

/// Where one part goes in its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartSpec {
    /// 1-based part number.
    pub number: u32,
    /// Byte offset of the part in the object.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl PartSpec {
    /// The byte range `[offset, offset + len)`.
    pub fn range(&self) -> (u64, u64) {
        (self.offset, self.offset + self.len)
    }
}

/// One part the store has committed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartRecord {
    /// 1-based part number.
    pub number: u32,
    /// Byte offset of the part in the object.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The store's receipt for the part (S3: its ETag), opaque to the relay.
    pub token: String,
    /// The checksum computed while streaming it (empty bytes for a part copied
    /// server-side).
    pub checksum: Checksum,
}

impl PartRecord {
    /// The record of `part`, with the store's receipt and the part's checksum.
    pub fn new(part: PartSpec, token: String, checksum: Checksum) -> PartRecord {
        PartRecord { number: part.number, offset: part.offset, len: part.len, token, checksum }
    }
}

/// How an upload is to be made, decided by the relay from the capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadPlan {
    /// The object's size in bytes.
    pub size: u64,
    /// One request with the whole object (no multipart upload, no resumable session).
    pub single: bool,
    /// The checksum the parts carry; None when the parts are copied server-side.
    pub checksum: Option<ChecksumAlgo>,
}

/// The state of one upload, as one serialisable value: a later worker or a later
/// run reopens the session from it with [`Sink::resume`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionState {
    /// Destination key.
    pub key: String,
    /// How the upload was planned.
    pub plan: UploadPlan,
    /// What the store keeps with the object.
    pub args: PutArgs,
    /// The store's own record of the session (S3: the upload id and the checksum it
    /// agreed to verify); opaque to the relay.
    pub store: serde_json::Value,
    /// Parts committed so far, as the relay recorded them.
    pub parts: Vec<PartRecord>,
}

/// What a store says it holds of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Parallel parts: the parts the store holds (a checksum with empty bytes: the
    /// store did not say).
    Parts(Vec<PartRecord>),
    /// An ordered stream: the bytes the store holds, from the start.
    Offset(u64),
}

/// One upload in progress: a single put is a session of one part; a multipart upload
/// or a resumable session takes its parts one by one. Sessions are local to a worker;
/// their [`SessionState`] travels.
pub trait UploadSession {
    /// The state the session was opened with (the relay adds the parts it commits).
    fn state(&self) -> &SessionState;
    /// Sends one part whole. `sums` are the checksums computed over `body`: the first
    /// goes with the request for the store to verify; the store checks the others
    /// against what it reports where it can (S3: MD5 against a plain ETag). Returns
    /// the store's receipt.
    fn put<'a>(&'a self, part: PartSpec, body: Body, sums: &'a [Checksum]) -> LocalFuture<'a, Result<String>>;
    /// Whether parts carrying `algo` can stream ([`UploadSession::put_stream`]).
    fn streams(&self, _algo: ChecksumAlgo) -> bool {
        false
    }
    /// Sends one part of `part.len` bytes as they arrive through `drain`, which ends
    /// with their `algo` checksum for the store to verify. Only called when
    /// [`UploadSession::streams`] says so.
    fn put_stream<'a>(&'a self, part: PartSpec, algo: ChecksumAlgo, drain: Drain) -> LocalFuture<'a, Result<String>> {
        let _ = (part, algo, drain);
        let key = &self.state().key;
        Box::pin(async move { Err(Error::protocol("upload-part", key, "this store takes no streamed parts")) })
    }
    /// Whether the backend checks the upload by a hash of every byte sent, and so
    /// must see again the bytes the store already holds of an upload an earlier run
    /// began ([`UploadSession::held`]) before it goes on with it (Drive).
    fn wants_held_bytes(&self) -> bool {
        false
    }
    /// Bytes `offset..offset + body.len()` of the object, which the store holds of this
    /// upload from an earlier run, read again from the source in order from 0: nothing
    /// is sent. Only called when [`UploadSession::wants_held_bytes`] says so.
    fn held(&self, offset: u64, body: &Body) -> Result<()> {
        let _ = (offset, body);
        Ok(())
    }
    /// Copies a byte range of another object in the same store as one part.
    fn copy_part<'a>(&'a self, source: &'a CopySource, part: PartSpec) -> LocalFuture<'a, Result<String>> {
        let _ = (source, part);
        let key = &self.state().key;
        Box::pin(async move { Err(Error::protocol("copy-part", key, "this store has no server-side copy")) })
    }
    /// What the store holds of this upload, so that a retry sends only the rest.
    fn committed(&self) -> LocalFuture<'_, Result<Committed>>;
    /// Completes the object from `parts`; `full` is the whole object's checksum when
    /// known, for the store to verify.
    fn finish<'a>(&'a self, parts: &'a [PartRecord], full: Option<&'a Checksum>) -> LocalFuture<'a, Result<()>>;
    /// Abandons the upload and frees what it stored; nothing of it is left looking
    /// complete.
    fn abort(&self) -> LocalFuture<'_, Result<()>>;
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
    /// Lists keys starting with `prefix`, one page per call, in the order
    /// [`Capabilities::list_order`] declares.
    fn list<'a>(&'a self, prefix: &'a str, token: Option<String>) -> LocalFuture<'a, Result<ListPage>>;
    /// Metadata of one object; None if it does not exist.
    fn stat<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Option<ObjectInfo>>>;
    /// A short human description, e.g. `s3 http://127.0.0.1:9000 bucket`.
    fn describe(&self) -> String;
    /// Checks that the store is reachable and the bucket or root exists, with a clear
    /// error if not. Called once before a relay starts.
    fn check<'a>(&'a self, writable: bool) -> LocalFuture<'a, Result<()>>;
    /// What the store can do.
    fn capabilities(&self) -> Capabilities;
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
    /// Returns the version token of the bytes read ([`ObjectInfo::version_token`]),
    /// where the store says.
    fn read_stream<'a>(
        &'a self,
        key: &'a str,
        range: (u64, u64),
        filler: &'a Filler,
        hashers: &'a mut Hashers,
    ) -> LocalFuture<'a, Result<Option<String>>>;
    /// A reference for server-side copies, when the store supports them.
    fn copy_source(&self, key: &str) -> Option<CopySource>;
    /// The hash the store names an object uploaded in parts by, when that is the MD5
    /// of its parts' MD5s (an S3 multipart ETag), with the part layout it was made
    /// from: `info` is the object's [`stat`](Store::stat). None where the store names
    /// the object otherwise or cannot say how its parts were cut.
    fn composite<'a>(&'a self, key: &'a str, info: &'a ObjectInfo) -> LocalFuture<'a, Result<Option<Composite>>> {
        let _ = (key, info);
        Box::pin(async { Ok(None) })
    }
}

/// What [`Sink::mkdir`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    /// The folder is there (made now, or already).
    Folder,
    /// The bucket is there (`true`: made now); the store has no folders, so the
    /// path below it needs none: the objects written under it make it.
    Bucket(bool),
}

/// A boxed upload session borrowing its sink.
pub type Session<'a> = Box<dyn UploadSession + 'a>;

/// A store objects are written to.
pub trait Sink: Store {
    /// Begins an upload of `key` (a multipart upload or a resumable session; for a
    /// single put, usually no request at all).
    fn begin<'a>(&'a self, key: &'a str, plan: UploadPlan, args: &'a PutArgs) -> LocalFuture<'a, Result<Session<'a>>>;
    /// Reopens a session from its state: on another worker, or in a later run.
    fn resume(&self, state: SessionState) -> Result<Session<'_>>;
    /// Writes a directory marker (zero-byte key ending in `/`).
    fn put_dir_marker<'a>(&'a self, key: &'a str, args: &'a PutArgs) -> LocalFuture<'a, Result<()>>;
    /// Makes the folder `key` (`laminar mkdir`), with its parents; `""` is the
    /// location itself. A folder already there is no error. The default makes a
    /// directory marker, which stores with real folders turn into one.
    fn mkdir<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Made>> {
        Box::pin(async move {
            if !key.is_empty() {
                self.put_dir_marker(key, &PutArgs::default()).await?;
            }
            Ok(Made::Folder)
        })
    }
    /// Whether a server-side copy from `source` is possible.
    fn can_copy_from(&self, source: &CopySource) -> bool;
    /// Copies a whole object server-side.
    fn copy_object<'a>(
        &'a self,
        source: &'a CopySource,
        key: &'a str,
        args: &'a PutArgs,
    ) -> LocalFuture<'a, Result<()>> {
        let _ = (source, args);
        Box::pin(async move { Err(Error::protocol("copy", key, "this store has no server-side copy")) })
    }
    /// Deletes one object, for `laminar sync` and `laminar move`; an object already
    /// gone is no error.
    fn delete<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move { Err(Error::protocol("delete", key, "this store cannot delete objects")) })
    }
    /// Removes what relays of Laminar's that died left under `prefix` and no run can
    /// go on with, outside any journal (a file tree's temporary files whose writer is
    /// gone). Never touches anything Laminar did not write. Returns how many it removed.
    fn sweep<'a>(&'a self, prefix: &'a str) -> LocalFuture<'a, Result<u64>> {
        let _ = prefix;
        Box::pin(async move { Ok(0) })
    }
}

/// What a worker gives a backend when opening it.
#[derive(Clone)]
pub struct WorkerCtx {
    /// The worker's HTTP client (connection pools).
    pub http: HttpClient,
    /// The relay's turns for creates, where the store limits how many are made a
    /// second and makes some of its own (Drive's folders); None outside a relay.
    pub turns: Option<Arc<dyn CreateTurns>>,
}

impl WorkerCtx {
    /// A context with `http` and no relay's turns.
    pub fn new(http: HttpClient) -> WorkerCtx {
        WorkerCtx { http, turns: None }
    }
}

/// Turns for the creates a store makes on its own (a folder for a file's path): a
/// relay paces its uploads under a store's limit on creates a second, and a folder
/// made for them waits its turn under the same pace.
pub trait CreateTurns: Send + Sync {
    /// Waits for the turn of one create (at once where nothing paces creates).
    fn turn(&self) -> LocalFuture<'_, ()>;
    /// One create the store accepted: counted in the rate a refusal measures.
    fn made(&self);
}

/// A configured store that each worker opens for itself. What all workers share (an
/// OAuth token cache, a folder-id cache) lives in the backend and is handed to each
/// worker's handle as it opens.
pub trait Backend: Send + Sync {
    /// Opens a source handle for the calling worker.
    fn open_source(&self, ctx: &WorkerCtx) -> Result<Rc<dyn Source>>;
    /// Opens a sink handle for the calling worker.
    fn open_sink(&self, ctx: &WorkerCtx) -> Result<Rc<dyn Sink>>;
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
