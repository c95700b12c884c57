//! Listing: a walk of the folder tree below the prefix, [`FOLDERS_PER_PAGE`] folders
//! read at once per page (each read whole, its pages one after the other), and the
//! names files are listed under. A tree of many small folders is then listed at that
//! many requests in flight rather than one.
//!
//! A key is the path of names from the remote's root. What a file is listed as:
//!
//! - a binary file: its name;
//! - a Google Doc, Sheet, Slides file or Drawing: its name with the extension of the
//!   format it is exported in (`Report` → `Report.docx`; see `export.rs`), or skipped
//!   with the reason when exports are off or no listed format suits its type;
//! - a shortcut: skipped with the reason, unless shortcuts are followed: then one to a
//!   file is listed under the shortcut's name (plus an export's extension) with the
//!   target's bytes, and one to a folder is walked as a folder of the shortcut's name.
//!   A walk carries the ids of the folders it came through, so a shortcut back to one
//!   of them (a cycle) is skipped with the reason, and at most
//!   [`FOLLOWED_FOLDERS_MAX`] folders are walked through shortcuts in one listing.
//!
//! Duplicate names: within one folder, among the files (or the folders) listed under
//! one name, the one with the smallest id keeps the name and each other gets ` (ID)`
//! inserted before its extension (`a.txt`, `a (1xYz).txt`). A made-up name that is
//! some other file's own name (a file really called `a (1xYz).txt`) gets ` (ID)`
//! again (`a (1xYz) (1xYz).txt`) until it is no other's, so every key is unique and
//! the same folder always gives the same keys. Files that are skipped take no name.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::export::{self, Format};
use super::{DriveConfig, DriveStore, FileRes, FOLDER_MIME, GOOGLE_APPS_PREFIX, LIST_FIELDS, SHORTCUT_MIME};
use crate::backend::{LeftOut, ListPage};
use crate::error::{Error, ErrorClass, Result};

/// Most folders one listing walks through shortcuts (a bound on a shortcut graph
/// that would make the walk explode, short of a cycle).
const FOLLOWED_FOLDERS_MAX: u64 = 100_000;
/// Folders read at once by one listing step: enough to hide the round trip of
/// `files.list`, few enough to stay well under Drive's per-user request rate.
pub(super) const FOLDERS_PER_PAGE: usize = 8;

/// What a file of a folder is listed as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Listed {
    /// A folder, walked.
    Folder,
    /// A shortcut to folder `target`, walked as a folder.
    Linked { target: String },
    /// A file with bytes (or an export), under this name.
    File { name: String, export: Option<&'static Format> },
    /// Not copied, for this reason.
    Skip(String),
}

impl Listed {
    fn is_dir(&self) -> bool {
        matches!(self, Listed::Folder | Listed::Linked { .. })
    }
}

/// `name` with `.ext`, unless it ends so already.
fn with_ext(name: &str, ext: &str) -> String {
    let has = name.len() > ext.len() + 1
        && name.is_char_boundary(name.len() - ext.len() - 1)
        && name[name.len() - ext.len() - 1..].eq_ignore_ascii_case(&format!(".{ext}"));
    if has {
        name.to_string()
    } else {
        format!("{name}.{ext}")
    }
}

/// What `f` is listed as, from its metadata alone (a shortcut's target type comes
/// with it), so that a listing and a later lookup of one key agree.
pub(super) fn listed(cfg: &DriveConfig, f: &FileRes) -> Listed {
    if f.is_folder() {
        return Listed::Folder;
    }
    let (mime, followed) = if f.mime_type == SHORTCUT_MIME {
        if !cfg.follow_shortcuts {
            return Listed::Skip(
                "it is a shortcut; give --drive-follow-shortcuts (or follow_shortcuts = true) to copy what it \
                 points to"
                    .into(),
            );
        }
        let Some(d) = &f.shortcut_details else {
            return Listed::Skip("it is a shortcut whose target Drive does not say".into());
        };
        if d.target_mime_type == FOLDER_MIME {
            return Listed::Linked { target: d.target_id.clone() };
        }
        (d.target_mime_type.as_str(), true)
    } else {
        (f.mime_type.as_str(), false)
    };
    if mime == SHORTCUT_MIME {
        return Listed::Skip("it is a shortcut to a shortcut".into());
    }
    if mime.starts_with(GOOGLE_APPS_PREFIX) {
        return match export::choose(&cfg.export, mime) {
            Ok(format) => Listed::File { name: with_ext(&f.name, format.ext), export: Some(format) },
            Err(why) if followed => Listed::Skip(format!("it is a shortcut to a file that is not copied: {why}")),
            Err(why) => Listed::Skip(why),
        };
    }
    Listed::File { name: f.name.clone(), export: None }
}

