//! Drive uploads as sessions: one `uploadType=multipart` request (metadata and media)
//! for a session of one part, a resumable session otherwise. The session's state
//! keeps the folder, the name, the file it replaces (an existing file of that name is
//! updated, never duplicated) and the session URI, so another worker or a later run
//! can go on with it. `committed` asks the session what it holds
//! (`Content-Range: bytes */TOTAL`); when the answer to the last chunk was lost after
//! Drive completed the file, that query answers the file (200/201), and the upload is
//! done: nothing is sent again, no second file is made.
//!
//! Drive checks no checksum sent with an upload, so the hash of what was sent is
//! compared with the one Drive computed, whichever request brought the answer that the
//! file is complete: `sha256Checksum` where this CPU computes SHA-256 in hardware (three
//! times MD5's speed), `md5Checksum` otherwise ([`check_algo`]); from the relay's sums
//! for a single put, and for a resumable session from the running hash of `md5.rs`,
//! which follows the stream back when Drive keeps less than it was sent. A file whose
//! hash differs, or cannot be known, is deleted and the object fails, so a re-run sends
//! it again.

use std::cell::RefCell;

use percent_encoding::utf8_percent_encode;
use serde::{Deserialize, Serialize};

use super::{with_query, Call, DriveStore, FileRes, FILE_FIELDS, PROVENANCE_PROPERTY, QUERY_SET};
use crate::backend::{
    Committed, LocalFuture, PartRecord, PartSpec, PutArgs, Session, SessionState, UploadPlan, UploadSession,
};
use crate::checksum::{Checksum, ChecksumAlgo, Hasher};
use crate::error::{Error, ErrorClass, Result};
use crate::http::{Endpoint, RequestBody, ResponseHead};
use crate::pool::Body;

/// The hash an upload is checked by: SHA-256 where this CPU computes it in hardware,
/// MD5 otherwise (Drive reports both for every binary file).
pub(super) fn check_algo() -> ChecksumAlgo {
    if crate::checksum::sha256_in_hardware() {
        ChecksumAlgo::Sha256
    } else {
        ChecksumAlgo::Md5
    }
}

/// [`check_algo`] as the capabilities name it.
pub(super) fn check_algos() -> &'static [ChecksumAlgo] {
    match check_algo() {
        ChecksumAlgo::Sha256 => &[ChecksumAlgo::Sha256],
        _ => &[ChecksumAlgo::Md5],
    }
}

/// Every chunk of a resumable upload but the last is a multiple of this.
pub(super) const CHUNK_ALIGNMENT_BYTES: u64 = 256 << 10;
const _: () = assert!(CHUNK_ALIGNMENT_BYTES.is_power_of_two());

/// The Drive part of a session's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DriveSession {
    /// The folder the file goes in.
    parent: String,
    /// Its name.
    name: String,
    /// The file of that name that the upload replaces, if there was one.
    existing: Option<String>,
    /// The resumable session's URI; None for a single put.
    uri: Option<String>,
}

struct DriveUpload<'a> {
    store: &'a DriveStore,
    state: SessionState,
    session: DriveSession,
    /// The file, once Drive has it whole and its MD5 was checked.
    file: RefCell<Option<FileRes>>,
}

pub(super) async fn begin<'a>(
    store: &'a DriveStore,
    key: &'a str,
    plan: UploadPlan,
    args: &'a PutArgs,
) -> Result<Session<'a>> {
    let (dir, name) = key.rsplit_once('/').unwrap_or(("", key));
    if name.is_empty() || name == "." || name == ".." {
        return Err(Error::InvalidKey { op: "put", key: key.to_string(), reason: "Drive files need a name".into() });
    }
    let parent = store.folder(dir, true, key).await?.expect("made when missing");
    store.forget(key);
    let existing = store.find_child(&parent, name, false, key).await?.map(|f| f.id);
    let mut session = DriveSession { parent, name: name.to_string(), existing, uri: None };
    let mut upload = DriveUpload {
        store,
        state: SessionState {
            key: key.to_string(),
            plan,
            args: args.clone(),
            store: serde_json::Value::Null,
            parts: Vec::new(),
        },
        session: session.clone(),
        file: RefCell::new(None),
    };
    if !plan.single {
        let uri = upload.start().await?;
        store.shared.md5.start(&uri);
        session.uri = Some(uri);
        upload.session = session;
    }
    upload.state.store = serde_json::to_value(&upload.session).expect("serialisable");
    Ok(Box::new(upload))
}

