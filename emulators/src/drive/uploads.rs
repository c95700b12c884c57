//! The upload endpoints: one-request uploads (`uploadType=media` and `multipart`), the
//! start of a resumable session, and the session's chunk and status requests (the rules
//! are in [`super::upload`]).
//!
//! Bodies are gathered into segments of at most 1 MiB that become the file's content
//! as they are, so an upload is held once. A chunk's bytes are committed when the chunk
//! has arrived whole; when its connection drops first, the part that arrived is kept
//! down to a 256 KiB boundary.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::files::{self, Meta};
use super::server::{
    empty_response, error_response, Answer, Dropped, Op, Req, Resp, SessionCounters, SessionEntry, State,
    SEGMENT_BYTES_MAX,
};
use super::store::{Body, Content, Digests, Hashers, FOLDER_MIME, GOOGLE_APPS_PREFIX};
use super::time;
use super::upload::{self, parse_content_range, Session, Step, Target, CHUNK_UNIT_BYTES};

/// Longest wait for the next bytes of an upload body.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a body was not read whole.
enum Cut {
    /// Longer than allowed.
    TooLarge,
    /// Cut by a fault after so many bytes.
    Fault,
    /// The client's side failed.
    Broken,
}

/// Gathers frames into segments of at most `SEGMENT_BYTES_MAX`, or into one buffer
/// (a multipart body, parsed whole) sized once from `Content-Length`.
struct Gather {
    segments: Vec<Bytes>,
    current: BytesMut,
    len: u64,
    contiguous: bool,
}

impl Gather {
    fn new(contiguous: bool, capacity: usize) -> Gather {
        let current = if contiguous { BytesMut::with_capacity(capacity) } else { BytesMut::new() };
        Gather { segments: Vec::new(), current, len: 0, contiguous }
    }

    fn push(&mut self, mut d: Bytes) {
        self.len += d.len() as u64;
        if self.contiguous {
            // Grows only when Content-Length was missing or short.
            self.current.extend_from_slice(&d);
            return;
        }
        while !d.is_empty() {
            if self.current.capacity() - self.current.len() == 0 {
                self.flush();
                self.current = BytesMut::with_capacity(SEGMENT_BYTES_MAX);
            }
            let n = d.len().min(self.current.capacity() - self.current.len());
            self.current.extend_from_slice(&d[..n]);
            d.advance(n);
        }
    }

    fn flush(&mut self) {
        if !self.current.is_empty() {
            self.segments.push(std::mem::take(&mut self.current).freeze());
        }
    }

    fn finish(mut self) -> (Vec<Bytes>, u64) {
        self.flush();
        assert!(!self.contiguous || self.segments.len() <= 1, "a contiguous body is one segment");
        (self.segments, self.len)
    }
}

/// Reads a body: drops its first `skip` bytes, keeps at most `max` of the rest, and
/// stops after `cut_after` body bytes when a fault says so. Every byte is counted in
/// `received`.
async fn read_body(
    req: &mut Req,
    skip: u64,
    max: u64,
    cut_after: Option<u64>,
    received: &(dyn Fn(u64) + Sync),
    contiguous: bool,
) -> Result<(Vec<Bytes>, u64), (Cut, Vec<Bytes>, u64)> {
    let capacity = usize::try_from(req.content_length().unwrap_or(0).min(max)).expect("bounded by max");
    let mut g = Gather::new(contiguous, capacity);
    let mut seen = 0u64;
    loop {
        // A client that stalls mid-body would hold its session's lock; past the idle
        // bound it counts as gone.
        let frame = match tokio::time::timeout(BODY_IDLE_TIMEOUT, req.body.frame()).await {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(_))) | Err(_) => {
                let (s, n) = g.finish();
                return Err((Cut::Broken, s, n));
            }
        };
        let Ok(mut data) = frame.into_data() else { continue };
        let mut cut = false;
        if let Some(c) = cut_after {
            if seen + data.len() as u64 >= c {
                data.truncate(usize::try_from(c - seen).expect("less than a frame"));
                cut = true;
            }
        }
        let n = data.len() as u64;
        received(n);
        if seen < skip {
            data.advance(usize::try_from((skip - seen).min(n)).expect("less than a frame"));
        }
        seen += n;
        if g.len + data.len() as u64 > max {
            let (s, n) = g.finish();
            return Err((Cut::TooLarge, s, n));
        }
        g.push(data);
        if cut {
            let (s, n) = g.finish();
            return Err((Cut::Fault, s, n));
        }
    }
    Ok(g.finish())
}

