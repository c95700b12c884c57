//! Google Drive (API v3), on the engine's own HTTP client.
//!
//! Drive has no keys, only files with ids in folders with ids, and names that may
//! repeat within a folder. This backend maps a key (`Backup/Photos/a.jpg`, below the
//! remote's root folder) to a folder path and a name. What every worker shares lives
//! in the [`DriveBackend`]: the OAuth token cache (`auth.rs`), the path → folder-id
//! cache (`folders.rs`, which makes sure two workers never create two folders of one
//! name) and the export spool (`export.rs`). Uploads are one request
//! (`uploadType=multipart`) up to 5 MiB and resumable sessions above, declared as one
//! ordered stream (`upload.rs`, the MD5 kept in flight in `md5.rs`).
//!
//! As a source: a listing walks folders (`list.rs`, where duplicate names, Google
//! Docs and shortcuts are named or skipped), and a read resolves its key to a file,
//! a followed shortcut's target or an export (`read.rs`). Google Docs, Sheets,
//! Slides and Drawings are exported (`export`, default `docx,xlsx,pptx`; `none`
//! skips them with the reason); shortcuts are skipped with the reason unless
//! `follow_shortcuts` is set. `laminar relay --drive-export` and
//! `--drive-follow-shortcuts` set these two keys of every Drive remote the relay
//! opens.

mod auth;
mod config;
mod export;
mod folders;
mod list;
mod md5;
mod read;
mod upload;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

pub use config::{DriveConfig, DriveRemoteConfig, TYPE};
pub use export::Format;

use super::{
    rfc3339, Backend, Capabilities, CopySource, Entry, HashFamily, ListOrder, ListPage, LocalFuture, MetaSupport,
    ObjectInfo, PartLimits, PutArgs, Session, SessionState, Sink, Source, Store, UploadMode, UploadPlan, WorkerCtx,
};
use crate::checksum::{Checksum, ChecksumAlgo, Hashers};
use crate::error::{one_line, Error, ErrorClass, Result};
use crate::http::{Endpoint, HttpClient, Request, RequestBody, Response, ResponseHead};
use crate::pool::ring::Filler;
use crate::pool::Body;

/// Characters left unencoded in a query value: unreserved only.
const QUERY_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

const FOLDER_MIME: &str = "application/vnd.google-apps.folder";
const SHORTCUT_MIME: &str = "application/vnd.google-apps.shortcut";
const GOOGLE_APPS_PREFIX: &str = "application/vnd.google-apps.";
const PROVENANCE_PROPERTY: &str = "laminar-provenance";
/// Fields of a listed file.
const LIST_FIELDS: &str =
    "nextPageToken,files(id,name,mimeType,size,md5Checksum,sha256Checksum,modifiedTime,version,shortcutDetails)";
/// Fields of one file looked up for stat and read.
const FILE_FIELDS: &str = "id,name,mimeType,size,md5Checksum,sha256Checksum,modifiedTime,version,parents,\
                           appProperties,trashed,shortcutDetails";
/// Pages of one folder read in one `list` call: 1,000 files each.
const FOLDER_PAGES_MAX: usize = 10_000;
/// Lookups a worker remembers (key → file), cleared when full.
const LOOKUPS_MAX: usize = 4096;
/// The daily upload limit's message; the per-minute limit has the same reason and
/// another message ("User Rate Limit Exceeded. Rate of requests ...").
const DAILY_LIMIT_MESSAGE: &str = "User rate limit exceeded.";
/// How long after the daily upload limit is reached uploads can go on: Drive counts
/// the 750 GB over a rolling day and says no more in its answer.
const DAILY_LIMIT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Most characters of an error's `message` (or `reason`) shown.
const MESSAGE_CHARS_MAX: usize = 300;

/// A configured Drive; each worker opens its own [`DriveStore`].
pub struct DriveBackend {
    shared: Arc<Shared>,
}

/// What all workers share.
struct Shared {
    cfg: DriveConfig,
    tokens: auth::TokenCache,
    folders: folders::FolderCache,
    spool: export::Spool,
    md5: md5::Tracks,
}

impl DriveBackend {
    /// A backend for one Drive remote.
    pub fn new(cfg: DriveConfig) -> DriveBackend {
        DriveBackend {
            shared: Arc::new(Shared {
                cfg,
                tokens: auth::TokenCache::default(),
                folders: Default::default(),
                spool: export::Spool::new(laminar_tuning::plan::default_data_dir()),
                md5: Default::default(),
            }),
        }
    }
}

impl Backend for DriveBackend {
    fn open_source(&self, ctx: &WorkerCtx) -> Result<Rc<dyn Source>> {
        Ok(Rc::new(DriveStore::new(self.shared.clone(), ctx.http.clone())))
    }

    fn open_sink(&self, ctx: &WorkerCtx) -> Result<Rc<dyn Sink>> {
        Ok(Rc::new(DriveStore { turns: ctx.turns.clone(), ..DriveStore::new(self.shared.clone(), ctx.http.clone()) }))
    }
}

