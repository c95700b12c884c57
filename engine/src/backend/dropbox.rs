//! Dropbox, through its HTTP API v2, on the engine's own HTTP client.
//!
//! Dropbox is a file system, not an object store, and the module is shaped by that:
//! paths are case-insensitive and case-preserving (keys are listed as `path_display`
//! gives them, and the store says `case_sensitive: false`), a recursive listing comes
//! in no order (`ListOrder::Unordered`: the relay sorts it), and large files go up in
//! parallel parts through a concurrent upload session, so the capabilities say
//! `UploadMode::Parallel` with 4 MiB-aligned parts.
//! Files carry Dropbox's `content_hash`, reported as a whole-object checksum so the
//! relay checks what it reads end to end; each upload call carries the content hash
//! of its own bytes, which Dropbox checks. Dropbox keeps no user metadata, but it keeps
//! file properties: Laminar's provenance record goes into a property group of its own
//! template and comes back with listings ([`properties`]), so a re-run skips what it
//! copied before.
//!
//! RPC calls (listings, metadata) go to the api host with a JSON body; content calls
//! (uploads, downloads) to the content host with their argument as JSON in the
//! `Dropbox-API-Arg` header, which must be ASCII ([`header_json`]). Access tokens come
//! from [`auth`]. Errors are classified by their tags ([`classify`]).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

mod auth;
mod batch;
mod config;
mod properties;
mod upload;

pub use auth::Credentials;
pub use config::{DropboxRemoteConfig, TYPE};

use super::{
    Backend, Capabilities, CopySource, Entry, HashFamily, ListOrder, ListPage, LocalFuture, MetaSupport, ObjectInfo,
    PartLimits, PutArgs, Session, SessionState, Sink, Source, Store, UploadMode, UploadPlan, WorkerCtx,
};
use crate::checksum::{Checksum, ChecksumAlgo, Hashers, DROPBOX_BLOCK_BYTES};
use crate::error::{Error, ErrorClass, Result};
use crate::http::{Endpoint, HttpClient, Request, RequestBody, Response, ResponseHead};
use crate::pool::ring::Filler;
use crate::pool::Body;

const RPC_CONTENT_TYPE: &str = "application/json";
const UPLOAD_CONTENT_TYPE: &str = "application/octet-stream";
/// The most one upload call may carry.
const UPLOAD_CALL_BYTES_MAX: u64 = 150 << 20;
/// The largest part: a multiple of the 4 MiB block below the per-call limit.
const PART_BYTES_MAX: u64 = UPLOAD_CALL_BYTES_MAX / DROPBOX_BLOCK_BYTES * DROPBOX_BLOCK_BYTES;
/// Entries per listing page (Dropbox's most).
const LIST_LIMIT: u32 = 2000;
const _: () = assert!(PART_BYTES_MAX.is_multiple_of(DROPBOX_BLOCK_BYTES) && PART_BYTES_MAX <= UPLOAD_CALL_BYTES_MAX);

/// How to reach one Dropbox account, and where in it the remote is rooted.
#[derive(Clone)]
pub struct DropboxConfig {
    /// Remote name for messages.
    pub remote: String,
    /// The folder the remote is rooted at: `""` (the whole account) or `/A/B`.
    pub root: String,
    /// The RPC host.
    pub api: Endpoint,
    /// The content host.
    pub content: Endpoint,
    /// The OAuth token endpoint's host.
    pub token_endpoint: Endpoint,
    /// Its path.
    pub token_path: String,
    /// Where access tokens come from; never printed.
    pub credentials: Credentials,
    /// Small files are committed many at once (`upload_session/finish_batch_v2`)
    /// rather than one `files/upload` each.
    pub batch_commits: bool,
}

impl std::fmt::Debug for DropboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropboxConfig")
            .field("remote", &self.remote)
            .field("root", &self.root)
            .field("api", &self.api.url())
            .field("content", &self.content.url())
            .field("token_url", &format!("{}{}", self.token_endpoint.url(), self.token_path))
            .field("credentials", &self.credentials)
            .field("batch_commits", &self.batch_commits)
            .finish()
    }
}

/// A configured account; each worker opens its own [`DropboxStore`], all sharing one
/// token cache, one property-template cache and one commit batcher.
pub struct DropboxBackend {
    cfg: Arc<DropboxConfig>,
    tokens: Arc<auth::TokenCache>,
    template: Arc<properties::TemplateCache>,
    batcher: Arc<batch::Batcher>,
}

impl DropboxBackend {
    /// A backend for one account.
    pub fn new(cfg: DropboxConfig) -> DropboxBackend {
        DropboxBackend { cfg: Arc::new(cfg), tokens: Arc::default(), template: Arc::default(), batcher: Arc::default() }
    }

    fn store(&self, ctx: &WorkerCtx) -> DropboxStore {
        DropboxStore {
            cfg: self.cfg.clone(),
            tokens: self.tokens.clone(),
            template: self.template.clone(),
            batcher: self.batcher.clone(),
            http: ctx.http.clone(),
        }
    }
}

impl Backend for DropboxBackend {
    fn open_source(&self, ctx: &WorkerCtx) -> Result<Rc<dyn Source>> {
        Ok(Rc::new(self.store(ctx)))
    }

    fn open_sink(&self, ctx: &WorkerCtx) -> Result<Rc<dyn Sink>> {
        Ok(Rc::new(self.store(ctx)))
    }
}

