//! The emulated Drive's files: an in-memory store keyed by id, with the indexes a
//! listing needs (children of each folder, in an order of no meaning) and the usage that
//! the storage quota counts.
//!
//! A file's bytes are a list of [`Bytes`] segments, moved in from the request that
//! carried them and never copied again: a resumable upload of a few GiB is held once,
//! and a download sends slices of the same segments.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use md5::Digest as _;
use serde_json::{json, Map, Value};

use super::errors::ApiError;
use super::query::{Expr, Subject};
use super::time;
use super::DocKind;

/// Drive's folder type.
pub(crate) const FOLDER_MIME: &str = "application/vnd.google-apps.folder";
/// Drive's shortcut type.
pub(crate) const SHORTCUT_MIME: &str = "application/vnd.google-apps.shortcut";
/// The prefix of every Google Workspace type (Docs, folders, shortcuts...).
pub(crate) const GOOGLE_APPS_PREFIX: &str = "application/vnd.google-apps.";
/// Most custom properties on one file (Drive allows 100 per app, plus public ones).
const PROPERTIES_MAX: usize = 100;
/// Longest file name accepted (Drive's limit is on the order of 32 KB; this bounds memory).
pub(crate) const NAME_BYTES_MAX: usize = 32 << 10;

/// Every field of a file resource the emulator knows (a `fields` selection naming any
/// other is refused, as Drive refuses it).
pub(crate) const FILE_FIELDS: &[&str] = &[
    "kind",
    "id",
    "name",
    "mimeType",
    "parents",
    "size",
    "md5Checksum",
    "sha1Checksum",
    "sha256Checksum",
    "modifiedTime",
    "createdTime",
    "trashed",
    "explicitlyTrashed",
    "starred",
    "shortcutDetails",
    "driveId",
    "teamDriveId",
    "description",
    "properties",
    "appProperties",
    "version",
    "headRevisionId",
    "originalFilename",
    "fileExtension",
    "fullFileExtension",
    "quotaBytesUsed",
    "capabilities",
    "exportLinks",
    "spaces",
    "ownedByMe",
    "resourceKey",
    "webViewLink",
    "webContentLink",
];

/// A file's bytes: segments in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Content {
    segments: Vec<Bytes>,
    len: u64,
}

impl Content {
    pub(crate) fn from_bytes(b: Bytes) -> Content {
        let mut c = Content::default();
        c.push(b);
        c
    }

    pub(crate) fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len() as u64;
            self.segments.push(b);
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The bytes `offset..offset + len` as slices of the segments (no copy).
    pub(crate) fn slices(&self, offset: u64, len: u64) -> Vec<Bytes> {
        assert!(offset + len <= self.len, "a range inside the content");
        let mut out = Vec::new();
        let (mut skip, mut left) = (offset, len);
        for s in &self.segments {
            if left == 0 {
                break;
            }
            let n = s.len() as u64;
            if skip >= n {
                skip -= n;
                continue;
            }
            let take = (n - skip).min(left);
            out.push(
                s.slice(usize::try_from(skip).expect("in memory")..usize::try_from(skip + take).expect("in memory")),
            );
            left -= take;
            skip = 0;
        }
        assert_eq!(left, 0, "the segments hold len bytes");
        out
    }

    /// A copy of all the bytes (for inspection by tests).
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(usize::try_from(self.len).expect("in memory"));
        for s in &self.segments {
            v.extend_from_slice(s);
        }
        v
    }
}

/// The three digests Drive reports, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Digests {
    pub(crate) md5: String,
    pub(crate) sha1: String,
    pub(crate) sha256: String,
}

/// MD5, SHA-1 and SHA-256, each computed on its own over the same bytes.
#[derive(Clone, Default)]
pub(crate) struct Hashers {
    md5: md5::Md5,
    sha1: sha1::Sha1,
    sha256: sha2::Sha256,
}

impl Hashers {
    pub(crate) fn update(&mut self, b: &[u8]) {
        self.md5.update(b);
        self.sha1.update(b);
        self.sha256.update(b);
    }

