//! A local directory tree (`file:///abs/path`).
//!
//! Keys are paths relative to the root with `/` separators. Listings walk the tree
//! depth-first with each directory's entries sorted so that the walk yields keys in
//! byte order (a directory sorts as `name/`), the order S3 lists in, so the two
//! merge-join. Objects are written under a temporary name beside their final path,
//! checked by reading them back against the checksum computed in flight, and renamed
//! into place only then. A key that would escape the root is refused.
//!
//! **Temporary files** are named `.NAME.laminar-PID-START-RANDOM.tmp`, naming the
//! process that writes them (pid and start time). Listings never show them; a relay
//! starting at a destination removes those whose writer is gone ([`Sink::sweep`]),
//! and never any other file.
//!
//! **Symbolic links.** As a destination, nothing is written through a link: a key
//! whose directory is (or passes through) a link below the root is refused, so a link
//! planted in the tree cannot send writes outside it. As a source, links are left out
//! of listings with a note (the report's `left_out`) unless `copy_links` (`--copy-links`,
//! rclone's flag) is set; then links to files are read as the files and links to
//! directories are walked, except one that leads back to a directory being walked.
//! Sockets, FIFOs and devices are left out with a note, and so is a directory that
//! cannot be read, while the rest of the tree is listed.
//!
//! **A full disk.** A write that meets ENOSPC or EDQUOT fails with one line naming
//! the destination root and the space left there; the object fails (its temporary
//! file removed by the abort), and a later run after space is freed writes it whole.
//!
//! Metadata that a file can't hold natively (Content-Type and friends, user
//! metadata) and Laminar's provenance record live in `user.laminar.*` xattrs; the
//! mtime is the file's own.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

mod upload;

use serde::Deserialize;

use super::registry::{self, BackendType, Opened};
use super::{
    Backend, Capabilities, CopySource, Entry, LeftOut, ListOrder, ListPage, LocalFuture, Made, MetaSupport, ObjectInfo,
    ObjectMeta, PartLimits, PutArgs, Session, SessionState, Sink, Source, Store, UploadMode, UploadPlan, WorkerCtx,
};
use crate::checksum::{Checksum, ChecksumAlgo, Hasher, Hashers};
use crate::error::{Error, Result};
use crate::pool::ring::Filler;
use crate::pool::{Body, Chunk};

const XATTR_META: &str = "user.laminar.meta";
const XATTR_PROVENANCE: &str = "user.laminar.provenance";
const TEMP_MARK: &str = ".laminar-";
const PAGE_ENTRIES: usize = 1000;
/// Bytes read per syscall when reading a file back for verification.
const VERIFY_READ_BYTES: usize = 1 << 20;

/// Temporary files of an unknown writer (named before they named it) older than this
/// are removed by a sweep.
const UNOWNED_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Directories a sweep walks at most (a bound on a tree of any size).
const SWEEP_DIRS_MAX: usize = 1_000_000;

/// A configured local tree.
pub struct FileBackend {
    root: Arc<PathBuf>,
    copy_links: bool,
}

impl FileBackend {
    /// A tree rooted at `root` (absolute).
    pub fn new(root: PathBuf) -> FileBackend {
        assert!(root.is_absolute(), "file backend root must be absolute");
        FileBackend { root: Arc::new(root), copy_links: false }
    }

    /// Follows symbolic links when listing and reading it as a source.
    pub fn copy_links(mut self, follow: bool) -> FileBackend {
        self.copy_links = follow;
        self
    }
}

impl Backend for FileBackend {
    fn open_source(&self, ctx: &WorkerCtx) -> Result<Rc<dyn Source>> {
        let mut store = FileStore::new(self.root.clone(), self.copy_links);
        store.rates = ctx.http.rates().cloned();
        Ok(Rc::new(store))
    }

    fn open_sink(&self, _ctx: &WorkerCtx) -> Result<Rc<dyn Sink>> {
        Ok(Rc::new(FileStore::new(self.root.clone(), false)))
    }
}

/// The registry's entry for local trees.
pub const TYPE: BackendType = BackendType { name: "file", url_form: "path/below/root", open };

/// One `[remotes.NAME]` table of `type = "file"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRemoteConfig {
    /// The root directory (absolute).
    pub root: Option<PathBuf>,
    /// Follow symbolic links as a source (default: leave them out with a note).
    #[serde(default)]
    pub copy_links: bool,
}