const CAPABILITIES: Capabilities = Capabilities {
    // Concurrent upload sessions (see `upload`): parts on 4 MiB boundaries, in any order.
    upload: UploadMode::Parallel,
    parts: PartLimits {
        min_part_bytes: DROPBOX_BLOCK_BYTES,
        max_part_bytes: PART_BYTES_MAX,
        // 2^41 bytes at the largest part, with room.
        max_parts: 1 << 20,
        part_alignment_bytes: DROPBOX_BLOCK_BYTES,
        max_single_put_bytes: UPLOAD_CALL_BYTES_MAX,
    },
    list_order: ListOrder::Unordered,
    case_sensitive: false,
    reports: &[HashFamily::DropboxContentHash],
    verifies: &[],
    checks_after_upload: &[ChecksumAlgo::DropboxContentHash],
    // Measured on the emulators under the `real` profile (bench/RESULTS.md): 4 part
    // streams a worker left Drive -> Dropbox at 1.1x rclone, 8 at 1.5x.
    part_streams_per_worker: 8,
    objects_per_s_at_start: 0.0,
    server_side_copy: false,
    metadata: MetaSupport { content_headers: false, user: false, mtime: true },
};

/// One worker's handle on an account.
pub struct DropboxStore {
    cfg: Arc<DropboxConfig>,
    tokens: Arc<auth::TokenCache>,
    /// Laminar's property template, shared by every worker's handle.
    template: Arc<properties::TemplateCache>,
    /// The account's commit batches, shared by every worker's handle.
    batcher: Arc<batch::Batcher>,
    http: HttpClient,
}

/// What the relay should do about a Dropbox error answer, from its status and the
/// tags of its error (`path`, `conflict`, ...). A 401 is decided by the caller, which
/// knows whether tokens can be refreshed.
fn classify(status: u16, tags: &[String]) -> ErrorClass {
    let has = |t: &str| tags.iter().any(|x| x == t);
    match status {
        429 => ErrorClass::Throttled,
        409 if has("too_many_write_operations") || has("too_many_requests") => ErrorClass::Throttled,
        409 if has("insufficient_space") => ErrorClass::FatalRelay,
        409 if has("incorrect_offset") => ErrorClass::Retryable,
        // Laminar's template was removed: it is forgotten, and found or made again.
        409 if has("template_not_found") => ErrorClass::Retryable,
        409 if has("conflict") => ErrorClass::Conflict,
        s if s >= 500 => ErrorClass::Retryable,
        401 | 403 => ErrorClass::FatalRelay,
        _ => ErrorClass::FatalObject,
    }
}

/// The tags of an error answer: those of `error_summary` (`path/not_found/..`) and
/// every `.tag` in `error`.
fn error_tags(body: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>, depth: u32) {
        if depth > 8 {
            return;
        }
        if let Value::Object(map) = v {
            if let Some(Value::String(tag)) = map.get(".tag") {
                out.push(tag.clone());
            }
            for value in map.values() {
                walk(value, out, depth + 1);
            }
        }
    }
    let mut tags: Vec<String> = body
        .get("error_summary")
        .and_then(Value::as_str)
        .map(|s| s.split('/').map(|t| t.trim_matches('.').to_string()).filter(|t| !t.is_empty()).collect())
        .unwrap_or_default();
    if let Some(error) = body.get("error") {
        walk(error, &mut tags, 0);
    }
    tags
}

/// Whether an error says there is no file or folder at the path (or not the kind asked
/// for).
fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Http { status: 409, message, .. }
        if ["path/not_found", "path/not_folder", "path/not_file"].iter().any(|p| message.starts_with(p)))
}

/// Text Dropbox sent, in one line and cut to a readable length.
fn one_line(text: &str) -> String {
    const CHARS_MAX: usize = 300;
    crate::error::one_line(text, CHARS_MAX)
}

/// JSON for the `Dropbox-API-Arg` header, which takes ASCII only: every character
/// past 0x7E is written as a `\uXXXX` escape (UTF-16, so two for one past the BMP).
/// Such characters only occur inside JSON strings, where the escape means the same.
pub fn header_json(value: &Value) -> String {
    use std::fmt::Write as _;
    let text = value.to_string();
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if (c as u32) < 0x7f {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(out, "\\u{unit:04x}").expect("writing to a String");
            }
        }
    }
    out
}

/// Dropbox's timestamp form, `2024-05-06T07:08:09Z` (whole seconds).
fn format_time(secs: i64) -> String {
    super::rfc3339::format_secs(secs)
}

/// Parses Dropbox's timestamp form (whole seconds) into seconds since the epoch.
fn parse_time(text: &str) -> Option<i64> {
    super::rfc3339::parse(text).filter(|_| text.len() == 20).map(|(secs, _)| secs)
}

/// A file's version token: its `rev` (a revision id, new on every change), else its
/// content hash.
fn version_of(meta: &Value) -> Option<String> {
    meta.get("rev").or_else(|| meta.get("content_hash")).and_then(Value::as_str).map(|v| format!("dropbox:{v}"))
}

/// What a file's metadata says, as the relay takes it.
fn info_from_metadata(meta: &Value) -> ObjectInfo {
    let mut info = ObjectInfo {
        size: meta.get("size").and_then(Value::as_u64).unwrap_or(0),
        version: version_of(meta),
        ..ObjectInfo::default()
    };
    if let Some(secs) = meta.get("client_modified").and_then(Value::as_str).and_then(parse_time) {
        info.meta.mtime = Some((secs, 0));
    }
    if let Some(bytes) = meta.get("content_hash").and_then(Value::as_str).and_then(|h| hex::decode(h).ok()) {
        if bytes.len() == ChecksumAlgo::DropboxContentHash.digest_bytes() {
            info.checksums.push(Checksum { algo: ChecksumAlgo::DropboxContentHash, bytes });
        }
    }
    info
}

impl DropboxStore {
    /// The Dropbox path of a key (a trailing `/` dropped).
    fn path(&self, key: &str) -> String {
        let key = key.trim_end_matches('/');
        if key.is_empty() {
            return self.cfg.root.clone();
        }
        format!("{}/{key}", self.cfg.root)
    }