fn supports(req: &Req) -> bool {
    req.flag("supportsAllDrives") || req.flag("supportsTeamDrives")
}

/// The MIME type of new content: the metadata's, else the one the upload named, else
/// `application/octet-stream`. Folders and Google types cannot have content.
fn content_mime(meta_mime: Option<&str>, upload_mime: Option<&str>) -> Result<String, ApiError> {
    let m = meta_mime.or(upload_mime).map(str::trim).filter(|m| !m.is_empty()).unwrap_or("application/octet-stream");
    if m == FOLDER_MIME || m.starts_with(GOOGLE_APPS_PREFIX) {
        return Err(ApiError::bad_request(format!(
            "Content cannot be uploaded as {m}: folders, shortcuts and Docs take no bytes (import is not emulated)."
        )));
    }
    Ok(m.to_string())
}

/// The file an update with content targets: it must be a binary file.
fn update_target(state: &State, req: &Req) -> Result<String, ApiError> {
    let s = state.store();
    let f = files::lookup(&s, &req.segments[4], supports(req))?;
    if !matches!(f.body, Body::Blob { .. }) {
        return Err(ApiError::bad_request(format!("The file {} is not a binary file and takes no content.", f.id)));
    }
    Ok(f.id.clone())
}

/// Replaces file `id`'s content and applies the update's metadata (whose
/// `modifiedTime`, when given, wins over now).
#[allow(clippy::too_many_arguments)]
fn replace_content(
    state: &State,
    id: &str,
    content: Content,
    digests: Digests,
    mime: Option<String>,
    patch: &Value,
    add: Option<&str>,
    remove: Option<&str>,
    supports_all_drives: bool,
) -> Result<(), ApiError> {
    let mut s = state.store();
    files::apply_patch(&mut s, id, patch, add, remove, supports_all_drives)?;
    let modified = patch.get("modifiedTime").and_then(Value::as_str).and_then(time::parse);
    s.modify(id, |f| {
        let (original_filename, revision) = match &f.body {
            Body::Blob { original_filename, revision, .. } => (original_filename.clone(), *revision),
            _ => (None, 0),
        };
        f.body = Body::Blob { content, digests, original_filename, revision: revision + 1 };
        f.modified_ms = modified.unwrap_or_else(time::now_ms);
        if let Some(m) = mime {
            f.mime_type = m;
        }
    })
    .ok_or_else(|| ApiError::file_not_found(id))
}