    pub(crate) fn finish(self) -> Digests {
        Digests {
            md5: hex::encode(self.md5.finalize()),
            sha1: hex::encode(self.sha1.finalize()),
            sha256: hex::encode(self.sha256.finalize()),
        }
    }

    pub(crate) fn of(content: &Content) -> Digests {
        let mut h = Hashers::default();
        for s in &content.segments {
            h.update(s);
        }
        h.finish()
    }
}

/// What a file is.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    Folder,
    Blob {
        content: Content,
        digests: Digests,
        original_filename: Option<String>,
        revision: u64,
    },
    /// A Google Docs Editors file; `text` seeds its exports.
    Doc {
        kind: DocKind,
        text: Bytes,
    },
    Shortcut {
        target_id: String,
        target_mime: String,
    },
}

/// One file, folder, Doc or shortcut.
#[derive(Debug, Clone)]
pub(crate) struct File {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) mime_type: String,
    /// None or one (Drive has allowed only one parent since 2020); roots have none.
    pub(crate) parents: Vec<String>,
    /// The shared drive this file is in; None in My Drive.
    pub(crate) drive_id: Option<String>,
    pub(crate) body: Body,
    pub(crate) created_ms: i64,
    pub(crate) modified_ms: i64,
    pub(crate) trashed: bool,
    pub(crate) explicitly_trashed: bool,
    pub(crate) starred: bool,
    pub(crate) description: Option<String>,
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) app_properties: BTreeMap<String, String>,
    pub(crate) version: u64,
    /// Where the file sorts in listings: random, so no order can be relied on.
    sort_key: u64,
}

impl File {
    pub(crate) fn is_folder(&self) -> bool {
        matches!(self.body, Body::Folder)
    }

    pub(crate) fn blob_len(&self) -> u64 {
        match &self.body {
            Body::Blob { content, .. } => content.len(),
            _ => 0,
        }
    }