fn open(remote: &str, table: toml::Table, path: &str) -> Result<Opened> {
    let config: FileRemoteConfig = registry::parse(remote, "file", table)?;
    let root = config.root.ok_or_else(|| {
        Error::Usage(format!("remote {remote:?} has type = \"file\" but no root: add root = \"/abs/path\""))
    })?;
    if !root.is_absolute() {
        return Err(Error::Usage(format!("remote {remote:?}: root {} must be an absolute path", root.display())));
    }
    Ok(Opened { backend: Arc::new(FileBackend::new(root).copy_links(config.copy_links)), path: path.to_string() })
}

/// What a local tree can do: any part size, parts written in place in parallel,
/// listed in byte order; no hashes kept (each object is read back against the
/// checksum computed in flight instead).
const CAPABILITIES: Capabilities = Capabilities {
    upload: UploadMode::Parallel,
    parts: PartLimits {
        min_part_bytes: 1,
        max_part_bytes: u64::MAX,
        max_parts: u32::MAX,
        part_alignment_bytes: 1,
        max_single_put_bytes: u64::MAX,
    },
    list_order: ListOrder::Sorted,
    case_sensitive: true,
    reports: &[],
    verifies: &[ChecksumAlgo::Crc32c, ChecksumAlgo::Crc64nvme, ChecksumAlgo::Sha256, ChecksumAlgo::Md5],
    checks_after_upload: &[],
    part_streams_per_worker: 0,
    objects_per_s_at_start: 0.0,
    server_side_copy: false,
    metadata: MetaSupport { content_headers: true, user: true, mtime: true },
};

/// One worker's handle on the tree.
pub struct FileStore {
    root: Arc<PathBuf>,
    copy_links: bool,
    walks: RefCell<HashMap<u64, Walk>>,
    next_walk: std::cell::Cell<u64>,
    /// The relay's limits, which reads are paced by.
    rates: Option<Arc<crate::rate::Rates>>,
}

/// A depth-first walk in key order, paused between pages.
struct Walk {
    prefix: String,
    /// Directories being walked, outermost first.
    stack: Vec<DirCursor>,
}

/// One directory of a walk.
struct DirCursor {
    /// The key prefix of the directory (`a/b/`, or empty for the root).
    key: String,
    /// Its entries, sorted as keys.
    entries: Vec<DirEntry>,
    /// The next entry.
    index: usize,
    /// The directory's (device, inode), to catch a followed link leading back to it.
    id: (u64, u64),
}

/// (name bytes, is a directory).
type DirEntry = (Vec<u8>, bool);

/// What a directory's read yields: its entries, and what it leaves out.
struct DirRead {
    entries: Vec<DirEntry>,
    left_out: Vec<LeftOut>,
    id: (u64, u64),
}

fn dir_id(md: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (md.dev(), md.ino())
}

impl FileStore {
    fn new(root: Arc<PathBuf>, copy_links: bool) -> FileStore {
        FileStore {
            root,
            copy_links,
            walks: RefCell::new(HashMap::new()),
            next_walk: std::cell::Cell::new(0),
            rates: None,
        }
    }

    /// Maps a key to a path under the root, refusing anything that could escape it.
    pub fn resolve(&self, op: &'static str, key: &str) -> Result<PathBuf> {
        resolve(&self.root, op, key)
    }

