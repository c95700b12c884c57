//! An in-memory store, for tests (`type = "mem"`): both sides of a relay, with the
//! capabilities a test sets.
//!
//! A fake store is a real implementation (mountpoint-s3's `mock_client.rs` is the
//! model): [`MemBackend`] implements [`Source`] and [`Sink`] through the same traits as
//! S3 and the file backend, and is as strict as the services it stands in for. Its
//! [`MemOptions`] set what it declares and enforces: parallel parts or one ordered
//! stream (a part must start at the committed offset, as with Drive and Dropbox), part
//! sizes and alignment (Dropbox's 4 MiB), the largest single put, listing order and
//! page size (an unordered store shuffles its keys by a seed, the same way every
//! time), the hash families it reports and the checksums it verifies (a body that does
//! not match is refused, and nothing of it is kept), server-side copy and metadata.
//!
//! Objects become visible only when their upload finishes (a single put: when it is
//! put, as on S3), in one step under the store's lock; an aborted or unfinished
//! session leaves nothing visible. Every worker's handle shares one state
//! (`Arc<Mutex<..>>`), so parts sent from any worker land in the same session.
//!
//! Tests inspect the store directly: [`MemBackend::objects`], [`MemBackend::object`],
//! [`MemBackend::open_sessions`], [`MemBackend::requests`], and seed a source with
//! [`MemBackend::insert`]. A remote of `type = "mem"` names a process-wide store
//! (`store = "name"`, the remote's name by default), so a config file can reach one
//! that a test registered with [`MemBackend::register`]; its bytes are gone when the
//! process exits.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

mod upload;

use serde::Deserialize;

use super::registry::{self, BackendType, Opened};
use super::{
    Backend, Capabilities, CopySource, Entry, HashFamily, ListOrder, ListPage, LocalFuture, MetaSupport, ObjectInfo,
    ObjectMeta, PartLimits, PutArgs, Session, SessionState, Sink, Source, Store, UploadMode, UploadPlan, WorkerCtx,
};
use crate::checksum::{Checksum, ChecksumAlgo, Composite, Hasher, Hashers};
use crate::error::{Error, ErrorClass, Result};
use crate::pool::ring::Filler;
use crate::pool::Body;

/// What an in-memory store declares and enforces.
#[derive(Debug, Clone)]
pub struct MemOptions {
    /// Parallel parts, or one ordered stream.
    pub upload: UploadMode,
    /// Part sizes, alignment and the largest single put, all enforced.
    pub parts: PartLimits,
    /// Sorted listings, or keys shuffled by [`MemOptions::list_seed`].
    pub list_order: ListOrder,
    /// Entries per listing page (at least one).
    pub list_page_entries: usize,
    /// The seed an unordered listing shuffles keys by.
    pub list_seed: u64,
    /// Whether listings carry the provenance record (as the file backend's do), so a
    /// re-run can skip without a stat per object.
    pub list_provenance: bool,
    /// Hash families reported for each object: `EtagMd5` is the entry's and
    /// the stat's ETag (the MD5 of the whole object); `Crc32c`, `Crc64nvme`,
    /// `Sha256`, `Md5` and `DropboxContentHash` are whole-object checksums in
    /// [`ObjectInfo::checksums`].
    pub reports: Vec<HashFamily>,
    /// Checksums verified when they come with a put, a part or a finish.
    pub verifies: Vec<ChecksumAlgo>,
    /// Whether parallel parts may stream ([`super::UploadSession::put_stream`]).
    pub streams: bool,
    /// Whether objects can be copied within the store.
    pub server_side_copy: bool,
    /// Metadata kept; the rest is dropped when an object is written.
    pub metadata: MetaSupport,
    /// How long each request (and each chunk of a read) takes; zero: it only lets
    /// the worker's other tasks run once, as any request to a real store does.
    pub latency: std::time::Duration,
    /// Whether `a` and `A` are two objects; when false the store is case-insensitive
    /// and case-preserving, as Dropbox is: a key names the object whose key folds to
    /// the same lower case, and that object keeps the case it was first written in.
    pub case_sensitive: bool,
    /// When set, an object's ETag is the MD5 of the MD5s of its parts of this many
    /// bytes (`hex-N`), as S3 names an object uploaded in parts, and
    /// [`Source::composite`] gives that layout; else the ETag is the object's MD5.
    pub etag_parts_bytes: Option<u64>,
}