/// What Drive can do.
/// Files a second a relay into Drive starts at: what rclone's Drive backend paces its
/// calls to by default (`--drive-pacer-min-sleep` 100 ms). Drive limits the files one
/// user creates a second (403 `userRateLimitExceeded`); the pace rises from here
/// until Drive refuses.
const DRIVE_OBJECTS_PER_S_AT_START: f64 = 10.0;

const CAPABILITIES: Capabilities = Capabilities {
    upload: UploadMode::Ordered,
    parts: PartLimits {
        min_part_bytes: upload::CHUNK_ALIGNMENT_BYTES,
        max_part_bytes: 256 << 20,
        max_parts: 20_000,
        part_alignment_bytes: upload::CHUNK_ALIGNMENT_BYTES,
        max_single_put_bytes: 5 << 20,
    },
    list_order: ListOrder::Unordered,
    case_sensitive: true,
    reports: &[HashFamily::Md5, HashFamily::Sha256],
    verifies: &[],
    checks_after_upload: &[ChecksumAlgo::Md5],
    part_streams_per_worker: 0,
    objects_per_s_at_start: DRIVE_OBJECTS_PER_S_AT_START,
    server_side_copy: false,
    metadata: MetaSupport { content_headers: false, user: false, mtime: true },
};

/// A file resource, as far as this backend reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileRes {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    mime_type: String,
    size: Option<String>,
    md5_checksum: Option<String>,
    sha256_checksum: Option<String>,
    modified_time: Option<String>,
    /// Drive's version number of the file (an int64 as a string), which every change raises.
    version: Option<String>,
    #[serde(default)]
    parents: Vec<String>,
    #[serde(default)]
    app_properties: HashMap<String, String>,
    #[serde(default)]
    trashed: bool,
    shortcut_details: Option<ShortcutDetails>,
}

/// What a shortcut points to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShortcutDetails {
    target_id: String,
    #[serde(default)]
    target_mime_type: String,
}