/// `uploadType=media` and `multipart`, for create and update.
pub(crate) async fn one_request(state: &State, req: &mut Req, op: Op) -> Answer {
    let create = matches!(op, Op::FilesCreateMedia | Op::FilesCreateMultipart);
    let refuse = |state: &State, e: ApiError| error_response(state, &e);
    if state.faults.daily_budget_spent() {
        req.drain().await;
        return Ok(refuse(state, ApiError::daily_upload_limit()));
    }
    let max = state.settings.simple_upload_bytes_max;
    if req.content_length().is_some_and(|n| n > max) {
        req.drain().await;
        return Ok(refuse(state, ApiError::upload_too_large(max)));
    }
    if req.content_length().is_some_and(|n| n > state.storage_room()) {
        req.drain().await;
        return Ok(refuse(state, ApiError::storage_quota()));
    }
    let target = if create {
        None
    } else {
        match update_target(state, req) {
            Ok(id) => Some(id),
            Err(e) => {
                req.drain().await;
                return Ok(refuse(state, e));
            }
        }
    };
    let cut_after = state.faults.take_drop(true);
    let multipart = matches!(op, Op::FilesCreateMultipart | Op::FilesUpdateMultipart);
    let (segments, len) = match read_body(req, 0, max, cut_after, &|_| {}, multipart).await {
        Ok(r) => r,
        Err((Cut::TooLarge, ..)) => {
            req.drain().await;
            return Ok(refuse(state, ApiError::upload_too_large(max)));
        }
        Err((Cut::Fault, ..)) => {
            req.conn.kill();
            state.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(Dropped);
        }
        Err((Cut::Broken, ..)) => return Err(Dropped),
    };
    if len > state.storage_room() {
        return Ok(refuse(state, ApiError::storage_quota()));
    }
    let r = (|| -> Result<String, ApiError> {
        let (meta_json, media, upload_mime) = if multipart {
            // Read into one buffer: the media is a slice of it, not a copy.
            let body = segments.into_iter().next().unwrap_or_default();
            let related = upload::parse_related(req.header("content-type").unwrap_or(""), &body)?;
            let meta: Value = serde_json::from_slice(&related.metadata)
                .map_err(|e| ApiError::bad_request(format!("Invalid JSON payload received. {e}")))?;
            let mut content = Content::default();
            content.push(related.media);
            (meta, content, related.media_type)
        } else {
            let mut content = Content::default();
            for s in segments {
                content.push(s);
            }
            (json!({}), content, req.header("content-type").map(str::to_string))
        };
        let n = media.len();
        let id = match &target {
            None => {
                let meta = files::parse_create(&meta_json)?;
                let mime = content_mime(meta.mime_type.as_deref(), upload_mime.as_deref())?;
                let digests = Hashers::of(&media);
                let body = Body::Blob {
                    content: media,
                    digests,
                    original_filename: meta.original_filename.clone(),
                    revision: 1,
                };
                let mut s = state.store();
                let parent = files::new_parent(&s, &meta, supports(req))?;
                s.create(files::new_file(&meta, parent, mime, body))?
            }
            Some(id) => {
                files::check_patch(&meta_json)?;
                let mime = match meta_json.get("mimeType").and_then(Value::as_str) {
                    Some(m) => Some(content_mime(Some(m), None)?),
                    None => None,
                };
                let (add, remove) = (req.param("addParents"), req.param("removeParents"));
                let digests = Hashers::of(&media);
                replace_content(state, id, media, digests, mime, &meta_json, add, remove, supports(req))?;
                id.clone()
            }
        };
        state.faults.count_uploaded(n);
        Ok(id)
    })();
    Ok(match r {
        Ok(_) if state.faults.take_lost_answer() => return Err(lose_answer(state, req)),
        Ok(id) => {
            let f = state.store().get(&id).expect("just written").clone();
            files::file_response(state, &f, req.fields())
        }
        Err(e) => refuse(state, e),
    })
}

/// The file is made, and the answer is lost: the connection closes without one.
fn lose_answer(state: &State, req: &Req) -> Dropped {
    req.conn.kill();
    state.stats.dropped.fetch_add(1, Ordering::Relaxed);
    Dropped
}

/// A fresh `upload_id`.
fn session_id(state: &State) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";
    let mut rng = state.rng.lock().expect("no panics holding the rng");
    let mut id = String::from("AEmu");
    while id.len() < 64 {
        id.push(char::from(ALPHABET[rng.usize(..ALPHABET.len())]));
    }
    id
}

/// Starts a resumable session: answers 200 with its URI in `Location`.
pub(crate) async fn start(state: &State, req: &mut Req, op: Op) -> Resp {
    match start_inner(state, req, op).await {
        Ok(r) => r,
        Err(e) => {
            req.drain().await;
            error_response(state, &e)
        }
    }
}