/// The name a duplicate gets: ` (ID)` before the extension.
pub(super) fn duplicate_name(name: &str, id: &str) -> String {
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({id}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({id})"),
    }
}

/// The id in a name that [`duplicate_name`] made, if it is one.
pub(super) fn duplicate_id(name: &str) -> Option<&str> {
    let open = name.rfind(" (")?;
    let close = open + name[open..].find(')')?;
    let id = &name[open + 2..close];
    let rest = &name[close + 1..];
    let plausible = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (plausible && (rest.is_empty() || rest.starts_with('.'))).then_some(id)
}

/// The names a duplicate called `name` with id `id` may be listed under, in the order
/// they are tried: [`duplicate_name`] once, twice, and so on, each longer than the
/// one before (so all different).
fn made_up_names<'a>(name: &str, id: &'a str) -> impl Iterator<Item = String> + 'a {
    std::iter::successors(Some(duplicate_name(name, id)), move |made| Some(duplicate_name(made, id)))
}

/// Whether `name` is one of the [`made_up_names`] of a duplicate called `listed` with
/// id `id`: how a lookup of a made-up name checks the file its id gives.
pub(super) fn is_made_up(name: &str, listed: &str, id: &str) -> bool {
    made_up_names(listed, id).take_while(|made| made.len() <= name.len()).any(|made| made == name)
}

/// The name each file of one folder is listed under (None for a skipped one), all
/// different among the folders (and followed folder shortcuts) and among the files,
/// which are named apart. The smallest id keeps a repeated name; each other file,
/// taken in the order of name and id, gets the first of its [`made_up_names`] that no
/// file keeps and none before it got. The names depend only on the folder's files,
/// not on the order Drive lists them in (but for two of one id, which Drive never
/// gives: the first listed is taken first).
pub(super) fn unique_names(files: &[FileRes], kinds: &[Listed]) -> Vec<Option<String>> {
    assert_eq!(files.len(), kinds.len());
    let base = |f: &FileRes, l: &Listed| -> Option<String> {
        match l {
            Listed::Folder | Listed::Linked { .. } => Some(f.name.clone()),
            Listed::File { name, .. } => Some(name.clone()),
            Listed::Skip(_) => None,
        }
    };
    let names: Vec<Option<String>> = files.iter().zip(kinds).map(|(f, l)| base(f, l)).collect();
    let order = |i: usize| (names[i].as_deref(), files[i].id.as_str(), i);
    // Which file keeps each name: the smallest id (then the first listed).
    let mut keeper: HashMap<(bool, &str), usize> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(name) = name {
            let k = keeper.entry((kinds[i].is_dir(), name.as_str())).or_insert(i);
            if order(i) < order(*k) {
                *k = i;
            }
        }
    }
    let mut out: Vec<Option<String>> = vec![None; files.len()];
    // The names taken, of the files and of the folders.
    let mut taken: [HashSet<String>; 2] = Default::default();
    for (&(dir, name), &i) in &keeper {
        out[i] = Some(name.to_string());
        taken[usize::from(dir)].insert(name.to_string());
    }
    let mut others: Vec<usize> = (0..files.len()).filter(|&i| names[i].is_some() && out[i].is_none()).collect();
    others.sort_by_key(|&i| order(i));
    for i in others {
        let taken = &mut taken[usize::from(kinds[i].is_dir())];
        let name = names[i].as_deref().expect("only named files");
        // Of `taken.len() + 1` different names at least one is free.
        let made = made_up_names(name, &files[i].id)
            .take(taken.len() + 1)
            .find(|made| !taken.contains(made))
            .expect("one of more names than are taken is free");
        taken.insert(made.clone());
        out[i] = Some(made);
    }
    out
}