    /// Reads directory `dir` (keys under `dir_key`), sorted as keys; what cannot be
    /// listed is in `left_out`. An error reading the directory itself is the caller's.
    fn read_dir_sorted(&self, dir: &Path, dir_key: &str) -> std::io::Result<DirRead> {
        let id = std::fs::metadata(dir).map(|md| dir_id(&md))?;
        let mut entries = Vec::new();
        let mut left_out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().as_bytes().to_vec();
            let Ok(utf8) = std::str::from_utf8(&name) else {
                left_out.push(LeftOut {
                    key: format!("{dir_key}{}", String::from_utf8_lossy(&name)),
                    reason: "its name is not UTF-8, so it has no key".into(),
                });
                continue;
            };
            let key = format!("{dir_key}{utf8}");
            let mut file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) => {
                    left_out.push(LeftOut { key, reason: format!("cannot be read: {e}") });
                    continue;
                }
            };
            if file_type.is_symlink() {
                let target = std::fs::read_link(entry.path()).map(|t| t.display().to_string()).unwrap_or_default();
                if !self.copy_links {
                    left_out.push(LeftOut {
                        key,
                        reason: format!("a symbolic link (to {target}); --copy-links follows links"),
                    });
                    continue;
                }
                match std::fs::metadata(entry.path()) {
                    Ok(md) => file_type = md.file_type(),
                    Err(e) => {
                        left_out
                            .push(LeftOut { key, reason: format!("a symbolic link to {target}, which is gone: {e}") });
                        continue;
                    }
                }
            }
            let is_dir = file_type.is_dir();
            if !is_dir && !file_type.is_file() {
                left_out.push(LeftOut { key, reason: "not a regular file (a socket, FIFO or device)".into() });
                continue;
            }
            if !is_dir && is_temp_name(&name) {
                continue;
            }
            entries.push((name, is_dir));
        }
        // Byte order of the keys these produce: a directory's keys all start with "name/".
        let sort_key = |(name, is_dir): &DirEntry| {
            let mut k = name.clone();
            if *is_dir {
                k.push(b'/');
            }
            k
        };
        entries.sort_by_cached_key(sort_key);
        Ok(DirRead { entries, left_out, id })
    }

    fn entry_for(&self, key: &str, path: &Path) -> Result<Option<Entry>> {
        let md = match std::fs::metadata(path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("list", key, e)),
        };
        Ok(Some(Entry {
            key: key.to_string(),
            size: md.len(),
            etag: None,
            provenance: get_xattr(path, XATTR_PROVENANCE),
            version: Some(version_token(&md)),
            modified_unix_ms: Some(modified_unix_ms(&md)),
        }))
    }

    fn list_sync(&self, prefix: &str, token: Option<String>) -> Result<ListPage> {
        let mut left_out = Vec::new();
        let mut walk = match token {
            Some(t) => {
                let id: u64 = t.parse().map_err(|_| Error::protocol("list", prefix, "bad listing token"))?;
                self.walks
                    .borrow_mut()
                    .remove(&id)
                    .ok_or_else(|| Error::protocol("list", prefix, "stale listing token"))?
            }
            None => {
                // Start at the deepest directory the prefix names in full.
                let dir_key = match prefix.rfind('/') {
                    Some(i) => &prefix[..=i],
                    None => "",
                };
                let dir = if dir_key.is_empty() { (*self.root).clone() } else { self.resolve("list", dir_key)? };
                let stack = match self.read_dir_sorted(&dir, dir_key) {
                    Ok(read) => {
                        left_out.extend(read.left_out);
                        vec![DirCursor { key: dir_key.to_string(), entries: read.entries, index: 0, id: read.id }]
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(Error::io("list", dir.display().to_string(), e)),
                };
                Walk { prefix: prefix.to_string(), stack }
            }
        };
        let mut page = Vec::with_capacity(PAGE_ENTRIES);
        while page.len() < PAGE_ENTRIES {
            let Some(cursor) = walk.stack.last_mut() else { break };
            if cursor.index >= cursor.entries.len() {
                walk.stack.pop();
                continue;
            }
            let (name, is_dir) = cursor.entries[cursor.index].clone();
            cursor.index += 1;
            let name = String::from_utf8(name).expect("names were checked to be UTF-8");
            let key = format!("{}{name}", cursor.key);
            if is_dir {
                let sub = format!("{key}/");
                if !(sub.starts_with(&walk.prefix) || walk.prefix.starts_with(&sub)) {
                    continue;
                }
                let path = self.resolve("list", &sub)?;
                let read = match self.read_dir_sorted(&path, &sub) {
                    Ok(read) => read,
                    Err(e) => {
                        left_out.push(LeftOut { key: sub, reason: format!("a directory that cannot be read: {e}") });
                        continue;
                    }
                };
                if let Some(ancestor) = walk.stack.iter().find(|c| c.id == read.id) {
                    let ancestor = if ancestor.key.is_empty() { "the root".to_string() } else { ancestor.key.clone() };
                    left_out
                        .push(LeftOut { key: sub, reason: format!("a symbolic link that leads back to {ancestor}") });
                    continue;
                }
                left_out.extend(read.left_out);
                if read.entries.is_empty() {
                    // An empty directory is listed as a directory marker.
                    if sub.starts_with(&walk.prefix) {
                        page.push(Entry { key: sub, ..Entry::default() });
                    }
                } else {
                    walk.stack.push(DirCursor { key: sub, entries: read.entries, index: 0, id: read.id });
                }
            } else if key.starts_with(&walk.prefix) {
                let path = self.resolve("list", &key)?;
                page.extend(self.entry_for(&key, &path)?);
            }
        }
        left_out.retain(|l| l.key.starts_with(&walk.prefix));
        let next = if walk.stack.is_empty() {
            None
        } else {
            let id = self.next_walk.get();
            self.next_walk.set(id + 1);
            self.walks.borrow_mut().insert(id, walk);
            Some(id.to_string())
        };
        Ok(ListPage { entries: page, next, left_out })
    }

    fn stat_sync(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = self.resolve("stat", key)?;
        let md = match std::fs::metadata(&path) {
            Ok(md) if md.is_file() || key.ends_with('/') => md,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("stat", key, e)),
        };
        Ok(Some(info_for(&path, &md)))
    }

    fn temp_path(&self, key: &str) -> Result<PathBuf> {
        let path = self.resolve("put", key)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Keep the temp name short enough for NAME_MAX even when the key's name is long.
        let short: String = name.chars().take(64).collect();
        let me = crate::owner::Owner::me();
        let temp = format!(".{short}{TEMP_MARK}{:x}-{:x}-{:016x}.tmp", me.pid, me.start, fastrand::u64(..));
        Ok(path.with_file_name(temp))
    }

    /// Refuses a path whose directories below the root include a symbolic link: a
    /// destination is never written through one. (A link that appears between this
    /// check and the write is not caught; the tree is the operator's.)
    fn refuse_links(&self, op: &'static str, key: &str, dir: &Path) -> Result<()> {
        let Ok(below) = dir.strip_prefix(&*self.root) else { return Ok(()) };
        let mut at = (*self.root).clone();
        for part in below.components() {
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Ok(md) if md.file_type().is_symlink() => {
                    let target = std::fs::read_link(&at).map(|t| t.display().to_string()).unwrap_or_default();
                    return Err(Error::InvalidKey {
                        op,
                        key: key.to_string(),
                        reason: format!(
                            "{} is a symbolic link (to {target}) and Laminar does not write through links at a \
                             destination: replace it with a directory or pick another destination",
                            at.display()
                        ),
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io(op, key, e)),
            }
        }
        Ok(())
    }

    fn ensure_parent(&self, op: &'static str, key: &str, path: &Path) -> Result<()> {
        let parent = path.parent().expect("resolved paths have a parent");
        self.refuse_links(op, key, parent)?;
        std::fs::create_dir_all(parent).map_err(|e| {
            Error::io(
                op,
                key,
                std::io::Error::new(e.kind(), format!("cannot create directory {}: {e}", parent.display())),
            )
        })
    }

    /// Reads a file back and checks it against the checksum computed in flight.
    async fn verify(&self, key: &str, path: &Path, expected: &Checksum) -> Result<()> {
        let file = monoio::fs::File::open(path).await.map_err(|e| Error::io("verify", key, e))?;
        let mut hasher = Hasher::new(expected.algo);
        let mut buf = Vec::with_capacity(VERIFY_READ_BYTES);
        let mut offset = 0u64;
        loop {
            let (res, b) = file.read_at(buf, offset).await;
            buf = b;
            let n = res.map_err(|e| Error::io("verify", key, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            offset += n as u64;
            buf.clear();
        }
        let _ = file.close().await;
        let actual = hasher.finish();
        if &actual != expected {
            return Err(Error::Integrity {
                op: "verify",
                target: key.to_string(),
                detail: format!("wrote {actual} to disk, expected {expected}"),
            });
        }
        Ok(())
    }

    async fn write_chunks(&self, key: &str, path: &Path, offset: u64, body: Body, create: bool) -> Result<()> {
        let mut options = monoio::fs::OpenOptions::new();
        options.write(true);
        if create {
            options.create_new(true);
        }
        let file = options.open(path).await.map_err(|e| self.write_error("write", key, e))?;
        let mut at = offset;
        for chunk in body.chunks {
            if chunk.is_empty() {
                continue;
            }
            let len = chunk.len() as u64;
            let (res, _) = file.write_all_at(chunk, at).await;
            res.map_err(|e| self.write_error("write", key, e))?;
            at += len;
        }
        file.close().await.map_err(|e| self.write_error("write", key, e))
    }

    /// The error of a write to `key`: a full disk (ENOSPC, EDQUOT) names the
    /// destination root and the space left there, and says what to do.
    pub(super) fn write_error(&self, op: &'static str, key: &str, e: std::io::Error) -> Error {
        if !matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
            return Error::io(op, key, e);
        }
        let left = match free_bytes(&self.root) {
            Some(bytes) => format!("{} MiB left", bytes >> 20),
            None => "space left unknown".to_string(),
        };
        let detail = format!(
            "the disk holding {} is full ({left}; {e}): free space there, or pick a destination with room, and run again",
            self.root.display()
        );
        Error::io(op, key, std::io::Error::new(e.kind(), detail))
    }

    fn finish_file(&self, key: &str, temp: &Path, args: &PutArgs) -> Result<()> {
        let path = self.resolve("put", key)?;
        if let Some(t) = args.meta.mtime_system() {
            let f = std::fs::OpenOptions::new().write(true).open(temp).map_err(|e| Error::io("put", key, e))?;
            f.set_modified(t).map_err(|e| Error::io("put", key, e))?;
        }
        let meta_json =
            serde_json::to_string(&ObjectMeta { mtime: None, ..args.meta.clone() }).expect("meta serialises");
        if meta_json != serde_json::to_string(&ObjectMeta::default()).expect("meta serialises") {
            set_xattr(temp, XATTR_META, &meta_json);
        }
        if let Some(p) = &args.provenance {
            set_xattr(temp, XATTR_PROVENANCE, p);
        }
        if path.is_dir() {
            return Err(Error::io(
                "put",
                key,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("{} is a directory", path.display())),
            ));
        }
        std::fs::rename(temp, &path).map_err(|e| Error::io("put", key, e))
    }
}

