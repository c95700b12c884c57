//! Dropbox uploads as sessions: `files/upload` for a session of one part, an upload
//! session otherwise (`upload_session/start`, one `append_v2` per part at the offset
//! the session holds, `finish` with the commit). The session's state is its id, so
//! any worker can send the next part and a later run can reopen it.
//!
//! Dropbox has no call that says what a session holds; `committed` asks with an empty
//! append at the offset this handle believes in, which Dropbox takes when it is right
//! and answers `incorrect_offset` with the `correct_offset` when it is not. Every call
//! carries the `content_hash` of its own bytes, which Dropbox checks.

use std::cell::Cell;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{correct_offset, format_time, DropboxStore};
use crate::backend::{
    Committed, LocalFuture, PartRecord, PartSpec, PutArgs, Session, SessionState, UploadPlan, UploadSession,
};
use crate::checksum::{Checksum, ChecksumAlgo, DropboxHasher};
use crate::error::{Error, Result};
use crate::http::RequestBody;
use crate::pool::Body;

/// The Dropbox part of a session's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DropboxSession {
    /// The upload session's id; None for a single `files/upload`.
    session_id: Option<String>,
}

struct DropboxUpload<'a> {
    store: &'a DropboxStore,
    state: SessionState,
    session: DropboxSession,
    /// The bytes this handle believes the session holds.
    offset: Cell<u64>,
    /// A single upload that went through: aborting deletes the file it made.
    put_done: Cell<bool>,
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
        let answer = store
            .content_small(
                "files/upload_session/start",
                "create-session",
                key,
                &json!({ "close": false }),
                RequestBody::Empty,
            )
            .await?;
        let id = answer
            .get("session_id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::protocol("create-session", key, "upload_session/start answered no session_id"))?;
        DropboxSession { session_id: Some(id.to_string()) }
    };
    let store_state = serde_json::to_value(&session).expect("serialisable");
    let state = SessionState { key: key.to_string(), plan, args: args.clone(), store: store_state, parts: Vec::new() };
    Ok(Box::new(DropboxUpload { store, state, session, offset: Cell::new(0), put_done: Cell::new(false) }))
}

pub(super) fn resume(store: &DropboxStore, state: SessionState) -> Result<Session<'_>> {
    let session: DropboxSession = serde_json::from_value(state.store.clone()).map_err(|e| {
        Error::protocol("resume", &state.key, format!("the session's state is not a Dropbox upload's: {e}"))
    })?;
    let offset = state.parts.iter().map(|p| p.offset + p.len).max().unwrap_or(0);
    Ok(Box::new(DropboxUpload { store, state, session, offset: Cell::new(offset), put_done: Cell::new(false) }))
}

/// The content hash of `body`: the one among `sums` when the relay computed it, else
/// computed here.
fn content_hash(body: &Body, sums: &[Checksum]) -> String {
    if let Some(sum) = sums.iter().find(|c| c.algo == ChecksumAlgo::DropboxContentHash) {
        return sum.to_hex();
    }
    let mut hasher = DropboxHasher::new();
    for slice in body.slices() {
        hasher.update(slice);
    }
    hex::encode(hasher.finish())
}

impl DropboxUpload<'_> {
    fn key(&self) -> &str {
        &self.state.key
    }

    fn session_id(&self, op: &'static str) -> Result<&str> {
        self.session
            .session_id
            .as_deref()
            .ok_or_else(|| Error::protocol(op, self.key(), "a single upload has no parts to add to"))
    }

    /// The commit: overwrite, with the source's modification time.
    fn commit(&self) -> Value {
        let mut commit = json!({
            "path": self.store.path(self.key()),
            "mode": "overwrite",
            "autorename": false,
            "mute": true,
        });
        if let Some((secs, _)) = self.state.args.meta.mtime {
            commit["client_modified"] = Value::String(format_time(secs));
        }
        commit
    }

    /// Appends `body` at `offset` (an empty body asks what the session holds). Returns
    /// the session's offset afterwards, or, for `incorrect_offset`, the retryable error
    /// with the offset Dropbox holds.
    async fn append(&self, offset: u64, body: Body, hash: Option<String>) -> Result<u64, (Error, Option<u64>)> {
        let key = self.key();
        let id = self.session_id("append").map_err(|e| (e, None))?;
        let len = body.len();
        let mut arg = json!({ "cursor": { "session_id": id, "offset": offset }, "close": false });
        if let Some(hash) = hash {
            arg["content_hash"] = Value::String(hash);
        }
        let route = "files/upload_session/append_v2";
        let (response, token) = self
            .store
            .content(route, "upload-part", key, &arg, RequestBody::Chunks(body), None)
            .await
            .map_err(|e| (e, None))?;
        let head = response.head.clone();
        let bytes = response.read_to_vec().await.map_err(|e| (e, None))?;
        if head.status < 300 {
            return Ok(offset + len);
        }
        let held = serde_json::from_slice::<Value>(&bytes).ok().as_ref().and_then(correct_offset);
        Err((self.store.http_error("upload-part", key, &head, &bytes, Some(&token)), held))
    }
}