impl Default for MemOptions {
    /// Anything goes: parallel parts of any size, sorted pages of 1,000, MD5 ETags and
    /// CRC32C reported, every checksum verified, all metadata kept.
    fn default() -> MemOptions {
        MemOptions {
            upload: UploadMode::Parallel,
            parts: PartLimits {
                min_part_bytes: 1,
                max_part_bytes: u64::MAX,
                max_parts: 10_000,
                part_alignment_bytes: 1,
                max_single_put_bytes: u64::MAX,
            },
            list_order: ListOrder::Sorted,
            list_page_entries: 1000,
            list_seed: 0,
            list_provenance: true,
            reports: vec![HashFamily::EtagMd5, HashFamily::Crc32c],
            verifies: vec![ChecksumAlgo::Crc32c, ChecksumAlgo::Crc64nvme, ChecksumAlgo::Sha256, ChecksumAlgo::Md5],
            streams: false,
            server_side_copy: false,
            metadata: MetaSupport { content_headers: true, user: true, mtime: true },
            latency: std::time::Duration::ZERO,
            case_sensitive: true,
            etag_parts_bytes: None,
        }
    }
}

impl MemOptions {
    /// One ordered stream whose parts but the last are multiples of `alignment_bytes`
    /// (Dropbox upload sessions: 4 MiB).
    pub fn ordered(alignment_bytes: u64) -> MemOptions {
        let mut o = MemOptions { upload: UploadMode::Ordered, ..MemOptions::default() };
        o.parts.part_alignment_bytes = alignment_bytes.max(1);
        o
    }

    /// The capabilities these options declare.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            upload: self.upload,
            parts: self.parts,
            list_order: self.list_order,
            case_sensitive: self.case_sensitive,
            reports: intern_families(&self.reports),
            verifies: intern_algos(&self.verifies),
            checks_after_upload: &[],
            part_streams_per_worker: 0,
            objects_per_s_at_start: 0.0,
            server_side_copy: self.server_side_copy,
            metadata: self.metadata,
        }
    }
}

/// [`Capabilities`] holds `'static` slices: each distinct set is leaked once, so at
/// most 2^6 hash-family sets and 2^4 algorithm sets live for the process.
fn intern_families(set: &[HashFamily]) -> &'static [HashFamily] {
    static SETS: Mutex<Vec<&'static [HashFamily]>> = Mutex::new(Vec::new());
    intern(&SETS, set, 1 << 6)
}

fn intern_algos(set: &[ChecksumAlgo]) -> &'static [ChecksumAlgo] {
    static SETS: Mutex<Vec<&'static [ChecksumAlgo]>> = Mutex::new(Vec::new());
    intern(&SETS, set, 1 << 4)
}

fn intern<T: Copy + PartialEq + 'static>(
    sets: &Mutex<Vec<&'static [T]>>,
    set: &[T],
    distinct_max: usize,
) -> &'static [T] {
    let mut unique: Vec<T> = Vec::with_capacity(set.len());
    for t in set {
        if !unique.contains(t) {
            unique.push(*t);
        }
    }
    let same = |s: &[T]| s.len() == unique.len() && unique.iter().all(|t| s.contains(t));
    let mut sets = sets.lock().expect("interned sets lock");
    if let Some(found) = sets.iter().find(|s| same(s)) {
        return found;
    }
    assert!(sets.len() < distinct_max, "more distinct sets than there are subsets");
    let leaked: &'static [T] = Box::leak(unique.into_boxed_slice());
    sets.push(leaked);
    leaked
}

/// One object as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemObject {
    /// The bytes.
    pub bytes: Arc<Vec<u8>>,
    /// Metadata kept (what [`MemOptions::metadata`] allows).
    pub meta: ObjectMeta,
    /// Laminar's provenance record, if the writer gave one.
    pub provenance: Option<String>,
    /// Bumped on every write to the store: the object's version token is `mem:N`.
    pub generation: u64,
    /// The ETag: the MD5 of the bytes, hex, or of their parts' MD5s
    /// ([`MemOptions::etag_parts_bytes`]).
    md5: String,
    /// The whole-object checksums the store reports.
    checksums: Vec<Checksum>,
}