/// Maps a key to a path under `root`, refusing anything that could escape it.
pub fn resolve(root: &Path, op: &'static str, key: &str) -> Result<PathBuf> {
    let invalid = |reason: &str| Error::InvalidKey { op, key: key.to_string(), reason: reason.to_string() };
    if key.starts_with('/') {
        return Err(invalid("absolute keys are refused by the file backend: they would escape its root"));
    }
    if key.contains('\0') {
        return Err(invalid("keys with NUL bytes can't be file names"));
    }
    let body = key.strip_suffix('/').unwrap_or(key);
    let mut path = root.to_path_buf();
    if body.is_empty() {
        return Ok(path);
    }
    for segment in body.split('/') {
        match segment {
            "" => return Err(invalid("empty path segment (\"//\") can't be a file name")),
            "." | ".." => return Err(invalid("\".\" and \"..\" segments are refused: they could escape the root")),
            s if s.len() > 255 => return Err(invalid("a path segment is longer than 255 bytes, the file-name limit")),
            s => path.push(s),
        }
    }
    Ok(path)
}

fn is_temp_name(name: &[u8]) -> bool {
    name.starts_with(b".")
        && name.ends_with(b".tmp")
        && name.windows(TEMP_MARK.len()).any(|w| w == TEMP_MARK.as_bytes())
}