async fn start_inner(state: &State, req: &mut Req, op: Op) -> Result<Resp, ApiError> {
    if state.faults.daily_budget_spent() {
        return Err(ApiError::daily_upload_limit());
    }
    let v = req.json_body().await?;
    let declared = match req.header("x-upload-content-length") {
        None => None,
        Some(h) => {
            Some(h.trim().parse::<u64>().map_err(|_| ApiError::bad_request("Invalid X-Upload-Content-Length."))?)
        }
    };
    if declared.is_some_and(|d| d > state.storage_room()) {
        return Err(ApiError::storage_quota());
    }
    let upload_mime = req.header("x-upload-content-type").map(str::to_string);
    let (target, name, path_id) = if op == Op::FilesCreateResumable {
        let meta: Meta = files::parse_create(&v)?;
        let mime = content_mime(meta.mime_type.as_deref(), upload_mime.as_deref())?;
        let parent = files::new_parent(&state.store(), &meta, supports(req))?;
        let content = Content::default();
        let digests = Hashers::of(&content);
        // The content is filled in when the upload completes.
        let body = Body::Blob { content, digests, original_filename: meta.original_filename.clone(), revision: 1 };
        let new = files::new_file(&meta, parent, mime, body);
        let name = new.name.clone();
        (Target::Create(Box::new(new)), name, None)
    } else {
        let id = update_target(state, req)?;
        files::check_patch(&v)?;
        let target = Target::Update {
            file_id: id.clone(),
            patch: v,
            add_parents: req.param("addParents").map(str::to_string),
            remove_parents: req.param("removeParents").map(str::to_string),
            mime_type: upload_mime,
        };
        (target, id.clone(), Some(id))
    };
    let id = session_id(state);
    let session = Session::new(target, req.fields().map(str::to_string), declared, state.session_bytes.clone());
    let now = Instant::now();
    let counters = SessionCounters::default();
    counters.total.store(u64::MAX, Ordering::Relaxed);
    let entry = SessionEntry {
        session: Arc::new(tokio::sync::Mutex::new(session)),
        counters: Arc::new(counters),
        name,
        started: now,
        touched: now,
        supports_all_drives: supports(req),
    };
    {
        let mut sessions = state.sessions();
        let lifetime = state.settings.session_lifetime;
        sessions.retain(|_, e| now.duration_since(e.started) < lifetime);
        while sessions.len() >= state.settings.sessions_max {
            let oldest = sessions.iter().min_by_key(|(_, e)| e.touched).map(|(k, _)| k.clone()).expect("not empty");
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), entry);
        assert!(sessions.len() <= state.settings.sessions_max);
    }
    let path = match path_id {
        Some(f) => format!("/upload/drive/v3/files/{f}"),
        None => "/upload/drive/v3/files".to_string(),
    };
    let location = format!("{}{path}?uploadType=resumable&upload_id={id}", state.api_url);
    let mut r = empty_response(StatusCode::OK);
    r.headers_mut().insert("location", location.parse().expect("an ascii URL"));
    r.headers_mut().insert("x-guploader-uploadid", id.parse().expect("ascii"));
    Ok(r)
}

fn resume_incomplete(committed: u64) -> Resp {
    let mut r = empty_response(StatusCode::PERMANENT_REDIRECT);
    if committed > 0 {
        r.headers_mut().insert("range", format!("bytes=0-{}", committed - 1).parse().expect("ascii"));
    }
    r
}

/// Completes a session: makes or updates the file; answers it.
fn finish(state: &State, session: &mut Session, counters: &SessionCounters, supports_all_drives: bool) -> Resp {
    let (content, digests) = session.take();
    let r = match &mut session.target {
        Target::Create(new) => {
            let mut new = (**new).clone();
            if let Body::Blob { original_filename, .. } = &new.body {
                new.body = Body::Blob { content, digests, original_filename: original_filename.clone(), revision: 1 };
            }
            let mut s = state.store();
            s.check_parent(&new.parent).map(|_| ()).and_then(|()| s.create(new))
        }
        Target::Update { file_id, patch, add_parents, remove_parents, mime_type } => {
            let mime = mime_type.as_deref().map(|m| content_mime(Some(m), None)).transpose();
            mime.and_then(|mime| {
                replace_content(
                    state,
                    file_id,
                    content,
                    digests,
                    mime,
                    patch,
                    add_parents.as_deref(),
                    remove_parents.as_deref(),
                    supports_all_drives,
                )
            })
            .map(|()| file_id.clone())
        }
    };
    match r {
        Ok(id) => {
            session.done = Some(id.clone());
            counters.complete.store(true, Ordering::Relaxed);
            let f = state.store().get(&id).expect("just written").clone();
            files::file_response(state, &f, session.fields.as_deref())
        }
        Err(e) => error_response(state, &e),
    }
}

/// Commits the first `n` bytes of `segments` (which follow `committed`), cut down to
/// a 256 KiB boundary of the file; returns the bytes committed.
fn commit_aligned(session: &mut Session, committed: u64, n: u64, segments: Vec<Bytes>) -> u64 {
    let aligned = (committed + n) / CHUNK_UNIT_BYTES * CHUNK_UNIT_BYTES;
    let mut keep = aligned.saturating_sub(committed);
    for mut s in segments {
        if keep == 0 {
            break;
        }
        let k = usize::try_from(keep.min(s.len() as u64)).expect("a segment");
        s.truncate(k);
        keep -= k as u64;
        session.commit(s);
    }
    session.committed() - committed
}