/// Everything the handles share.
struct MemShared {
    /// Tells stores apart, for server-side copies.
    id: u64,
    options: MemOptions,
    capabilities: Capabilities,
    state: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    objects: BTreeMap<String, MemObject>,
    sessions: BTreeMap<u64, upload::MemSession>,
    next_session: u64,
    generation: u64,
    requests: BTreeMap<&'static str, u64>,
}

/// An in-memory store; clones share it.
#[derive(Clone)]
pub struct MemBackend {
    shared: Arc<MemShared>,
}

impl std::fmt::Debug for MemBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemBackend").field("id", &self.shared.id).field("options", &self.shared.options).finish()
    }
}

impl Default for MemBackend {
    fn default() -> MemBackend {
        MemBackend::new(MemOptions::default())
    }
}

fn named_stores() -> &'static Mutex<HashMap<String, MemBackend>> {
    static NAMED: OnceLock<Mutex<HashMap<String, MemBackend>>> = OnceLock::new();
    NAMED.get_or_init(Default::default)
}

impl MemBackend {
    /// An empty store with `options`.
    pub fn new(options: MemOptions) -> MemBackend {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        assert!(options.list_page_entries > 0, "a listing page holds at least one entry");
        assert!(options.parts.part_alignment_bytes > 0 && options.parts.max_parts > 0);
        let capabilities = options.capabilities();
        MemBackend {
            shared: Arc::new(MemShared {
                // Only distinctness matters.
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                options,
                capabilities,
                state: Mutex::new(MemState::default()),
            }),
        }
    }

    /// The process-wide store called `name` (what a `type = "mem"` remote opens),
    /// made with default options the first time it is asked for.
    pub fn named(name: &str) -> MemBackend {
        named_stores().lock().expect("named stores lock").entry(name.to_string()).or_default().clone()
    }

    /// Makes this store the one called `name`, for remotes that name it.
    pub fn register(&self, name: &str) {
        named_stores().lock().expect("named stores lock").insert(name.to_string(), self.clone());
    }

    /// The options the store was made with.
    pub fn options(&self) -> &MemOptions {
        &self.shared.options
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        self.shared.lock()
    }

    /// Puts an object straight into the store (no request counted): to seed a source.
    pub fn insert(&self, key: &str, bytes: impl Into<Vec<u8>>) {
        self.insert_with(key, bytes, ObjectMeta::default(), None);
    }

    /// Puts an object with metadata and a provenance record straight into the store.
    pub fn insert_with(&self, key: &str, bytes: impl Into<Vec<u8>>, meta: ObjectMeta, provenance: Option<String>) {
        let args = PutArgs { meta, provenance };
        let mut state = self.state();
        self.shared.write(&mut state, key, Arc::new(bytes.into()), &args);
    }

    /// Removes an object (no request counted); whether it was there.
    pub fn remove(&self, key: &str) -> bool {
        let mut state = self.state();
        let key = self.shared.resolve(&state, key);
        state.objects.remove(&key).is_some()
    }

    /// Every object's bytes, by key.
    pub fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        self.state().objects.iter().map(|(k, o)| (k.clone(), o.bytes.to_vec())).collect()
    }

    /// One object as held, with its metadata and provenance.
    pub fn object(&self, key: &str) -> Option<MemObject> {
        let state = self.state();
        state.objects.get(&self.shared.resolve(&state, key)).cloned()
    }

    /// Upload sessions begun and neither finished nor aborted.
    pub fn open_sessions(&self) -> usize {
        self.state().sessions.len()
    }

    /// Requests served, by kind (`list`, `stat`, `get`, `put`, `create-multipart`,
    /// `upload-part`, `copy-part`, `list-parts`, `complete-multipart`,
    /// `abort-multipart`, `delete`, `copy`, `check`), counted whether they succeed or not.
    pub fn requests(&self) -> BTreeMap<&'static str, u64> {
        self.state().requests.clone()
    }

    /// Requests of one kind served.
    pub fn request_count(&self, kind: &str) -> u64 {
        self.state().requests.get(kind).copied().unwrap_or(0)
    }
}