    /// The key of a Dropbox path below the root, with the casing Dropbox displays.
    /// The root is matched, lowered, against the path lowered up to one of its
    /// slashes: lowering can change a text's length (`İ` lowers to `i` and a
    /// combining dot), so the root's own length does not say where it ends in the path.
    fn key_of(&self, path_display: &str) -> Option<String> {
        let root = self.cfg.root.to_lowercase();
        // Lowering never makes fewer characters: a longer head cannot be the root.
        let root_chars = root.chars().count();
        let (_, rest) = path_display
            .match_indices('/')
            .map(|(at, _)| path_display.split_at(at))
            .take_while(|(head, _)| head.chars().count() <= root_chars)
            .find(|(head, _)| head.to_lowercase() == root)?;
        let key = &rest[1..];
        (!key.is_empty()).then(|| key.to_string())
    }

    /// The error for an error answer. A 401 for an expired token drops it from the
    /// cache first, so that the retry the relay makes at once gets a fresh one.
    fn http_error(
        &self,
        op: &'static str,
        target: &str,
        head: &ResponseHead,
        body: &[u8],
        token: Option<&str>,
    ) -> Error {
        let parsed: Option<Value> = serde_json::from_slice(body).ok().filter(Value::is_object);
        let tags = parsed.as_ref().map(error_tags).unwrap_or_default();
        let summary = parsed.as_ref().and_then(|v| v.get("error_summary")).and_then(Value::as_str);
        let message = match summary.map(|s| one_line(s.trim_end_matches(['.', '/']))).filter(|m| !m.is_empty()) {
            Some(summary) => summary,
            None if body.is_empty() => head.status_text(),
            None => one_line(&String::from_utf8_lossy(body)),
        };
        let code = tags.first().map(|t| one_line(t)).filter(|t| !t.is_empty());
        let code = code.unwrap_or_else(|| head.status.to_string());
        let remote = &self.cfg.remote;
        let mut class = classify(head.status, &tags);
        if tags.iter().any(|t| t == "template_not_found") {
            self.template.forget();
        }
        let mut hint = String::new();
        if head.status == 401 {
            let expired = tags.iter().any(|t| t == "expired_access_token");
            if expired && self.refreshes() {
                if let Some(token) = token {
                    self.tokens.drop_token(token);
                }
                class = ErrorClass::Reauthenticate;
            } else if expired {
                hint = format!(
                    "; the access token of remote {remote:?} expired: give it a refresh_token with app_key instead, \
                     so Laminar refreshes the access token itself"
                );
            } else {
                hint = format!(
                    "; Dropbox does not accept the credentials of remote {remote:?}: issue a new refresh token for \
                     the app (app_key) and put it in laminar.toml"
                );
            }
        } else if tags.iter().any(|t| t == "insufficient_space") {
            hint = format!("; the Dropbox account of remote {remote:?} is full: free space or add some");
        }
        let retry_after = head
            .header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .or_else(|| parsed.as_ref().and_then(|v| v.pointer("/error/retry_after")).and_then(Value::as_u64))
            .map(Duration::from_secs);
        Error::Http { op, target: target.to_string(), status: head.status, code, message, hint, retry_after, class }
    }

    /// An RPC call on the api host; the answer's JSON, or the error it was.
    async fn rpc(&self, route: &str, op: &'static str, target: &str, arg: &Value) -> Result<Value> {
        let token = self.access_token().await?;
        let path = format!("/2/{route}");
        let headers = vec![
            ("authorization".to_string(), format!("Bearer {token}")),
            ("content-type".to_string(), RPC_CONTENT_TYPE.to_string()),
        ];
        let req = Request { method: "POST", path: &path, headers, op, target };
        let body = RequestBody::Bytes(arg.to_string().into_bytes());
        let (response, _) = self.http.send(&self.cfg.api, &req, body).await?;
        let head = response.head.clone();
        let bytes = response.read_to_vec().await?;
        if head.status >= 300 {
            return Err(self.http_error(op, target, &head, &bytes, Some(&token)));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::protocol(op, target, format!("unreadable answer from {route}: {e}")))
    }

    /// A content call on the content host. Returns the response whatever its status,
    /// and the token it carried (for [`DropboxStore::http_error`]).
    async fn content(
        &self,
        route: &str,
        op: &'static str,
        target: &str,
        arg: &Value,
        body: RequestBody,
        range: Option<(u64, u64)>,
    ) -> Result<(Response, String)> {
        let token = self.access_token().await?;
        let path = format!("/2/{route}");
        let mut headers = vec![
            ("authorization".to_string(), format!("Bearer {token}")),
            ("dropbox-api-arg".to_string(), header_json(arg)),
        ];
        if route != "files/download" {
            headers.push(("content-type".to_string(), UPLOAD_CONTENT_TYPE.to_string()));
        }
        if let Some((start, end)) = range {
            assert!(end > start, "empty range");
            headers.push(("range".to_string(), format!("bytes={start}-{}", end - 1)));
        }
        let req = Request { method: "POST", path: &path, headers, op, target };
        let (response, _) = self.http.send(&self.cfg.content, &req, body).await?;
        Ok((response, token))
    }

    /// A content call whose answer is small: its JSON, or the error it was.
    async fn content_small(
        &self,
        route: &str,
        op: &'static str,
        target: &str,
        arg: &Value,
        body: RequestBody,
    ) -> Result<Value> {
        let (response, token) = self.content(route, op, target, arg, body, None).await?;
        let head = response.head.clone();
        let bytes = response.read_to_vec().await?;
        if head.status >= 300 {
            return Err(self.http_error(op, target, &head, &bytes, Some(&token)));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::protocol(op, target, format!("unreadable answer from {route}: {e}")))
    }