/// The writer a temporary file's name gives (`...laminar-PID-START-RANDOM.tmp`); `None`
/// for a name from before names said so.
fn temp_owner(name: &str) -> Option<crate::owner::Owner> {
    let tail = &name[name.rfind(TEMP_MARK)? + TEMP_MARK.len()..];
    let mut fields = tail.strip_suffix(".tmp")?.split('-');
    let (pid, start, _random) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    Some(crate::owner::Owner { pid: u32::from_str_radix(pid, 16).ok()?, start: u64::from_str_radix(start, 16).ok()? })
}

/// Removes, under `dir`, Laminar's temporary files whose writer is gone (or, for names
/// that do not say, older than [`UNOWNED_TEMP_AGE`]); never follows links. Returns how
/// many it removed.
fn sweep_tree(dir: &Path) -> u64 {
    let mut removed = 0;
    let mut dirs = vec![dir.to_path_buf()];
    let mut walked = 0;
    while let Some(dir) = dirs.pop() {
        walked += 1;
        if walked > SWEEP_DIRS_MAX {
            break;
        }
        let Ok(read) = std::fs::read_dir(&dir) else { continue };
        for entry in read.flatten() {
            let Ok(file_type) = entry.file_type() else { continue };
            if file_type.is_dir() {
                dirs.push(entry.path());
                continue;
            }
            let name = entry.file_name();
            if !file_type.is_file() || !is_temp_name(name.as_bytes()) {
                continue;
            }
            let dead = match temp_owner(&name.to_string_lossy()) {
                Some(owner) => !owner.alive(),
                None => entry
                    .metadata()
                    .and_then(|md| md.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > UNOWNED_TEMP_AGE)),
            };
            if dead && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// The file's version token after a read, which must be the one it had before: a
/// file written in place while it was read gives a mix of old and new bytes.
fn unchanged_since(path: &Path, key: &str, before: &str) -> Result<String> {
    let after = std::fs::metadata(path).map(|md| version_token(&md)).map_err(|e| Error::io("get", key, e))?;
    if after != before {
        return Err(Error::Changed {
            op: "get",
            target: key.to_string(),
            detail: format!("it was {before} when the read began and {after} when it ended"),
        });
    }
    Ok(after)
}

fn version_token(md: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("file:{}:{}.{:09}", md.len(), md.mtime(), md.mtime_nsec())
}

fn modified_unix_ms(md: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    md.mtime().saturating_mul(1000).saturating_add(md.mtime_nsec() / 1_000_000)
}

fn info_for(path: &Path, md: &std::fs::Metadata) -> ObjectInfo {
    let mut meta: ObjectMeta =
        get_xattr(path, XATTR_META).and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default();
    if let Ok(t) = md.modified() {
        meta.set_mtime(t);
    }
    ObjectInfo {
        size: if md.is_file() { md.len() } else { 0 },
        etag: None,
        meta,
        checksums: Vec::new(),
        composite_checksum: None,
        provenance: get_xattr(path, XATTR_PROVENANCE),
        version: Some(version_token(md)),
    }
}

/// Gives `f` its `len` bytes on disk (`fallocate`), where the file system can; else
/// sets its length only (a sparse file, whose blocks are taken as it is written).
fn allocate(f: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let Ok(len_off) = libc::off_t::try_from(len) else { return f.set_len(len) };
    if len_off > 0 {
        // SAFETY: the descriptor is open for writing and owned by `f` for the call; no
        // memory is passed.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len_off) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)) {
                return Err(e);
            }
        }
    }
    f.set_len(len)
}