impl MemShared {
    /// What a request waits before it is served: [`MemOptions::latency`], or at least a
    /// turn for the worker's other tasks, as while a real store's answer is on its way,
    /// so that tasks interleave at every request as they would.
    async fn wait(&self) {
        match self.options.latency {
            std::time::Duration::ZERO => turn().await,
            latency => monoio::time::sleep(latency).await,
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().expect("mem store lock")
    }

    /// Counts a request and takes the lock for it.
    fn request(&self, kind: &'static str) -> MutexGuard<'_, MemState> {
        let mut state = self.lock();
        *state.requests.entry(kind).or_default() += 1;
        state
    }

    /// Makes `bytes` the object at `key`, atomically (under the caller's lock).
    /// The key the store holds `key` under: itself, or on a case-insensitive store
    /// the key of an object whose key folds to the same.
    fn resolve(&self, state: &MemState, key: &str) -> String {
        if self.options.case_sensitive || state.objects.contains_key(key) {
            return key.to_string();
        }
        let folded = key.to_lowercase();
        state.objects.keys().find(|k| k.to_lowercase() == folded).cloned().unwrap_or_else(|| key.to_string())
    }

    fn write(&self, state: &mut MemState, key: &str, bytes: Arc<Vec<u8>>, args: &PutArgs) -> u64 {
        state.generation += 1;
        let support = self.options.metadata;
        let mut meta = args.meta.clone();
        if !support.content_headers {
            meta.content_type = None;
            meta.content_encoding = None;
            meta.content_disposition = None;
            meta.cache_control = None;
        }
        if !support.user {
            meta.user.clear();
        }
        if !support.mtime {
            meta.mtime = None;
        }
        let checksums = self
            .options
            .reports
            .iter()
            .filter_map(|family| match family {
                HashFamily::Crc32c => Some(ChecksumAlgo::Crc32c),
                HashFamily::Crc64nvme => Some(ChecksumAlgo::Crc64nvme),
                HashFamily::Sha256 => Some(ChecksumAlgo::Sha256),
                HashFamily::Md5 => Some(ChecksumAlgo::Md5),
                HashFamily::DropboxContentHash => Some(ChecksumAlgo::DropboxContentHash),
                // An ETag, not a checksum.
                HashFamily::EtagMd5 => None,
            })
            .map(|algo| checksum_of(algo, &bytes))
            .collect();
        let object = MemObject {
            md5: match self.options.etag_parts_bytes {
                Some(part_bytes) if !bytes.is_empty() => {
                    Composite::of_slices(ChecksumAlgo::Md5, part_bytes, [&bytes[..]]).to_etag()
                }
                _ => checksum_of(ChecksumAlgo::Md5, &bytes).to_hex(),
            },
            bytes,
            meta,
            provenance: args.provenance.clone(),
            generation: state.generation,
            checksums,
        };
        let key = self.resolve(state, key);
        state.objects.insert(key, object);
        state.generation
    }

    fn reports_etag(&self) -> bool {
        self.options.reports.contains(&HashFamily::EtagMd5)
    }

    fn entry(&self, key: &str, o: &MemObject) -> Entry {
        Entry {
            key: key.to_string(),
            size: o.bytes.len() as u64,
            etag: self.reports_etag().then(|| o.md5.clone()),
            provenance: if self.options.list_provenance { o.provenance.clone() } else { None },
            version: Some(format!("mem:{}", o.generation)),
            modified_unix_ms: None,
        }
    }

    fn info(&self, o: &MemObject) -> ObjectInfo {
        ObjectInfo {
            size: o.bytes.len() as u64,
            etag: self.reports_etag().then(|| o.md5.clone()),
            meta: o.meta.clone(),
            checksums: o.checksums.clone(),
            composite_checksum: None,
            provenance: o.provenance.clone(),
            version: Some(format!("mem:{}", o.generation)),
        }
    }

    fn list(&self, prefix: &str, token: Option<String>) -> Result<ListPage> {
        let state = self.request("list");
        let page_max = self.options.list_page_entries;
        let mut entries = Vec::with_capacity(page_max.min(state.objects.len()));
        let next = match self.options.list_order {
            ListOrder::Sorted => {
                // The token is the last key listed, as S3's start-after.
                let start = token.unwrap_or_default();
                let mut keys = state
                    .objects
                    .range::<str, _>((std::ops::Bound::Excluded(start.as_str()), std::ops::Bound::Unbounded))
                    .filter(|(k, _)| k.starts_with(prefix));
                for (key, o) in keys.by_ref().take(page_max) {
                    entries.push(self.entry(key, o));
                }
                keys.next().and(entries.last().map(|e| e.key.clone()))
            }
            ListOrder::Unordered => {
                // Keys in the order of a seeded hash: no order a merge-join can use, but
                // the same order on every page, so a token stays meaningful.
                let after = match &token {
                    Some(t) => {
                        Some(parse_shuffle_token(t).ok_or_else(|| Error::protocol("list", prefix, "bad token"))?)
                    }
                    None => None,
                };
                let mut keyed: Vec<((u64, &str), &MemObject)> = state
                    .objects
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(k, o)| ((shuffle_rank(self.options.list_seed, k), k.as_str()), o))
                    .filter(|(rank, _)| after.as_ref().is_none_or(|(h, k)| *rank > (*h, k.as_str())))
                    .collect();
                keyed.sort_by(|a, b| a.0.cmp(&b.0));
                let more = keyed.len() > page_max;
                for ((_, key), o) in keyed.iter().take(page_max) {
                    entries.push(self.entry(key, o));
                }
                more.then(|| {
                    let ((rank, key), _) = &keyed[page_max - 1];
                    format!("{rank:016x}:{key}")
                })
            }
        };
        Ok(ListPage { entries, next, left_out: Vec::new() })
    }
}

/// A key's place in an unordered listing.
fn shuffle_rank(seed: u64, key: &str) -> u64 {
    // FNV-1a, then a splitmix64 finaliser: cheap, and a different order per seed.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in key.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(h)
}

pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn parse_shuffle_token(token: &str) -> Option<(u64, String)> {
    let (rank, key) = token.split_once(':')?;
    Some((u64::from_str_radix(rank, 16).ok()?, key.to_string()))
}

/// Lets the worker's other tasks run once.
async fn turn() {
    let mut turned = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut turned, true) {
            return std::task::Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// The checksum of `bytes`.
pub(crate) fn checksum_of(algo: ChecksumAlgo, bytes: &[u8]) -> Checksum {
    let mut h = Hasher::new(algo);
    h.update(bytes);
    h.finish()
}

/// An error answer, shaped as a real store's.
fn http(op: &'static str, key: &str, status: u16, code: &str, message: String, class: ErrorClass) -> Error {
    Error::Http {
        op,
        target: key.to_string(),
        status,
        code: code.to_string(),
        message,
        hint: String::new(),
        retry_after: None,
        class,
    }
}

fn no_such_key(op: &'static str, key: &str) -> Error {
    http(op, key, 404, "NoSuchKey", "The specified key does not exist.".into(), ErrorClass::FatalObject)
}

impl Backend for MemBackend {
    fn open_source(&self, _ctx: &WorkerCtx) -> Result<Rc<dyn Source>> {
        Ok(Rc::new(MemStore { shared: self.shared.clone() }))
    }

    fn open_sink(&self, _ctx: &WorkerCtx) -> Result<Rc<dyn Sink>> {
        Ok(Rc::new(MemStore { shared: self.shared.clone() }))
    }
}

/// The registry's entry for in-memory stores: a test store.
pub const TYPE: BackendType = BackendType { name: "mem", url_form: "prefix", open };

/// One `[remotes.NAME]` table of `type = "mem"`: a test store, held in this process's
/// memory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemRemoteConfig {
    /// The process-wide store to open ([`MemBackend::named`]); the remote's name by
    /// default.
    pub store: Option<String>,
}

fn open(remote: &str, table: toml::Table, path: &str) -> Result<Opened> {
    let config: MemRemoteConfig = registry::parse(remote, "mem", table)?;
    let backend = MemBackend::named(config.store.as_deref().unwrap_or(remote));
    Ok(Opened { backend: Arc::new(backend), path: path.to_string() })
}

/// One worker's handle on a store.
pub struct MemStore {
    shared: Arc<MemShared>,
}

impl MemStore {
    fn identity(&self) -> String {
        format!("mem:{}", self.shared.id)
    }
}

impl Store for MemStore {
    fn list<'a>(&'a self, prefix: &'a str, token: Option<String>) -> LocalFuture<'a, Result<ListPage>> {
        Box::pin(async move {
            self.shared.wait().await;
            self.shared.list(prefix, token)
        })
    }