    /// A download: checks the answer's head and returns it with what it says of the
    /// file. A ranged read reports no whole-object checksum.
    async fn download(&self, key: &str, range: Option<(u64, u64)>) -> Result<(Response, ObjectInfo)> {
        let arg = json!({ "path": self.path(key) });
        let (response, token) = self.content("files/download", "get", key, &arg, RequestBody::Empty, range).await?;
        let head = response.head.clone();
        if head.status >= 300 {
            let bytes = response.read_to_vec().await.unwrap_or_default();
            return Err(self.http_error("get", key, &head, &bytes, Some(&token)));
        }
        let meta: Value = head
            .header("dropbox-api-result")
            .and_then(|v| serde_json::from_str(v).ok())
            .ok_or_else(|| Error::protocol("get", key, "the download carried no Dropbox-API-Result"))?;
        let mut info = info_from_metadata(&meta);
        if let Some((start, end)) = range {
            let got = head.content_range().and_then(|r| r.ok());
            let holds = head.status == 206 && got.is_some_and(|r| (r.first, r.last) == (start, end - 1))
                || head.status == 200 && start == 0 && info.size == end;
            if !holds || head.content_length() != Some(end - start) {
                return Err(Error::protocol(
                    "get",
                    format!("{key} bytes={start}-{}", end - 1),
                    format!(
                        "the answer ({}, {:?} bytes) does not hold the range asked for; the file may have changed \
                         during the relay",
                        head.status_text(),
                        head.content_length()
                    ),
                ));
            }
            info.checksums.clear();
        }
        Ok((response, info))
    }

    async fn list_page(&self, prefix: &str, token: Option<String>) -> Result<ListPage> {
        let target = format!("{}/{prefix}", self.cfg.root);
        let answer = match token {
            Some(cursor) => {
                self.rpc("files/list_folder/continue", "list", &target, &json!({ "cursor": cursor })).await?
            }
            None => {
                let folder = prefix.rfind('/').map_or("", |i| &prefix[..i]);
                let mut arg = json!({
                    "path": self.path(folder),
                    "recursive": true,
                    "limit": LIST_LIMIT,
                    "include_deleted": false,
                });
                if let Some(id) = self.template_id(false).await? {
                    arg["include_property_groups"] = properties::filter(&id);
                }
                match self.rpc("files/list_folder", "list", &target, &arg).await {
                    Ok(v) => v,
                    // Nothing there yet: an empty listing.
                    Err(e) if is_not_found(&e) => return Ok(ListPage::default()),
                    Err(e) => return Err(e),
                }
            }
        };
        // The cursor carries the filter; the id reads the groups back.
        let template = self.template_id(false).await?;
        let prefix_lower = prefix.to_lowercase();
        let mut entries = Vec::new();
        for e in answer.get("entries").and_then(Value::as_array).into_iter().flatten() {
            if e.get(".tag").and_then(Value::as_str) != Some("file") {
                continue;
            }
            let Some(display) = e.get("path_display").and_then(Value::as_str) else { continue };
            let Some(mut key) = self.key_of(display) else { continue };
            if !key.to_lowercase().starts_with(&prefix_lower) {
                continue;
            }
            // The prefix as the URL gave it, so keys relative to it stay right.
            if key.is_char_boundary(prefix.len()) && key[..prefix.len()].to_lowercase() == prefix_lower {
                key = format!("{prefix}{}", &key[prefix.len()..]);
            }
            let version = version_of(e);
            let size = e.get("size").and_then(Value::as_u64).unwrap_or(0);
            let provenance = template.as_deref().and_then(|id| properties::provenance_of(e, id));
            let modified_unix_ms = e
                .get("server_modified")
                .and_then(Value::as_str)
                .and_then(parse_time)
                .and_then(|secs| secs.checked_mul(1000));
            entries.push(Entry { key, size, provenance, version, modified_unix_ms, ..Entry::default() });
        }
        let more = answer.get("has_more").and_then(Value::as_bool).unwrap_or(false);
        let next = if more { answer.get("cursor").and_then(Value::as_str).map(str::to_string) } else { None };
        Ok(ListPage { entries, next, left_out: Vec::new() })
    }
}

impl Store for DropboxStore {
    fn list<'a>(&'a self, prefix: &'a str, token: Option<String>) -> LocalFuture<'a, Result<ListPage>> {
        Box::pin(self.list_page(prefix, token))
    }

    fn stat<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Option<ObjectInfo>>> {
        Box::pin(async move {
            let template = self.template_id(false).await?;
            let mut arg = json!({ "path": self.path(key) });
            if let Some(id) = &template {
                arg["include_property_groups"] = properties::filter(id);
            }
            match self.rpc("files/get_metadata", "stat", key, &arg).await {
                Ok(meta) if meta.get(".tag").and_then(Value::as_str) == Some("file") => {
                    let mut info = info_from_metadata(&meta);
                    info.provenance = template.as_deref().and_then(|id| properties::provenance_of(&meta, id));
                    Ok(Some(info))
                }
                Ok(_) => Ok(None),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn describe(&self) -> String {
        let root = if self.cfg.root.is_empty() { "/" } else { &self.cfg.root };
        format!("dropbox {} root {root}", self.cfg.api.url())
    }

    fn check<'a>(&'a self, writable: bool) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            // The relay does not retry its pre-flight check, and Dropbox throttles
            // any call: a few tries, after the wait it asks for.
            const CHECK_ATTEMPTS_MAX: u32 = 6;
            let mut attempt = 0;
            loop {
                match self.check_once(writable).await {
                    Err(e) if e.is_retryable() && attempt + 1 < CHECK_ATTEMPTS_MAX => {
                        let wait = crate::error::backoff_delay(
                            attempt,
                            Duration::from_millis(100),
                            Duration::from_secs(2),
                            e.retry_after(),
                        );
                        monoio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    other => return other,
                }
            }
        })
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }
}

impl DropboxStore {
    async fn check_once(&self, writable: bool) -> Result<()> {
        self.check_root(writable).await?;
        if writable {
            // Found or made once, here, before any worker writes: every upload then
            // carries Laminar's record in the template's property group.
            self.template_id(true).await?;
        }
        Ok(())
    }