pub(super) fn resume(store: &DriveStore, state: SessionState) -> Result<Session<'_>> {
    let session: DriveSession = serde_json::from_value(state.store.clone()).map_err(|e| {
        Error::protocol("resume", &state.key, format!("the session's state is not a Drive upload's: {e}"))
    })?;
    Ok(Box::new(DriveUpload { store, state, session, file: RefCell::new(None) }))
}

/// The end (exclusive) of what a 308 says the session holds.
fn held_of(head: &ResponseHead) -> u64 {
    head.header("range")
        .and_then(|r| r.trim().strip_prefix("bytes=0-"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map_or(0, |last| last + 1)
}

fn split_uri(uri: &str) -> Option<(Endpoint, String)> {
    let after_scheme = uri.find("://")? + 3;
    let slash = after_scheme + uri[after_scheme..].find('/')?;
    Some((Endpoint::parse(&uri[..slash]).ok()?, uri[slash..].to_string()))
}

impl DriveUpload<'_> {
    fn key(&self) -> &str {
        &self.state.key
    }

    /// The metadata sent with the upload.
    fn metadata(&self) -> serde_json::Value {
        let args = &self.state.args;
        let mut m = serde_json::Map::new();
        if self.session.existing.is_none() {
            m.insert("name".into(), self.session.name.clone().into());
            m.insert("parents".into(), vec![self.session.parent.clone()].into());
            if let Some(t) = args.meta.content_type.as_deref().filter(|t| !t.starts_with(super::GOOGLE_APPS_PREFIX)) {
                m.insert("mimeType".into(), t.into());
            }
        }
        if let Some(mtime) = args.meta.mtime {
            m.insert("modifiedTime".into(), crate::backend::rfc3339::format_millis(mtime).into());
        }
        if let Some(p) = &args.provenance {
            m.insert("appProperties".into(), serde_json::json!({ PROVENANCE_PROPERTY: p }));
        }
        serde_json::Value::Object(m)
    }

    /// Method and path of an upload request of `upload_type`: a create, or an update
    /// of the file it replaces.
    fn upload_call(&self, upload_type: &str) -> (&'static str, String) {
        let query = [("uploadType", upload_type), ("supportsAllDrives", "true"), ("fields", FILE_FIELDS)];
        match &self.session.existing {
            Some(id) => {
                ("PATCH", with_query(&format!("/upload/drive/v3/files/{}", utf8_percent_encode(id, QUERY_SET)), &query))
            }
            None => ("POST", with_query("/upload/drive/v3/files", &query)),
        }
    }

    /// Starts a resumable session; returns its URI.
    async fn start(&self) -> Result<String> {
        let key = self.key();
        let (method, path) = self.upload_call("resumable");
        let headers = vec![
            ("content-type".to_string(), "application/json; charset=UTF-8".to_string()),
            ("x-upload-content-length".to_string(), self.state.plan.size.to_string()),
        ];
        let call = Call { method, path, headers, op: "create-session", target: key };
        let body = RequestBody::Bytes(self.metadata().to_string().into_bytes());
        let (head, _) = self.store.send_small(call, body).await?;
        head.header("location")
            .map(str::to_string)
            .ok_or_else(|| Error::protocol("create-session", key, "Drive started a session without a Location"))
    }

    fn uri(&self, op: &'static str) -> Result<(Endpoint, String)> {
        let uri = self.session.uri.as_deref().ok_or_else(|| Error::protocol(op, self.key(), "no resumable session"))?;
        split_uri(uri).ok_or_else(|| Error::protocol(op, self.key(), format!("unusable session URI {uri:?}")))
    }

    /// Sends to the session; 308 and 200/201 are answers, the rest errors. A lost
    /// session is this object's failure: a later run starts it again.
    async fn to_session(&self, op: &'static str, range: String, body: RequestBody) -> Result<(ResponseHead, Vec<u8>)> {
        let key = self.key();
        let (endpoint, path) = self.uri(op)?;
        let call = Call { method: "PUT", path, headers: vec![("content-range".to_string(), range)], op, target: key };
        let response = self.store.send_to(&endpoint, call, body).await?;
        let head = response.head.clone();
        let bytes = response.read_to_vec().await?;
        match head.status {
            200 | 201 | 308 => Ok((head, bytes)),
            404 | 410 => {
                let mut err = self.store.http_error(op, key, &head, &bytes);
                if let Error::Http { class, hint, .. } = &mut err {
                    *class = ErrorClass::FatalObject;
                    *hint = "; the resumable session expired or was lost: run the relay again to upload this file \
                             from the start"
                        .to_string();
                }
                Err(err)
            }
            _ => Err(self.store.http_error(op, key, &head, &bytes)),
        }
    }

    /// Takes the file Drive answered with once it holds the whole upload, after
    /// checking its MD5: against `single_md5` for a single put, against the running
    /// MD5 of the session otherwise.
    async fn completed(&self, op: &'static str, bytes: &[u8], single_md5: Option<String>) -> Result<()> {
        let key = self.key();
        let file: FileRes = serde_json::from_slice(bytes)
            .map_err(|e| Error::protocol(op, key, format!("unreadable Drive answer: {e}")))?;
        let algo = check_algo();
        let name = algo.name().to_ascii_uppercase();
        let reported = match algo {
            ChecksumAlgo::Sha256 => file.sha256_checksum.as_deref(),
            _ => file.md5_checksum.as_deref(),
        };
        let got = reported.unwrap_or("none");
        let refused = match (&self.session.uri, single_md5) {
            (None, Some(sent)) => (!sent.eq_ignore_ascii_case(got))
                .then(|| format!("Drive computed {name} {got}, the relay sent bytes with {name} {sent}")),
            (None, None) => None,
            (Some(uri), _) => match self.store.shared.md5.whole(uri, self.state.plan.size) {
                Ok(None) => None,
                Ok(Some(sent)) if sent.to_hex().eq_ignore_ascii_case(got) => {
                    self.store.shared.md5.checked(uri);
                    None
                }
                Ok(Some(sent)) => {
                    Some(format!("Drive computed {name} {got}, the relay sent bytes with {name} {}", sent.to_hex()))
                }
                Err(()) => Some(format!(
                    "Drive lost bytes of the upload that it had acknowledged, so the {name} of what it holds cannot \
                     be checked against the bytes sent"
                )),
            },
        };
        if let Some(why) = refused {
            let _ = self.store.delete_file(&file.id, key).await;
            let why = format!("{why}; the file was deleted, and a re-run sends it again");
            if let Some(uri) = &self.session.uri {
                // The session now answers a file that is gone: say why, not that it was lost.
                self.store.shared.md5.refuse(uri, &why);
            }
            return Err(Error::Integrity { op, target: key.to_string(), detail: why });
        }
        self.store.forget(key);
        *self.file.borrow_mut() = Some(file);
        Ok(())
    }

    async fn put_single(&self, body: Body, sums: &[Checksum]) -> Result<String> {
        let key = self.key();
        let algo = check_algo();
        let md5 = match sums.iter().find(|c| c.algo == algo) {
            Some(c) => c.to_hex(),
            None => {
                let mut h = Hasher::new(algo);
                for slice in body.slices() {
                    h.update(slice);
                }
                h.finish().to_hex()
            }
        };
        let boundary = format!("laminar-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let meta = self.metadata().to_string();
        let mut bytes = Vec::with_capacity(body.len() as usize + meta.len() + 256);
        bytes.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n--{boundary}\r\n")
                .as_bytes(),
        );
        bytes.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
        for slice in body.slices() {
            bytes.extend_from_slice(slice);
        }
        bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        drop(body);
        let (method, path) = self.upload_call("multipart");
        let headers = vec![("content-type".to_string(), format!("multipart/related; boundary={boundary}"))];
        let call = Call { method, path, headers, op: "put", target: key };
        let (_, answer) = self.store.send_small(call, RequestBody::Bytes(bytes)).await?;
        self.completed("put", &answer, Some(md5)).await?;
        Ok(self.file.borrow().as_ref().map(|f| f.id.clone()).unwrap_or_default())
    }

    async fn put_chunk(&self, part: PartSpec, body: Body) -> Result<String> {
        let total = self.state.plan.size;
        let end = part.offset + part.len;
        assert!(end <= total, "part past the end of the object");
        let uri = self.session.uri.clone().expect("a resumable session");
        // Before sending: if the answer is lost, a status query may find the file
        // complete, and its MD5 is checked against this.
        self.store.shared.md5.feed(&uri, part.offset, body.slices());
        let range = format!("bytes {}-{}/{total}", part.offset, end - 1);
        let (head, bytes) = self.to_session("upload-part", range, RequestBody::Chunks(body)).await?;
        if head.status == 308 {
            let held = held_of(&head);
            self.store.shared.md5.confirm(&uri, held);
            if held < end {
                return Err(Error::protocol(
                    "upload-part",
                    self.key(),
                    format!("Drive kept {held} bytes of a chunk that ended at {end}"),
                ));
            }
            return Ok(String::new());
        }
        self.completed("upload-part", &bytes, None).await?;
        Ok(String::new())
    }
}

impl DriveStore {
    /// Deletes file `id` for good.
    pub(super) async fn delete_file(&self, id: &str, key: &str) -> Result<()> {
        let path = with_query(
            &format!("/drive/v3/files/{}", utf8_percent_encode(id, QUERY_SET)),
            &[("supportsAllDrives", "true")],
        );
        let call = Call { method: "DELETE", path, headers: Vec::new(), op: "delete", target: key };
        match self.send_small(call, RequestBody::Empty).await {
            Ok(_) | Err(Error::Http { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl UploadSession for DriveUpload<'_> {
    fn state(&self) -> &SessionState {
        &self.state
    }

    fn put<'a>(&'a self, part: PartSpec, body: Body, sums: &'a [Checksum]) -> LocalFuture<'a, Result<String>> {
        Box::pin(async move {
            if self.session.uri.is_none() {
                self.put_single(body, sums).await
            } else {
                self.put_chunk(part, body).await
            }
        })
    }

    fn wants_held_bytes(&self) -> bool {
        self.session.uri.is_some()
    }

    fn held(&self, offset: u64, body: &Body) -> Result<()> {
        let Some(uri) = &self.session.uri else { return Ok(()) };
        let md5 = &self.store.shared.md5;
        if offset == 0 {
            md5.start(uri);
        }
        md5.feed(uri, offset, body.slices());
        md5.confirm(uri, offset + body.len());
        Ok(())
    }

    fn committed(&self) -> LocalFuture<'_, Result<Committed>> {
        Box::pin(async move {
            let total = self.state.plan.size;
            if self.file.borrow().is_some() {
                return Ok(Committed::Offset(total));
            }
            let Some(uri) = &self.session.uri else { return Ok(Committed::Offset(0)) };
            if let Some(why) = self.store.shared.md5.refused(uri) {
                return Err(Error::Integrity { op: "upload-status", target: self.key().to_string(), detail: why });
            }
            let (head, bytes) =
                self.to_session("upload-status", format!("bytes */{total}"), RequestBody::Empty).await?;
            if head.status == 308 {
                let held = held_of(&head);
                self.store.shared.md5.confirm(uri, held);
                return Ok(Committed::Offset(held));
            }
            self.completed("upload-status", &bytes, None).await?;
            Ok(Committed::Offset(total))
        })
    }

    fn finish<'a>(&'a self, _parts: &'a [PartRecord], _full: Option<&'a Checksum>) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(uri) = &self.session.uri else { return Ok(()) };
            if self.file.borrow().is_some() {
                self.store.shared.md5.forget(uri);
                return Ok(());
            }
            match self.committed().await? {
                _ if self.file.borrow().is_some() => {
                    self.store.shared.md5.forget(uri);
                    Ok(())
                }
                Committed::Offset(held) => Err(Error::protocol(
                    "finish",
                    self.key(),
                    format!("Drive holds {held} of {} bytes of the upload", self.state.plan.size),
                )),
                Committed::Parts(_) => unreachable!("a Drive session is one stream"),
            }
        })
    }

    fn abort(&self) -> LocalFuture<'_, Result<()>> {
        Box::pin(async move {
            let key = self.key();
            if let Some(uri) = &self.session.uri {
                self.store.shared.md5.forget(uri);
            }
            let made = self.file.borrow().as_ref().map(|f| f.id.clone());
            if let Some(id) = made {
                // Only a file this upload created goes; one it replaced keeps its name.
                if self.session.existing.is_none() {
                    return self.store.delete_file(&id, key).await;
                }
                return Ok(());
            }
            if self.session.uri.is_none() {
                return Ok(());
            }
            let (endpoint, path) = self.uri("abort")?;
            let call = Call { method: "DELETE", path, headers: Vec::new(), op: "abort", target: key };
            let response = self.store.send_to(&endpoint, call, RequestBody::Empty).await?;
            let head = response.head.clone();
            let bytes = response.read_to_vec().await?;
            match head.status {
                s if s < 300 || s == 499 || s == 404 => Ok(()),
                _ => Err(self.store.http_error("abort", key, &head, &bytes)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_answers_are_read() {
        let head = |range: Option<&str>| ResponseHead {
            status: 308,
            headers: range.map(|r| vec![("range".to_string(), r.to_string())]).unwrap_or_default(),
        };
        assert_eq!(held_of(&head(Some("bytes=0-262143"))), 262_144);
        assert_eq!(held_of(&head(None)), 0);
        let (endpoint, path) = split_uri("http://127.0.0.1:4000/upload/drive/v3/files?upload_id=x").unwrap();
        assert_eq!(
            (endpoint.url().as_str(), path.as_str()),
            ("http://127.0.0.1:4000", "/upload/drive/v3/files?upload_id=x")
        );
        let s = DriveSession { parent: "P".into(), name: "a".into(), existing: None, uri: Some("u".into()) };
        let back: DriveSession = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back.uri.as_deref(), Some("u"));
    }
}