/// A request to a session's URI: a chunk, or a status query.
pub(crate) async fn chunk(state: &State, req: &mut Req) -> Answer {
    let id = req.param("upload_id").unwrap_or("").to_string();
    let now = Instant::now();
    let found = {
        let mut sessions = state.sessions();
        let lifetime = state.settings.session_lifetime;
        match sessions.get_mut(&id) {
            Some(e) if now.duration_since(e.started) < lifetime => {
                e.touched = now;
                Some((e.session.clone(), e.counters.clone(), e.supports_all_drives))
            }
            Some(_) => {
                sessions.remove(&id);
                None
            }
            None => None,
        }
    };
    let Some((session, counters, supports_all_drives)) = found else {
        req.drain().await;
        return Ok(error_response(state, &ApiError::session_not_found()));
    };
    // One request at a time per session: a status query waits for a chunk in flight.
    let mut session = session.lock().await;
    if let Some(done) = session.done.clone() {
        req.drain().await;
        let f = state.store().get(&done).cloned();
        return Ok(match f {
            Some(f) => files::file_response(state, &f, session.fields.as_deref()),
            None => error_response(state, &ApiError::file_not_found(&done)),
        });
    }
    let range = match req.header("content-range").map(str::to_string) {
        None => None,
        Some(h) => match parse_content_range(&h) {
            Some(r) => Some(r),
            None => {
                req.drain().await;
                return Ok(error_response(state, &ApiError::bad_request(format!("Invalid Content-Range: {h}"))));
            }
        },
    };
    let step = match upload::plan(session.position(), range, req.content_length()) {
        Ok(s) => s,
        Err(e) => {
            req.drain().await;
            return Ok(error_response(state, &e));
        }
    };
    match step {
        Step::Status => Ok(resume_incomplete(session.committed())),
        Step::Finish { total } => {
            session.total = Some(total);
            counters.total.store(total, Ordering::Relaxed);
            let answer = finish(state, &mut session, &counters, supports_all_drives);
            if session.done.is_some() && state.faults.take_lost_answer() {
                return Err(lose_answer(state, req));
            }
            Ok(answer)
        }
        Step::Append { skip, take, total, last } => {
            if take > state.storage_room() {
                req.drain().await;
                return Ok(error_response(state, &ApiError::storage_quota()));
            }
            if let Some(t) = total {
                session.total = Some(t);
                counters.total.store(t, Ordering::Relaxed);
            }
            let cut_after = state.faults.take_drop(true);
            let count = |n: u64| {
                counters.received.fetch_add(n, Ordering::Relaxed);
            };
            let committed = session.committed();
            match read_body(req, skip, take, cut_after, &count, false).await {
                Ok((segments, n)) if n == take => {
                    if let Some((keep, corrupt)) = state.faults.take_short_commit() {
                        let mut segments = segments;
                        if let Some(first) = segments.first_mut().filter(|s| corrupt && !s.is_empty()) {
                            let mut changed = BytesMut::from(&first[..]);
                            changed[0] ^= 0x01;
                            *first = changed.freeze();
                        }
                        // Committed short: kept down to a 256 KiB boundary of the file.
                        let kept = commit_aligned(&mut session, committed, keep.min(n), segments);
                        counters.committed.store(session.committed(), Ordering::Relaxed);
                        state.faults.count_uploaded(kept);
                        if !last || kept < n {
                            return Ok(resume_incomplete(session.committed()));
                        }
                        return Ok(finish(state, &mut session, &counters, supports_all_drives));
                    }
                    for s in segments {
                        session.commit(s);
                    }
                    counters.committed.store(session.committed(), Ordering::Relaxed);
                    state.faults.count_uploaded(n);
                    if last {
                        let answer = finish(state, &mut session, &counters, supports_all_drives);
                        if session.done.is_some() && state.faults.take_lost_answer() {
                            return Err(lose_answer(state, req));
                        }
                        Ok(answer)
                    } else {
                        Ok(resume_incomplete(session.committed()))
                    }
                }
                // hyper ends a body short of its Content-Length with an error, so a whole
                // read has `take` bytes; anything else is a cut.
                Ok((segments, n)) | Err((_, segments, n)) => {
                    let cut = matches!(cut_after, Some(c) if c < skip + take);
                    // Keep what arrived, down to a 256 KiB boundary of the file.
                    let kept = commit_aligned(&mut session, committed, n, segments);
                    counters.committed.store(session.committed(), Ordering::Relaxed);
                    state.faults.count_uploaded(kept);
                    if cut {
                        req.conn.kill();
                        state.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Dropped)
                }
            }
        }
    }
}
