//! One user's namespace, in memory: files and folders under case-insensitive,
//! case-preserving paths (`path_lower` is the key, `path_display` keeps the casing the
//! entry was created with; a child's display path uses its parents' casing), file ids
//! that survive overwrites, revs, server and client modification times, content
//! hashes, a quota, and tombstones for deleted entries so listings can report
//! deletions.
//!
//! Folders are explicit entries, as in Dropbox: `create_folder_v2` makes one, and
//! committing a file makes every missing parent. Deleting the last file in a folder
//! leaves the folder.
//!
//! Every change takes the next sequence number; listings (the child module) page
//! through a deterministic, unsorted order and then report changes by sequence.

mod listing;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub(crate) use listing::ListCursor;

use super::properties::{groups_json, merged, PropertyGroup, Templates};
use super::wire::{format_timestamp, ApiError, ArgSource};

/// How many `name (n)` candidates autorename tries before giving up with the conflict.
const AUTORENAME_TRIES_MAX: u32 = 1000;
/// Deepest path accepted (components).
const DEPTH_MAX: usize = 256;

/// The path patterns Dropbox's argument validation quotes in its 400 messages.
pub(crate) const PATTERN_WRITE: &str = r"(/(.|[\r\n])*)|(ns:[0-9]+(/.*)?)|(id:.*)";
pub(crate) const PATTERN_READ: &str = r"(/(.|[\r\n])*|id:.*)|(rev:[0-9a-f]{9,})|(ns:[0-9]+(/.*)?)";
pub(crate) const PATTERN_LIST: &str = r"(/(.|[\r\n])*)?|id:.*|(ns:[0-9]+(/.*)?)";

/// A file's bytes: the buffers the requests that carried them were read into, never
/// copied again (an upload session's appends become one file by moving them).
#[derive(Debug, Default)]
pub(crate) struct Content {
    segments: Vec<Bytes>,
    len: u64,
}

impl Content {
    pub(crate) fn from_segments(segments: Vec<Bytes>) -> Content {
        let segments: Vec<Bytes> = segments.into_iter().filter(|s| !s.is_empty()).collect();
        let len = segments.iter().map(|s| s.len() as u64).sum();
        Content { segments, len }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The bytes `[start, end)`, as slices of the stored buffers.
    pub(crate) fn slices(&self, start: u64, end: u64) -> Vec<Bytes> {
        assert!(start <= end && end <= self.len, "range {start}..{end} of {}", self.len);
        let mut out = Vec::new();
        let mut at = 0u64;
        for s in &self.segments {
            let (s_start, s_end) = (at, at + s.len() as u64);
            at = s_end;
            if s_end <= start || s_start >= end {
                continue;
            }
            let from = start.max(s_start) - s_start;
            let to = end.min(s_end) - s_start;
            out.push(s.slice(from as usize..to as usize));
        }
        out
    }

    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len as usize);
        for s in &self.segments {
            v.extend_from_slice(s);
        }
        v
    }
}

/// A checked absolute path: its components as given, and the lower-case key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DbxPath {
    pub parts: Vec<String>,
    pub lower: String,
}

impl DbxPath {
    fn from_parts(parts: Vec<String>) -> DbxPath {
        let lower = parts.iter().map(|p| format!("/{}", p.to_lowercase())).collect();
        DbxPath { parts, lower }
    }

    fn with_last(&self, last: String) -> DbxPath {
        let mut parts = self.parts.clone();
        *parts.last_mut().expect("a path has a last component") = last;
        DbxPath::from_parts(parts)
    }
}

/// What a path argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `""` (only where a route takes the root).
    Root,
    Path(DbxPath),
    /// `id:...`.
    Id(String),
    /// `rev:...`.
    Rev(String),
    /// A path that fails Dropbox's path rules (`malformed_path`, or `disallowed_name`
    /// when written).
    Malformed {
        disallowed: bool,
    },
}

/// Which pattern a route checks its path against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathKind {
    /// Commits, folder creation, deletion.
    Write,
    /// Metadata and downloads (also `rev:`).
    Read,
    /// Listing (also the root, as `""`).
    List,
}