    fn subject(&self) -> Subject<'_> {
        Subject {
            name: &self.name,
            mime_type: &self.mime_type,
            parents: &self.parents,
            trashed: self.trashed,
            starred: self.starred,
            modified_ms: self.modified_ms,
            created_ms: self.created_ms,
        }
    }

    /// The full resource, every field this file has; `api_url` makes export links.
    pub(crate) fn resource(&self, api_url: &str) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!("drive#file"));
        m.insert("id".into(), json!(self.id));
        m.insert("name".into(), json!(self.name));
        m.insert("mimeType".into(), json!(self.mime_type));
        if !self.parents.is_empty() {
            m.insert("parents".into(), json!(self.parents));
        }
        m.insert("createdTime".into(), json!(time::format_ms(self.created_ms)));
        m.insert("modifiedTime".into(), json!(time::format_ms(self.modified_ms)));
        m.insert("trashed".into(), json!(self.trashed));
        m.insert("explicitlyTrashed".into(), json!(self.explicitly_trashed));
        m.insert("starred".into(), json!(self.starred));
        m.insert("version".into(), json!(self.version.to_string()));
        m.insert("spaces".into(), json!(["drive"]));
        m.insert("ownedByMe".into(), json!(self.drive_id.is_none()));
        if let Some(d) = &self.drive_id {
            m.insert("driveId".into(), json!(d));
            m.insert("teamDriveId".into(), json!(d));
        }
        if let Some(d) = &self.description {
            m.insert("description".into(), json!(d));
        }
        if !self.properties.is_empty() {
            m.insert("properties".into(), json!(self.properties));
        }
        if !self.app_properties.is_empty() {
            m.insert("appProperties".into(), json!(self.app_properties));
        }
        let mut quota_bytes = 0;
        match &self.body {
            Body::Folder => {}
            Body::Blob { content, digests, original_filename, revision } => {
                // int64 fields are JSON strings in Drive's answers.
                m.insert("size".into(), json!(content.len().to_string()));
                m.insert("md5Checksum".into(), json!(digests.md5));
                m.insert("sha1Checksum".into(), json!(digests.sha1));
                m.insert("sha256Checksum".into(), json!(digests.sha256));
                m.insert("headRevisionId".into(), json!(format!("0B{revision:016x}")));
                if let Some(o) = original_filename {
                    m.insert("originalFilename".into(), json!(o));
                }
                if let Some((_, ext)) = self.name.rsplit_once('.').filter(|(stem, _)| !stem.is_empty()) {
                    m.insert("fileExtension".into(), json!(ext));
                    let full = self.name.split_once('.').map(|(_, f)| f).unwrap_or(ext);
                    m.insert("fullFileExtension".into(), json!(full));
                }
                quota_bytes = content.len();
            }
            Body::Doc { kind, text } => {
                // Drive reports a size for first-party editor files; it is not the size
                // of any export.
                m.insert("size".into(), json!(text.len().to_string()));
                let links: Map<String, Value> = kind
                    .export_formats()
                    .iter()
                    .map(|f| {
                        let mime = percent_encoding::utf8_percent_encode(f, percent_encoding::NON_ALPHANUMERIC);
                        (
                            (*f).to_string(),
                            json!(format!("{api_url}/drive/v3/files/{}/export?mimeType={mime}", self.id)),
                        )
                    })
                    .collect();
                m.insert("exportLinks".into(), Value::Object(links));
            }
            Body::Shortcut { target_id, target_mime } => {
                m.insert("shortcutDetails".into(), json!({"targetId": target_id, "targetMimeType": target_mime}));
            }
        }
        m.insert("quotaBytesUsed".into(), json!(quota_bytes.to_string()));
        // Links to Google's web pages, shaped as Drive's (the emulator serves no viewer):
        // every item has a viewer link, a binary file also a download link.
        let view = match &self.body {
            Body::Folder => format!("https://drive.google.com/drive/folders/{}", self.id),
            Body::Doc { kind, .. } => {
                format!("https://docs.google.com/{}/d/{}/edit?usp=drivesdk", kind.web_path(), self.id)
            }
            Body::Blob { .. } | Body::Shortcut { .. } => {
                format!("https://drive.google.com/file/d/{}/view?usp=drivesdk", self.id)
            }
        };
        m.insert("webViewLink".into(), json!(view));
        if let Body::Blob { .. } = self.body {
            m.insert(
                "webContentLink".into(),
                json!(format!("https://drive.google.com/uc?id={}&export=download", self.id)),
            );
        }
        let blob = matches!(self.body, Body::Blob { .. });
        m.insert(
            "capabilities".into(),
            json!({
                "canDownload": blob || matches!(self.body, Body::Doc { .. }),
                "canEdit": true,
                "canRename": true,
                "canTrash": !self.parents.is_empty(),
                "canDelete": !self.parents.is_empty(),
                "canAddChildren": self.is_folder(),
                "canListChildren": self.is_folder(),
            }),
        );
        Value::Object(m)
    }
}

/// The parts of a new file that a request or a seed gives.
#[derive(Debug, Clone)]
pub(crate) struct NewFile {
    pub(crate) name: String,
    pub(crate) mime_type: String,
    pub(crate) parent: String,
    pub(crate) body: Body,
    pub(crate) created_ms: Option<i64>,
    pub(crate) modified_ms: Option<i64>,
    pub(crate) starred: bool,
    pub(crate) description: Option<String>,
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) app_properties: BTreeMap<String, String>,
}

impl NewFile {
    pub(crate) fn new(name: &str, parent: &str, mime_type: &str, body: Body) -> NewFile {
        NewFile {
            name: name.to_string(),
            mime_type: mime_type.to_string(),
            parent: parent.to_string(),
            body,
            created_ms: None,
            modified_ms: None,
            starred: false,
            description: None,
            properties: BTreeMap::new(),
            app_properties: BTreeMap::new(),
        }
    }
}

/// One file in a tree listing, for tests to inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Path from the tree's root, `/`-separated.
    pub path: String,
    /// The file's id.
    pub id: String,
    /// Its MIME type.
    pub mime_type: String,
    /// Bytes of content (0 for folders, Docs and shortcuts).
    pub size_bytes: u64,
    /// MD5 of the content, for binary files.
    pub md5: Option<String>,
    /// Whether it is in the trash.
    pub trashed: bool,
}

