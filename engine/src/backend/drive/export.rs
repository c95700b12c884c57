//! Google Docs, Sheets, Slides and Drawings, which have no bytes of their own, read as
//! exports (`files.export`), and the spool that makes an export's size known before
//! it is read.
//!
//! The relay plans from the sizes a listing gives, and checks every byte it reads
//! against them and against the source's checksums. An editor file's listed `size`
//! is not the size of any export, and Drive does not promise that two exports of one
//! unchanged Doc are the same bytes (a PDF carries its creation time). So a Doc is
//! exported once, when the listing first meets it (or when a read or stat asks for it
//! before any listing did), and the bytes go to this spool: a file in a directory of
//! its own under the data directory (`$LAMINAR_DATA_DIR/drive-exports-PID-N/`), with
//! their size, MD5 and SHA-256. The listing gives that size, and reads serve those
//! very bytes, checked against those digests end to end. Drive caps an export at
//! 10 MB (403 `exportSizeLimitExceeded` beyond, and such a Doc is skipped with the
//! reason), so one entry is at most that; all of them together at most
//! [`SPOOL_BYTES_MAX`]. Past it only the size and digests are kept, and a read
//! exports again and must get the same bytes (else the object fails, saying to run
//! the relay again): bounded disk, never wrong bytes.
//!
//! The spool is keyed by file id, format and the file's `version` and `modifiedTime`,
//! which change with every edit, so an edit made while a relay runs is never served
//! from an older export. The same pair is the object's version token
//! (`Entry::version`), so a re-run skips a Doc whose export is already at the
//! destination when the Doc was not edited since, without comparing bytes. The
//! directory goes when the relay ends; one left by a process that died is removed by
//! the next spool to start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::checksum::{Checksum, ChecksumAlgo, Hasher};
use crate::error::{Error, Result};

/// What `export` is when a remote does not say.
pub(super) const DEFAULT_EXPORT: &str = "docx,xlsx,pptx";
/// Most bytes of exports the spool holds on disk.
pub(super) const SPOOL_BYTES_MAX: u64 = 1 << 30;
/// Most exports the spool remembers (each a few hundred bytes of memory).
const SPOOL_ENTRIES_MAX: usize = 1 << 20;
/// Drive's limit on exported content (10 MB); also the most read of one export.
pub(super) const EXPORT_BYTES_MAX: u64 = 10_000_000;

/// A Google editor type that exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Document,
    Spreadsheet,
    Presentation,
    Drawing,
}

impl Kind {
    pub(super) fn of(mime: &str) -> Option<Kind> {
        Some(match mime.strip_prefix(super::GOOGLE_APPS_PREFIX)? {
            "document" => Kind::Document,
            "spreadsheet" => Kind::Spreadsheet,
            "presentation" => Kind::Presentation,
            "drawing" => Kind::Drawing,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Document => "Google Doc",
            Kind::Spreadsheet => "Google Sheet",
            Kind::Presentation => "Google Slides file",
            Kind::Drawing => "Google Drawing",
        }
    }
}

/// One export format: the extension the exported object's key gets, and the MIME
/// type files.export takes for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Format {
    /// The extension, without the dot.
    pub ext: &'static str,
    /// The MIME type asked of files.export.
    pub mime: &'static str,
    kinds: &'static [Kind],
}

use Kind::{Document as D, Drawing as G, Presentation as P, Spreadsheet as S};

/// The formats Drive documents for each editor type (about.get's `exportFormats`).
const FORMATS: &[Format] = &[
    Format {
        ext: "docx",
        mime: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        kinds: &[D],
    },
    Format { ext: "odt", mime: "application/vnd.oasis.opendocument.text", kinds: &[D] },
    Format { ext: "rtf", mime: "application/rtf", kinds: &[D] },
    Format { ext: "epub", mime: "application/epub+zip", kinds: &[D] },
    Format { ext: "html", mime: "text/html", kinds: &[D] },
    Format { ext: "md", mime: "text/markdown", kinds: &[D] },
    Format { ext: "xlsx", mime: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", kinds: &[S] },
    Format { ext: "ods", mime: "application/vnd.oasis.opendocument.spreadsheet", kinds: &[S] },
    Format { ext: "csv", mime: "text/csv", kinds: &[S] },
    Format { ext: "tsv", mime: "text/tab-separated-values", kinds: &[S] },
    Format {
        ext: "pptx",
        mime: "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        kinds: &[P],
    },
    Format { ext: "odp", mime: "application/vnd.oasis.opendocument.presentation", kinds: &[P] },
    Format { ext: "txt", mime: "text/plain", kinds: &[D, P] },
    Format { ext: "pdf", mime: "application/pdf", kinds: &[D, S, P, G] },
    Format { ext: "svg", mime: "image/svg+xml", kinds: &[G] },
    Format { ext: "png", mime: "image/png", kinds: &[G] },
    Format { ext: "jpg", mime: "image/jpeg", kinds: &[G] },
];

/// Reads `export`: extensions separated by commas, or `none`.
pub(super) fn parse_formats(list: &str) -> std::result::Result<Vec<&'static Format>, String> {
    let list = list.trim();
    if list.eq_ignore_ascii_case("none") || list.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<&'static Format> = Vec::new();
    for ext in list.split(',').map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase()) {
        let Some(f) = FORMATS.iter().find(|f| f.ext == ext) else {
            let known: Vec<&str> = FORMATS.iter().map(|f| f.ext).collect();
            return Err(format!(
                "unknown format {ext:?}: give extensions separated by commas from {}, or none to skip Google Docs",
                known.join(", ")
            ));
        };
        if !out.contains(&f) {
            out.push(f);
        }
    }
    Ok(out)
}

