//! `list_folder` and `list_folder/continue`: pages of entries in an order that is
//! neither sorted nor by creation (a hash of the seed and the path, as Dropbox promises
//! no order), then, once the first pass is done (`has_more: false`), the changes since
//! it by sequence number, deletions as `deleted` entries.
//!
//! The first pass reports what existed when the listing started (its snapshot), with
//! each entry's current metadata; anything created later comes in the changes. A
//! recursive listing of a folder includes the folder itself, as Dropbox's does.
//!
//! A cursor is the listing's state, serialised: scope, flags, page limit, snapshot,
//! position. It carries the emulator's epoch so a cursor from another instance is
//! refused, and a change cursor older than the oldest tombstone kept is `reset`.

use std::ops::Bound;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{tomb_json, Namespace};

const CURSOR_PREFIX: &str = "AAEm";

/// A listing's state (what `cursor` strings encode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListCursor {
    /// `path_lower` of the listed folder, `""` for the root.
    #[serde(rename = "s")]
    scope: String,
    #[serde(rename = "r")]
    recursive: bool,
    #[serde(rename = "d")]
    include_deleted: bool,
    #[serde(rename = "l")]
    limit: u32,
    /// The last change the first pass reports.
    #[serde(rename = "n")]
    snapshot: u64,
    /// First pass: the last `(order key, path)` returned.
    #[serde(rename = "k")]
    after: Option<(u64, String)>,
    /// Changes phase: the last change reported.
    #[serde(rename = "c")]
    since: Option<u64>,
    #[serde(rename = "e")]
    epoch: u64,
    /// `include_property_groups`: the templates whose groups file entries carry.
    #[serde(rename = "g", default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
}

/// A change cursor whose history is gone (`ListFolderContinueError.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reset;

impl ListCursor {
    /// The templates whose property groups the listing's file entries carry.
    pub(crate) fn groups(&self) -> &[String] {
        &self.groups
    }

    /// Sets them (`include_property_groups` of the call that made the cursor).
    pub(crate) fn set_groups(&mut self, groups: Vec<String>) {
        self.groups = groups;
    }

    pub(crate) fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("cursors serialise");
        format!("{CURSOR_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
    }

    /// `None` for anything this emulator (this instance) did not write.
    pub(crate) fn decode(s: &str, epoch: u64) -> Option<ListCursor> {
        let b64 = s.strip_prefix(CURSOR_PREFIX)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64).ok()?;
        let c: ListCursor = serde_json::from_slice(&json).ok()?;
        (c.epoch == epoch && c.limit > 0).then_some(c)
    }
}

fn in_scope(scope: &str, recursive: bool, lower: &str) -> bool {
    if scope.is_empty() {
        return recursive || !lower[1..].contains('/');
    }
    if lower == scope {
        return recursive;
    }
    match lower.strip_prefix(scope).and_then(|r| r.strip_prefix('/')) {
        Some(rest) => recursive || !rest.contains('/'),
        None => false,
    }
}

impl Namespace {
    /// The cursor of a new listing of `scope` (a folder's `path_lower`, or `""`).
    pub(crate) fn list_start(
        &self,
        scope: String,
        recursive: bool,
        include_deleted: bool,
        limit: u32,
        epoch: u64,
    ) -> ListCursor {
        assert!(limit > 0);
        ListCursor {
            scope,
            recursive,
            include_deleted,
            limit,
            snapshot: self.seq,
            after: None,
            since: None,
            epoch,
            groups: Vec::new(),
        }
    }

    /// A cursor that reports only changes after now (`list_folder/get_latest_cursor`).
    pub(crate) fn latest_cursor(
        &self,
        scope: String,
        recursive: bool,
        include_deleted: bool,
        limit: u32,
        epoch: u64,
    ) -> ListCursor {
        let mut c = self.list_start(scope, recursive, include_deleted, limit, epoch);
        c.since = Some(self.seq);
        c
    }