impl FileRes {
    fn size(&self) -> u64 {
        self.size.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    fn is_folder(&self) -> bool {
        self.mime_type == FOLDER_MIME
    }

    fn checksums(&self) -> Vec<Checksum> {
        let mut out = Vec::with_capacity(2);
        for (algo, hex) in [(ChecksumAlgo::Md5, &self.md5_checksum), (ChecksumAlgo::Sha256, &self.sha256_checksum)] {
            if let Some(bytes) = hex.as_deref().and_then(from_hex) {
                if bytes.len() == algo.digest_bytes() {
                    out.push(Checksum { algo, bytes });
                }
            }
        }
        out
    }

    fn info(&self) -> ObjectInfo {
        let mut info = ObjectInfo {
            size: self.size(),
            etag: self.md5_checksum.clone(),
            checksums: self.checksums(),
            provenance: self.app_properties.get(PROVENANCE_PROPERTY).cloned(),
            ..ObjectInfo::default()
        };
        info.meta.mtime = self.modified_time.as_deref().and_then(rfc3339::parse);
        info
    }

    fn entry(&self, key: String) -> Entry {
        let version =
            self.md5_checksum.clone().or_else(|| self.modified_time.as_ref().map(|t| format!("{t}+{}", self.size())));
        let modified_unix_ms = self.modified_time.as_deref().and_then(rfc3339::parse_unix_ms);
        Entry { key, size: self.size(), etag: self.md5_checksum.clone(), version, modified_unix_ms, ..Entry::default() }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileList {
    next_page_token: Option<String>,
    #[serde(default)]
    files: Vec<FileRes>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

/// What the relay should do about a Drive error answer.
fn classify(status: u16, reason: &str, message: &str) -> ErrorClass {
    match (status, reason) {
        (401, _) => ErrorClass::Reauthenticate,
        (403 | 429, "userRateLimitExceeded") if message.trim() == DAILY_LIMIT_MESSAGE => ErrorClass::QuotaExhausted,
        (403 | 429, "userRateLimitExceeded" | "rateLimitExceeded") | (429, _) => ErrorClass::Throttled,
        (403, "storageQuotaExceeded") => ErrorClass::FatalRelay,
        (408, _) => ErrorClass::Retryable,
        (s, _) if s >= 500 => ErrorClass::Retryable,
        _ => ErrorClass::FatalObject,
    }
}

/// Advice for an error answer, starting with "; ", or empty.
fn hint(remote: &str, status: u16, reason: &str, message: &str) -> String {
    match (status, reason) {
        (403 | 429, "userRateLimitExceeded") if message.trim() == DAILY_LIMIT_MESSAGE => format!(
            "; remote {remote:?} reached Google Drive's daily upload limit (750 GB a day per user): no new upload \
             can start until it resets, about 24 hours after it was reached (uploads in progress finish); run the \
             relay again then, and what is already copied is skipped"
        ),
        (403 | 429, "userRateLimitExceeded" | "rateLimitExceeded") => format!(
            "; Drive is limiting the request rate of remote {remote:?}: the relay sends fewer requests at once and \
             tries again"
        ),
        (403, "storageQuotaExceeded") => {
            format!("; the Drive of remote {remote:?} is full: free space or raise its storage quota, then run again")
        }
        (404, _) => String::new(),
        (403, _) => format!("; the account of remote {remote:?} is not allowed to do this"),
        _ => String::new(),
    }
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A string in single quotes for `q`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `path?name=value&...`, values percent-encoded.
fn with_query(path: &str, query: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(path.len() + 64 * query.len());
    out.push_str(path);
    for (i, (name, value)) in query.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(name);
        out.push('=');
        out.extend(utf8_percent_encode(value, QUERY_SET));
    }
    out
}

/// One worker's handle on a Drive.
pub struct DriveStore {
    shared: Arc<Shared>,
    http: HttpClient,
    /// Keys this worker resolved (a large file is read in many ranges).
    lookups: std::cell::RefCell<HashMap<String, read::Resolved>>,
    /// The relay's turns for creates: a folder made waits for one, as an upload does.
    turns: Option<Arc<dyn crate::backend::CreateTurns>>,
}

/// One request.
struct Call<'a> {
    method: &'static str,
    /// Path and query, encoded.
    path: String,
    headers: Vec<(String, String)>,
    op: &'static str,
    target: &'a str,
}

impl DriveStore {
    fn new(shared: Arc<Shared>, http: HttpClient) -> DriveStore {
        DriveStore { shared, http, lookups: Default::default(), turns: None }
    }

    fn cfg(&self) -> &DriveConfig {
        &self.shared.cfg
    }

    /// Sends a call with an access token to `endpoint`; a 401 drops the token and
    /// comes back as a `Reauthenticate` error, with the response read.
    async fn send_to(&self, endpoint: &Endpoint, call: Call<'_>, body: RequestBody) -> Result<Response> {
        let token = self.shared.tokens.get(self.cfg(), &self.http).await?;
        let mut headers = call.headers;
        headers.push(("authorization".to_string(), format!("Bearer {token}")));
        let req = Request { method: call.method, path: &call.path, headers, op: call.op, target: call.target };
        // A create (POST) or an update (PATCH) whose answer was lost may have been made:
        // it is never sent again unasked; the caller looks before it tries again. Nor is
        // a chunk of a resumable session (a PUT with a body): a connection that closed
        // under it may have left Drive holding part of it, and the status query says
        // how much, so that only the rest is sent again.
        let chunk = call.method == "PUT" && !matches!(body, RequestBody::Empty);
        let (response, _) = if matches!(call.method, "POST" | "PATCH") || chunk {
            self.http.send_once(endpoint, &req, body).await?
        } else {
            self.http.send(endpoint, &req, body).await?
        };
        if response.head.status == 401 {
            self.shared.tokens.drop_token(&token);
            let head = response.head.clone();
            let bytes = response.read_to_vec().await.unwrap_or_default();
            return Err(self.http_error(call.op, call.target, &head, &bytes));
        }
        Ok(response)
    }

    async fn send(&self, call: Call<'_>, body: RequestBody) -> Result<Response> {
        let endpoint = self.cfg().api.clone();
        self.send_to(&endpoint, call, body).await
    }

    /// Sends a call and reads its whole (small) answer; error statuses become errors.
    async fn send_small(&self, call: Call<'_>, body: RequestBody) -> Result<(ResponseHead, Vec<u8>)> {
        let op = call.op;
        let target = call.target.to_string();
        let response = self.send(call, body).await?;
        let head = response.head.clone();
        let bytes = response.read_to_vec().await?;
        if head.status >= 300 {
            return Err(self.http_error(op, &target, &head, &bytes));
        }
        Ok((head, bytes))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        target: &str,
        path: String,
    ) -> Result<T> {
        let call = Call { method: "GET", path, headers: Vec::new(), op, target };
        let (_, bytes) = self.send_small(call, RequestBody::Empty).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::protocol(op, target, format!("unreadable Drive answer: {e}")))
    }

    fn http_error(&self, op: &'static str, target: &str, head: &ResponseHead, body: &[u8]) -> Error {
        let status = head.status;
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let (reason, message) = match parsed {
            Some(b) => {
                let item = b.error.errors.into_iter().next();
                let reason = item.as_ref().map(|i| i.reason.clone()).unwrap_or_default();
                let message = if b.error.message.is_empty() {
                    item.map(|i| i.message).unwrap_or_default()
                } else {
                    b.error.message
                };
                (reason, message)
            }
            None => (String::new(), head.status_text()),
        };
        let class = classify(status, &reason, &message);
        let mut hint = hint(&self.cfg().remote, status, &reason, &message);
        if status == 401 {
            hint = match self.cfg().credential {
                config::Credential::Static(_) => {
                    format!(
                        "; the token of remote {:?} was refused: give a fresh one, or a refresh_token",
                        self.cfg().remote
                    )
                }
                config::Credential::Refresh { .. } | config::Credential::ServiceAccount { .. } => {
                    "; the access token expired: a new one is fetched".to_string()
                }
            };
        }
        let class = match (class, &self.cfg().credential) {
            // A token that cannot be refreshed will not get better.
            (ErrorClass::Reauthenticate, config::Credential::Static(_)) => ErrorClass::FatalRelay,
            (class, _) => class,
        };
        let retry_after =
            head.header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
        let retry_after = match class {
            ErrorClass::QuotaExhausted => retry_after.or(Some(DAILY_LIMIT_WINDOW)),
            _ => retry_after,
        };
        // Classified on what Drive said; shown in one line, whatever it said.
        let code = if reason.is_empty() { format!("{status}") } else { one_line(&reason, MESSAGE_CHARS_MAX) };
        let message = Some(one_line(&message, MESSAGE_CHARS_MAX)).filter(|m| !m.is_empty());
        let message = message.unwrap_or_else(|| head.status_text());
        Error::Http { op, target: target.to_string(), status, code, message, hint, retry_after, class }
    }

    /// Query parameters every files.list carries.
    fn list_scope(&self) -> Vec<(&'static str, String)> {
        let mut q = vec![("supportsAllDrives", "true".to_string()), ("includeItemsFromAllDrives", "true".to_string())];
        if let Some(drive) = &self.cfg().shared_drive_id {
            q.push(("corpora", "drive".to_string()));
            q.push(("driveId", drive.clone()));
        }
        q
    }

    /// One page of files.list for `q`.
    async fn list_query(&self, q: &str, fields: &str, page: Option<&str>, target: &str) -> Result<FileList> {
        let mut query: Vec<(&str, String)> = vec![("q", q.to_string()), ("fields", fields.to_string())];
        query.push(("pageSize", "1000".to_string()));
        if let Some(p) = page {
            query.push(("pageToken", p.to_string()));
        }
        query.extend(self.list_scope());
        let query: Vec<(&str, &str)> = query.iter().map(|(n, v)| (*n, v.as_str())).collect();
        self.get_json("list", target, with_query("/drive/v3/files", &query)).await
    }

    /// Every file in folder `id` (all pages), not trashed.
    async fn folder_contents(&self, id: &str, fields: &str, target: &str) -> Result<Vec<FileRes>> {
        let q = format!("{} in parents and trashed = false", quote(id));
        let mut files = Vec::new();
        let mut page: Option<String> = None;
        for _ in 0..FOLDER_PAGES_MAX {
            let list = self.list_query(&q, fields, page.as_deref(), target).await?;
            files.extend(list.files);
            match list.next_page_token {
                Some(next) => page = Some(next),
                None => return Ok(files),
            }
        }
        Err(Error::protocol("list", target, format!("folder {id} has more than {FOLDER_PAGES_MAX} pages of files")))
    }

    /// The child of folder `parent` that `name` names (its own name, or a
    /// duplicate's name with its id), a folder or not.
    async fn find_child(&self, parent: &str, name: &str, folder: bool, target: &str) -> Result<Option<FileRes>> {
        let kind = if folder { "=" } else { "!=" };
        let q = format!(
            "name = {} and {} in parents and trashed = false and mimeType {kind} {}",
            quote(name),
            quote(parent),
            quote(FOLDER_MIME)
        );
        let fields = format!("nextPageToken,files({FILE_FIELDS})");
        let mut found: Option<FileRes> = None;
        let mut page: Option<String> = None;
        for _ in 0..FOLDER_PAGES_MAX {
            let list = self.list_query(&q, &fields, page.as_deref(), target).await?;
            for f in list.files {
                // `name =` may not be exact everywhere: keep exact matches only. A file
                // that is not a folder is a binary one: a Doc or a shortcut of the name
                // is never what an upload replaces.
                let kind_fits = folder || !f.mime_type.starts_with(GOOGLE_APPS_PREFIX);
                if f.name == name && kind_fits && found.as_ref().is_none_or(|g| f.id < g.id) {
                    found = Some(f);
                }
            }
            match list.next_page_token {
                Some(next) => page = Some(next),
                None => break,
            }
        }
        if found.is_some() {
            return Ok(found);
        }
        let Some(id) = list::duplicate_id(name) else { return Ok(None) };
        let path = with_query(
            &format!("/drive/v3/files/{}", utf8_percent_encode(id, QUERY_SET)),
            &[("fields", FILE_FIELDS), ("supportsAllDrives", "true")],
        );
        match self.get_json::<FileRes>("stat", target, path).await {
            Ok(f) if f.parents.iter().any(|p| p == parent) && f.is_folder() == folder => {
                Ok(list::is_made_up(name, &f.name, &f.id).then_some(f))
            }
            Ok(_) => Ok(None),
            Err(Error::Http { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Store for DriveStore {
    fn list<'a>(&'a self, prefix: &'a str, token: Option<String>) -> LocalFuture<'a, Result<ListPage>> {
        Box::pin(self.list_page(prefix, token))
    }

    fn stat<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Option<ObjectInfo>>> {
        Box::pin(async move {
            self.forget(key);
            match self.lookup(key).await? {
                Some(r) => self.info_of(&r, key).await.map(Some),
                None => Ok(None),
            }
        })
    }

    fn describe(&self) -> String {
        format!("drive {} folder {}", self.cfg().api.url(), self.cfg().root_folder_id)
    }

    fn check<'a>(&'a self, _writable: bool) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let root = &self.cfg().root_folder_id;
            let path = with_query(
                &format!("/drive/v3/files/{}", utf8_percent_encode(root, QUERY_SET)),
                &[("fields", "id,mimeType"), ("supportsAllDrives", "true")],
            );
            match self.get_json::<FileRes>("check", root, path).await {
                Ok(f) if f.is_folder() => Ok(()),
                Ok(_) => Err(Error::Usage(format!(
                    "remote {:?}: root_folder_id {root:?} is a file, not a folder",
                    self.cfg().remote
                ))),
                Err(Error::Http { status: 404, .. }) => Err(Error::Usage(format!(
                    "remote {:?}: root_folder_id {root:?} does not exist, or its account cannot see it",
                    self.cfg().remote
                ))),
                Err(e) => Err(e),
            }
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { checks_after_upload: upload::check_algos(), ..CAPABILITIES }
    }
}

impl Source for DriveStore {
    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Option<(u64, u64)>,
        body: Body,
        hashers: &'a mut Hashers,
    ) -> LocalFuture<'a, Result<(Body, ObjectInfo)>> {
        Box::pin(self.read_key(key, range, body, hashers))
    }

    fn read_stream<'a>(
        &'a self,
        key: &'a str,
        range: (u64, u64),
        filler: &'a Filler,
        hashers: &'a mut Hashers,
    ) -> LocalFuture<'a, Result<Option<String>>> {
        // A media download says nothing of the revision it served: a file changed
        // while it is read shows as a mismatch with its MD5, checked for every file.
        Box::pin(async move { self.read_stream_key(key, range, filler, hashers).await.map(|()| None) })
    }

    fn copy_source(&self, _key: &str) -> Option<CopySource> {
        None
    }
}

impl Sink for DriveStore {
    fn begin<'a>(&'a self, key: &'a str, plan: UploadPlan, args: &'a PutArgs) -> LocalFuture<'a, Result<Session<'a>>> {
        Box::pin(upload::begin(self, key, plan, args))
    }