    fn stat<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Option<ObjectInfo>>> {
        Box::pin(async move {
            self.shared.wait().await;
            let state = self.shared.request("stat");
            Ok(state.objects.get(&self.shared.resolve(&state, key)).map(|o| self.shared.info(o)))
        })
    }

    fn describe(&self) -> String {
        format!("mem store {}", self.shared.id)
    }

    fn check<'a>(&'a self, _writable: bool) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            drop(self.shared.request("check"));
            Ok(())
        })
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.capabilities
    }
}

impl Source for MemStore {
    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Option<(u64, u64)>,
        mut body: Body,
        hashers: &'a mut Hashers,
    ) -> LocalFuture<'a, Result<(Body, ObjectInfo)>> {
        Box::pin(async move {
            self.shared.wait().await;
            let (bytes, mut info) = {
                let state = self.shared.request("get");
                let o = state.objects.get(&self.shared.resolve(&state, key)).ok_or_else(|| no_such_key("get", key))?;
                (o.bytes.clone(), self.shared.info(o))
            };
            let (start, end) = checked_range("get", key, range, bytes.len() as u64)?;
            if range.is_some() {
                // Whole-object checksums say nothing of a range.
                info.checksums.clear();
            }
            hashers.check_against(&info.checksums);
            let mut rest = &bytes[start as usize..end as usize];
            for chunk in &mut body.chunks {
                self.shared.wait().await;
                let before = chunk.len();
                let n = chunk.extend_from(rest);
                hashers.update(&chunk.as_slice()[before..before + n]);
                rest = &rest[n..];
            }
            if !rest.is_empty() {
                return Err(Error::protocol("get", key, "the buffers reserved for the read were too small"));
            }
            Ok((body, info))
        })
    }

    fn read_stream<'a>(
        &'a self,
        key: &'a str,
        range: (u64, u64),
        filler: &'a Filler,
        hashers: &'a mut Hashers,
    ) -> LocalFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let (bytes, version) = {
                let state = self.shared.request("get");
                let held = self.shared.resolve(&state, key);
                let o = state.objects.get(&held).ok_or_else(|| no_such_key("get", key))?;
                (o.bytes.clone(), self.shared.info(o).version_token().map(str::to_string))
            };
            let (start, end) = checked_range("get", key, Some(range), bytes.len() as u64)?;
            let mut rest = &bytes[start as usize..end as usize];
            while !rest.is_empty() {
                self.shared.wait().await;
                let Some(mut chunk) = filler.empty_chunk().await else {
                    return Err(Error::protocol("get", key, "the upload this read feeds failed"));
                };
                let n = chunk.extend_from(rest);
                hashers.update(&rest[..n]);
                rest = &rest[n..];
                filler.send(chunk);
            }
            Ok(version)
        })
    }

    fn composite<'a>(&'a self, _key: &'a str, info: &'a ObjectInfo) -> LocalFuture<'a, Result<Option<Composite>>> {
        Box::pin(async move {
            self.shared.wait().await;
            let _state = self.shared.request("stat");
            let layout = self.shared.options.etag_parts_bytes.zip(info.etag.as_deref());
            Ok(layout.and_then(|(part_bytes, etag)| Composite::from_etag(etag, info.size, part_bytes)))
        })
    }

    fn copy_source(&self, key: &str) -> Option<CopySource> {
        self.shared
            .options
            .server_side_copy
            .then(|| CopySource { identity: self.identity(), reference: key.to_string() })
    }
}