/// Bytes an unprivileged writer may still write on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let cpath = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: all-zero bytes are a valid `statvfs` (plain integers).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `cpath` is NUL-terminated and `st` is a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(cpath.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

fn get_xattr(path: &Path, name: &str) -> Option<String> {
    let cpath = CString::new(path.as_os_str().as_bytes()).ok()?;
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and `buf` has the length we pass.
    let n = unsafe { libc::getxattr(cpath.as_ptr(), cname.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    String::from_utf8(buf).ok()
}

fn set_xattr(path: &Path, name: &str, value: &str) {
    let (Ok(cpath), Ok(cname)) = (CString::new(path.as_os_str().as_bytes()), CString::new(name)) else { return };
    // SAFETY: both strings are NUL-terminated and the value pointer/length describe `value`.
    let rc = unsafe { libc::setxattr(cpath.as_ptr(), cname.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    // Filesystems without user xattrs (tmpfs on old kernels, some FUSE) lose only the
    // extra metadata; the bytes and mtime are still right.
    let _ = rc;
}

impl Store for FileStore {
    fn list<'a>(&'a self, prefix: &'a str, token: Option<String>) -> LocalFuture<'a, Result<ListPage>> {
        Box::pin(async move { self.list_sync(prefix, token) })
    }

    fn stat<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Option<ObjectInfo>>> {
        Box::pin(async move { self.stat_sync(key) })
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn check<'a>(&'a self, writable: bool) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let root = self.root.display().to_string();
            if !writable {
                return match std::fs::metadata(&*self.root) {
                    Ok(md) if md.is_dir() => Ok(()),
                    Ok(_) => Err(Error::Usage(format!("source {root} is not a directory"))),
                    Err(e) => Err(Error::Usage(format!("source directory {root} can't be read: {e}"))),
                };
            }
            std::fs::create_dir_all(&*self.root)
                .map_err(|e| Error::Usage(format!("destination {root} can't be created: {e}; pick a writable path")))?;
            let probe = self.root.join(format!(".probe{TEMP_MARK}{:016x}.tmp", fastrand::u64(..)));
            std::fs::write(&probe, b"").map_err(|e| {
                Error::Usage(format!(
                    "destination {root} is not writable: {e}; fix its permissions or pick another path"
                ))
            })?;
            let _ = std::fs::remove_file(&probe);
            Ok(())
        })
    }
}

impl Source for FileStore {
    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Option<(u64, u64)>,
        body: Body,
        hashers: &'a mut Hashers,
    ) -> LocalFuture<'a, Result<(Body, ObjectInfo)>> {
        Box::pin(async move {
            let path = self.resolve("get", key)?;
            let md = std::fs::metadata(&path).map_err(|e| Error::io("get", key, e))?;
            let mut info = info_for(&path, &md);
            let (start, end) = range.unwrap_or((0, md.len()));
            if end > md.len() {
                return Err(Error::protocol("get", key, format!("file shrank to {} bytes while being read", md.len())));
            }
            let file = monoio::fs::File::open(&path).await.map_err(|e| Error::io("get", key, e))?;
            let mut at = start;
            let mut filled = Vec::with_capacity(body.chunks.len());
            for chunk in body.chunks {
                filled.push(fill_from(&file, chunk, &mut at, end, hashers, key, self.rates.as_deref()).await?);
            }
            let _ = file.close().await;
            if at != end {
                return Err(Error::protocol("get", key, "the buffers reserved for the read were too small"));
            }
            info.version = Some(unchanged_since(&path, key, &version_token(&md))?);
            Ok((Body::new(filled), info))
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
            let path = self.resolve("get", key)?;
            let (start, end) = range;
            let before = std::fs::metadata(&path).map_err(|e| Error::io("get", key, e))?;
            let file = monoio::fs::File::open(&path).await.map_err(|e| Error::io("get", key, e))?;
            let mut at = start;
            while at < end {
                let Some(chunk) = filler.empty_chunk().await else {
                    return Err(Error::protocol("get", key, "the upload this read feeds failed"));
                };
                filler.send(fill_from(&file, chunk, &mut at, end, hashers, key, self.rates.as_deref()).await?);
            }
            let _ = file.close().await;
            unchanged_since(&path, key, &version_token(&before)).map(Some)
        })
    }

    fn copy_source(&self, _key: &str) -> Option<CopySource> {
        None
    }
}