/// The format a file of `mime` is exported in, or why it is not exported.
pub(super) fn choose(formats: &[&'static Format], mime: &str) -> std::result::Result<&'static Format, String> {
    let Some(kind) = Kind::of(mime) else {
        return Err(format!("it is a Google file of type {mime}, which has no bytes and no export format"));
    };
    if formats.is_empty() {
        return Err(format!(
            "it is a {}, which has no bytes to copy, and exports are off (--drive-export none)",
            kind.name()
        ));
    }
    formats.iter().copied().find(|f| f.kinds.contains(&kind)).ok_or_else(|| {
        let fits: Vec<&str> = FORMATS.iter().filter(|f| f.kinds.contains(&kind)).map(|f| f.ext).collect();
        format!(
            "it is a {}, and no format in the export list suits it: add one of {} to --drive-export",
            kind.name(),
            fits.join(", ")
        )
    })
}

/// What the spool knows of one export.
#[derive(Debug)]
pub(super) struct Spooled {
    pub(super) size: u64,
    pub(super) md5: Checksum,
    pub(super) sha256: Checksum,
    /// Where the bytes are; None when the spool was full and only the digests were kept.
    path: Option<PathBuf>,
}

impl Spooled {
    pub(super) fn checksums(&self) -> Vec<Checksum> {
        vec![self.md5.clone(), self.sha256.clone()]
    }

    /// The spooled bytes, or None when only the digests were kept.
    pub(super) fn bytes(&self, target: &str) -> Result<Option<Vec<u8>>> {
        let Some(path) = &self.path else { return Ok(None) };
        // At most 10 MB from a file just written (the page cache, most likely): read
        // in place rather than through the worker's ring.
        let bytes = std::fs::read(path).map_err(|e| Error::io("get", target, e))?;
        if bytes.len() as u64 != self.size {
            return Err(Error::protocol("get", target, format!("the export spool file {} changed", path.display())));
        }
        Ok(Some(bytes))
    }

    /// Whether `bytes` are the export this entry describes.
    pub(super) fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.size && digest(ChecksumAlgo::Md5, bytes) == self.md5
    }
}

fn digest(algo: ChecksumAlgo, bytes: &[u8]) -> Checksum {
    let mut h = Hasher::new(algo);
    h.update(bytes);
    h.finish()
}

/// Exports by file id, format and version, shared by every worker of one remote.
pub(super) struct Spool {
    /// Where the files go, made when the first export arrives.
    parent: PathBuf,
    inner: Mutex<Inner>,
    next: AtomicU64,
}

#[derive(Default)]
struct Inner {
    dir: Option<PathBuf>,
    entries: HashMap<String, Arc<Spooled>>,
    bytes: u64,
}

const DIR_PREFIX: &str = "drive-exports-";

impl Spool {
    pub(super) fn new(parent: PathBuf) -> Spool {
        Spool { parent, inner: Mutex::default(), next: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("no panics holding the export spool")
    }

    pub(super) fn key(id: &str, format: &Format, version: &str) -> String {
        format!("{id}\n{}\n{version}", format.ext)
    }

    pub(super) fn get(&self, key: &str) -> Option<Arc<Spooled>> {
        self.lock().entries.get(key).cloned()
    }

    /// Keeps `bytes` as the export `key` names; returns what is kept. An export
    /// already there (another worker's) wins, so every reader sees one set of bytes.
    pub(super) fn put(&self, key: &str, bytes: &[u8], target: &str) -> Result<Arc<Spooled>> {
        if let Some(e) = self.get(key) {
            return Ok(e);
        }
        let size = bytes.len() as u64;
        let md5 = digest(ChecksumAlgo::Md5, bytes);
        let sha256 = digest(ChecksumAlgo::Sha256, bytes);
        let reserved = {
            let mut inner = self.lock();
            let room = inner.bytes + size <= SPOOL_BYTES_MAX;
            if room {
                inner.bytes += size;
            }
            room
        };
        let path = if reserved {
            let dir = self.dir(target)?;
            let path = dir.join(format!("{}", self.next.fetch_add(1, Ordering::Relaxed)));
            if let Err(e) = std::fs::write(&path, bytes) {
                self.lock().bytes -= size;
                let _ = std::fs::remove_file(&path);
                return Err(Error::io("export", target, e));
            }
            Some(path)
        } else {
            None
        };
        let entry = Arc::new(Spooled { size, md5, sha256, path });
        let mut inner = self.lock();
        if let Some(e) = inner.entries.get(key) {
            // Another worker spooled it meanwhile.
            let e = e.clone();
            if let Some(p) = &entry.path {
                inner.bytes -= size;
                let _ = std::fs::remove_file(p);
            }
            return Ok(e);
        }
        if inner.entries.len() >= SPOOL_ENTRIES_MAX {
            // Forgetting only costs a second export: a read exports again.
            if let Some(p) = &entry.path {
                inner.bytes -= size;
                let _ = std::fs::remove_file(p);
            }
            return Ok(Arc::new(Spooled { path: None, ..Arc::into_inner(entry).expect("not shared yet") }));
        }
        inner.entries.insert(key.to_string(), entry.clone());
        Ok(entry)
    }

    /// The spool's directory, made on first use; leftovers of dead processes go.
    fn dir(&self, target: &str) -> Result<PathBuf> {
        let mut inner = self.lock();
        if let Some(d) = &inner.dir {
            return Ok(d.clone());
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(&self.parent).map_err(|e| Error::io("export", target, e))?;
        remove_leftovers(&self.parent);
        let name = format!("{DIR_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = self.parent.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("export", dir.display().to_string(), e))?;
        inner.dir = Some(dir.clone());
        Ok(dir)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(dir) = self.inner.get_mut().ok().and_then(|i| i.dir.take()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Removes spool directories whose process is gone (`drive-exports-PID-N`).
fn remove_leftovers(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)).and_then(|r| r.split('-').next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_chosen_by_type() {
        let formats = parse_formats(DEFAULT_EXPORT).unwrap();
        let ext = |mime: &str| choose(&formats, mime).map(|f| f.ext);
        assert_eq!(ext("application/vnd.google-apps.document"), Ok("docx"));
        assert_eq!(ext("application/vnd.google-apps.spreadsheet"), Ok("xlsx"));
        assert_eq!(ext("application/vnd.google-apps.presentation"), Ok("pptx"));
        let why = ext("application/vnd.google-apps.drawing").unwrap_err();
        assert!(why.contains("Google Drawing") && why.contains("svg"), "{why}");
        assert!(ext("application/vnd.google-apps.form").unwrap_err().contains("no export format"));
        let pdf = parse_formats("pdf,docx").unwrap();
        assert_eq!(choose(&pdf, "application/vnd.google-apps.document").map(|f| f.ext), Ok("pdf"));
        assert!(choose(&[], "application/vnd.google-apps.document").unwrap_err().contains("exports are off"));
        assert_eq!(parse_formats("none").unwrap(), Vec::<&Format>::new());
        assert_eq!(parse_formats("docx, .DOCX").unwrap().len(), 1);
        assert!(parse_formats("docx,,").is_err());
    }

    #[test]
    fn the_spool_keeps_one_export_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().to_path_buf());
        let f = &FORMATS[0];
        let key = Spool::key("id1", f, "7@t");
        let a = spool.put(&key, b"first", "k").unwrap();
        let b = spool.put(&key, b"second, longer", "k").unwrap();
        assert_eq!((a.size, b.size), (5, 5), "the first export wins");
        assert_eq!(b.bytes("k").unwrap().as_deref(), Some(&b"first"[..]));
        assert!(a.matches(b"first") && !a.matches(b"frist"));
        let made: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(made.len(), 1, "one directory");
        // A leftover of a process that is gone is removed by the next spool.
        let stale = dir.path().join(format!("{DIR_PREFIX}{}-0", u32::MAX - 1));
        std::fs::create_dir_all(&stale).unwrap();
        let other = Spool::new(dir.path().to_path_buf());
        other.put(&Spool::key("id2", f, "1@t"), b"x", "k").unwrap();
        assert!(!stale.exists());
        drop(spool);
        drop(other);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "spools remove their directories");
    }
}
