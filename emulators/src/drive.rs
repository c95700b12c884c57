//! An emulator of the Google Drive API v3, strict where Drive is strict, for Laminar's
//! Drive backend to be tested, benchmarked and demonstrated without Google.
//!
//! [`DriveEmulator::start`] binds 127.0.0.1 on a free port and serves, on its own thread
//! and tokio runtime (hyper, HTTP/1.1, plain http):
//!
//! - `POST {token_url}`: OAuth 2.0, the refresh-token and JWT-bearer (service account) flows
//!   and the installed-app authorization-code flow with PKCE, whose consent page is
//!   `GET {authorize_url}` (approved at once, redirecting with the code);
//! - `{api_url}/drive/v3/`: `files.list` (a `q` subset, `fields`, paging of at most 1000),
//!   `files.get` (metadata, `alt=media` with `Range`), `files.export`, `files.create`
//!   (metadata only), `files.update` (metadata), `files.delete`, `about.get`,
//!   `drives.list`, `drives.get`;
//! - `{api_url}/upload/drive/v3/files`: `uploadType=media`, `multipart` and `resumable`
//!   for create and update, and the resumable session's chunk and status requests;
//! - `{api_url}/_emulator/`: statistics, faults, token and session expiry, for scripts.
//!
//! The files live in memory, by id, with parents, duplicate names, Docs (exported as
//! deterministic bytes), shortcuts, trash and optional shared drives. Each module below
//! says what it emulates; `emulators/DRIVE.md` lists what is left out.
//!
//! Google's own client is pointed here unchanged by giving it a discovery document whose
//! `rootUrl` is [`DriveHandle::api_url`] (see `tests/conformance/drive_sdk.py`); a Rust
//! backend takes the same base URL and the token URL.

mod auth;
mod conn;
mod consent;
mod errors;
mod faults;
mod fields;
mod files;
mod query;
mod server;
mod store;
#[cfg(test)]
mod tests;
mod time;
mod upload;
mod uploads;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use faults::{DropAfter, Faults, Scope, ServerErrors, ShortCommit, Throttle, ThrottleKind};
pub use store::TreeEntry;

use server::State;
use store::{Body, Content, Hashers, NewFile};

/// A Google Docs Editors type, for [`DriveHandle::insert_doc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocKind {
    /// Google Docs.
    Document,
    /// Google Sheets.
    Spreadsheet,
    /// Google Slides.
    Presentation,
    /// Google Drawings.
    Drawing,
}

impl DocKind {
    /// Its Drive MIME type.
    pub fn mime_type(self) -> &'static str {
        match self {
            DocKind::Document => "application/vnd.google-apps.document",
            DocKind::Spreadsheet => "application/vnd.google-apps.spreadsheet",
            DocKind::Presentation => "application/vnd.google-apps.presentation",
            DocKind::Drawing => "application/vnd.google-apps.drawing",
        }
    }

    /// The formats files.export offers for it (as about.get's `exportFormats` lists them).
    pub fn export_formats(self) -> &'static [&'static str] {
        match self {
            DocKind::Document => &[
                "application/rtf",
                "application/vnd.oasis.opendocument.text",
                "text/html",
                "application/pdf",
                "application/epub+zip",
                "application/zip",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "text/plain",
                "text/markdown",
            ],
            DocKind::Spreadsheet => &[
                "application/x-vnd.oasis.opendocument.spreadsheet",
                "text/tab-separated-values",
                "application/pdf",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "text/csv",
                "application/zip",
                "application/vnd.oasis.opendocument.spreadsheet",
            ],
            DocKind::Presentation => &[
                "application/vnd.oasis.opendocument.presentation",
                "application/pdf",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
                "text/plain",
            ],
            DocKind::Drawing => &["image/svg+xml", "image/png", "application/pdf", "image/jpeg"],
        }
    }

    /// The path of its editor under `https://docs.google.com/` (`webViewLink`).
    pub(crate) fn web_path(self) -> &'static str {
        match self {
            DocKind::Document => "document",
            DocKind::Spreadsheet => "spreadsheets",
            DocKind::Presentation => "presentation",
            DocKind::Drawing => "drawings",
        }
    }

    /// Every kind.
    pub const ALL: [DocKind; 4] = [DocKind::Document, DocKind::Spreadsheet, DocKind::Presentation, DocKind::Drawing];

    pub(crate) fn from_mime(mime: &str) -> Option<DocKind> {
        DocKind::ALL.into_iter().find(|k| k.mime_type() == mime)
    }
}