/// One shared drive.
#[derive(Debug, Clone)]
pub(crate) struct SharedDrive {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) created_ms: i64,
}

/// A position in a listing: after this (sort key, id).
pub(crate) type Cursor = (u64, String);

/// What to list.
pub(crate) struct ListSpec<'a> {
    pub(crate) expr: Option<&'a Expr>,
    /// Include items in shared drives (`includeItemsFromAllDrives=true`).
    pub(crate) include_shared: bool,
    /// Only items of this shared drive (`corpora=drive`).
    pub(crate) drive: Option<&'a str>,
    pub(crate) after: Option<Cursor>,
    /// Most results in this page.
    pub(crate) limit: usize,
    /// Most candidates examined for this page; a partial page is returned past it.
    pub(crate) scan_max: usize,
}

/// The store.
pub(crate) struct Store {
    files: HashMap<String, File>,
    children: HashMap<String, BTreeSet<Cursor>>,
    all: BTreeSet<Cursor>,
    root_id: String,
    drives: Vec<SharedDrive>,
    /// Content bytes in My Drive, trash included.
    usage_bytes: u64,
    usage_trash_bytes: u64,
    /// Content bytes in shared drives.
    shared_bytes: u64,
    rng: fastrand::Rng,
    files_max: usize,
}

impl Store {
    pub(crate) fn new(seed: u64, shared_drives: &[String], files_max: usize) -> Store {
        let mut s = Store {
            files: HashMap::new(),
            children: HashMap::new(),
            all: BTreeSet::new(),
            root_id: String::new(),
            drives: Vec::new(),
            usage_bytes: 0,
            usage_trash_bytes: 0,
            shared_bytes: 0,
            rng: fastrand::Rng::with_seed(seed),
            files_max,
        };
        let now = time::now_ms();
        // Drive's root and shared-drive ids start with 0A; file ids with 1.
        s.root_id = s.new_id("0A");
        let root = s.root_file(s.root_id.clone(), "My Drive", None, now);
        s.files.insert(root.id.clone(), root);
        for name in shared_drives {
            let id = s.new_id("0A");
            let root = s.root_file(id.clone(), name, Some(id.clone()), now);
            s.files.insert(id.clone(), root);
            s.drives.push(SharedDrive { id, name: name.clone(), created_ms: now });
        }
        s
    }

    fn root_file(&mut self, id: String, name: &str, drive_id: Option<String>, now: i64) -> File {
        File {
            id,
            name: name.to_string(),
            mime_type: FOLDER_MIME.to_string(),
            parents: Vec::new(),
            drive_id,
            body: Body::Folder,
            created_ms: now,
            modified_ms: now,
            trashed: false,
            explicitly_trashed: false,
            starred: false,
            description: None,
            properties: BTreeMap::new(),
            app_properties: BTreeMap::new(),
            version: 1,
            sort_key: self.rng.u64(..),
        }
    }

    /// A fresh id: `prefix` then base62 characters, 33 in all, as Drive's look.
    pub(crate) fn new_id(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        loop {
            let mut id = prefix.to_string();
            while id.len() < 33 {
                id.push(char::from(ALPHABET[self.rng.usize(..ALPHABET.len())]));
            }
            if !self.files.contains_key(&id) {
                return id;
            }
        }
    }

    pub(crate) fn root_id(&self) -> &str {
        &self.root_id
    }

    pub(crate) fn drives(&self) -> &[SharedDrive] {
        &self.drives
    }