/// The byte range a read asks for, refused like S3's 416 when it is past the end.
fn checked_range(op: &'static str, key: &str, range: Option<(u64, u64)>, size: u64) -> Result<(u64, u64)> {
    let (start, end) = range.unwrap_or((0, size));
    if start > end || end > size || (range.is_some() && start == end) {
        return Err(http(
            op,
            key,
            416,
            "InvalidRange",
            format!("bytes {start}..{end} of an object of {size} bytes"),
            ErrorClass::FatalObject,
        ));
    }
    Ok((start, end))
}

impl Sink for MemStore {
    fn begin<'a>(&'a self, key: &'a str, plan: UploadPlan, args: &'a PutArgs) -> LocalFuture<'a, Result<Session<'a>>> {
        Box::pin(async move {
            if !plan.single {
                self.shared.wait().await;
            }
            upload::begin(self, key, plan, args)
        })
    }

    fn resume(&self, state: SessionState) -> Result<Session<'_>> {
        upload::resume(self, state)
    }

    fn put_dir_marker<'a>(&'a self, key: &'a str, args: &'a PutArgs) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            self.shared.wait().await;
            let mut state = self.shared.request("put");
            self.shared.write(&mut state, key, Arc::new(Vec::new()), args);
            Ok(())
        })
    }

    fn can_copy_from(&self, source: &CopySource) -> bool {
        self.shared.options.server_side_copy && source.identity == self.identity()
    }

    fn delete<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            self.shared.wait().await;
            self.shared.request("delete").objects.remove(key);
            Ok(())
        })
    }

    fn copy_object<'a>(
        &'a self,
        source: &'a CopySource,
        key: &'a str,
        args: &'a PutArgs,
    ) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            self.shared.wait().await;
            let mut state = self.shared.request("copy");
            if !self.can_copy_from(source) {
                return Err(http(
                    "copy",
                    key,
                    501,
                    "NotImplemented",
                    "no server-side copy".into(),
                    ErrorClass::FatalObject,
                ));
            }
            let bytes = state.objects.get(&source.reference).ok_or_else(|| no_such_key("copy", &source.reference))?;
            let bytes = bytes.bytes.clone();
            if bytes.len() as u64 > self.shared.options.parts.max_single_put_bytes {
                return Err(too_large("copy", key, bytes.len() as u64, self.shared.options.parts.max_single_put_bytes));
            }
            self.shared.write(&mut state, key, bytes, args);
            Ok(())
        })
    }
}