/// How to start an emulator. `Default` is a healthy Drive with seeded credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriveOptions {
    /// Seeds ids, listing order and fault rates, so a run can be repeated.
    pub seed: u64,
    /// The user about.get reports.
    pub user_email: String,
    /// The user's display name.
    pub user_name: String,
    /// The OAuth client the refresh flow accepts.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// The one refresh token the refresh flow accepts.
    pub refresh_token: String,
    /// The service account the JWT flow accepts (the JWT's `iss`).
    pub service_account_email: String,
    /// Whether API requests need a live access token (401 without).
    pub require_auth: bool,
    /// The storage quota, and the bound on bytes held in memory (the default is a free
    /// account's 15 GiB; shared drives count here too, unlike on Drive).
    pub storage_limit_bytes: u64,
    /// Names of shared drives to create.
    pub shared_drives: Vec<String>,
    /// Most files, folders and Docs held.
    pub files_max: usize,
    /// Most resumable sessions open at once; past it the least recently used is dropped
    /// (and answers 404, as an expired one).
    pub sessions_max: usize,
    /// How long a resumable session lives (a week on Drive).
    pub session_lifetime_s: u64,
    /// Largest `uploadType=media` or `multipart` body (an emulator bound: Drive documents
    /// 5 MB as the size these are for, and takes more).
    pub simple_upload_bytes_max: u64,
    /// Largest export (Drive: 10 MB); larger ones get 403 `exportSizeLimitExceeded`.
    pub export_bytes_max: u64,
    /// Largest page of a list with `short_pages` off; Drive's is 1000.
    pub page_size_max: usize,
    /// Worker threads of the emulator's runtime.
    pub worker_threads: usize,
    /// Most connections served at once; more wait to be accepted.
    pub connections_max: usize,
    /// Fault and profile switches at start (changeable live).
    pub faults: Faults,
}

impl Default for DriveOptions {
    fn default() -> DriveOptions {
        DriveOptions {
            seed: 0x1a31_0d21_5e00,
            user_email: "laminar@example.com".into(),
            user_name: "Laminar Emulator".into(),
            client_id: "laminar-emulator.apps.googleusercontent.com".into(),
            client_secret: "emulator-client-secret".into(),
            refresh_token: "1//emulator-refresh-token".into(),
            service_account_email: "laminar@laminar-emulator.iam.gserviceaccount.com".into(),
            require_auth: true,
            storage_limit_bytes: 15 << 30,
            shared_drives: Vec::new(),
            files_max: 1_000_000,
            sessions_max: 1024,
            session_lifetime_s: 7 * 24 * 3600,
            simple_upload_bytes_max: 1 << 30,
            export_bytes_max: 10 << 20,
            page_size_max: 1000,
            worker_threads: 2,
            connections_max: 1024,
            faults: Faults::default(),
        }
    }
}

/// One resumable session, for inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionStats {
    /// The `upload_id`.
    pub id: String,
    /// The file name the session will create (or the id it updates).
    pub name: String,
    /// Bytes committed.
    pub committed_bytes: u64,
    /// Body bytes received, resent and dropped ones included.
    pub received_bytes: u64,
    /// The total, once named.
    pub total_bytes: Option<u64>,
    /// Whether the upload completed.
    pub complete: bool,
}

/// What the emulator has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriveStats {
    /// Requests by method (`files.list`, `files.get_media`, `upload.chunk`, ...).
    pub requests: BTreeMap<String, u64>,
    /// Throttling answers sent, by kind (`userRateLimitExceeded/403`,
    /// `rateLimitExceeded/403`, `rateLimitExceeded/429`, `dailyUploadLimit/403`).
    pub throttled: BTreeMap<String, u64>,
    /// Injected 5xx answers sent.
    pub server_errors: u64,
    /// 401 answers sent.
    pub unauthorized: u64,
    /// Connections dropped on purpose (faults).
    pub dropped_connections: u64,
    /// Access tokens granted by the refresh flow.
    pub refresh_grants: u64,
    /// Access tokens granted by the JWT flow.
    pub jwt_grants: u64,
    /// Authorization codes exchanged.
    pub code_grants: u64,
    /// Token requests refused.
    pub refused_grants: u64,
    /// Upload bytes committed today (towards the daily budget).
    pub uploaded_today_bytes: u64,
    /// Content bytes stored.
    pub stored_bytes: u64,
    /// Files, folders, Docs and shortcuts (roots included).
    pub files: u64,
    /// Resumable sessions held.
    pub sessions: Vec<SessionStats>,
}