/// Checks a path argument as Dropbox does: a pattern failure is a 400; a path that
/// fits the pattern but breaks the path rules is [`Target::Malformed`] (the route
/// answers 409 `malformed_path`). `ns_id` is the root namespace (`ns:<id>/...`).
pub(crate) fn parse_target(
    field: &str,
    s: &str,
    kind: PathKind,
    source: ArgSource,
    ns_id: &str,
) -> Result<Target, ApiError> {
    let pattern = match kind {
        PathKind::Write => PATTERN_WRITE,
        PathKind::Read => PATTERN_READ,
        PathKind::List => PATTERN_LIST,
    };
    let no_match = || ApiError::arg(source, format!("{field}: '{s}' did not match pattern '{pattern}'"));
    if s.is_empty() {
        return if kind == PathKind::List { Ok(Target::Root) } else { Err(no_match()) };
    }
    if s == "/" && kind == PathKind::List {
        return Err(ApiError::arg(
            source,
            format!("{field}: Specify the root folder as an empty string rather than as \"/\"."),
        ));
    }
    if let Some(id) = s.strip_prefix("id:") {
        return Ok(Target::Id(format!("id:{id}")));
    }
    if let Some(rev) = s.strip_prefix("rev:") {
        let ok = rev.len() >= 9 && rev.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        return if kind == PathKind::Read && ok { Ok(Target::Rev(rev.to_string())) } else { Err(no_match()) };
    }
    let rest = if let Some(ns) = s.strip_prefix("ns:") {
        let (num, rest) = ns.split_once('/').map(|(n, r)| (n, Some(r))).unwrap_or((ns, None));
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(no_match());
        }
        if num != ns_id {
            // Another namespace: nothing this emulator holds.
            return Ok(Target::Id(format!("ns:{num}")));
        }
        match rest {
            None | Some("") => {
                return Ok(if kind == PathKind::List { Target::Root } else { Target::Malformed { disallowed: false } })
            }
            Some(r) => format!("/{r}"),
        }
    } else if s.starts_with('/') {
        s.to_string()
    } else {
        return Err(no_match());
    };
    // Dropbox reads a path that starts with two slashes, `//a`, as `/a`: rclone's
    // dropbox backend lists a subfolder of the root as `//name`, and has for years,
    // which is how every recursive listing of a whole Dropbox starts. Empty parts
    // elsewhere (`/a//b`, `/a/`) stay malformed.
    let rest = rest.strip_prefix('/').filter(|r| r.starts_with('/') && !r.starts_with("//")).unwrap_or(&rest);
    let parts: Vec<&str> = rest[1..].split('/').collect();
    if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") || parts.len() > DEPTH_MAX {
        return Ok(Target::Malformed { disallowed: false });
    }
    if parts.iter().any(|p| p.contains(['\\', '\0', '\u{7f}']) || p.ends_with(' ')) {
        return Ok(Target::Malformed { disallowed: true });
    }
    Ok(Target::Path(DbxPath::from_parts(parts.into_iter().map(str::to_string).collect())))
}

/// A failed lookup (`LookupError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LookupErr {
    NotFound,
    NotFile,
    NotFolder,
    Malformed,
}

impl LookupErr {
    pub(crate) fn value(self) -> Value {
        let tag = match self {
            LookupErr::NotFound => "not_found",
            LookupErr::NotFile => "not_file",
            LookupErr::NotFolder => "not_folder",
            LookupErr::Malformed => "malformed_path",
        };
        json!({ ".tag": tag })
    }
}

/// A failed write (`WriteError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteErr {
    /// `conflict` with a `WriteConflictError` tag: `file`, `folder`, `file_ancestor`.
    Conflict(&'static str),
    InsufficientSpace,
    Malformed,
    DisallowedName,
}

impl WriteErr {
    pub(crate) fn value(self) -> Value {
        match self {
            WriteErr::Conflict(c) => json!({ ".tag": "conflict", "conflict": { ".tag": c } }),
            WriteErr::InsufficientSpace => json!({ ".tag": "insufficient_space" }),
            WriteErr::Malformed => json!({ ".tag": "malformed_path" }),
            WriteErr::DisallowedName => json!({ ".tag": "disallowed_name" }),
        }
    }
}

