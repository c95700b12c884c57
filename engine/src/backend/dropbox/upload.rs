//! Dropbox uploads. A session of one part (a small file, up to 150 MiB) goes up as
//! `upload_session/start` with its bytes and `close: true`, and is committed with
//! others through the account's commit batches ([`super::batch`]); with
//! `batch_commits = false`, as one `files/upload`. Anything larger goes through a
//! concurrent upload session, whose parts go up in parallel from any worker:
//! `upload_session/start` with `session_type: concurrent` (no data), one `append_v2`
//! per part at its own offset (every part starts on a 4 MiB boundary and all but the
//! last are a multiple of 4 MiB long; the last carries `close: true`), then `finish` at
//! the full length with the commit. The session's state is its id, so any worker can
//! send any part and a later run can reopen it.
//!
//! Why small files are batched whatever their number: a commit of its own costs one
//! call fewer (`files/upload` carries bytes and commit together), which a relay of one
//! small file would notice as a round trip and the batcher's 2 ms window; but each such
//! commit takes the namespace's lock, and many of them at once are what Dropbox
//! answers with `too_many_write_operations`. The backend cannot tell a lone file from
//! the first of thousands when it sends the bytes, and one path is simpler to trust.
//!
//! Sessions are sequential where concurrency does not pay and concurrent where it
//! does. A file of one part (a small file) goes up in a sequential session, the
//! default type, of one call: its `start` carries every byte and closes it, and the
//! commit batch finishes it. Concurrency pays from the second part on: parts go up from
//! any worker at once, each at the per-connection rate Dropbox allows, so a large file
//! moves at a multiple of that rate. A sequential session for a large file would save
//! two calls (its `start` and `finish` can carry data, a concurrent one's cannot:
//! two round trips, about 0.1 s, on a file of at least 150 MiB) and cost every part
//! after the first its parallelism, since its appends must come in order. The relay
//! plans and schedules the parts of an object from the store's capabilities alone,
//! one mode per store, so the choice is made by size here: one part, sequential; more,
//! concurrent.
//!
//! Each call carries the `content_hash` of its own bytes, which Dropbox checks. A
//! part's receipt is its blocks' SHA-256 digests, so that `finish` knows the file's
//! content hash before it commits (for the provenance record, see
//! [`super::properties`]) and checks Dropbox's answer against it. Dropbox has no call
//! that lists what a concurrent session holds: `committed` answers with the parts the
//! relay recorded, and a part resent whole replaces its earlier copy. A small file's
//! receipt is its closed session and content hash ([`Staged`]).

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
    /// The concurrent upload session's id; None for a session of one part.
    session_id: Option<String>,
}

/// The receipt of a small file's bytes: the closed session that holds them, waiting
/// for its commit, and their content hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Staged {
    staged_session_id: String,
    content_hash: String,
}

struct DropboxUpload<'a> {
    store: &'a DropboxStore,
    state: SessionState,
    session: DropboxSession,
    /// A small file that was committed: aborting deletes the file it made.
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

/// The content hash a commit must come back with: the relay's own when it computed
/// Dropbox's, else what the bytes sent make.
fn want_hash(full: Option<&Checksum>, sent: Option<String>) -> Option<String> {
    full.filter(|f| f.algo == ChecksumAlgo::DropboxContentHash).map(Checksum::to_hex).or(sent)
}

/// Checks a commit's answer (the file's metadata) against the size and content hash
/// sent.
fn check_held(op: &'static str, key: &str, meta: &Value, size: u64, want: &Option<String>) -> Result<()> {
    let held = meta.get("size").and_then(Value::as_u64);
    if held != Some(size) {
        return Err(Error::protocol(op, key, format!("sent {size} bytes, Dropbox holds {held:?}")));
    }
    let got = meta.get("content_hash").and_then(Value::as_str).unwrap_or_default();
    if let Some(want) = want.as_ref().filter(|w| !got.eq_ignore_ascii_case(w)) {
        return Err(Error::Integrity {
            op,
            target: key.to_string(),
            detail: format!("Dropbox holds content_hash {got}, the bytes sent make {want}"),
        });
    }
    Ok(())
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

    /// A small file's bytes into a session of their own, closed, for a commit batch.
    async fn stage(&self, part: PartSpec, body: Body) -> Result<String> {
        let key = self.key();
        if body.len() != part.len {
            return Err(Error::protocol("put", key, format!("sent {} bytes, not {}", body.len(), part.len)));
        }
        let hash = hash_of(&blocks_of(&body));
        let arg = json!({ "close": true, "content_hash": hash });
        let answer =
            self.store.content_small("files/upload_session/start", "put", key, &arg, RequestBody::Chunks(body)).await?;
        let id = answer
            .get("session_id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::protocol("put", key, "upload_session/start answered no session_id"))?;
        let staged = Staged { staged_session_id: id.to_string(), content_hash: hash };
        Ok(serde_json::to_string(&staged).expect("serialisable"))
    }

    /// Commits a staged small file through the account's next batch, and checks what
    /// Dropbox holds then against what was sent.
    async fn commit_staged(&self, staged: &Staged, full: Option<&Checksum>) -> Result<()> {
        let key = self.key();
        let size = self.state.plan.size;
        let commit = self.commit(Some(&staged.content_hash)).await?;
        let entry = json!({ "cursor": { "session_id": staged.staged_session_id, "offset": size }, "commit": commit });
        let meta = self.store.batcher.commit(self.store, key, entry).await?;
        self.put_done.set(true);
        check_held("commit-batch", key, &meta, size, &want_hash(full, Some(staged.content_hash.clone())))
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
                None if self.store.cfg.batch_commits => self.stage(part, body).await,
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
                // A small file: staged for a batch, or sent whole (complete once sent).
                let staged = parts.first().and_then(|p| serde_json::from_str::<Staged>(&p.token).ok());
                return match staged {
                    Some(staged) => self.commit_staged(&staged, full).await,
                    None => Ok(()),
                };
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
            check_held("complete-session", key, &answer, size, &want_hash(full, expected))
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
    fn a_staged_receipt_is_told_from_a_rev() {
        let staged = Staged { staged_session_id: "pid_upload_session:x".into(), content_hash: "ab".repeat(32) };
        let token = serde_json::to_string(&staged).unwrap();
        assert_eq!(serde_json::from_str::<Staged>(&token).unwrap(), staged);
        assert!(serde_json::from_str::<Staged>("015f3a0e6b2b6c1000000021b3c1a60").is_err(), "a rev is no receipt");
        assert!(serde_json::from_str::<Staged>(r#"[{"offset":0}]"#).is_err());
    }

    #[test]
    fn answers_are_checked_for_size_and_hash() {
        let hash = "ab".repeat(32);
        let meta = json!({ "size": 5, "content_hash": hash });
        assert!(check_held("put", "k", &meta, 5, &Some(hash.clone())).is_ok());
        assert!(matches!(check_held("put", "k", &meta, 6, &None), Err(Error::Protocol { .. })));
        let other = Some("cd".repeat(32));
        assert!(matches!(check_held("put", "k", &meta, 5, &other), Err(Error::Integrity { .. })));
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