/// One folder still to read.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    id: String,
    /// The key prefix of what is in it (`a/b/`).
    at: String,
    /// Ids of the folders the walk came through to it, itself included; kept only when
    /// shortcuts are followed (without them the folders are a tree).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chain: Vec<String>,
}

/// Where a listing goes on.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Walk {
    folders: Vec<Pending>,
    /// Folders walked through shortcuts so far.
    #[serde(default)]
    followed: u64,
}

impl DriveStore {
    /// One listing step: the next folders of the walk, read whole and at once.
    pub(super) async fn list_page(&self, prefix: &str, token: Option<String>) -> Result<ListPage> {
        let target = format!("{}:{prefix}", self.cfg().remote);
        let follow = self.cfg().follow_shortcuts;
        let mut walk: Walk = match token {
            Some(t) => {
                serde_json::from_str(&t).map_err(|e| Error::protocol("list", &target, format!("bad token: {e}")))?
            }
            None => {
                // Start at the deepest folder the prefix names whole.
                let dir = match prefix.rfind('/') {
                    Some(i) => &prefix[..i],
                    None => "",
                };
                match self.folder(dir, false, &target).await? {
                    Some(id) => {
                        let at = if dir.is_empty() { String::new() } else { format!("{dir}/") };
                        let chain = if follow { vec![id.clone()] } else { Vec::new() };
                        Walk { folders: vec![Pending { id, at, chain }], followed: 0 }
                    }
                    None => return Ok(ListPage::default()),
                }
            }
        };
        let take = walk.folders.len().min(FOLDERS_PER_PAGE);
        let batch = walk.folders.split_off(walk.folders.len() - take);
        let read = batch.iter().map(|here| self.folder_contents(&here.id, LIST_FIELDS, &target));
        let contents = futures_util::future::join_all(read).await;
        let mut page = ListPage::default();
        for (here, files) in batch.into_iter().zip(contents) {
            self.take_folder(prefix, here, files?, &mut walk, &mut page).await?;
        }
        page.next = (!walk.folders.is_empty()).then(|| serde_json::to_string(&walk).expect("serialisable"));
        Ok(page)
    }