    /// `root` means My Drive's root; any other id is itself.
    pub(crate) fn resolve(&self, id: &str) -> String {
        if id == "root" {
            self.root_id.clone()
        } else {
            id.to_string()
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<&File> {
        self.files.get(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    /// Content bytes held, My Drive and shared drives (what the storage limit bounds).
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.usage_bytes + self.shared_bytes
    }

    /// (usage, usage in trash) of My Drive, as about.get reports them.
    pub(crate) fn usage(&self) -> (u64, u64) {
        (self.usage_bytes, self.usage_trash_bytes)
    }

    fn account(&mut self, f: &File, sign: i64) {
        let n = f.blob_len();
        let apply = |v: &mut u64| {
            *v = if sign > 0 { *v + n } else { v.checked_sub(n).expect("usage covers every stored file") };
        };
        if f.drive_id.is_some() {
            apply(&mut self.shared_bytes);
        } else {
            apply(&mut self.usage_bytes);
            if f.trashed {
                apply(&mut self.usage_trash_bytes);
            }
        }
    }

    /// Checks that `parent` can take a child: it exists and is a folder.
    pub(crate) fn check_parent(&self, parent: &str) -> Result<&File, ApiError> {
        let p = self.files.get(parent).ok_or_else(|| ApiError::file_not_found(parent))?;
        if !p.is_folder() {
            return Err(ApiError::bad_request(format!("The parent {parent} is not a folder.")));
        }
        Ok(p)
    }

    /// Adds a file; returns its id. The parent must be a folder.
    pub(crate) fn create(&mut self, new: NewFile) -> Result<String, ApiError> {
        if self.files.len() >= self.files_max {
            return Err(ApiError::bad_request(format!(
                "The emulator holds at most {} files (DriveOptions::files_max).",
                self.files_max
            )));
        }
        if new.name.len() > NAME_BYTES_MAX {
            return Err(ApiError::bad_request("The file name is too long."));
        }
        if new.properties.len() + new.app_properties.len() > PROPERTIES_MAX {
            return Err(ApiError::bad_request("Too many properties."));
        }
        let parent = self.check_parent(&new.parent)?;
        let drive_id = parent.drive_id.clone();
        let trashed = parent.trashed;
        let now = time::now_ms();
        let id = self.new_id("1");
        let file = File {
            id: id.clone(),
            name: new.name,
            mime_type: new.mime_type,
            parents: vec![new.parent.clone()],
            drive_id,
            body: new.body,
            created_ms: new.created_ms.unwrap_or(now),
            modified_ms: new.modified_ms.unwrap_or(now),
            trashed,
            explicitly_trashed: false,
            starred: new.starred,
            description: new.description,
            properties: new.properties,
            app_properties: new.app_properties,
            version: 1,
            sort_key: self.rng.u64(..),
        };
        self.account(&file, 1);
        self.index(&file);
        self.files.insert(id.clone(), file);
        Ok(id)
    }

    fn index(&mut self, f: &File) {
        let key = (f.sort_key, f.id.clone());
        for p in &f.parents {
            self.children.entry(p.clone()).or_default().insert(key.clone());
        }
        self.all.insert(key);
    }

    fn unindex(&mut self, f: &File) {
        let key = (f.sort_key, f.id.clone());
        for p in &f.parents {
            if let Some(c) = self.children.get_mut(p) {
                c.remove(&key);
                if c.is_empty() {
                    self.children.remove(p);
                }
            }
        }
        self.all.remove(&key);
    }

    /// Changes a file with `f`, keeping indexes and usage right. `f` may change the
    /// parents (already checked by the caller), trashed, content and metadata.
    pub(crate) fn modify<R>(&mut self, id: &str, f: impl FnOnce(&mut File) -> R) -> Option<R> {
        let mut file = self.files.remove(id)?;
        self.account(&file, -1);
        self.unindex(&file);
        let r = f(&mut file);
        assert!(file.parents.len() <= 1, "one parent at most");
        self.account(&file, 1);
        self.index(&file);
        self.files.insert(id.to_string(), file);
        Some(r)
    }

    /// Ids of every file under folder `id` (not itself), depth first.
    fn descendants(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![id.to_string()];
        while let Some(d) = stack.pop() {
            if let Some(kids) = self.children.get(&d) {
                for (_, k) in kids {
                    out.push(k.clone());
                    stack.push(k.clone());
                }
            }
        }
        out
    }

    /// Trashes (or restores) `id` explicitly and everything under it implicitly.
    pub(crate) fn set_trashed(&mut self, id: &str, trashed: bool) {
        self.modify(id, |f| {
            f.trashed = trashed;
            f.explicitly_trashed = trashed;
        });
        for d in self.descendants(id) {
            self.modify(&d, |f| {
                // A restored folder brings back what was trashed with it, not what was
                // trashed on its own.
                if trashed || !f.explicitly_trashed {
                    f.trashed = trashed;
                    f.explicitly_trashed &= trashed;
                }
            });
        }
    }

    /// Deletes `id` and everything under it, for good. Returns how many files went.
    pub(crate) fn delete(&mut self, id: &str) -> usize {
        let mut doomed = self.descendants(id);
        doomed.push(id.to_string());
        for d in &doomed {
            if let Some(f) = self.files.remove(d) {
                self.account(&f, -1);
                self.unindex(&f);
            }
        }
        doomed.len()
    }

    /// One page of a listing: the matching files and, when there may be more, where the
    /// next page starts.
    pub(crate) fn list(&self, spec: &ListSpec<'_>) -> (Vec<&File>, Option<Cursor>) {
        let candidates: &BTreeSet<Cursor> = match spec.expr.and_then(Expr::required_parent) {
            Some(parent) => match self.children.get(parent) {
                Some(c) => c,
                None => return (Vec::new(), None),
            },
            None => &self.all,
        };
        let mut iter: Box<dyn Iterator<Item = &Cursor>> = match &spec.after {
            Some(after) => {
                Box::new(candidates.range((std::ops::Bound::Excluded(after.clone()), std::ops::Bound::Unbounded)))
            }
            None => Box::new(candidates.iter()),
        };
        let mut out = Vec::new();
        let mut scanned = 0;
        let mut last: Option<&Cursor> = None;
        while out.len() < spec.limit && scanned < spec.scan_max {
            let Some(key) = iter.next() else { return (out, None) };
            scanned += 1;
            last = Some(key);
            let f = &self.files[&key.1];
            if f.parents.is_empty() {
                continue; // Roots are never listed.
            }
            match (&f.drive_id, spec.drive) {
                (Some(d), Some(want)) if d != want => continue,
                (None, Some(_)) => continue,
                (Some(_), None) if !spec.include_shared => continue,
                _ => {}
            }
            if spec.expr.is_none_or(|e| e.matches(&f.subject())) {
                out.push(f);
            }
        }
        // Stopped on the limit or the scan budget: more may follow, or nothing (Drive
        // too can hand out a token whose page is empty).
        let more = iter.next().is_some();
        // Nothing examined (an empty page asked for): the next page starts where this one did.
        let here = || last.cloned().or_else(|| spec.after.clone()).unwrap_or((0, String::new()));
        (out, if more { Some(here()) } else { None })
    }

    /// The path of `id` from its root (`a/b/c`), or None for a root or an orphan.
    pub(crate) fn path_of(&self, id: &str) -> Option<String> {
        let mut parts = Vec::new();
        let mut cur = self.files.get(id)?;
        while let Some(p) = cur.parents.first() {
            parts.push(cur.name.as_str());
            cur = self.files.get(p)?;
        }
        if parts.is_empty() {
            return None;
        }
        parts.reverse();
        Some(parts.join("/"))
    }

    /// The folder at `path` under `from` (first match by name among duplicates), created
    /// along the way when `create`.
    pub(crate) fn folder_at(&mut self, from: &str, path: &[&str], create: bool) -> Result<String, ApiError> {
        let mut cur = from.to_string();
        for part in path {
            let found = self.child_named(&cur, part).filter(|f| f.is_folder()).map(|f| f.id.clone());
            cur = match found {
                Some(id) => id,
                None if create => self.create(NewFile::new(part, &cur, FOLDER_MIME, Body::Folder))?,
                None => return Err(ApiError::file_not_found(part)),
            };
        }
        Ok(cur)
    }

    /// The first child of `parent` named `name` (in listing order).
    pub(crate) fn child_named(&self, parent: &str, name: &str) -> Option<&File> {
        self.children.get(parent)?.iter().map(|(_, id)| &self.files[id]).find(|f| f.name == name)
    }

    /// Every child of `parent` named `name`.
    pub(crate) fn children_named(&self, parent: &str, name: &str) -> Vec<&File> {
        self.children
            .get(parent)
            .map(|c| c.iter().map(|(_, id)| &self.files[id]).filter(|f| f.name == name).collect())
            .unwrap_or_default()
    }

    /// Every file under `root`, with paths, sorted by path then id.
    pub(crate) fn tree(&self, root: &str) -> Vec<TreeEntry> {
        let mut out: Vec<TreeEntry> = self
            .descendants(root)
            .iter()
            .filter_map(|id| {
                let f = &self.files[id];
                let full = self.path_of(id)?;
                let base = self.path_of(root);
                let path = match &base {
                    Some(b) => full.strip_prefix(b.as_str())?.trim_start_matches('/').to_string(),
                    None => full,
                };
                let md5 = match &f.body {
                    Body::Blob { digests, .. } => Some(digests.md5.clone()),
                    _ => None,
                };
                Some(TreeEntry {
                    path,
                    id: f.id.clone(),
                    mime_type: f.mime_type.clone(),
                    size_bytes: f.blob_len(),
                    md5,
                    trashed: f.trashed,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.path, &a.id).cmp(&(&b.path, &b.id)));
        out
    }
}

/// A Doc's export as `mime`, or None when its type has no such format. The bytes are
/// deterministic: a Document's `text/plain` is a UTF-8 byte-order mark and the text (as
/// Drive's is), a Spreadsheet's `text/csv` is the text and its TSV the text with tabs
/// for commas; any other format is a short header naming the format, then the text. They
/// are not real PDF or OOXML files.
pub(crate) fn export(kind: DocKind, text: &[u8], mime: &str) -> Option<Bytes> {
    if !kind.export_formats().contains(&mime) {
        return None;
    }
    let out = match (kind, mime) {
        (DocKind::Document, "text/plain") => [b"\xEF\xBB\xBF".as_slice(), text].concat(),
        (DocKind::Presentation, "text/plain") | (DocKind::Spreadsheet, "text/csv") => text.to_vec(),
        (DocKind::Spreadsheet, "text/tab-separated-values") => {
            text.iter().map(|&c| if c == b',' { b'\t' } else { c }).collect()
        }
        _ => [format!("laminar-emulator export of a {} as {mime}\n", kind.mime_type()).as_bytes(), text].concat(),
    };
    Some(Bytes::from(out))
}

/// FNV-1a, for page tokens that must not be reused with another query.
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(bytes: &'static [u8]) -> Body {
        let content = Content::from_bytes(Bytes::from_static(bytes));
        Body::Blob { digests: Hashers::of(&content), content, original_filename: None, revision: 1 }
    }

    #[test]
    fn content_slices_across_segments() {
        let mut c = Content::default();
        c.push(Bytes::from_static(b"abc"));
        c.push(Bytes::new());
        c.push(Bytes::from_static(b"defgh"));
        assert_eq!(c.len(), 8);
        let join = |v: Vec<Bytes>| v.concat();
        assert_eq!(join(c.slices(0, 8)), b"abcdefgh");
        assert_eq!(join(c.slices(2, 3)), b"cde");
        assert_eq!(join(c.slices(3, 0)), b"");
        assert_eq!(join(c.slices(7, 1)), b"h");
        assert_eq!(Hashers::of(&c).md5, hex::encode(md5::Md5::digest(b"abcdefgh")));
    }

    #[test]
    fn paging_visits_every_child_once_in_no_fixed_order() {
        let mut s = Store::new(7, &[], 10_000);
        let root = s.root_id().to_string();
        let folder = s.folder_at(&root, &["d"], true).unwrap();
        let mut want = BTreeSet::new();
        for i in 0..57 {
            // Duplicate names are allowed.
            let id = s.create(NewFile::new(&format!("f{}", i % 50), &folder, "text/plain", blob(b"x"))).unwrap();
            want.insert(id);
        }
        let mut q = Expr::parse(&format!("'{folder}' in parents and trashed = false")).unwrap();
        q.resolve_parents(&|i| i.to_string());
        let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
        loop {
            let spec =
                ListSpec { expr: Some(&q), include_shared: false, drive: None, after, limit: 10, scan_max: 1000 };
            let (page, next) = s.list(&spec);
            assert!(page.len() <= 10);
            seen.extend(page.iter().map(|f| f.id.clone()));
            pages += 1;
            match next {
                Some(c) => after = Some(c),
                None => break,
            }
        }
        assert_eq!(pages, 6);
        assert_eq!(seen.len(), 57, "no file twice");
        assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), want);
        let names: Vec<_> = seen.iter().map(|id| s.get(id).unwrap().name.clone()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_ne!(names, sorted, "not in name order");
        assert_eq!(s.children_named(&folder, "f3").len(), 2);
    }

    #[test]
    fn scan_budget_gives_partial_pages_and_trash_filters() {
        let mut s = Store::new(1, &[], 1000);
        let root = s.root_id().to_string();
        let a = s.create(NewFile::new("a", &root, "text/plain", blob(b"aa"))).unwrap();
        let _b = s.create(NewFile::new("b", &root, "text/plain", blob(b"bbb"))).unwrap();
        assert_eq!(s.usage(), (5, 0));
        s.set_trashed(&a, true);
        assert_eq!(s.usage(), (5, 2));
        let q = Expr::parse(&format!("'{root}' in parents and trashed = false")).unwrap();
        let spec = ListSpec { expr: Some(&q), include_shared: false, drive: None, after: None, limit: 10, scan_max: 1 };
        let (page, next) = s.list(&spec);
        assert!(page.len() <= 1 && next.is_some(), "stops after one candidate");
        let empty = ListSpec { limit: 0, ..spec };
        let (page, next) = s.list(&empty);
        assert_eq!((page.len(), next.clone()), (0, Some((0, String::new()))), "an empty page keeps its place");
        let spec = ListSpec { scan_max: 100, limit: 10, after: next, ..empty };
        let (page, next) = s.list(&spec);
        assert_eq!((page.len(), next), (1, None));
        assert_eq!(s.delete(&a), 1);
        assert_eq!(s.usage(), (3, 0));
    }

    #[test]
    fn trash_cascades_and_paths() {
        let mut s = Store::new(3, &["Team".to_string()], 1000);
        let root = s.root_id().to_string();
        let d = s.folder_at(&root, &["x", "y"], true).unwrap();
        let f = s.create(NewFile::new("f.txt", &d, "text/plain", blob(b"hi"))).unwrap();
        assert_eq!(s.path_of(&f).as_deref(), Some("x/y/f.txt"));
        let x = s.folder_at(&root, &["x"], false).unwrap();
        s.set_trashed(&x, true);
        assert!(s.get(&f).unwrap().trashed && !s.get(&f).unwrap().explicitly_trashed);
        s.set_trashed(&x, false);
        assert!(!s.get(&f).unwrap().trashed);
        let tree = s.tree(&root);
        assert_eq!(tree.iter().map(|t| t.path.as_str()).collect::<Vec<_>>(), ["x", "x/y", "x/y/f.txt"]);
        let team = s.drives()[0].id.clone();
        let t = s.create(NewFile::new("t", &team, "text/plain", blob(b"t"))).unwrap();
        assert_eq!(s.get(&t).unwrap().drive_id.as_deref(), Some(team.as_str()));
        assert_eq!(s.stored_bytes(), 3);
        assert_eq!(s.usage(), (2, 0), "shared drives do not count in My Drive");
        assert_eq!(s.delete(&x), 3);
    }

    #[test]
    fn exports_are_deterministic() {
        let e = export(DocKind::Document, b"hi", "text/plain").unwrap();
        assert_eq!(&e[..], b"\xEF\xBB\xBFhi");
        assert!(export(DocKind::Document, b"hi", "text/csv").is_none());
        assert_eq!(&export(DocKind::Spreadsheet, b"a,b", "text/tab-separated-values").unwrap()[..], b"a\tb");
        assert_eq!(export(DocKind::Drawing, b"x", "image/png"), export(DocKind::Drawing, b"x", "image/png"));
    }
}