fn too_large(op: &'static str, key: &str, len: u64, max: u64) -> Error {
    http(
        op,
        key,
        400,
        "EntityTooLarge",
        format!("{len} bytes in one request; this store takes at most {max}"),
        ErrorClass::FatalObject,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        crate::runtime::block_on(crate::runtime::Driver::Epoll, f).expect("runtime")
    }

    fn keys(store: &MemStore, prefix: &str) -> (Vec<String>, usize) {
        block_on(async {
            let (mut keys, mut pages, mut token) = (Vec::new(), 0, None);
            loop {
                let page = store.list(prefix, token).await.unwrap();
                pages += 1;
                keys.extend(page.entries.into_iter().map(|e| e.key));
                token = page.next;
                if token.is_none() {
                    return (keys, pages);
                }
            }
        })
    }

    #[test]
    fn listings_page_in_order_or_shuffled_by_seed() {
        let names: Vec<String> = (0..23).map(|i| format!("p/{i:02}")).chain(["q".to_string()]).collect();
        for order in [ListOrder::Sorted, ListOrder::Unordered] {
            let options = MemOptions { list_order: order, list_page_entries: 5, list_seed: 9, ..Default::default() };
            let mem = MemBackend::new(options);
            for n in &names {
                mem.insert(n, n.as_bytes());
            }
            let store = MemStore { shared: mem.shared.clone() };
            let (listed, pages) = keys(&store, "p/");
            assert_eq!(pages, 5, "{order:?}");
            let mut sorted = listed.clone();
            sorted.sort();
            assert_eq!(sorted, names[..23], "{order:?}: every key once");
            assert_eq!(listed == sorted, order == ListOrder::Sorted, "{order:?}");
            // The same seed, the same order.
            assert_eq!(keys(&store, "p/").0, listed);
        }
    }

    #[test]
    fn remotes_name_process_wide_stores() {
        let mem = MemBackend::default();
        mem.register("mem-test-remote");
        mem.insert("k", b"v".to_vec());
        let table: toml::Table = toml::from_str("type = \"mem\"\nstore = \"mem-test-remote\"").unwrap();
        let opened = registry::open("r", table, "dir/").unwrap();
        assert_eq!(opened.path, "dir/");
        let store = opened.backend.open_source(&WorkerCtx::new(Default::default())).unwrap();
        assert_eq!(block_on(store.stat("k")).unwrap().map(|i| i.size), Some(1));
        let table: toml::Table = toml::from_str("type = \"mem\"\nstor = \"x\"").unwrap();
        assert!(registry::open("r", table, "").is_err());
    }

    #[test]
    fn interned_sets_are_shared() {
        let a = intern_algos(&[ChecksumAlgo::Md5, ChecksumAlgo::Crc32c]);
        let b = intern_algos(&[ChecksumAlgo::Crc32c, ChecksumAlgo::Md5, ChecksumAlgo::Crc32c]);
        assert!(std::ptr::eq(a, b));
        assert_eq!(intern_families(&[]).len(), 0);
    }
}