/// The credentials and URLs a client needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriveEndpoints {
    /// Base of the API: files at `{api_url}/drive/v3`, uploads at `{api_url}/upload/drive/v3`.
    pub api_url: String,
    /// The OAuth token URL.
    pub token_url: String,
    /// The consent page, in place of `https://accounts.google.com/o/oauth2/v2/auth`.
    pub authorize_url: String,
    /// Base of the control endpoints (`/stats`, `/faults`, `/expire_tokens`, ...).
    pub control_url: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
    /// The seeded refresh token.
    pub refresh_token: String,
    /// The service account the JWT flow accepts.
    pub service_account_email: String,
    /// My Drive's root folder id.
    pub root_id: String,
}

/// A running emulator; stops when dropped. Dereferences to its [`DriveHandle`].
pub struct DriveEmulator {
    handle: DriveHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Seeds, inspects and steers a running emulator; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct DriveHandle {
    state: Arc<State>,
}

impl std::fmt::Debug for DriveEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriveEmulator").field("api_url", &self.handle.api_url()).finish()
    }
}

impl DriveEmulator {
    /// Starts an emulator on 127.0.0.1, a free port.
    pub fn start(opts: DriveOptions) -> Result<DriveEmulator> {
        if opts.page_size_max == 0 || opts.sessions_max == 0 || opts.connections_max == 0 || opts.files_max < 16 {
            bail!(
                "DriveOptions: page_size_max, sessions_max and connections_max must be positive, files_max at least 16"
            );
        }
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 for the Drive emulator")?;
        listener.set_nonblocking(true).context("making the emulator's listener non-blocking")?;
        let addr: SocketAddr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.worker_threads.max(1))
            .thread_name("drive-emulator")
            .enable_all()
            .build()
            .context("starting the Drive emulator's tokio runtime")?;
        let state = Arc::new(State::new(opts, addr));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let serve_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("drive-emulator".into())
            .spawn(move || {
                runtime.block_on(server::serve(serve_state, listener, stopped));
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            })
            .context("spawning the Drive emulator's thread")?;
        Ok(DriveEmulator { handle: DriveHandle { state }, stop: Some(stop), thread: Some(thread) })
    }

    /// A handle that outlives this borrow (the emulator still stops when this is dropped).
    pub fn handle(&self) -> DriveHandle {
        self.handle.clone()
    }
}

impl std::ops::Deref for DriveEmulator {
    type Target = DriveHandle;

    fn deref(&self) -> &DriveHandle {
        &self.handle
    }
}

impl Drop for DriveEmulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn split_path(path: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("bad path {path:?}: empty component");
    }
    Ok(parts)
}

impl DriveHandle {
    /// Base of the API (`http://127.0.0.1:PORT`).
    pub fn api_url(&self) -> &str {
        &self.state.api_url
    }

    /// The OAuth token URL.
    pub fn token_url(&self) -> &str {
        &self.state.accounts.token_url
    }

    /// The consent page (approves at once), in place of Google's
    /// `https://accounts.google.com/o/oauth2/v2/auth`.
    pub fn authorize_url(&self) -> String {
        format!("{}{}", self.state.api_url, consent::AUTHORIZE_PATH)
    }

    /// Base of the control endpoints.
    pub fn control_url(&self) -> String {
        format!("{}/_emulator", self.state.api_url)
    }

    /// URLs and seeded credentials, as the `laminar-emulator drive` binary prints them.
    pub fn endpoints(&self) -> DriveEndpoints {
        let a = &self.state.accounts;
        DriveEndpoints {
            api_url: self.api_url().to_string(),
            token_url: a.token_url.clone(),
            authorize_url: self.authorize_url(),
            control_url: self.control_url(),
            client_id: a.client_id.clone(),
            client_secret: a.client_secret.clone(),
            refresh_token: a.refresh_token.clone(),
            service_account_email: a.service_account_email.clone(),
            root_id: self.root_id(),
        }
    }