    /// The next page, advancing `cur`. Returns the entries and `has_more`.
    pub(crate) fn list_page(&self, cur: &mut ListCursor) -> Result<(Vec<Value>, bool), Reset> {
        let limit = cur.limit as usize;
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut has_more = false;
        if let Some(since) = cur.since {
            if since < self.tomb_floor {
                return Err(Reset);
            }
            for (&seq, lower) in self.by_seq.range(since + 1..) {
                if !in_scope(&cur.scope, cur.recursive, lower) {
                    continue;
                }
                let item = match (self.entries.get(lower), self.tombstones.get(lower)) {
                    (Some(e), _) if e.seq == seq => self.metadata_json(lower, true),
                    (_, Some(t)) if t.seq == seq => tomb_json(lower, t),
                    _ => unreachable!("by_seq names {lower} at {seq}, which holds neither an entry nor a tombstone"),
                };
                if out.len() == limit {
                    has_more = true;
                    break;
                }
                out.push(item);
                cur.since = Some(seq);
            }
            if !has_more {
                cur.since = Some(self.seq.max(since));
            }
            return Ok((out, has_more));
        }
        let start = match &cur.after {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Unbounded,
        };
        for (key, lower) in self.order.range((start, Bound::Unbounded)) {
            if !in_scope(&cur.scope, cur.recursive, lower) {
                continue;
            }
            let item = if let Some(e) = self.entries.get(lower) {
                if e.created_seq > cur.snapshot {
                    continue;
                }
                self.metadata_json(lower, true)
            } else {
                let t = self.tombstones.get(lower).expect("the order holds entries and tombstones only");
                if !cur.include_deleted || t.seq > cur.snapshot {
                    continue;
                }
                tomb_json(lower, t)
            };
            if out.len() == limit {
                has_more = true;
                break;
            }
            out.push(item);
            cur.after = Some((*key, lower.clone()));
        }
        if !has_more {
            cur.after = None;
            cur.since = Some(cur.snapshot);
        }
        Ok((out, has_more))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use bytes::Bytes;

    use super::super::{parse_target, Commit, Content, PathKind, Target, WriteMode};
    use super::*;
    use crate::dropbox::wire::ArgSource;

    fn target(s: &str) -> Target {
        parse_target("path", s, PathKind::Write, ArgSource::Body, "1").unwrap()
    }

    fn put(ns: &mut Namespace, p: &str) {
        let c = Commit {
            target: target(p),
            mode: WriteMode::Overwrite,
            autorename: false,
            strict_conflict: false,
            client_modified_s: None,
            property_groups: Vec::new(),
        };
        let body = Bytes::copy_from_slice(p.as_bytes());
        let hash = crate::dropbox::content_hash_hex(&body);
        ns.commit_file(&c, Arc::new(Content::from_segments(vec![body])), hash, 1).unwrap();
    }

    fn drain(ns: &Namespace, cur: &mut ListCursor) -> (Vec<String>, usize) {
        let mut all = Vec::new();
        let mut pages = 0;
        loop {
            let (entries, more) = ns.list_page(cur).unwrap();
            pages += 1;
            assert!(entries.len() <= cur.limit as usize);
            all.extend(entries.iter().map(|e| e["path_lower"].as_str().unwrap().to_string()));
            if !more {
                return (all, pages);
            }
        }
    }

    #[test]
    fn pages_cover_everything_once_in_no_sorted_order() {
        let mut ns = Namespace::new(42, u64::MAX, 100, 1000);
        for i in 0..50 {
            put(&mut ns, &format!("/d{}/f{i:02}", i % 3));
        }
        let mut cur = ns.list_start(String::new(), true, false, 7, 9);
        let (all, pages) = drain(&ns, &mut cur);
        assert_eq!(all.len(), 53, "50 files and 3 folders");
        assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 53, "no duplicates");
        assert_eq!(pages, 8);
        let mut sorted = all.clone();
        sorted.sort();
        assert_ne!(all, sorted, "the order is not sorted");
        // The same seed gives the same order.
        let mut again = ns.list_start(String::new(), true, false, 7, 9);
        assert_eq!(drain(&ns, &mut again).0, all);
    }

    #[test]
    fn scope_and_the_folder_itself() {
        let mut ns = Namespace::new(1, u64::MAX, 100, 1000);
        put(&mut ns, "/a/x");
        put(&mut ns, "/a/b/y");
        put(&mut ns, "/ab");
        let mut flat = ns.list_start("/a".into(), false, false, 100, 0);
        let (mut got, _) = drain(&ns, &mut flat);
        got.sort();
        assert_eq!(got, ["/a/b", "/a/x"]);
        let mut deep = ns.list_start("/a".into(), true, false, 100, 0);
        let (mut got, _) = drain(&ns, &mut deep);
        got.sort();
        assert_eq!(got, ["/a", "/a/b", "/a/b/y", "/a/x"]);
        let mut root = ns.list_start(String::new(), false, false, 100, 0);
        let (mut got, _) = drain(&ns, &mut root);
        got.sort();
        assert_eq!(got, ["/a", "/ab"]);
    }

    #[test]
    fn changes_after_the_first_pass_and_deletions() {
        let mut ns = Namespace::new(1, u64::MAX, 100, 1000);
        put(&mut ns, "/a");
        let mut cur = ns.list_start(String::new(), true, false, 100, 0);
        assert_eq!(drain(&ns, &mut cur).0, ["/a"]);
        put(&mut ns, "/b");
        ns.delete(&target("/a")).unwrap();
        let (entries, more) = ns.list_page(&mut cur).unwrap();
        assert!(!more);
        let tags: Vec<(String, String)> = entries
            .iter()
            .map(|e| (e[".tag"].as_str().unwrap().to_string(), e["path_lower"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(tags, [("file".to_string(), "/b".to_string()), ("deleted".to_string(), "/a".to_string())]);
        assert!(ns.list_page(&mut cur).unwrap().0.is_empty(), "nothing new");
        // A cursor survives its encoding, and a foreign one is refused.
        assert_eq!(ListCursor::decode(&cur.encode(), 0), Some(cur.clone()));
        assert_eq!(ListCursor::decode(&cur.encode(), 1), None);
        assert_eq!(ListCursor::decode("garbage", 0), None);
    }

    #[test]
    fn a_change_cursor_older_than_the_kept_tombstones_is_reset() {
        let mut ns = Namespace::new(1, u64::MAX, 2, 1000);
        put(&mut ns, "/a");
        let mut cur = ns.latest_cursor(String::new(), true, false, 100, 0);
        for p in ["/b", "/c", "/d"] {
            put(&mut ns, p);
            ns.delete(&target(p)).unwrap();
        }
        assert_eq!(ns.list_page(&mut cur), Err(Reset));
    }
}