    async fn check_root(&self, writable: bool) -> Result<()> {
        {
            let target = self.describe();
            if self.cfg.root.is_empty() {
                let arg = json!({ "path": "", "limit": 1 });
                return self.rpc("files/list_folder", "check", &target, &arg).await.map(drop);
            }
            match self.rpc("files/get_metadata", "check", &target, &json!({ "path": self.cfg.root })).await {
                Ok(meta) if meta.get(".tag").and_then(Value::as_str) == Some("folder") => Ok(()),
                Ok(_) => Err(Error::Usage(format!(
                    "remote {:?}: root {} is a file, not a folder: fix root in laminar.toml",
                    self.cfg.remote, self.cfg.root
                ))),
                // Uploads make the folders they need.
                Err(e) if is_not_found(&e) && writable => Ok(()),
                Err(e) if is_not_found(&e) => Err(Error::Usage(format!(
                    "remote {:?}: root folder {} does not exist in the Dropbox account: fix root in laminar.toml",
                    self.cfg.remote, self.cfg.root
                ))),
                Err(e) => Err(e),
            }
        }
    }
}

impl Source for DropboxStore {
    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Option<(u64, u64)>,
        body: Body,
        hashers: &'a mut Hashers,
    ) -> LocalFuture<'a, Result<(Body, ObjectInfo)>> {
        Box::pin(async move {
            let (response, info) = self.download(key, range).await?;
            hashers.check_against(&info.checksums);
            let body = response.read_into(body, hashers).await?;
            Ok((body, info))
        })
    }

    fn read_stream<'a>(
        &'a self,
        key: &'a str,
        range: (u64, u64),
        filler: &'a Filler,
        hashers: &'a mut Hashers,
    ) -> LocalFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let (response, info) = self.download(key, Some(range)).await?;
            response.read_stream(filler, hashers).await?;
            Ok(info.version)
        })
    }

    fn copy_source(&self, _key: &str) -> Option<CopySource> {
        None
    }
}