/// Fills `chunk` from `file` at `*at` (up to `end`), feeding `hashers`.
async fn fill_from(
    file: &monoio::fs::File,
    mut chunk: Chunk,
    at: &mut u64,
    end: u64,
    hashers: &mut Hashers,
    key: &str,
    rates: Option<&crate::rate::Rates>,
) -> Result<Chunk> {
    while *at < end && chunk.remaining() > 0 {
        let before = chunk.len();
        let paced = rates.map_or(usize::MAX, crate::rate::Rates::read_bytes_max);
        let want = chunk.remaining().min((end - *at) as usize).min(paced);
        let (res, slice) = file.read_at(monoio::buf::IoBufMut::slice_mut(chunk, before..before + want), *at).await;
        chunk = slice.into_inner();
        let n = res.map_err(|e| Error::io("get", key, e))?;
        if n == 0 {
            return Err(Error::protocol("get", key, "file shrank while being read"));
        }
        hashers.update(&chunk.as_slice()[before..before + n]);
        *at += n as u64;
        if let Some(rates) = rates {
            rates.read(n).await;
        }
    }
    Ok(chunk)
}

impl Sink for FileStore {
    fn sweep<'a>(&'a self, prefix: &'a str) -> LocalFuture<'a, Result<u64>> {
        Box::pin(async move {
            // The deepest directory the prefix names in full.
            let dir_key = prefix.rfind('/').map_or("", |i| &prefix[..=i]);
            let dir = self.resolve("sweep", dir_key)?;
            Ok(sweep_tree(&dir))
        })
    }