impl UploadSession for DropboxUpload<'_> {
    fn state(&self) -> &SessionState {
        &self.state
    }

    fn put<'a>(&'a self, part: PartSpec, body: Body, sums: &'a [Checksum]) -> LocalFuture<'a, Result<String>> {
        Box::pin(async move {
            let key = self.key();
            let hash = content_hash(&body, sums);
            if self.session.session_id.is_none() {
                let mut arg = self.commit();
                arg["content_hash"] = Value::String(hash);
                let answer =
                    self.store.content_small("files/upload", "put", key, &arg, RequestBody::Chunks(body)).await?;
                let size = answer.get("size").and_then(Value::as_u64);
                if size != Some(part.len) {
                    return Err(Error::protocol(
                        "put",
                        key,
                        format!("sent {} bytes, Dropbox holds {size:?}", part.len),
                    ));
                }
                self.put_done.set(true);
                return Ok(answer.get("rev").and_then(Value::as_str).unwrap_or_default().to_string());
            }
            match self.append(part.offset, body, Some(hash)).await {
                Ok(end) => {
                    self.offset.set(end);
                    Ok(String::new())
                }
                Err((e, held)) => {
                    if let Some(held) = held {
                        self.offset.set(held);
                    }
                    Err(e)
                }
            }
        })
    }

    fn committed(&self) -> LocalFuture<'_, Result<Committed>> {
        Box::pin(async move {
            if self.session.session_id.is_none() {
                return Ok(Committed::Offset(0));
            }
            // Bounded: the second probe is at the offset Dropbox named.
            for _ in 0..2 {
                let guess = self.offset.get();
                match self.append(guess, Body::new(Vec::new()), None).await {
                    Ok(_) => return Ok(Committed::Offset(guess)),
                    Err((_, Some(held))) => self.offset.set(held),
                    Err((e, None)) => return Err(e),
                }
            }
            Ok(Committed::Offset(self.offset.get()))
        })
    }

    fn finish<'a>(&'a self, _parts: &'a [PartRecord], full: Option<&'a Checksum>) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(id) = self.session.session_id.as_deref() else {
                // A single upload is complete once it is sent.
                return Ok(());
            };
            let key = self.key();
            let size = self.state.plan.size;
            let arg = json!({ "cursor": { "session_id": id, "offset": size }, "commit": self.commit() });
            let answer = self
                .store
                .content_small("files/upload_session/finish", "complete-session", key, &arg, RequestBody::Empty)
                .await?;
            let held = answer.get("size").and_then(Value::as_u64);
            if held != Some(size) {
                return Err(Error::protocol(
                    "complete-session",
                    key,
                    format!("sent {size} bytes, Dropbox holds {held:?}"),
                ));
            }
            if let Some(full) = full.filter(|f| f.algo == ChecksumAlgo::DropboxContentHash) {
                let got = answer.get("content_hash").and_then(Value::as_str).unwrap_or_default();
                if !got.eq_ignore_ascii_case(&full.to_hex()) {
                    return Err(Error::Integrity {
                        op: "complete-session",
                        target: key.to_string(),
                        detail: format!("Dropbox holds content_hash {got}, the relay sent {}", full.to_hex()),
                    });
                }
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
        let empty = content_hash(&Body::new(Vec::new()), &[]);
        assert_eq!(empty, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