/// `WriteMode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteMode {
    Add,
    Overwrite,
    Update(String),
}

/// What a commit asks for (`CommitInfo`).
#[derive(Debug, Clone)]
pub(crate) struct Commit {
    pub target: Target,
    pub mode: WriteMode,
    pub autorename: bool,
    pub strict_conflict: bool,
    pub client_modified_s: Option<i64>,
    /// `property_groups`, checked against the templates before the commit.
    pub property_groups: Vec<PropertyGroup>,
}

#[derive(Debug)]
pub(crate) struct FileData {
    pub content: Arc<Content>,
    pub hash: String,
    pub rev: String,
    pub client_modified_s: i64,
    pub server_modified_s: i64,
    /// Its property groups (templates removed since are filtered out when shown).
    pub properties: Vec<PropertyGroup>,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Folder,
    File(FileData),
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub display: String,
    pub id: String,
    /// The change that last touched this entry.
    pub seq: u64,
    /// The change that created it.
    pub created_seq: u64,
    pub kind: Kind,
}

#[derive(Debug)]
struct Tombstone {
    display: String,
    seq: u64,
}

/// What a commit does to the entry at its path.
enum Plan {
    New,
    Replace,
    Unchanged,
}

/// The namespace.
pub(crate) struct Namespace {
    seed: u64,
    entries: BTreeMap<String, Entry>,
    tombstones: HashMap<String, Tombstone>,
    /// Tombstones oldest first, for the bound.
    tomb_order: BTreeMap<u64, String>,
    tombstones_max: usize,
    /// Changes at or below this sequence may have lost their tombstones: a change
    /// cursor older than it must be reset.
    tomb_floor: u64,
    ids: HashMap<String, String>,
    revs: HashMap<String, String>,
    /// Listing order: `(order key, path_lower)` of every entry and tombstone.
    order: BTreeSet<(u64, String)>,
    /// `seq -> path_lower` of every entry and tombstone, by the change that last touched it.
    by_seq: BTreeMap<u64, String>,
    seq: u64,
    used_bytes: u64,
    quota_bytes: u64,
    /// The most files and folders held (the emulator's bound; past it, writes are
    /// `insufficient_space`).
    entries_max: usize,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Where an entry falls in listings: a hash of the seed and its path, so the order is
/// neither sorted nor by creation, and the same for the same seed.
fn order_key(seed: u64, lower: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ splitmix(seed);
    for b in lower.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix(h)
}

fn name_of(display: &str) -> &str {
    display.rsplit('/').next().unwrap_or(display)
}

/// `report (1).pdf` for `report.pdf`, `photos (1)` for `photos`.
fn renamed(name: &str, n: u32, is_file: bool) -> String {
    match name.rfind('.').filter(|&i| is_file && i > 0) {
        Some(i) => format!("{} ({n}){}", &name[..i], &name[i..]),
        None => format!("{name} ({n})"),
    }
}

impl Namespace {
    pub(crate) fn new(seed: u64, quota_bytes: u64, tombstones_max: usize, entries_max: usize) -> Namespace {
        assert!(tombstones_max > 0 && entries_max > 0);
        Namespace {
            seed,
            entries: BTreeMap::new(),
            tombstones: HashMap::new(),
            tomb_order: BTreeMap::new(),
            tombstones_max,
            tomb_floor: 0,
            ids: HashMap::new(),
            revs: HashMap::new(),
            order: BTreeSet::new(),
            by_seq: BTreeMap::new(),
            seq: 0,
            used_bytes: 0,
            quota_bytes,
            entries_max,
        }
    }