    fn resume(&self, state: SessionState) -> Result<Session<'_>> {
        upload::resume(self, state)
    }

    fn put_dir_marker<'a>(&'a self, key: &'a str, _args: &'a PutArgs) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let dir = key.trim_end_matches('/');
            self.folder(dir, true, key).await.map(drop)
        })
    }

    fn can_copy_from(&self, _source: &CopySource) -> bool {
        false
    }

    fn delete<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            // The file listed under the key, a shortcut itself and not its target.
            let (dir, name) = key.rsplit_once('/').unwrap_or(("", key));
            let Some(parent) = self.folder(dir, false, key).await? else { return Ok(()) };
            let Some(file) = self.find_source(&parent, name, key).await? else { return Ok(()) };
            self.lookups.borrow_mut().remove(key);
            self.delete_file(&file.id, key).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::registry;

    #[test]
    fn errors_are_classified() {
        let per_minute = "User Rate Limit Exceeded. Rate of requests for user exceed configured project quota.";
        assert_eq!(classify(403, "userRateLimitExceeded", per_minute), ErrorClass::Throttled);
        assert_eq!(classify(403, "userRateLimitExceeded", "User rate limit exceeded."), ErrorClass::QuotaExhausted);
        assert_eq!(classify(403, "rateLimitExceeded", "Rate Limit Exceeded"), ErrorClass::Throttled);
        assert_eq!(classify(429, "rateLimitExceeded", ""), ErrorClass::Throttled);
        assert_eq!(classify(429, "", ""), ErrorClass::Throttled);
        assert_eq!(
            classify(403, "storageQuotaExceeded", "The user's Drive storage quota has been exceeded."),
            ErrorClass::FatalRelay
        );
        assert_eq!(classify(401, "authError", "Invalid Credentials"), ErrorClass::Reauthenticate);
        assert_eq!(classify(503, "backendError", ""), ErrorClass::Retryable);
        assert_eq!(classify(404, "notFound", "File not found: x."), ErrorClass::FatalObject);
        assert_eq!(classify(403, "fileNotDownloadable", ""), ErrorClass::FatalObject);
        let h = hint("gd", 403, "userRateLimitExceeded", "User rate limit exceeded.");
        assert!(h.contains("daily upload limit") && h.contains("750 GB") && h.contains("run the relay again"), "{h}");
        assert!(hint("gd", 403, "storageQuotaExceeded", "").contains("is full"));
    }

    fn store(text: &str) -> DriveStore {
        let table: toml::Table = toml::from_str(text).unwrap();
        let cfg = registry::parse::<DriveRemoteConfig>("gd", "drive", table).unwrap().resolve("gd").unwrap();
        DriveStore::new(DriveBackend::new(cfg).shared, HttpClient::default())
    }

    fn answer(status: u16, headers: &[(&str, &str)]) -> ResponseHead {
        ResponseHead { status, headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect() }
    }

    fn body(reason: &str, message: &str) -> Vec<u8> {
        serde_json::json!({"error": {"code": 403, "message": message, "errors": [{"reason": reason, "message": message}]}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn error_answers_become_classified_errors() {
        let s = store("client_id = \"c\"\nclient_secret = \"sec\"\nrefresh_token = \"r\"");
        let daily =
            s.http_error("put", "k", &answer(403, &[]), &body("userRateLimitExceeded", "User rate limit exceeded."));
        assert_eq!((daily.class(), daily.retry_after()), (ErrorClass::QuotaExhausted, Some(DAILY_LIMIT_WINDOW)));
        assert!(daily.to_string().contains("daily upload limit (750 GB"), "{daily}");
        let minute = s.http_error(
            "put",
            "k",
            &answer(403, &[("retry-after", "7")]),
            &body(
                "userRateLimitExceeded",
                "User Rate Limit Exceeded. Rate of requests for user exceed configured project quota.",
            ),
        );
        assert_eq!((minute.class(), minute.retry_after()), (ErrorClass::Throttled, Some(Duration::from_secs(7))));
        let expired = s.http_error("get", "k", &answer(401, &[]), &body("authError", "Invalid Credentials"));
        assert_eq!(expired.class(), ErrorClass::Reauthenticate);
        let gateway = s.http_error("get", "k", &answer(502, &[]), b"<html>bad gateway</html>");
        assert_eq!(gateway.class(), ErrorClass::Retryable);
        assert!(!format!("{daily}{minute}{expired}{gateway}").contains("sec\""));
        let fixed = store("token = \"ya29.t\"");
        let refused = fixed.http_error("get", "k", &answer(401, &[]), &body("authError", "Invalid Credentials"));
        assert_eq!(refused.class(), ErrorClass::FatalRelay, "a token that cannot be refreshed");
        assert!(!refused.to_string().contains("ya29"), "{refused}");
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(rfc3339::parse("1970-01-01T00:00:00.000Z"), Some((0, 0)));
        assert_eq!(rfc3339::parse("2024-02-29T12:34:56.789Z"), Some((1_709_210_096, 789_000_000)));
        assert_eq!(rfc3339::format_millis((1_709_210_096, 789_000_000)), "2024-02-29T12:34:56.789Z");
        assert_eq!(rfc3339::parse("2024-02-29T12:34:56Z"), Some((1_709_210_096, 0)));
        assert_eq!(rfc3339::parse("garbage"), None);
        assert_eq!(quote("it's a\\b"), "'it\\'s a\\\\b'");
        assert_eq!(with_query("/f", &[("q", "'x' in parents"), ("n", "1")]), "/f?q=%27x%27%20in%20parents&n=1");
    }
}

#[cfg(test)]
mod proptests {
    //! Drive's JSON as the API writes it, and as a broken or hostile peer might:
    //! arbitrary values, truncated and garbled bodies never panic the readers of
    //! files, listings and errors; generated file resources read back to what they
    //! say; timestamps round-trip; a folder's names stay unique.

    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;
    use serde_json::{json, Value};

    use super::*;
    use crate::backend::registry;

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(0xd12e),
            ..ProptestConfig::default()
        }
    }

    thread_local! {
        /// A store of each kind, made once (a client is costly to make).
        static IDLE: [Rc<DriveStore>; 2] = [Rc::new(make_store(false)), Rc::new(make_store(true))];
    }

    fn store(follow_shortcuts: bool) -> Rc<DriveStore> {
        IDLE.with(|s| s[usize::from(follow_shortcuts)].clone())
    }

    fn make_store(follow_shortcuts: bool) -> DriveStore {
        let table: toml::Table =
            toml::from_str("client_id = \"c\"\nclient_secret = \"s\"\nrefresh_token = \"r\"").unwrap();
        let mut cfg = registry::parse::<DriveRemoteConfig>("gd", "drive", table).unwrap().resolve("gd").unwrap();
        cfg.follow_shortcuts = follow_shortcuts;
        DriveStore::new(DriveBackend::new(cfg).shared, HttpClient::default())
    }

    const WORDS: &[&str] = &[
        "id",
        "name",
        "mimeType",
        "size",
        "md5Checksum",
        "sha256Checksum",
        "modifiedTime",
        "version",
        "parents",
        "appProperties",
        "laminar-provenance",
        "trashed",
        "shortcutDetails",
        "targetId",
        "targetMimeType",
        "files",
        "nextPageToken",
        "error",
        "errors",
        "message",
        "reason",
        "code",
        "userRateLimitExceeded",
        "User rate limit exceeded.",
        "storageQuotaExceeded",
        "application/vnd.google-apps.folder",
        "application/vnd.google-apps.shortcut",
        "application/vnd.google-apps.document",
        "application/vnd.google-apps.spreadsheet",
        "application/vnd.google-apps.form",
        "application/pdf",
        "2024-01-02T03:04:05.678Z",
        "d41d8cd98f00b204e9800998ecf8427e",
        "12345",
    ];

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(WORDS).prop_map(str::to_string),
            1 => "\\PC{0,16}",
            1 => "[0-9]{1,25}",
        ]
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
            word().prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 96, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((word(), inner), 0..10).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// A file resource: most fields set with plausible values, some with anything.
    fn file_value() -> impl Strategy<Value = Value> {
        (
            "[A-Za-z0-9_-]{1,12}",
            prop::option::of("\\PC{0,12}"),
            prop::option::of(prop::sample::select(WORDS).prop_map(str::to_string)),
            prop::option::of(json()),
            prop::option::of(json()),
            any::<bool>(),
        )
            .prop_map(|(id, name, mime, size, shortcut, trashed)| {
                let mut v = json!({ "id": id, "trashed": trashed });
                if let Some(name) = name {
                    v["name"] = json!(name);
                }
                if let Some(mime) = mime {
                    v["mimeType"] = json!(mime);
                }
                if let Some(size) = size {
                    v["size"] = size;
                }
                if let Some(s) = shortcut {
                    v["shortcutDetails"] = s;
                }
                v
            })
    }

    fn mutate(mut bytes: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
        for &(kind, at, byte) in edits {
            let at = at % (bytes.len() + 1);
            match kind % 4 {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.truncate(at),
            }
        }
        bytes
    }

    fn answer(status: u16) -> ResponseHead {
        ResponseHead { status, headers: vec![("retry-after".into(), "7".into())] }
    }

    fn status() -> impl Strategy<Value = u16> {
        prop_oneof![Just(400u16), Just(401), Just(403), Just(404), Just(429), Just(500), Just(503), 300u16..600]
    }

    /// Everything read from a file resource.
    fn read_file(f: &FileRes) {
        let _ = (f.size(), f.is_folder(), f.checksums(), f.info(), f.entry("k".into()));
        for s in [store(false), store(true)] {
            let _ = list::listed(s.cfg(), f);
        }
    }

    proptest! {
        #![proptest_config(config(384))]

        #[test]
        fn arbitrary_values_never_panic(v in json(), file in file_value(), status in status()) {
            for v in [&v, &file, &json!({ "files": [&v, &file], "nextPageToken": &v })] {
                if let Ok(f) = serde_json::from_value::<FileRes>(v.clone()) {
                    read_file(&f);
                }
                if let Ok(list) = serde_json::from_value::<FileList>(v.clone()) {
                    list.files.iter().for_each(read_file);
                }
                let _ = serde_json::from_value::<ErrorBody>(v.clone());
            }
            let s = store(false);
            for body in [v.to_string(), json!({ "error": v }).to_string()] {
                let e = s.http_error("get", "k", &answer(status), body.as_bytes());
                let _ = (e.to_string(), e.class(), e.retry_after());
            }
        }

        #[test]
        fn garbled_bodies_never_panic(
            v in json(),
            edits in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..6),
            status in status(),
        ) {
            let body = mutate(json!({ "error": v, "files": [v] }).to_string().into_bytes(), &edits);
            let _ = serde_json::from_slice::<FileList>(&body).map(|l| l.files.iter().for_each(read_file));
            let e = store(false).http_error("put", "k", &answer(status), &body);
            let _ = (e.to_string(), e.class(), e.retry_after());
            if serde_json::from_slice::<ErrorBody>(&body).is_err() {
                prop_assert!(!e.to_string().contains('\n'), "{}", e);
            }
        }

        #[test]
        fn generated_files_read_back(
            id in "[A-Za-z0-9_-]{10,44}",
            name in "\\PC{1,40}",
            size in any::<u64>(),
            md5 in "[0-9a-f]{32}",
            sha256 in prop::option::of("[0-9a-f]{64}"),
            secs in 0i64..253_402_300_800,
            millis in 0u32..1000,
            provenance in prop::option::of("\\PC{0,60}"),
        ) {
            let mut v = json!({
                "id": id, "name": name, "mimeType": "application/octet-stream", "size": size.to_string(),
                "md5Checksum": md5, "modifiedTime": rfc3339::format_millis((secs, millis * 1_000_000)),
                "version": "17", "parents": ["root"], "trashed": false,
            });
            if let Some(sha) = &sha256 {
                v["sha256Checksum"] = json!(sha);
            }
            if let Some(p) = &provenance {
                v["appProperties"] = json!({ PROVENANCE_PROPERTY: p });
            }
            let f: FileRes = serde_json::from_value(v).unwrap();
            let info = f.info();
            prop_assert_eq!(info.size, size);
            prop_assert_eq!(info.etag.as_deref(), Some(md5.as_str()));
            prop_assert_eq!(info.meta.mtime, Some((secs, millis * 1_000_000)));
            prop_assert_eq!(info.provenance, provenance);
            let hexes: Vec<String> = info.checksums.iter().map(Checksum::to_hex).collect();
            let mut want = vec![md5.clone()];
            want.extend(sha256);
            prop_assert_eq!(hexes, want);
            let listed = list::listed(store(false).cfg(), &f);
            prop_assert_eq!(listed, list::Listed::File { name, export: None });
        }

        #[test]
        fn arbitrary_times_never_panic(text in "\\PC{0,30}|-?[0-9]{1,20}-[0-9]{1,3}-[0-9]{1,3}T[0-9:.-]{1,30}Z") {
            let _ = rfc3339::parse(&text);
        }

        #[test]
        fn times_round_trip(secs in -62_135_596_800i64..253_402_300_800, millis in 0u32..1000) {
            let t = (secs, millis * 1_000_000);
            prop_assert_eq!(rfc3339::parse(&rfc3339::format_millis(t)), Some(t));
        }

        #[test]
        fn hex_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..40), text in "\\PC{0,40}") {
            prop_assert_eq!(from_hex(&hex::encode(&bytes)), Some(bytes.clone()));
            prop_assert_eq!(from_hex(&hex::encode_upper(&bytes)), Some(bytes));
            let _ = from_hex(&text);
        }

        #[test]
        fn duplicate_names_give_their_id_back(
            stem in "[^ ()./][^()/]{0,12}",
            ext in prop::option::of("\\.[a-z0-9]{1,5}"),
            id in "[A-Za-z0-9_-]{1,44}",
        ) {
            let name = format!("{stem}{}", ext.unwrap_or_default());
            let made = list::duplicate_name(&name, &id);
            prop_assert_eq!(list::duplicate_id(&made), Some(id.as_str()));
        }
    }

    proptest! {
        #![proptest_config(config(256))]

        /// Names are unique among a folder's files (and among its folders), and do not
        /// depend on the order Drive lists the files in, ids not repeating.
        #[test]
        fn folder_names_are_unique_and_stable(
            files in prop::collection::vec(
                (
                    "[a-c]{1,2}",
                    prop::sample::select(&["a", "a.txt", "a (b)", "a (b).txt", "a (b) (b)", "Doc", "x (1)"][..]),
                    any::<bool>(),
                ),
                0..10,
            ),
        ) {
            let files: Vec<FileRes> = files
                .into_iter()
                .map(|(id, name, folder)| FileRes {
                    id,
                    name: name.to_string(),
                    mime_type: if folder { FOLDER_MIME.to_string() } else { "text/plain".to_string() },
                    ..FileRes::default()
                })
                .collect();
            let cfg = store(false);
            let kinds: Vec<list::Listed> = files.iter().map(|f| list::listed(cfg.cfg(), f)).collect();
            let names = list::unique_names(&files, &kinds);
            prop_assert_eq!(names.len(), files.len());
            let mut seen = std::collections::HashSet::new();
            for (f, name) in files.iter().zip(&names) {
                prop_assert!(seen.insert((f.is_folder(), name.clone())), "{:?} twice in {:?}", name, names);
            }
            let ids: std::collections::HashSet<&str> = files.iter().map(|f| f.id.as_str()).collect();
            if ids.len() == files.len() {
                let (back, back_kinds): (Vec<FileRes>, Vec<list::Listed>) =
                    files.iter().cloned().zip(kinds.iter().cloned()).rev().unzip();
                let mut again = list::unique_names(&back, &back_kinds);
                again.reverse();
                prop_assert_eq!(again, names);
            }
        }
    }

    /// A duplicate's made-up name is never a name another file has: files `a` (id
    /// `a0`), `a` (id `b`) and `a (b)` (id `c`) list as `a`, `a (b) (b)` and `a (b)`,
    /// whichever order Drive lists them in (engine/src/backend/drive/list.rs,
    /// `unique_names`).
    #[test]
    fn made_up_names_do_not_collide_with_real_ones() {
        let file = |id: &str, name: &str| FileRes {
            id: id.into(),
            name: name.into(),
            mime_type: "text/plain".into(),
            ..FileRes::default()
        };
        let mut files = vec![file("a0", "a"), file("b", "a"), file("c", "a (b)")];
        let cfg = store(false);
        for _ in 0..files.len() {
            files.rotate_left(1);
            let kinds: Vec<list::Listed> = files.iter().map(|f| list::listed(cfg.cfg(), f)).collect();
            let names = list::unique_names(&files, &kinds);
            let mut by_id: Vec<(&str, &str)> =
                files.iter().zip(&names).map(|(f, n)| (f.id.as_str(), n.as_deref().unwrap())).collect();
            by_id.sort();
            assert_eq!(by_id, [("a0", "a"), ("b", "a (b) (b)"), ("c", "a (b)")]);
            assert!(list::is_made_up("a (b) (b)", "a", "b") && !list::is_made_up("a (c)", "a", "b"));
        }
    }

    /// A `modifiedTime` with a field out of its range (a month of 13, an hour of 99,
    /// a minute of -5, February 30th) or a year past four digits is refused, not taken
    /// as some other time, and a huge year overflows nothing
    /// (engine/src/backend/drive.rs, `rfc3339::parse`).
    #[test]
    fn out_of_range_times_are_refused() {
        for text in [
            "2023-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-01-01T00:00:60Z",
            "2024-1-01T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-45T00:00:00Z",
            "2024-01-01T99:00:00Z",
            "2024-01-01T00:-5:00Z",
            "9223372036854775807-01-01T00:00:00Z",
        ] {
            let got = std::panic::catch_unwind(|| rfc3339::parse(text));
            assert!(matches!(got, Ok(None)), "{text:?} gave {got:?}");
        }
    }

    /// The error's `message` and `reason` are shown in one line, whatever Drive says:
    /// `{"error": {"message": "a\nFORGED: b"}}` gives `a FORGED: b`
    /// (engine/src/backend/drive.rs, `http_error`).
    #[test]
    fn error_messages_stay_on_one_line() {
        let body = br#"{"error": {"code": 500, "message": "a\nFORGED: b", "errors": []}}"#;
        let e = store(false).http_error("get", "k", &answer(500), body).to_string();
        assert!(!e.contains('\n') && e.ends_with(": a FORGED: b"), "{e:?}");
        let body = br#"{"error": {"message": "\r\n", "errors": [{"reason": "x\ny"}]}}"#;
        let e = store(false).http_error("get", "k", &answer(500), body).to_string();
        assert_eq!(e, "get k: HTTP 500 x y: 500 Internal Server Error");
    }
}