impl Sink for DropboxStore {
    fn begin<'a>(&'a self, key: &'a str, plan: UploadPlan, args: &'a PutArgs) -> LocalFuture<'a, Result<Session<'a>>> {
        Box::pin(upload::begin(self, key, plan, args))
    }

    fn resume(&self, state: SessionState) -> Result<Session<'_>> {
        upload::resume(self, state)
    }

    fn put_dir_marker<'a>(&'a self, key: &'a str, _args: &'a PutArgs) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let arg = json!({ "path": self.path(key), "autorename": false });
            match self.rpc("files/create_folder_v2", "mkdir", key, &arg).await {
                Ok(_) => Ok(()),
                // Already there (as a folder, or a file, which a marker cannot replace).
                Err(Error::Http { class: ErrorClass::Conflict, .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn can_copy_from(&self, _source: &CopySource) -> bool {
        false
    }

    fn delete<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            match self.rpc("files/delete_v2", "delete", key, &json!({ "path": self.path(key) })).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(root: &str) -> DropboxStore {
        let cfg = DropboxConfig {
            remote: "d".into(),
            root: root.into(),
            api: Endpoint::parse("http://127.0.0.1:1").unwrap(),
            content: Endpoint::parse("http://127.0.0.1:2").unwrap(),
            token_endpoint: Endpoint::parse("http://127.0.0.1:1").unwrap(),
            token_path: "/oauth2/token".into(),
            credentials: Credentials::Refresh { refresh_token: "r".into(), app_key: "k".into(), app_secret: None },
            batch_commits: true,
        };
        DropboxStore {
            cfg: Arc::new(cfg),
            tokens: Arc::default(),
            template: Arc::default(),
            batcher: Arc::default(),
            http: HttpClient::default(),
        }
    }

    #[test]
    fn header_json_is_ascii() {
        let v = json!({ "path": "/Grüße/файл 😀\u{7f}.txt" });
        let h = header_json(&v);
        assert!(h.bytes().all(|b| (0x20..0x7f).contains(&b)), "{h}");
        assert_eq!(h, r#"{"path":"/Gr\u00fc\u00dfe/\u0444\u0430\u0439\u043b \ud83d\ude00\u007f.txt"}"#);
        let back: Value = serde_json::from_str(&h).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn times_round_trip() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (1_559_390_400, "2019-06-01T12:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
        ] {
            assert_eq!(format_time(secs), text);
            assert_eq!(parse_time(text), Some(secs));
        }
        assert_eq!(parse_time("2019-13-01T00:00:00Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }

    fn answer(status: u16, headers: &[(&str, &str)]) -> ResponseHead {
        ResponseHead { status, headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect() }
    }

    #[test]
    fn errors_are_classified_by_their_tags() {
        let s = store("/Root");
        let err = |status: u16, body: &str, headers: &[(&str, &str)]| {
            s.http_error("put", "k", &answer(status, headers), body.as_bytes(), Some("tok"))
        };
        let conflict = err(
            409,
            r#"{"error_summary": "path/conflict/file/..", "error": {".tag": "path", "reason": {".tag": "conflict", "conflict": {".tag": "file"}}}}"#,
            &[],
        );
        assert_eq!(conflict.class(), ErrorClass::Conflict);
        let missing = err(
            409,
            r#"{"error_summary": "path/not_found/...", "error": {".tag": "path", "path": {".tag": "not_found"}}}"#,
            &[],
        );
        assert_eq!(missing.class(), ErrorClass::FatalObject);
        assert!(matches!(&missing, Error::Http { code, .. } if code == "path"));
        let full = err(
            409,
            r#"{"error_summary": "path/insufficient_space/", "error": {".tag": "path", "reason": {".tag": "insufficient_space"}}}"#,
            &[],
        );
        assert!(full.is_fatal());
        let offset = r#"{"error_summary": "incorrect_offset/..", "error": {".tag": "incorrect_offset", "correct_offset": 4194304}}"#;
        assert_eq!(err(409, offset, &[]).class(), ErrorClass::Retryable);
        s.template.forget();
        let gone = r#"{"error_summary": "properties_error/template_not_found/..", "error": {".tag": "properties_error", "properties_error": {".tag": "template_not_found", "template_not_found": "ptid:x"}}}"#;
        assert_eq!(err(409, gone, &[]).class(), ErrorClass::Retryable, "the template is found or made again");
        let throttled = err(
            429,
            r#"{"error_summary": "too_many_requests/..", "error": {"reason": {".tag": "too_many_requests"}, "retry_after": 3}}"#,
            &[],
        );
        assert!(throttled.is_throttle());
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(3)));
        let writes = err(429, r#"{"error_summary": "too_many_write_operations/"}"#, &[("retry-after", "2")]);
        assert!(writes.is_throttle());
        assert_eq!(writes.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(err(503, "", &[]).class(), ErrorClass::Retryable);
        let bad = err(400, "Error in call to API function \"files/upload\": HTTP header \"Dropbox-API-Arg\": could not decode input as JSON", &[]);
        assert_eq!(bad.class(), ErrorClass::FatalObject);
        assert!(bad.to_string().contains("could not decode input as JSON"), "{bad}");
        let invalid =
            err(401, r#"{"error_summary": "invalid_access_token/", "error": {".tag": "invalid_access_token"}}"#, &[]);
        assert!(invalid.is_fatal());
        assert!(invalid.to_string().contains("issue a new refresh token"), "{invalid}");
    }

    #[test]
    fn an_expired_token_is_dropped_and_retried() {
        let s = store("");
        s.tokens.drop_token("none");
        let expired = r#"{"error_summary": "expired_access_token/", "error": {".tag": "expired_access_token"}}"#;
        let e = s.http_error("get", "k", &answer(401, &[]), expired.as_bytes(), Some("tok"));
        assert_eq!(e.class(), ErrorClass::Reauthenticate);
        // With a fixed token there is nothing to refresh: the relay stops, saying why.
        let mut fixed = (*s.cfg).clone();
        fixed.credentials = Credentials::Token("t".into());
        let s = DropboxStore { cfg: Arc::new(fixed), ..s };
        let e = s.http_error("get", "k", &answer(401, &[]), expired.as_bytes(), Some("t"));
        assert!(e.is_fatal() && e.to_string().contains("refresh_token"), "{e}");
    }

    #[test]
    fn keys_are_below_the_root() {
        let s = store("/Photos");
        assert_eq!(s.path("2024/a.jpg"), "/Photos/2024/a.jpg");
        assert_eq!(s.path("dir/"), "/Photos/dir");
        assert_eq!(s.key_of("/photos/2024/Ä.jpg").as_deref(), Some("2024/Ä.jpg"));
        assert_eq!(s.key_of("/Photosx/a"), None);
        assert_eq!(s.key_of("/Photos"), None);
        let whole = store("");
        assert_eq!(whole.path("a"), "/a");
        assert_eq!(whole.key_of("/Ünï/b").as_deref(), Some("Ünï/b"));
    }

    #[test]
    fn metadata_gives_size_mtime_and_content_hash() {
        let hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let meta =
            json!({ ".tag": "file", "size": 0, "client_modified": "2019-06-01T12:00:00Z", "content_hash": hash });
        let info = info_from_metadata(&meta);
        assert_eq!(info.meta.mtime, Some((1_559_390_400, 0)));
        assert_eq!(info.checksums[0].algo, ChecksumAlgo::DropboxContentHash);
        assert_eq!(info.checksums[0].to_hex(), hash);
    }
}

#[cfg(test)]
mod proptests {
    //! Dropbox's JSON as the API writes it, and as a broken or hostile peer might:
    //! arbitrary JSON values, truncated and garbled bodies never panic the error,
    //! metadata and key readers; error summaries give their tags; a generated
    //! `list_folder` answer lists back to its files through `list_page` against a
    //! peer on loopback.

    use std::io::{Read, Write};
    use std::net::TcpListener;

    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;

    use super::*;
    use crate::runtime::{block_on, Driver};

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig { cases, failure_persistence: None, rng_seed: RngSeed::Fixed(0xdb), ..ProptestConfig::default() }
    }

    const WAIT: Duration = Duration::from_secs(10);

    fn store(root: &str, port: u16) -> DropboxStore {
        let at = Endpoint { tls: false, host: "127.0.0.1".into(), port };
        let cfg = DropboxConfig {
            remote: "d".into(),
            root: root.into(),
            api: at.clone(),
            content: at.clone(),
            token_endpoint: at,
            token_path: "/oauth2/token".into(),
            credentials: Credentials::Token("tok".into()),
            batch_commits: true,
        };
        DropboxStore {
            cfg: Arc::new(cfg),
            tokens: Arc::default(),
            template: Arc::default(),
            batcher: Arc::default(),
            http: HttpClient::new(WAIT, WAIT),
        }
    }

    thread_local! {
        /// Stores by root for the readers that send nothing (a client is costly to make).
        static IDLE: std::cell::RefCell<std::collections::HashMap<String, Rc<DropboxStore>>> = Default::default();
    }

    fn idle(root: &str) -> Rc<DropboxStore> {
        IDLE.with(|m| m.borrow_mut().entry(root.to_string()).or_insert_with(|| Rc::new(store(root, 1))).clone())
    }

    /// Words Dropbox answers with, so that arbitrary values often hit the fields read.
    const WORDS: &[&str] = &[
        ".tag",
        "error",
        "error_summary",
        "path",
        "reason",
        "not_found",
        "conflict",
        "file",
        "folder",
        "deleted",
        "too_many_write_operations",
        "insufficient_space",
        "template_not_found",
        "expired_access_token",
        "retry_after",
        "entries",
        "cursor",
        "has_more",
        "path_display",
        "size",
        "rev",
        "content_hash",
        "client_modified",
        "property_groups",
        "template_id",
        "fields",
        "name",
        "value",
        "provenance",
        "/",
        "path/not_found/..",
        "2019-06-01T12:00:00Z",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ];

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(WORDS).prop_map(str::to_string),
            1 => "\\PC{0,16}",
            1 => "[a-z_]{1,10}(/[a-z_]{1,10}){0,3}/?(\\.\\.)?",
        ]
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
            word().prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 96, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((word(), inner), 0..8).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
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
        ResponseHead { status, headers: vec![("content-type".into(), "application/json".into())] }
    }

    fn status() -> impl Strategy<Value = u16> {
        prop_oneof![Just(400u16), Just(401), Just(403), Just(409), Just(429), Just(500), Just(503), 300u16..600]
    }

    /// Every reader of an answer, on one value.
    fn read_all(s: &DropboxStore, status: u16, v: &Value) {
        let _ = error_tags(v);
        let _ = info_from_metadata(v);
        let _ = version_of(v);
        let _ = properties::provenance_of(v, "ptid:x");
        let e = s.http_error("get", "k", &answer(status), v.to_string().as_bytes(), Some("tok"));
        let _ = (e.to_string(), e.class(), e.retry_after(), is_not_found(&e));
    }

    proptest! {
        #![proptest_config(config(384))]

        #[test]
        fn arbitrary_values_never_panic(v in json(), status in status()) {
            read_all(&idle("/Root"), status, &v);
        }

        #[test]
        fn arbitrary_values_as_error_fields_never_panic(error in json(), summary in json(), status in status()) {
            let v = json!({ "error_summary": summary, "error": error });
            read_all(&idle(""), status, &v);
        }

        #[test]
        fn garbled_bodies_never_panic(
            v in json(),
            edits in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..6),
            status in status(),
        ) {
            let body = mutate(v.to_string().into_bytes(), &edits);
            let e = idle("/Root").http_error("put", "k", &answer(status), &body, Some("tok"));
            let _ = (e.to_string(), e.class(), e.retry_after(), is_not_found(&e));
            // A body that is not a JSON object is quoted in one line.
            if serde_json::from_slice::<Value>(&body).ok().filter(Value::is_object).is_none() {
                prop_assert!(!e.to_string().contains('\n'), "{}", e);
            }
        }

        /// `error_summary` gives the tags and the message; the first tag is the code.
        #[test]
        fn summaries_give_their_tags(
            tags in prop::collection::vec("[a-z][a-z_]{0,20}", 1..6),
            tail in prop_oneof![Just(""), Just("/"), Just("/."), Just("/.."), Just("/...")],
            status in status(),
        ) {
            let summary = format!("{}{tail}", tags.join("/"));
            let body = json!({ "error_summary": summary, "error": { ".tag": tags[0] } }).to_string();
            let e = idle("").http_error("get", "k", &answer(status), body.as_bytes(), None);
            let Error::Http { code, message, .. } = &e else { panic!("{e}") };
            prop_assert_eq!(code, &tags[0]);
            prop_assert_eq!(message, &tags.join("/"));
            let path_missing = status == 409 && tags[0] == "path" && tags.get(1).is_some_and(|t| t == "not_found");
            if path_missing {
                prop_assert!(is_not_found(&e));
            }
        }

        #[test]
        fn arbitrary_times_never_panic(text in "\\PC{0,24}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z") {
            if let Some(secs) = parse_time(&text) {
                prop_assert!(secs > -100_000_000_000 && secs < 300_000_000_000);
            }
        }

        #[test]
        fn times_round_trip(secs in -62_135_596_800i64..253_402_300_800) {
            prop_assert_eq!(parse_time(&format_time(secs)), Some(secs));
        }

        #[test]
        fn generated_metadata_reads_back(
            size in any::<u64>(),
            secs in 0i64..253_402_300_800,
            hash in "[0-9a-f]{64}",
            rev in prop::option::of("[0-9a-f]{9,16}"),
        ) {
            let mut meta = json!({
                ".tag": "file", "name": "a", "id": "id:x", "size": size, "path_display": "/A",
                "client_modified": format_time(secs), "server_modified": format_time(secs),
                "content_hash": hash, "is_downloadable": true,
            });
            if let Some(rev) = &rev {
                meta["rev"] = json!(rev);
            }
            let info = info_from_metadata(&meta);
            prop_assert_eq!(info.size, size);
            prop_assert_eq!(info.meta.mtime, Some((secs, 0)));
            prop_assert_eq!(info.checksums.len(), 1);
            prop_assert_eq!(info.checksums[0].to_hex(), hash.clone());
            prop_assert_eq!(info.version, Some(format!("dropbox:{}", rev.unwrap_or(hash))));
        }

        #[test]
        fn arbitrary_paths_never_panic(root in "(/\\PC{1,6}){0,2}", display in "\\PC{0,24}") {
            if let Some(key) = store(&root, 1).key_of(&display) {
                prop_assert!(!key.is_empty());
            }
        }

        /// A path below the root, in any ASCII case, gives its key as displayed.
        #[test]
        fn keys_are_what_follows_the_root(
            root in prop_oneof![Just(""), Just("/Photos"), Just("/Ünï Dir/Sub")],
            key in "[a-zA-Z0-9 ._ü€😀-]{1,12}(/[a-zA-Z0-9 ._ü€😀-]{1,12}){0,2}",
            flips in any::<u64>(),
        ) {
            let shown: String = root
                .chars()
                .enumerate()
                .map(|(i, c)| if flips >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect();
            let s = idle(root);
            prop_assert_eq!(s.key_of(&format!("{shown}/{key}")), Some(key.clone()));
            prop_assert_eq!(s.key_of(&shown), None);
            prop_assert_eq!(s.key_of(&format!("{shown}x/{key}")), None);
        }
    }

    proptest! {
        #![proptest_config(config(24))]

        #[test]
        fn deep_values_never_panic(depth in prop_oneof![1usize..12, 120usize..136, Just(400)], tag in word()) {
            let mut v = json!({ ".tag": tag });
            for _ in 0..depth {
                v = json!({ ".tag": "path", "path": v, "error": {".tag": "x"} });
            }
            read_all(&idle(""), 409, &json!({ "error": v, "error_summary": "path/" }));
        }
    }

    /// Answers requests in order on as many connections as the client opens,
    /// reading each request's head and Content-Length body.
    fn serve(answers: Vec<Vec<u8>>) -> (u16, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                stream.set_read_timeout(Some(WAIT)).unwrap();
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).unwrap_or(0) == 0 {
                            break;
                        }
                        head.push(byte[0]);
                    }
                    if !head.ends_with(b"\r\n\r\n") {
                        break;
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    stream.read_exact(&mut body).unwrap();
                    let Some(answer) = answers.next() else { return };
                    stream.write_all(&answer).unwrap();
                    if answers.len() == 0 {
                        return;
                    }
                }
            }
        });
        (port, handle)
    }

    fn ok_json(v: &Value) -> Vec<u8> {
        let body = v.to_string();
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .into_bytes()
    }

    proptest! {
        #![proptest_config(config(48))]

        #[test]
        fn generated_listings_list_back(
            root in prop_oneof![Just(""), Just("/Photos"), Just("/Ünï Dir")],
            upper in any::<bool>(),
            // Kind (0 file, 1 folder, 2 deleted, 3 outside the root), key, size, rev.
            listed in prop::collection::vec(
                (0u8..4, "[a-zA-Z0-9 ._ü€😀-]{1,12}(/[a-zA-Z0-9 ._ü€😀-]{1,12}){0,2}", any::<u64>(), "[0-9a-f]{9,16}"),
                0..12,
            ),
            cursor in prop::option::of("[A-Za-z0-9_-]{8,40}"),
        ) {
            let shown = if upper { root.to_uppercase() } else { root.to_string() };
            let entries: Vec<Value> = listed
                .iter()
                .map(|(kind, key, size, rev)| {
                    let (tag, path) = match kind {
                        0 => ("file", format!("{shown}/{key}")),
                        1 => ("folder", format!("{shown}/{key}")),
                        2 => ("deleted", format!("{shown}/{key}")),
                        _ => ("file", format!("{shown}x/{key}")),
                    };
                    json!({
                        ".tag": tag, "name": key.rsplit('/').next(), "id": format!("id:{rev}"),
                        "path_lower": path.to_lowercase(), "path_display": path, "size": size, "rev": rev,
                        "client_modified": "2019-06-01T12:00:00Z", "server_modified": "2019-06-01T12:00:00Z",
                        "content_hash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                        "is_downloadable": true,
                    })
                })
                .collect();
            let page = json!({ "entries": entries, "cursor": cursor.clone().unwrap_or_default(), "has_more": cursor.is_some() });
            // The template lookup comes first: the account has none.
            let (port, peer) = serve(vec![ok_json(&json!({ "template_ids": [] })), ok_json(&page)]);
            let s = store(root, port);
            let got = block_on(Driver::Epoll, s.list_page("", None)).unwrap().map_err(|e| e.to_string());
            peer.join().unwrap();
            // Only files below the root: `{root}x/...` is not (below the whole account it
            // has no leading `/`, so it is no path at all).
            let want: Vec<Entry> = listed
                .iter()
                .filter(|(kind, ..)| *kind == 0)
                .map(|(_, key, size, rev)| Entry {
                    key: key.clone(),
                    size: *size,
                    etag: None,
                    provenance: None,
                    version: Some(format!("dropbox:{rev}")),
                    modified_unix_ms: Some(1_559_390_400_000),
                })
                .collect();
            prop_assert_eq!(got.map(|p| (p.entries, p.next)), Ok((want, cursor)));
        }
    }

    /// The root is found in a path by case, whatever lowering does to its length
    /// (`İ`, U+0130, lowers to `i` and a combining dot): with root `/İ` the path
    /// `/i̇/abc` gives the key `abc`, and with root `/i̇` the path `/İ/a` gives `a`
    /// (engine/src/backend/dropbox.rs, `key_of`).
    #[test]
    fn keys_follow_a_root_whose_case_changes_its_length() {
        assert_eq!(idle("/İ").key_of("/i\u{307}/abc").as_deref(), Some("abc"));
        assert_eq!(idle("/i\u{307}").key_of("/İ/a").as_deref(), Some("a"));
        // The Kelvin sign lowers to one byte from three.
        assert_eq!(idle("/\u{212a}").key_of("/k/b/c").as_deref(), Some("b/c"));
        assert_eq!(idle("/k").key_of("/\u{212a}/b").as_deref(), Some("b"));
        assert_eq!(idle("/İ").key_of("/İx/a"), None);
        assert_eq!(idle("/İ").key_of("/İ/"), None);
        assert_eq!(idle("").key_of("/A/b").as_deref(), Some("A/b"));
    }

    /// `error_summary` is put in one line, like a body that is not JSON, and so is
    /// the code taken from it: `{"error_summary": "path/a\nFORGED: b/"}` gives the
    /// message `path/a FORGED: b` (engine/src/backend/dropbox.rs, `http_error`).
    #[test]
    fn error_summaries_stay_on_one_line() {
        let body = br#"{"error_summary": "path/a\nFORGED: b/", "error": {".tag": "path"}}"#;
        let e = idle("").http_error("get", "k", &answer(409), body, None).to_string();
        assert_eq!(e, "get k: HTTP 409 path: path/a FORGED: b");
        let body = br#"{"error_summary": "x\r\ny\u001b[2J\u202e/", "error": {}}"#;
        let e = idle("").http_error("get", "k", &answer(409), body, None).to_string();
        assert_eq!(e, "get k: HTTP 409 x y [2J: x y [2J");
        let body = br#"{"error_summary": " \t/..", "error": {}}"#;
        let e = idle("").http_error("get", "k", &answer(409), body, None).to_string();
        assert!(!e.contains(['\t', '\n']) && e.contains("error_summary"), "{e:?}");
    }
}
