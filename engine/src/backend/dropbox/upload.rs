//! Dropbox uploads: `files/upload` for a session of one part, and otherwise a
//! concurrent upload session, whose parts go up in parallel from any worker:
//! `upload_session/start` with `session_type: concurrent` (no data), one `append_v2`
//! per part at its own offset (every part starts on a 4 MiB boundary and all but the
//! last are a multiple of 4 MiB long; the last carries `close: true`), then `finish` at
//! the full length with the commit. The session's state is its id, so any worker can
//! send any part and a later run can reopen it.
//!
//! Why every session is concurrent: the relay plans and schedules the parts of an
//! object from the store's capabilities alone, one mode per store, so a sequential
//! session (whose appends must come in order) could only be had by sending every large
//! file as one ordered stream. A sequential session would save one call on a file only
//! a bit over the single-upload limit (its `start` and `finish` can carry data, a
//! concurrent one's cannot), which is not worth giving up parallel parts for the rest.
//!
//! Each call carries the `content_hash` of its own bytes, which Dropbox checks. A
//! part's receipt is its blocks' SHA-256 digests, so that `finish` knows the file's
//! content hash before it commits (for the provenance record, see
//! [`super::properties`]) and checks Dropbox's answer against it. Dropbox has no call
//! that lists what a concurrent session holds: `committed` answers with the parts the
//! relay recorded, and a part resent whole replaces its earlier copy.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{format_time, DropboxStore};
use crate::backend::{
    Committed, LocalFuture, PartRecord, PartSpec, PutArgs, Session, SessionState, UploadPlan, UploadSession,
};
use crate::checksum::{dropbox_combine, Checksum, ChecksumAlgo, DropboxBlocks, DropboxPart, DROPBOX_BLOCK_BYTES};
use crate::error::{Error, Result};
use crate::http::RequestBody;
use crate::pool::Body;

/// The Dropbox part of a session's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DropboxSession {
    /// The concurrent upload session's id; None for a single `files/upload`.
    session_id: Option<String>,
}

struct DropboxUpload<'a> {
    store: &'a DropboxStore,
    state: SessionState,
    session: DropboxSession,
    /// A single upload that went through: aborting deletes the file it made.
    put_done: std::cell::Cell<bool>,
}

pub(super) async fn begin<'a>(
    store: &'a DropboxStore,
    key: &'a str,
    plan: UploadPlan,
    args: &'a PutArgs,
) -> Result<Session<'a>> {
    let session = if plan.single {
        DropboxSession { session_id: None }
    } else {
        let arg = json!({ "close": false, "session_type": "concurrent" });
        let answer =
            store.content_small("files/upload_session/start", "create-session", key, &arg, RequestBody::Empty).await?;
        let id = answer
            .get("session_id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::protocol("create-session", key, "upload_session/start answered no session_id"))?;
        DropboxSession { session_id: Some(id.to_string()) }
    };
    let store_state = serde_json::to_value(&session).expect("serialisable");
    let state = SessionState { key: key.to_string(), plan, args: args.clone(), store: store_state, parts: Vec::new() };
    Ok(Box::new(DropboxUpload { store, state, session, put_done: std::cell::Cell::new(false) }))
}

pub(super) fn resume(store: &DropboxStore, state: SessionState) -> Result<Session<'_>> {
    let session: DropboxSession = serde_json::from_value(state.store.clone()).map_err(|e| {
        Error::protocol("resume", &state.key, format!("the session's state is not a Dropbox upload's: {e}"))
    })?;
    Ok(Box::new(DropboxUpload { store, state, session, put_done: std::cell::Cell::new(false) }))
}

/// The block digests of `body` (which starts on a block boundary of its file).
fn blocks_of(body: &Body) -> DropboxPart {
    let mut blocks = DropboxBlocks::with_capacity(body.len());
    for slice in body.slices() {
        blocks.update(slice);
    }
    blocks.finish()
}

/// The content hash of bytes whose block digests are `part`'s.
fn hash_of(part: &DropboxPart) -> String {
    dropbox_combine(std::slice::from_ref(part)).expect("one part always combines").to_hex()
}