    pub(crate) fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    pub(crate) fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn new_id(&self, seq: u64) -> String {
        let d = Sha256::new().chain_update(self.seed.to_le_bytes()).chain_update(b"id").chain_update(seq.to_le_bytes());
        format!("id:{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d.finalize()[..16]))
    }

    fn new_rev(&self, seq: u64) -> String {
        format!("{:03x}{seq:010x}", (self.seed & 0xfff) | 0x100)
    }

    /// The entry at `lower`.
    pub(crate) fn entry(&self, lower: &str) -> Option<&Entry> {
        self.entries.get(lower)
    }

    /// Resolves a target to the `path_lower` of a live entry (`""` for the root).
    pub(crate) fn resolve(&self, t: &Target) -> Result<String, LookupErr> {
        let lower = match t {
            Target::Root => return Ok(String::new()),
            Target::Path(p) => p.lower.clone(),
            Target::Id(id) => self.ids.get(id).cloned().ok_or(LookupErr::NotFound)?,
            Target::Rev(rev) => self.revs.get(rev).cloned().ok_or(LookupErr::NotFound)?,
            Target::Malformed { .. } => return Err(LookupErr::Malformed),
        };
        if self.entries.contains_key(&lower) {
            Ok(lower)
        } else {
            Err(LookupErr::NotFound)
        }
    }

    /// The metadata of a deleted entry at `t`, for `get_metadata` with `include_deleted`.
    pub(crate) fn deleted_json(&self, t: &Target) -> Option<Value> {
        let Target::Path(p) = t else { return None };
        self.tombstones.get(&p.lower).map(|tomb| tomb_json(&p.lower, tomb))
    }

    /// A commit's path: `id:` targets name the file they point at.
    fn commit_path(&self, t: &Target) -> Result<DbxPath, WriteErr> {
        match t {
            Target::Path(p) => Ok(p.clone()),
            Target::Malformed { disallowed: true } => Err(WriteErr::DisallowedName),
            Target::Id(id) => {
                let lower = self.ids.get(id).ok_or(WriteErr::Malformed)?;
                let display = &self.entries[lower].display;
                Ok(DbxPath::from_parts(display[1..].split('/').map(str::to_string).collect()))
            }
            Target::Root | Target::Rev(_) | Target::Malformed { .. } => Err(WriteErr::Malformed),
        }
    }

    /// Checks the ancestors of `p` (a file among them is `file_ancestor`).
    fn check_ancestors(&self, p: &DbxPath) -> Result<(), WriteErr> {
        let mut lower = String::new();
        for part in &p.parts[..p.parts.len() - 1] {
            lower.push('/');
            lower.push_str(&part.to_lowercase());
            match self.entries.get(&lower).map(|e| &e.kind) {
                Some(Kind::File(_)) => return Err(WriteErr::Conflict("file_ancestor")),
                Some(Kind::Folder) => {}
                None => return Ok(()),
            }
        }
        Ok(())
    }

    fn plan(&self, p: &DbxPath, c: &Commit, hash: &str) -> Result<Plan, WriteErr> {
        self.check_ancestors(p)?;
        let existing = match self.entries.get(&p.lower).map(|e| &e.kind) {
            None => {
                return match (&c.mode, c.strict_conflict) {
                    (WriteMode::Update(_), true) => Err(WriteErr::Conflict("file")),
                    _ => Ok(Plan::New),
                }
            }
            Some(Kind::Folder) => return Err(WriteErr::Conflict("folder")),
            Some(Kind::File(f)) => f,
        };
        let same = existing.hash == hash;
        match &c.mode {
            WriteMode::Add if same && !c.strict_conflict => Ok(Plan::Unchanged),
            WriteMode::Add => Err(WriteErr::Conflict("file")),
            // Dropbox keeps the revision (and its client_modified) when the bytes are the same.
            WriteMode::Overwrite if same => Ok(Plan::Unchanged),
            WriteMode::Overwrite => Ok(Plan::Replace),
            WriteMode::Update(rev) if *rev == existing.rev => Ok(if same { Plan::Unchanged } else { Plan::Replace }),
            WriteMode::Update(_) if same && !c.strict_conflict => Ok(Plan::Unchanged),
            WriteMode::Update(_) => Err(WriteErr::Conflict("file")),
        }
    }

    /// Refuses a write that would need more entries than the bound allows: the
    /// missing folders above `p`, and `p` itself when new.
    fn check_room(&self, p: &DbxPath) -> Result<(), WriteErr> {
        let mut lower = String::new();
        let mut needed = 0;
        for part in &p.parts {
            lower.push('/');
            lower.push_str(&part.to_lowercase());
            needed += usize::from(!self.entries.contains_key(&lower));
        }
        if self.entries.len() + needed > self.entries_max {
            return Err(WriteErr::InsufficientSpace);
        }
        Ok(())
    }

    /// Creates every missing folder above `p`; returns the display path of its parent.
    fn make_parents(&mut self, p: &DbxPath) -> String {
        let mut lower = String::new();
        let mut display = String::new();
        for part in &p.parts[..p.parts.len() - 1] {
            lower.push('/');
            lower.push_str(&part.to_lowercase());
            match self.entries.get(&lower) {
                Some(e) => display = e.display.clone(),
                None => {
                    display.push('/');
                    display.push_str(part);
                    self.put_entry(lower.clone(), display.clone(), None, Kind::Folder);
                }
            }
        }
        display
    }

    /// Inserts or replaces the entry at `lower`, giving it the next sequence number.
    fn put_entry(&mut self, lower: String, display: String, id: Option<String>, kind: Kind) {
        let seq = self.next_seq();
        if let Some(t) = self.tombstones.remove(&lower) {
            self.tomb_order.remove(&t.seq);
            self.by_seq.remove(&t.seq);
        }
        let old = self.entries.remove(&lower);
        let created_seq = old.as_ref().map_or(seq, |o| o.created_seq);
        if let Some(o) = &old {
            self.by_seq.remove(&o.seq);
            if let Kind::File(f) = &o.kind {
                self.revs.remove(&f.rev);
                self.used_bytes -= f.content.len();
            }
        }
        let id = id.or_else(|| old.map(|o| o.id)).unwrap_or_else(|| self.new_id(seq));
        if let Kind::File(f) = &kind {
            self.revs.insert(f.rev.clone(), lower.clone());
            self.used_bytes += f.content.len();
        }
        self.ids.insert(id.clone(), lower.clone());
        self.order.insert((order_key(self.seed, &lower), lower.clone()));
        self.by_seq.insert(seq, lower.clone());
        self.entries.insert(lower, Entry { display, id, seq, created_seq, kind });
    }

    /// Commits a file (upload, session finish, seeding); returns its `path_lower`.
    pub(crate) fn commit_file(
        &mut self,
        c: &Commit,
        content: Arc<Content>,
        hash: String,
        now_s: i64,
    ) -> Result<String, WriteErr> {
        let asked = self.commit_path(&c.target)?;
        let mut p = asked.clone();
        let mut tries = 0;
        let plan = loop {
            match self.plan(&p, c, &hash) {
                Ok(plan) => break plan,
                Err(WriteErr::Conflict(k)) if c.autorename && k != "file_ancestor" && tries < AUTORENAME_TRIES_MAX => {
                    tries += 1;
                    p = asked.with_last(renamed(&asked.parts[asked.parts.len() - 1], tries, true));
                }
                Err(e) => return Err(e),
            }
        };
        if let Plan::Unchanged = plan {
            // No new revision, but the groups the commit names are set.
            if let Some(Entry { kind: Kind::File(f), .. }) = self.entries.get_mut(&p.lower) {
                f.properties = merged(&f.properties, &c.property_groups);
            }
            return Ok(p.lower);
        }
        let (old_len, old_groups) = match (&plan, self.entries.get(&p.lower)) {
            (Plan::Replace, Some(Entry { kind: Kind::File(f), .. })) => (f.content.len(), f.properties.clone()),
            _ => (0, Vec::new()),
        };
        if self.used_bytes - old_len + content.len() > self.quota_bytes {
            return Err(WriteErr::InsufficientSpace);
        }
        self.check_room(&p)?;
        let parent_display = self.make_parents(&p);
        let display = match self.entries.get(&p.lower) {
            // An overwrite keeps the name's casing as first written.
            Some(e) => e.display.clone(),
            None => format!("{parent_display}/{}", p.parts[p.parts.len() - 1]),
        };
        let rev = self.new_rev(self.seq + 1);
        let data = FileData {
            content,
            hash,
            rev,
            client_modified_s: c.client_modified_s.unwrap_or(now_s),
            server_modified_s: now_s,
            properties: merged(&old_groups, &c.property_groups),
        };
        self.put_entry(p.lower.clone(), display, None, Kind::File(data));
        Ok(p.lower)
    }

    /// Creates a folder; returns its `path_lower`.
    pub(crate) fn create_folder(&mut self, t: &Target, autorename: bool) -> Result<String, WriteErr> {
        let asked = self.commit_path(t)?;
        let mut p = asked.clone();
        let mut tries = 0;
        loop {
            self.check_ancestors(&p)?;
            let conflict = match self.entries.get(&p.lower).map(|e| &e.kind) {
                None => break,
                Some(Kind::Folder) => "folder",
                Some(Kind::File(_)) => "file",
            };
            if !autorename || tries >= AUTORENAME_TRIES_MAX {
                return Err(WriteErr::Conflict(conflict));
            }
            tries += 1;
            p = asked.with_last(renamed(&asked.parts[asked.parts.len() - 1], tries, false));
        }
        self.check_room(&p)?;
        let parent_display = self.make_parents(&p);
        let display = format!("{parent_display}/{}", p.parts[p.parts.len() - 1]);
        self.put_entry(p.lower.clone(), display, None, Kind::Folder);
        Ok(p.lower)
    }

    /// Deletes the entry at `t` and everything under it; returns its metadata as it was.
    pub(crate) fn delete(&mut self, t: &Target) -> Result<Value, LookupErr> {
        let lower = self.resolve(t)?;
        if lower.is_empty() {
            return Err(LookupErr::Malformed);
        }
        let meta = self.metadata_json(&lower, true);
        let prefix = format!("{lower}/");
        let mut doomed: Vec<String> = self
            .entries
            .range(prefix.clone()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        doomed.push(lower);
        for k in doomed {
            let e = self.entries.remove(&k).expect("listed above");
            self.by_seq.remove(&e.seq);
            self.ids.remove(&e.id);
            if let Kind::File(f) = &e.kind {
                self.revs.remove(&f.rev);
                self.used_bytes -= f.content.len();
            }
            let seq = self.next_seq();
            self.add_tombstone(k, e.display, seq);
        }
        Ok(meta)
    }

    fn add_tombstone(&mut self, lower: String, display: String, seq: u64) {
        while self.tombstones.len() >= self.tombstones_max {
            let (&old_seq, _) = self.tomb_order.iter().next().expect("tombstones are bounded above zero");
            let old = self.tomb_order.remove(&old_seq).expect("just seen");
            self.tombstones.remove(&old);
            self.by_seq.remove(&old_seq);
            self.order.remove(&(order_key(self.seed, &old), old));
            self.tomb_floor = self.tomb_floor.max(old_seq);
        }
        self.tomb_order.insert(seq, lower.clone());
        self.by_seq.insert(seq, lower.clone());
        self.order.insert((order_key(self.seed, &lower), lower.clone()));
        self.tombstones.insert(lower, Tombstone { display, seq });
        debug_assert!(self.tombstones.len() <= self.tombstones_max);
    }

    /// An entry's metadata: `FileMetadata` or `FolderMetadata`, with the `.tag` of the
    /// `Metadata` union where the route returns the union.
    pub(crate) fn metadata_json(&self, lower: &str, tagged: bool) -> Value {
        let e = &self.entries[lower];
        let mut v = json!({
            "name": name_of(&e.display),
            "path_lower": lower,
            "path_display": e.display,
            "id": e.id,
        });
        let o = v.as_object_mut().expect("an object");
        match &e.kind {
            Kind::Folder => {
                if tagged {
                    o.insert(".tag".into(), "folder".into());
                }
            }
            Kind::File(f) => {
                if tagged {
                    o.insert(".tag".into(), "file".into());
                }
                o.insert("client_modified".into(), format_timestamp(f.client_modified_s).into());
                o.insert("server_modified".into(), format_timestamp(f.server_modified_s).into());
                o.insert("rev".into(), f.rev.clone().into());
                o.insert("size".into(), f.content.len().into());
                o.insert("is_downloadable".into(), true.into());
                o.insert("content_hash".into(), f.hash.clone().into());
            }
        }
        v
    }

    /// Adds `property_groups` to a file's metadata (from [`Namespace::metadata_json`])
    /// for the templates in `filter`, when it has groups of any of them.
    pub(crate) fn add_groups(&self, meta: &mut Value, filter: &[String], templates: &Templates) {
        let Some(lower) = meta.get("path_lower").and_then(Value::as_str) else { return };
        let Some(Entry { kind: Kind::File(f), .. }) = self.entries.get(lower) else { return };
        if let Some(groups) = groups_json(&f.properties, filter, templates) {
            meta["property_groups"] = groups;
        }
    }

    /// Every file, by display path.
    pub(crate) fn files(&self) -> impl Iterator<Item = (&str, &FileData)> {
        self.entries.values().filter_map(|e| match &e.kind {
            Kind::File(f) => Some((e.display.as_str(), f)),
            Kind::Folder => None,
        })
    }

    /// How many entries (files and folders) it holds.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

fn tomb_json(lower: &str, t: &Tombstone) -> Value {
    json!({ ".tag": "deleted", "name": name_of(&t.display), "path_lower": lower, "path_display": t.display })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> Target {
        parse_target("path", s, PathKind::Write, ArgSource::Body, "1").unwrap()
    }

    fn commit(s: &str, mode: WriteMode) -> Commit {
        Commit {
            target: path(s),
            mode,
            autorename: false,
            strict_conflict: false,
            client_modified_s: Some(1000),
            property_groups: Vec::new(),
        }
    }

    fn bytes(b: &'static [u8]) -> (Arc<Content>, String) {
        (Arc::new(Content::from_segments(vec![Bytes::from_static(b)])), super::super::content_hash::content_hash_hex(b))
    }

    #[test]
    fn path_rules() {
        let p = |s| parse_target("path", s, PathKind::Write, ArgSource::Body, "7");
        assert!(matches!(p("/a/B"), Ok(Target::Path(DbxPath { ref lower, .. })) if lower == "/a/b"));
        assert_eq!(p("/a/").unwrap(), Target::Malformed { disallowed: false });
        assert_eq!(p("/a//b").unwrap(), Target::Malformed { disallowed: false });
        // A root-relative join (`/` + `/a`), as rclone makes them, is `/a`.
        assert!(matches!(p("//a/B"), Ok(Target::Path(DbxPath { ref lower, .. })) if lower == "/a/b"));
        assert_eq!(p("///a").unwrap(), Target::Malformed { disallowed: false });
        assert_eq!(p("//").unwrap(), Target::Malformed { disallowed: false });
        assert_eq!(p("/a/../b").unwrap(), Target::Malformed { disallowed: false });
        assert_eq!(p("/a\\b").unwrap(), Target::Malformed { disallowed: true });
        assert!(matches!(p("ns:7/x"), Ok(Target::Path(_))));
        assert!(p("a/b").is_err());
        assert!(p("").is_err());
        let l = |s| parse_target("path", s, PathKind::List, ArgSource::Body, "7");
        assert_eq!(l("").unwrap(), Target::Root);
        let err = l("/").unwrap_err();
        assert!(matches!(err, ApiError::BadInput(ref m) if m.contains("Specify the root folder as an empty string")));
        let r = |s| parse_target("path", s, PathKind::Read, ArgSource::Body, "7");
        assert!(matches!(r("rev:0123456789ab"), Ok(Target::Rev(_))));
        assert!(r("rev:12").is_err());
    }

    #[test]
    fn case_insensitive_and_case_preserving() {
        let mut ns = Namespace::new(1, u64::MAX, 100, 1000);
        let (c, h) = bytes(b"x");
        let lower = ns.commit_file(&commit("/Photos/Trip/A.JPG", WriteMode::Add), c.clone(), h.clone(), 5).unwrap();
        assert_eq!(lower, "/photos/trip/a.jpg");
        // A later write under different casing lands in the same folders, shown as first cased.
        let (c2, h2) = bytes(b"y");
        let l2 = ns.commit_file(&commit("/PHOTOS/trip/b.jpg", WriteMode::Add), c2, h2, 6).unwrap();
        assert_eq!(ns.metadata_json(&l2, false)["path_display"], "/Photos/Trip/b.jpg");
        assert!(matches!(ns.entry("/photos").unwrap().kind, Kind::Folder));
        // Same bytes under add: no conflict, no new revision.
        let rev = ns.metadata_json(&lower, false)["rev"].clone();
        ns.commit_file(&commit("/photos/trip/a.jpg", WriteMode::Add), c, h, 9).unwrap();
        assert_eq!(ns.metadata_json(&lower, false)["rev"], rev);
    }

    #[test]
    fn write_modes_and_conflicts() {
        let mut ns = Namespace::new(1, u64::MAX, 100, 1000);
        let (a, ha) = bytes(b"a");
        let (b, hb) = bytes(b"b");
        let l = ns.commit_file(&commit("/f", WriteMode::Add), a.clone(), ha.clone(), 1).unwrap();
        let id = ns.entry(&l).unwrap().id.clone();
        let rev = ns.metadata_json(&l, false)["rev"].as_str().unwrap().to_string();
        assert_eq!(
            ns.commit_file(&commit("/f", WriteMode::Add), b.clone(), hb.clone(), 2),
            Err(WriteErr::Conflict("file"))
        );
        let mut strict = commit("/f", WriteMode::Add);
        strict.strict_conflict = true;
        assert_eq!(ns.commit_file(&strict, a.clone(), ha.clone(), 2), Err(WriteErr::Conflict("file")));
        assert_eq!(
            ns.commit_file(&commit("/f", WriteMode::Update("000000000".into())), b.clone(), hb.clone(), 2),
            Err(WriteErr::Conflict("file"))
        );
        ns.commit_file(&commit("/f", WriteMode::Update(rev)), b.clone(), hb.clone(), 3).unwrap();
        assert_eq!(ns.entry("/f").unwrap().id, id, "an overwrite keeps the id");
        assert_eq!(
            ns.commit_file(&commit("/f/g", WriteMode::Add), a.clone(), ha.clone(), 4),
            Err(WriteErr::Conflict("file_ancestor"))
        );
        let mut auto = commit("/f", WriteMode::Add);
        auto.autorename = true;
        assert_eq!(ns.commit_file(&auto, a.clone(), ha.clone(), 5).unwrap(), "/f (1)");
        ns.create_folder(&path("/d"), false).unwrap();
        assert_eq!(ns.commit_file(&commit("/d", WriteMode::Overwrite), a, ha, 6), Err(WriteErr::Conflict("folder")));
        assert_eq!(ns.create_folder(&path("/D"), false), Err(WriteErr::Conflict("folder")));
    }

    #[test]
    fn quota_and_delete() {
        let mut full = Namespace::new(1, u64::MAX, 100, 2);
        assert_eq!(full.create_folder(&path("/a/b/c"), false), Err(WriteErr::InsufficientSpace), "three entries");
        full.create_folder(&path("/a/b"), false).unwrap();
        let mut ns = Namespace::new(1, 3, 100, 1000);
        let (c, h) = bytes(b"abc");
        ns.commit_file(&commit("/d/x", WriteMode::Add), c, h, 1).unwrap();
        let (c, h) = bytes(b"z");
        assert_eq!(
            ns.commit_file(&commit("/d/y", WriteMode::Add), c.clone(), h.clone(), 1),
            Err(WriteErr::InsufficientSpace)
        );
        let meta = ns.delete(&path("/D")).unwrap();
        assert_eq!(meta[".tag"], "folder");
        assert_eq!(ns.used_bytes(), 0);
        assert_eq!(ns.resolve(&path("/d/x")), Err(LookupErr::NotFound));
        assert!(ns.deleted_json(&path("/d/x")).is_some());
        ns.commit_file(&commit("/d/y", WriteMode::Add), c, h, 1).unwrap();
        assert!(ns.deleted_json(&path("/d")).is_none(), "recreated: no longer a tombstone");
    }

    #[test]
    fn content_slices_span_segments() {
        let c = Content::from_segments(vec![Bytes::from_static(b"abc"), Bytes::new(), Bytes::from_static(b"defg")]);
        let join = |v: Vec<Bytes>| v.iter().flat_map(|b| b.iter().copied()).collect::<Vec<u8>>();
        assert_eq!(join(c.slices(0, 7)), b"abcdefg");
        assert_eq!(join(c.slices(2, 5)), b"cde");
        assert_eq!(join(c.slices(3, 3)), b"");
        assert_eq!(c.to_vec(), b"abcdefg");
    }
}