    /// My Drive's root folder id (what `root` stands for).
    pub fn root_id(&self) -> String {
        self.state.store().root_id().to_string()
    }

    /// The id of the shared drive named `name` (also its root folder's id).
    pub fn shared_drive_id(&self, name: &str) -> Option<String> {
        self.state.store().drives().iter().find(|d| d.name == name).map(|d| d.id.clone())
    }

    /// Creates the folders of `path` under My Drive's root that are not there; returns
    /// the last one's id.
    pub fn mkdir(&self, path: &str) -> Result<String> {
        let parts = split_path(path)?;
        let mut s = self.state.store();
        let root = s.root_id().to_string();
        s.folder_at(&root, &parts, true).map_err(|e| anyhow::anyhow!("mkdir {path}: {}", e.message))
    }

    fn insert_body(&self, folder_id: &str, path: &str, mime: &str, body: Body) -> Result<String> {
        let parts = split_path(path)?;
        let (name, dirs) = parts.split_last().expect("split_path gives one part at least");
        let mut s = self.state.store();
        let parent = s.folder_at(folder_id, dirs, true).map_err(|e| anyhow::anyhow!("insert {path}: {}", e.message))?;
        let n = match &body {
            Body::Blob { content, .. } => content.len(),
            _ => 0,
        };
        if s.stored_bytes() + n > self.state.settings.storage_limit_bytes {
            bail!("insert {path}: over the storage limit");
        }
        s.create(NewFile::new(name, &parent, mime, body)).map_err(|e| anyhow::anyhow!("insert {path}: {}", e.message))
    }

    /// Deletes, for good, every file or folder at `path` under My Drive's root and
    /// everything under them (a fresh destination for the next benchmark run); returns
    /// how many files went.
    pub fn remove(&self, path: &str) -> Result<usize> {
        let ids = self.ids_at(path);
        let mut s = self.state.store();
        Ok(ids.iter().map(|id| s.delete(id)).sum())
    }

    /// Adds a binary file at `path` under My Drive's root, creating folders on the way.
    /// A file already there is kept: Drive allows duplicate names in one folder, and
    /// inserting twice makes two files. Returns the new file's id.
    pub fn insert(&self, path: &str, bytes: impl Into<Bytes>) -> Result<String> {
        let root = self.root_id();
        self.insert_at(&root, path, bytes)
    }

    /// As [`DriveHandle::insert`], under folder `folder_id` (a shared drive's id works).
    pub fn insert_at(&self, folder_id: &str, path: &str, bytes: impl Into<Bytes>) -> Result<String> {
        let content = Content::from_bytes(bytes.into());
        let digests = Hashers::of(&content);
        let body = Body::Blob { content, digests, original_filename: None, revision: 1 };
        self.insert_body(folder_id, path, "application/octet-stream", body)
    }

    /// Replaces the bytes of the one binary file at `path`, as an upload of a new
    /// revision (files.update with media) does: size, hashes, `version` and
    /// `modifiedTime` move on. A read already answering keeps the bytes it began with.
    pub fn overwrite(&self, path: &str, bytes: impl Into<Bytes>) -> Result<()> {
        let id = match self.ids_at(path).as_slice() {
            [id] => id.clone(),
            ids => bail!("overwrite {path}: {} files there, not one", ids.len()),
        };
        let content = Content::from_bytes(bytes.into());
        let digests = Hashers::of(&content);
        let mut s = self.state.store();
        let replaced = s.modify(&id, |f| {
            let Body::Blob { original_filename, revision, .. } = &f.body else { return false };
            let (original_filename, revision) = (original_filename.clone(), *revision);
            f.body = Body::Blob { content, digests, original_filename, revision: revision + 1 };
            f.modified_ms = time::now_ms().max(f.modified_ms + 1);
            f.version += 1;
            true
        });
        match replaced {
            Some(true) => Ok(()),
            _ => bail!("overwrite {path}: not a binary file"),
        }
    }

    /// Adds a Google Doc, Sheet, Slides or Drawing whose exports derive from `text`.
    pub fn insert_doc(&self, path: &str, kind: DocKind, text: &str) -> Result<String> {
        let root = self.root_id();
        let body = Body::Doc { kind, text: Bytes::copy_from_slice(text.as_bytes()) };
        self.insert_body(&root, path, kind.mime_type(), body)
    }