/// The file's content hash from its parts' receipts; None when a receipt is not one
/// of this module's (a session begun by another version).
fn file_hash(parts: &[PartRecord]) -> Option<Checksum> {
    let mut sorted: Vec<&PartRecord> = parts.iter().collect();
    sorted.sort_by_key(|p| p.offset);
    let blocks: Option<Vec<DropboxPart>> = sorted.iter().map(|p| serde_json::from_str(&p.token).ok()).collect();
    dropbox_combine(&blocks?)
}

impl DropboxUpload<'_> {
    fn key(&self) -> &str {
        &self.state.key
    }

    /// The commit: overwrite, with the source's modification time and Laminar's
    /// provenance record for bytes of `content_hash`.
    async fn commit(&self, content_hash: Option<&str>) -> Result<Value> {
        let mut commit = json!({
            "path": self.store.path(self.key()),
            "mode": "overwrite",
            "autorename": false,
            "mute": true,
        });
        if let Some((secs, _)) = self.state.args.meta.mtime {
            commit["client_modified"] = Value::String(format_time(secs));
        }
        if let Some(groups) = self.store.commit_groups(self.state.args.provenance.as_deref(), content_hash).await? {
            commit["property_groups"] = groups;
        }
        Ok(commit)
    }

    /// A single `files/upload` of the whole file.
    async fn upload(&self, part: PartSpec, body: Body) -> Result<String> {
        let key = self.key();
        let hash = hash_of(&blocks_of(&body));
        let mut arg = self.commit(Some(&hash)).await?;
        arg["content_hash"] = Value::String(hash);
        let answer = self.store.content_small("files/upload", "put", key, &arg, RequestBody::Chunks(body)).await?;
        let size = answer.get("size").and_then(Value::as_u64);
        if size != Some(part.len) {
            return Err(Error::protocol("put", key, format!("sent {} bytes, Dropbox holds {size:?}", part.len)));
        }
        self.put_done.set(true);
        Ok(answer.get("rev").and_then(Value::as_str).unwrap_or_default().to_string())
    }

    /// One part into the concurrent session, at its own offset; the last closes it.
    async fn append(&self, id: &str, part: PartSpec, body: Body) -> Result<String> {
        let key = self.key();
        let size = self.state.plan.size;
        let last = part.offset + part.len == size;
        // The relay plans parts from the capabilities' alignment; anything else is a bug.
        assert!(
            part.offset.is_multiple_of(DROPBOX_BLOCK_BYTES) && (last || part.len.is_multiple_of(DROPBOX_BLOCK_BYTES)),
            "part {} of {key} at {}+{} breaks the 4 MiB alignment of concurrent sessions",
            part.number,
            part.offset,
            part.len
        );
        if body.len() != part.len {
            return Err(Error::protocol(
                "upload-part",
                key,
                format!("part {} has {} bytes, not {}", part.number, body.len(), part.len),
            ));
        }
        let blocks = blocks_of(&body);
        let arg = json!({
            "cursor": { "session_id": id, "offset": part.offset },
            "close": last,
            "content_hash": hash_of(&blocks),
        });
        self.store
            .content_small("files/upload_session/append_v2", "upload-part", key, &arg, RequestBody::Chunks(body))
            .await?;
        Ok(serde_json::to_string(&blocks).expect("serialisable"))
    }

    /// Whether the file Dropbox holds at the key has `hash` (a finish whose answer was
    /// lost, retried against a session already committed).
    async fn holds(&self, hash: &str) -> Result<bool> {
        let key = self.key();
        let arg = json!({ "path": self.store.path(key) });
        match self.store.rpc("files/get_metadata", "stat", key, &arg).await {
            Ok(meta) => {
                Ok(meta.get("content_hash").and_then(Value::as_str).is_some_and(|h| h.eq_ignore_ascii_case(hash))
                    && meta.get("size").and_then(Value::as_u64) == Some(self.state.plan.size))
            }
            Err(e) if super::is_not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl UploadSession for DropboxUpload<'_> {
    fn state(&self) -> &SessionState {
        &self.state
    }

    fn put<'a>(&'a self, part: PartSpec, body: Body, _sums: &'a [Checksum]) -> LocalFuture<'a, Result<String>> {
        Box::pin(async move {
            match self.session.session_id.as_deref() {
                None => self.upload(part, body).await,
                Some(id) => self.append(id, part, body).await,
            }
        })
    }

    fn committed(&self) -> LocalFuture<'_, Result<Committed>> {
        // Dropbox says nothing of a concurrent session's pieces: what the relay recorded.
        Box::pin(async move { Ok(Committed::Parts(self.state.parts.clone())) })
    }

    fn finish<'a>(&'a self, parts: &'a [PartRecord], full: Option<&'a Checksum>) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(id) = self.session.session_id.as_deref() else {
                // A single upload is complete once it is sent.
                return Ok(());
            };
            let key = self.key();
            let size = self.state.plan.size;
            let expected = file_hash(parts).map(|c| c.to_hex());
            let commit = self.commit(expected.as_deref()).await?;
            let arg = json!({ "cursor": { "session_id": id, "offset": size }, "commit": commit });
            let route = "files/upload_session/finish";
            let answer = match self.store.content_small(route, "complete-session", key, &arg, RequestBody::Empty).await
            {
                Ok(answer) => answer,
                // A retry after an answer that was lost: the session is committed.
                Err(e) if matches!(&e, Error::Http { message, .. } if message.starts_with("lookup_failed/closed")) => {
                    return match &expected {
                        Some(hash) if self.holds(hash).await? => Ok(()),
                        _ => Err(e),
                    };
                }
                Err(e) => return Err(e),
            };
            let held = answer.get("size").and_then(Value::as_u64);
            if held != Some(size) {
                return Err(Error::protocol(
                    "complete-session",
                    key,
                    format!("sent {size} bytes, Dropbox holds {held:?}"),
                ));
            }
            let got = answer.get("content_hash").and_then(Value::as_str).unwrap_or_default();
            let want = full.filter(|f| f.algo == ChecksumAlgo::DropboxContentHash).map(Checksum::to_hex).or(expected);
            if let Some(want) = want.filter(|w| !got.eq_ignore_ascii_case(w)) {
                return Err(Error::Integrity {
                    op: "complete-session",
                    target: key.to_string(),
                    detail: format!("Dropbox holds content_hash {got}, the parts sent make {want}"),
                });
            }
            Ok(())
        })
    }

    fn abort(&self) -> LocalFuture<'_, Result<()>> {
        Box::pin(async move {
            // An unfinished session is never visible and expires on its own; Dropbox
            // has no call to end one early.
            if !self.put_done.get() {
                return Ok(());
            }
            let key = self.key();
            let arg = json!({ "path": self.store.path(key) });
            match self.store.rpc("files/delete_v2", "delete", key, &arg).await {
                Ok(_) => Ok(()),
                Err(e) if super::is_not_found(&e) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let s = DropboxSession { session_id: Some("sid".into()) };
        let back: DropboxSession = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back.session_id.as_deref(), Some("sid"));
    }

    #[test]
    fn content_hash_of_nothing() {
        let empty = hash_of(&blocks_of(&Body::new(Vec::new())));
        assert_eq!(empty, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn the_file_hash_comes_from_the_receipts_in_any_order() {
        let block = DROPBOX_BLOCK_BYTES as usize;
        let data: Vec<u8> = (0..2 * block + 77).map(|i| (i % 251) as u8).collect();
        let mut whole = crate::checksum::DropboxHasher::new();
        whole.update(&data);
        let want = hex::encode(whole.finish());
        let record = |number: u32, offset: usize, len: usize| {
            let mut blocks = DropboxBlocks::new();
            blocks.update(&data[offset..offset + len]);
            let token = serde_json::to_string(&blocks.finish()).unwrap();
            let spec = PartSpec { number, offset: offset as u64, len: len as u64 };
            PartRecord::new(spec, token, Checksum { algo: ChecksumAlgo::Crc32c, bytes: Vec::new() })
        };
        let parts = [record(2, block, block + 77), record(1, 0, block)];
        assert_eq!(file_hash(&parts).unwrap().to_hex(), want);
        let mut foreign = parts.clone();
        foreign[0].token = String::new();
        assert!(file_hash(&foreign).is_none());
    }
}