    fn begin<'a>(&'a self, key: &'a str, plan: UploadPlan, args: &'a PutArgs) -> LocalFuture<'a, Result<Session<'a>>> {
        Box::pin(upload::begin(self, key, plan, args))
    }

    fn resume(&self, state: SessionState) -> Result<Session<'_>> {
        upload::resume(self, state)
    }

    fn put_dir_marker<'a>(&'a self, key: &'a str, args: &'a PutArgs) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = self.resolve("mkdir", key)?;
            std::fs::create_dir_all(&path).map_err(|e| Error::io("mkdir", key, e))?;
            if let Some(p) = &args.provenance {
                set_xattr(&path, XATTR_PROVENANCE, p);
            }
            Ok(())
        })
    }

    fn mkdir<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Made>> {
        Box::pin(async move {
            let path = if key.is_empty() { self.root.to_path_buf() } else { self.resolve("mkdir", key)? };
            std::fs::create_dir_all(&path).map_err(|e| Error::io("mkdir", path.display().to_string(), e))?;
            Ok(Made::Folder)
        })
    }

    fn can_copy_from(&self, _source: &CopySource) -> bool {
        false
    }

    fn delete<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = self.resolve("delete", key)?;
            if let Some(dir) = path.parent() {
                self.refuse_links("delete", key, dir)?;
            }
            match std::fs::symlink_metadata(&path) {
                Ok(md) if md.is_dir() => Err(Error::InvalidKey {
                    op: "delete",
                    key: key.to_string(),
                    reason: format!("{} is a directory, not a file", path.display()),
                }),
                Ok(_) => std::fs::remove_file(&path).map_err(|e| Error::io("delete", key, e)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("delete", key, e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape() {
        let root = Path::new("/r");
        assert_eq!(resolve(root, "put", "a/b").unwrap(), Path::new("/r/a/b"));
        assert_eq!(resolve(root, "put", "a/b/").unwrap(), Path::new("/r/a/b"));
        for bad in ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\0b"] {
            assert!(matches!(resolve(root, "put", bad), Err(Error::InvalidKey { .. })), "{bad}");
        }
    }

    #[test]
    fn walk_is_in_byte_order() {
        let dir = tempfile::tempdir().unwrap();
        for rel in ["a/b", "a-c", "a0", "b/c/d", "b/c-", "z", "a/a/x"] {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, rel).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("empty")).unwrap();
        std::fs::write(dir.path().join(".x.laminar-0000000000000000.tmp"), b"").unwrap();
        let store = FileStore::new(Arc::new(dir.path().to_path_buf()), false);
        let keys: Vec<String> = store.list_sync("", None).unwrap().entries.into_iter().map(|e| e.key).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys, ["a-c", "a/a/x", "a/b", "a0", "b/c-", "b/c/d", "empty/", "z"]);
        let keys: Vec<String> = store.list_sync("b/c", None).unwrap().entries.into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["b/c-", "b/c/d"]);
    }

    #[test]
    fn walk_pages() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..2500 {
            std::fs::write(dir.path().join(format!("{i:05}")), b"x").unwrap();
        }
        let store = FileStore::new(Arc::new(dir.path().to_path_buf()), false);
        let mut token = None;
        let mut total = 0;
        loop {
            let page = store.list_sync("", token).unwrap();
            total += page.entries.len();
            token = page.next;
            if token.is_none() {
                break;
            }
        }
        assert_eq!(total, 2500);
    }

    #[test]
    fn temporary_names_say_who_writes_them() {
        let me = crate::owner::Owner::me();
        let store = FileStore::new(Arc::new(PathBuf::from("/tmp/x")), false);
        let temp = store.temp_path("dir/name.bin").unwrap();
        let name = temp.file_name().unwrap().to_str().unwrap();
        assert!(is_temp_name(name.as_bytes()), "{name}");
        assert_eq!(temp_owner(name), Some(me));
        assert_eq!(temp_owner(".a.laminar-00000000000000ff.tmp"), None, "a name from before names said");
        assert_eq!(temp_owner(".a.laminar-zz-1-2.tmp"), None);
        assert_eq!(temp_owner(".a.laminar-1-2-3-4.tmp"), None);
    }
}