    /// The entries of one folder read whole; its subfolders join the walk.
    async fn take_folder(
        &self,
        prefix: &str,
        here: Pending,
        files: Vec<FileRes>,
        walk: &mut Walk,
        page: &mut ListPage,
    ) -> Result<()> {
        let follow = self.cfg().follow_shortcuts;
        let kinds: Vec<Listed> = files.iter().map(|f| listed(self.cfg(), f)).collect();
        let names = unique_names(&files, &kinds);
        page.entries.reserve(files.len());
        for ((f, kind), name) in files.iter().zip(kinds).zip(names) {
            let key = format!("{}{}", here.at, name.as_deref().unwrap_or(&f.name));
            let wanted = if kind.is_dir() {
                let sub = format!("{key}/");
                sub.starts_with(prefix) || prefix.starts_with(&sub)
            } else {
                key.starts_with(prefix)
            };
            if !wanted {
                continue;
            }
            match kind {
                Listed::Folder | Listed::Linked { .. } => {
                    let id = match &kind {
                        Listed::Linked { target } => target.clone(),
                        _ => f.id.clone(),
                    };
                    if let Listed::Linked { .. } = kind {
                        if here.chain.contains(&id) {
                            leave_out(page, &key, "it is a shortcut to a folder it is in (a cycle)");
                            continue;
                        }
                        if walk.followed >= FOLLOWED_FOLDERS_MAX {
                            let why = format!("more than {FOLLOWED_FOLDERS_MAX} folders were reached by shortcuts");
                            leave_out(page, &key, &why);
                            continue;
                        }
                        walk.followed += 1;
                    }
                    self.shared.folders.remember(&key, &id);
                    let mut chain = here.chain.clone();
                    if follow {
                        chain.push(id.clone());
                    }
                    walk.folders.push(Pending { id, at: format!("{key}/"), chain });
                }
                Listed::Skip(why) => leave_out(page, &key, &why),
                Listed::File { export, .. } => match self.resolve(f, export, &key).await {
                    Ok(Some(resolved)) => match self.listed_entry(&resolved, key.clone()).await {
                        Ok(entry) => page.entries.push(entry),
                        Err(e) if e.class() == ErrorClass::FatalObject => leave_out(page, &key, &skip_reason(&e)),
                        Err(e) => return Err(e),
                    },
                    Ok(None) => leave_out(page, &key, "it is a shortcut whose target is gone or not visible"),
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(())
    }
}

/// Records that `key` is not listed, and why.
fn leave_out(page: &mut ListPage, key: &str, why: &str) {
    page.left_out.push(LeftOut { key: key.to_string(), reason: why.to_string() });
}

/// Why a file whose export (or target) failed is skipped.
fn skip_reason(e: &Error) -> String {
    match e {
        Error::Http { code, .. } if code == "exportSizeLimitExceeded" => format!(
            "it is too large to export: Drive exports at most {} MB of a file ({e})",
            export::EXPORT_BYTES_MAX / 1_000_000
        ),
        e => format!("Drive would not give its bytes: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: &str, name: &str, mime: &str) -> FileRes {
        FileRes { id: id.into(), name: name.into(), mime_type: mime.into(), ..FileRes::default() }
    }

    fn cfg(export: &str, follow: bool) -> DriveConfig {
        let text = format!("token = \"t\"\nexport = {export:?}\nfollow_shortcuts = {follow}");
        let table: toml::Table = toml::from_str(&text).unwrap();
        crate::backend::registry::parse::<super::super::DriveRemoteConfig>("gd", "drive", table)
            .unwrap()
            .resolve("gd")
            .unwrap()
    }

    const DOC: &str = "application/vnd.google-apps.document";

    #[test]
    fn duplicate_names_get_their_ids() {
        let c = cfg("docx", false);
        let files = vec![
            file("b2", "a.txt", "text/plain"),
            file("a1", "a.txt", "text/plain"),
            file("c3", "a.txt", FOLDER_MIME),
            file("d", "x", "text/plain"),
            file("e0", "r", DOC),
            file("e1", "r.docx", "application/octet-stream"),
            file("a0", "a.txt", SHORTCUT_MIME),
        ];
        let kinds: Vec<Listed> = files.iter().map(|f| listed(&c, f)).collect();
        let names = unique_names(&files, &kinds);
        let names: Vec<_> = names.iter().map(|n| n.as_deref()).collect();
        assert_eq!(
            names,
            [Some("a (b2).txt"), Some("a.txt"), Some("a.txt"), Some("x"), Some("r.docx"), Some("r (e1).docx"), None]
        );
        assert_eq!(duplicate_name("notes", "Z9"), "notes (Z9)");
        assert_eq!(duplicate_name(".profile", "Z9"), ".profile (Z9)");
        assert_eq!(duplicate_name("a.tar.gz", "Z9"), "a.tar (Z9).gz");
        assert_eq!(duplicate_id("a (b2).txt"), Some("b2"));
        assert_eq!(duplicate_id("notes (Z9)"), Some("Z9"));
        assert_eq!(duplicate_id("holiday (2019) photos.jpg"), None);
        assert_eq!(duplicate_id("plain.txt"), None);
    }

    #[test]
    fn docs_and_shortcuts_are_listed_as_configured() {
        let mut link = file("s", "link", SHORTCUT_MIME);
        link.shortcut_details =
            Some(super::super::ShortcutDetails { target_id: "t".into(), target_mime_type: DOC.into() });
        let mut dir_link = file("s2", "d", SHORTCUT_MIME);
        dir_link.shortcut_details =
            Some(super::super::ShortcutDetails { target_id: "F".into(), target_mime_type: FOLDER_MIME.into() });
        let doc = file("d", "Report", DOC);
        let off = cfg("none", false);
        assert!(matches!(listed(&off, &doc), Listed::Skip(why) if why.contains("exports are off")));
        assert!(matches!(listed(&off, &link), Listed::Skip(why) if why.contains("--drive-follow-shortcuts")));
        let on = cfg("pdf", true);
        assert!(matches!(listed(&on, &doc), Listed::File { name, .. } if name == "Report.pdf"));
        assert!(
            matches!(listed(&on, &link), Listed::File { name, export: Some(f) } if name == "link.pdf" && f.ext == "pdf")
        );
        assert_eq!(listed(&on, &dir_link), Listed::Linked { target: "F".into() });
        assert_eq!(with_ext("a.DOCX", "docx"), "a.DOCX");
        assert_eq!(with_ext("docx", "docx"), "docx.docx");
    }
}