    /// Edits Doc `id`: its exports derive from `text` from now on, and its `version`
    /// and `modifiedTime` move on, as an edit in the Docs editor does.
    pub fn edit_doc(&self, id: &str, text: &str) -> Result<()> {
        let mut s = self.state.store();
        let kind = match s.get(id).map(|f| &f.body) {
            Some(Body::Doc { kind, .. }) => *kind,
            Some(_) => bail!("edit_doc {id}: not a Google Docs Editors file"),
            None => bail!("edit_doc {id}: no such file"),
        };
        s.modify(id, |f| {
            f.body = Body::Doc { kind, text: Bytes::copy_from_slice(text.as_bytes()) };
            f.modified_ms = time::now_ms().max(f.modified_ms + 1);
            f.version += 1;
        });
        Ok(())
    }

    /// Adds a shortcut at `path` to the file (or folder) `target_id`.
    pub fn insert_shortcut(&self, path: &str, target_id: &str) -> Result<String> {
        let target_mime = self
            .state
            .store()
            .get(target_id)
            .map(|f| f.mime_type.clone())
            .with_context(|| format!("shortcut {path}: no file {target_id}"))?;
        let root = self.root_id();
        let body = Body::Shortcut { target_id: target_id.to_string(), target_mime };
        self.insert_body(&root, path, store::SHORTCUT_MIME, body)
    }

    /// What files.export answers for file `id` as `mime` (None for a file that is not
    /// a Docs Editors file, or a format its type lacks), bounds aside.
    pub fn export(&self, id: &str, mime: &str) -> Option<Vec<u8>> {
        match &self.state.store().get(id)?.body {
            Body::Doc { kind, text } => store::export(*kind, text, mime).map(|b| b.to_vec()),
            _ => None,
        }
    }

    /// Every file under My Drive's root, by path.
    pub fn tree(&self) -> Vec<TreeEntry> {
        let root = self.root_id();
        self.tree_of(&root)
    }

    /// Every file under folder `folder_id`, by path relative to it.
    pub fn tree_of(&self, folder_id: &str) -> Vec<TreeEntry> {
        self.state.store().tree(folder_id)
    }

    /// Ids of the files at `path` under My Drive's root (several when names repeat).
    pub fn ids_at(&self, path: &str) -> Vec<String> {
        let Ok(parts) = split_path(path) else { return Vec::new() };
        let (name, dirs) = parts.split_last().expect("one part at least");
        let mut s = self.state.store();
        let root = s.root_id().to_string();
        let Ok(parent) = s.folder_at(&root, dirs, false) else { return Vec::new() };
        s.children_named(&parent, name).iter().map(|f| f.id.clone()).collect()
    }

    /// The bytes of the one binary file at `path`; None when there is none, or several.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        match self.ids_at(path).as_slice() {
            [id] => self.read_id(id),
            _ => None,
        }
    }

    /// The bytes of binary file `id`.
    pub fn read_id(&self, id: &str) -> Option<Vec<u8>> {
        match &self.state.store().get(id)?.body {
            Body::Blob { content, .. } => Some(content.to_vec()),
            _ => None,
        }
    }

    /// What the emulator has seen so far.
    pub fn stats(&self) -> DriveStats {
        self.state.stats()
    }

    /// The live faults.
    pub fn faults(&self) -> Faults {
        self.state.faults.get()
    }

    /// Replaces the live faults.
    pub fn set_faults(&self, faults: Faults) {
        self.state.faults.set(faults);
    }

    /// Changes the live faults.
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        let mut faults = self.faults();
        f(&mut faults);
        self.set_faults(faults);
    }

    /// Expires every access token now: the next API request with one gets 401.
    pub fn expire_tokens(&self) {
        self.state.tokens().0.expire_all();
    }

    /// Expires every authorization code not yet exchanged: exchanging one is `invalid_grant`.
    pub fn expire_codes(&self) {
        self.state.grants().expire_codes();
    }

    /// Expires every resumable session now: their next request gets 404.
    pub fn expire_sessions(&self) {
        self.state.expire_sessions();
    }

    /// Starts a new day for the daily upload budget.
    pub fn new_day(&self) {
        self.state.faults.new_day();
    }
}
