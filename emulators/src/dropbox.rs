//! A Dropbox API v2 emulator: the files and OAuth endpoints a relay needs, in memory,
//! strict where Dropbox is strict, proven with Dropbox's official Python SDK
//! (`tests/conformance/dropbox_sdk.py`). `emulators/DROPBOX.md` lists what is
//! emulated and what is not.
//!
//! Shape:
//! - [`DropboxEmulator::start`] binds two loopback listeners, the api host (RPC
//!   routes, `/oauth2/token`, `/oauth2/authorize`, and the emulator's own `/_emulator/`
//!   controls) and the content host (uploads and downloads, as `content.dropboxapi.com`),
//!   and serves them on a thread with its own tokio runtime until dropped.
//! - [`DropboxControl`] (the emulator derefs to it, and it clones) seeds and inspects
//!   the namespace and changes [`Faults`] live.
//! - Children: `wire` (error answers, header JSON, arguments, times), `content_hash`,
//!   `namespace` (the tree, and its `listing`), `sessions` (upload sessions), `auth`
//!   (OAuth), `routes` (the API functions), `body` (bytes on the wire, the throughput
//!   cap) and `server` (the request path).
//!
//! Every map and queue is bounded (sessions, tokens, codes, tombstones, jobs,
//! connections); a request body is read once into one buffer and hashed as it
//! arrives, and an upload session's buffers become the file without a copy, so an
//! upload of a few GiB is held once.

mod auth;
mod body;
mod content_hash;
mod namespace;
mod properties;
mod routes;
mod server;
mod sessions;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use content_hash::{content_hash_hex, ContentHasher, BLOCK_BYTES};
pub use sessions::{CONCURRENT_ALIGN_BYTES, SESSION_FILE_BYTES_MAX};

use namespace::{parse_target, Commit, Content, PathKind, Target, WriteMode};
use server::Shared;

/// The most one request may upload (`files/upload`, or one call into a session): 150 MiB.
pub const UPLOAD_BYTES_MAX: u64 = 150 << 20;
/// The most entries one `upload_session/finish_batch_v2` (or `start_batch`) takes.
pub const FINISH_BATCH_ENTRIES_MAX: usize = 1000;
/// The largest `limit` `list_folder` takes.
pub const LIST_LIMIT_MAX: u32 = 2000;

/// Misbehaviour to inject; settable at start ([`DropboxOptions::faults`]) and live
/// ([`DropboxControl::set_faults`], or `POST /_emulator/faults` with this as JSON).
/// Rates are fractions of API calls, drawn from the seeded generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Calls answered 429 `too_many_requests` (a storm of a set length is
    /// [`DropboxControl::throttle_next`]).
    pub too_many_requests_rate: f64,
    /// `Retry-After` (and the body's `retry_after`) of every 429, seconds.
    pub retry_after_s: u64,
    /// Calls answered 500 or 503.
    pub server_error_rate: f64,
    /// Downloads whose connection is reset after a random part of the body.
    pub drop_download_rate: f64,
    /// Uploads whose connection is dropped after a random part of the body has arrived.
    pub drop_upload_rate: f64,
    /// Uploads dropped at a set point, for deterministic tests: see [`DropUploads`].
    pub drop_uploads: Option<DropUploads>,
    /// Added before each API call is handled.
    pub latency_ms: u64,
    /// Per-connection cap, each direction, in bytes a second; 0 is none.
    pub throughput_bytes_per_s: u64,
    /// Commits in flight at once (`upload`, `upload_session/finish`, `finish_batch*`,
    /// from arrival to answer) past which a new one is answered 429
    /// `too_many_write_operations`; 0 is no limit.
    pub commits_concurrent_max: u32,
    /// How long each commit holds its slot (the namespace's lock) once its work is
    /// done, before it answers: a `finish_batch*` call holds it once for all its
    /// entries. With `commits_concurrent_max`, commits that overlap collide.
    pub commit_hold_ms: u64,
    /// Lifetime of the access tokens issued from now on (Dropbox's: 4 hours).
    pub token_lifetime_s: u64,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            too_many_requests_rate: 0.0,
            retry_after_s: 1,
            server_error_rate: 0.0,
            drop_download_rate: 0.0,
            drop_upload_rate: 0.0,
            drop_uploads: None,
            latency_ms: 0,
            throughput_bytes_per_s: 0,
            commits_concurrent_max: 0,
            commit_hold_ms: 0,
            token_lifetime_s: 14_400,
        }
    }
}

impl Faults {
    /// Checks every rate is a fraction.
    pub fn validate(&self) -> Result<(), String> {
        for (name, r) in [
            ("too_many_requests_rate", self.too_many_requests_rate),
            ("server_error_rate", self.server_error_rate),
            ("drop_download_rate", self.drop_download_rate),
            ("drop_upload_rate", self.drop_upload_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{name} = {r} is not between 0 and 1"));
            }
        }
        Ok(())
    }
}

/// Upload calls cut at a set point: the next `next` upload calls (`files/upload`, or any
/// call into an upload session) whose body is longer than `after_bytes` are dropped, with
/// no answer, once `after_bytes` of the body have arrived. Shorter bodies pass and are not
/// counted, so the cut lands in a body that carries data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DropUploads {
    /// Bytes of the body that arrive before the cut (at least 1).
    pub after_bytes: u64,
    /// How many upload calls are cut.
    pub next: u32,
}

/// How an emulator starts (also as JSON: `laminar-emulator dropbox '{"seed": 7}'`; fields
/// left out take their defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DropboxOptions {
    /// Seeds ids, revs, tokens, listing order and the fault draws.
    pub seed: u64,
    /// Faults from the start.
    pub faults: Faults,
    /// The one app's key (`client_id`).
    pub app_key: String,
    /// The app's secret.
    pub app_secret: String,
    /// A refresh token issued to the app (refreshing it needs the secret).
    pub refresh_token: String,
    /// The redirect URIs registered for the app (none by default, as for a new app:
    /// the code flow then works only without a `redirect_uri`, the code shown to the user).
    pub redirect_uris: Vec<String>,
    /// The account's space: committing past it is `insufficient_space`.
    pub quota_bytes: u64,
    /// The most bytes open upload sessions may hold together (the emulator's memory
    /// bound, not a Dropbox rule: past it an append is answered 507).
    pub session_bytes_max: u64,
    /// The most sessions kept; past it the oldest goes, as if expired.
    pub sessions_max: usize,
    /// How long a session lives (Dropbox: 7 days).
    pub session_lifetime_s: u64,
    /// `list_folder`'s page size when the call gives no `limit`.
    pub list_limit_default: u32,
    /// Files and folders held at most (the emulator's bound; past it a write is
    /// `insufficient_space`).
    pub entries_max: usize,
    /// Deleted entries remembered for listings; a change cursor older than the oldest
    /// kept is `reset`.
    pub tombstones_max: usize,
    /// Connections served at once (more wait to be accepted).
    pub connections_max: usize,
    /// Tokio worker threads.
    pub threads: usize,
}

impl Default for DropboxOptions {
    fn default() -> DropboxOptions {
        DropboxOptions {
            seed: 0,
            faults: Faults::default(),
            app_key: "laminar-emulator-app-key".into(),
            app_secret: "laminar-emulator-app-secret".into(),
            refresh_token: "laminar-emulator-refresh-token".into(),
            redirect_uris: Vec::new(),
            quota_bytes: 8 << 30,
            session_bytes_max: 8 << 30,
            sessions_max: 20_000,
            session_lifetime_s: 7 * 24 * 3600,
            list_limit_default: 500,
            entries_max: 1_000_000,
            tombstones_max: 100_000,
            connections_max: 1024,
            threads: 2,
        }
    }
}

/// Counters since start (also served at `GET /_emulator/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropboxStats {
    /// Calls by route (`files/upload`, `oauth2/token`, ...; `unknown` for the rest).
    pub requests: BTreeMap<String, u64>,
    /// 429 answers sent (`too_many_requests` and `too_many_write_operations`).
    pub throttled: u64,
    /// Of those, `too_many_write_operations` (the commit limit).
    pub write_throttled: u64,
    /// `finish_batch*` entries answered `too_many_write_operations`
    /// ([`DropboxControl::busy_batch_entries_next`]).
    pub batch_entries_busy: u64,
    /// Injected 500 and 503 answers.
    pub server_errors: u64,
    /// Connections dropped on purpose (mid-upload or mid-download).
    pub dropped_connections: u64,
    /// 401 answers (unknown or expired tokens).
    pub auth_rejected: u64,
    /// Commits (uploads, finishes) in flight now.
    pub commits_in_flight: u32,
    /// Upload sessions open now.
    pub open_sessions: usize,
    /// Bytes those sessions hold.
    pub session_bytes: u64,
    /// Files and folders in the namespace.
    pub entries: usize,
    /// Bytes of the files.
    pub used_bytes: u64,
    /// Request body bytes received.
    pub bytes_received: u64,
    /// Download body bytes sent.
    pub bytes_sent: u64,
}

/// Where a running emulator listens and what it accepts (the line
/// `laminar-emulator dropbox` prints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropboxEndpoints {
    /// In place of `https://api.dropboxapi.com`.
    pub api_url: String,
    /// In place of `https://content.dropboxapi.com`.
    pub content_url: String,
    /// `/oauth2/token`.
    pub token_url: String,
    /// In place of `https://www.dropbox.com/oauth2/authorize`.
    pub authorize_url: String,
    /// The emulator's controls.
    pub admin_url: String,
    /// The app key.
    pub app_key: String,
    /// The app secret.
    pub app_secret: String,
    /// The seeded refresh token.
    pub refresh_token: String,
    /// An access token, fresh when this was made.
    pub access_token: String,
    /// The root namespace id.
    pub namespace_id: String,
}

/// A file as the namespace holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The path with the casing it was written with.
    pub path_display: String,
    /// The lower-case path.
    pub path_lower: String,
    /// `id:...`, kept across overwrites.
    pub id: String,
    /// The revision.
    pub rev: String,
    /// Bytes.
    pub size: u64,
    /// Dropbox's content hash, hex.
    pub content_hash: String,
    /// `client_modified`, Unix seconds.
    pub client_modified_s: i64,
    /// `server_modified`, Unix seconds.
    pub server_modified_s: i64,
}

impl FileInfo {
    fn from_json(v: &Value) -> FileInfo {
        let s = |k: &str| v[k].as_str().expect("file metadata has string fields").to_string();
        let t = |k: &str| wire::parse_timestamp(v[k].as_str().expect("file metadata has times")).expect("well-formed");
        FileInfo {
            path_display: s("path_display"),
            path_lower: s("path_lower"),
            id: s("id"),
            rev: s("rev"),
            size: v["size"].as_u64().expect("file metadata has a size"),
            content_hash: s("content_hash"),
            client_modified_s: t("client_modified"),
            server_modified_s: t("server_modified"),
        }
    }
}

/// Seeds, inspects and steers a running emulator; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct DropboxControl {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DropboxControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropboxControl").field("ns_id", &self.shared.ns_id).finish_non_exhaustive()
    }
}

impl DropboxControl {
    fn path(&self, path: &str) -> anyhow::Result<Target> {
        let t = parse_target("path", path, PathKind::Write, wire::ArgSource::Body, &self.shared.ns_id)
            .map_err(|e| anyhow::anyhow!("{path:?}: {e:?}"))?;
        match t {
            Target::Path(_) => Ok(t),
            _ => bail!("{path:?} is not a valid Dropbox file path (absolute, no empty, `.` or `..` parts)"),
        }
    }

    /// Writes a file (overwriting), its `client_modified` now.
    pub fn insert(&self, path: &str, bytes: impl Into<bytes::Bytes>) -> anyhow::Result<FileInfo> {
        self.insert_with(path, bytes, SystemTime::now())
    }

    /// Writes a file (overwriting) with this `client_modified` (kept to the second).
    pub fn insert_with(
        &self,
        path: &str,
        bytes: impl Into<bytes::Bytes>,
        client_modified: SystemTime,
    ) -> anyhow::Result<FileInfo> {
        let bytes = bytes.into();
        let client_s =
            client_modified.duration_since(UNIX_EPOCH).context("client_modified before 1970")?.as_secs() as i64;
        let commit = Commit {
            target: self.path(path)?,
            mode: WriteMode::Overwrite,
            autorename: false,
            strict_conflict: false,
            client_modified_s: Some(client_s),
            property_groups: Vec::new(),
        };
        let hash = content_hash_hex(&bytes);
        let mut store = self.shared.store();
        let lower = store
            .ns
            .commit_file(&commit, Arc::new(Content::from_segments(vec![bytes])), hash, wire::now_unix_s())
            .map_err(|e| anyhow::anyhow!("seeding {path:?}: {:?}", e.value()))?;
        Ok(FileInfo::from_json(&store.ns.metadata_json(&lower, false)))
    }

    /// Creates a folder (and its parents).
    pub fn create_folder(&self, path: &str) -> anyhow::Result<()> {
        let t = self.path(path)?;
        self.shared.store().ns.create_folder(&t, false).map_err(|e| anyhow::anyhow!("{path:?}: {:?}", e.value()))?;
        Ok(())
    }

    /// Deletes the file or folder at `path` and everything under it (a fresh destination
    /// for the next benchmark run); false when nothing is there.
    pub fn remove(&self, path: &str) -> anyhow::Result<bool> {
        let t = self.path(path)?;
        Ok(self.shared.store().ns.delete(&t).is_ok())
    }

    /// Every file's bytes, by display path.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        self.shared.store().ns.files().map(|(p, f)| (p.to_string(), f.content.to_vec())).collect()
    }

    /// One file's bytes (the path in any casing).
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        let t = self.path(path).ok()?;
        let store = self.shared.store();
        let lower = store.ns.resolve(&t).ok()?;
        match &store.ns.entry(&lower)?.kind {
            namespace::Kind::File(f) => Some(f.content.to_vec()),
            namespace::Kind::Folder => None,
        }
    }

    /// One file's metadata (the path in any casing).
    pub fn metadata(&self, path: &str) -> Option<FileInfo> {
        let t = self.path(path).ok()?;
        let store = self.shared.store();
        let lower = store.ns.resolve(&t).ok()?;
        let v = store.ns.metadata_json(&lower, true);
        (v[".tag"] == "file").then(|| FileInfo::from_json(&v))
    }

    /// Counters since start.
    pub fn stats(&self) -> DropboxStats {
        self.shared.stats()
    }

    /// Upload sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.shared.store().sessions.open()
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// Replaces the faults in force.
    pub fn set_faults(&self, faults: Faults) -> anyhow::Result<()> {
        faults.validate().map_err(anyhow::Error::msg)?;
        self.shared.set_faults(faults);
        Ok(())
    }

    /// The next `n` API calls are answered 429 `too_many_requests` (a storm).
    pub fn throttle_next(&self, n: u64) {
        self.shared.throttle_next(n);
    }

    /// The next `n` entries of `finish_batch_v2` (or v1) calls fail, each on its own,
    /// with `too_many_write_operations`, as when other writes hold the namespace; their
    /// sessions stay as they were, ready to be finished again.
    pub fn busy_batch_entries_next(&self, n: u64) {
        self.shared.busy_batch_entries_next(n);
    }

    /// Every access token issued so far expires now.
    pub fn expire_tokens(&self) {
        self.shared.auth().expire_all();
    }

    /// Every authorization code not yet exchanged expires now (`invalid_grant`).
    pub fn expire_codes(&self) {
        self.shared.auth().expire_codes();
    }

    /// A fresh access token (for clients that do not refresh).
    pub fn access_token(&self) -> String {
        let lifetime = self.shared.token_lifetime();
        self.shared.auth().mint_access(lifetime)
    }

    /// The root namespace id (`Dropbox-API-Path-Root`, `ns:` paths).
    pub fn namespace_id(&self) -> &str {
        &self.shared.ns_id
    }
}

/// A running emulator; stops when dropped. Derefs to its [`DropboxControl`].
pub struct DropboxEmulator {
    control: DropboxControl,
    api: SocketAddr,
    content: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for DropboxEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropboxEmulator")
            .field("api", &self.api)
            .field("content", &self.content)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for DropboxEmulator {
    type Target = DropboxControl;

    fn deref(&self) -> &DropboxControl {
        &self.control
    }
}

impl DropboxEmulator {
    /// Binds 127.0.0.1 on two free ports and starts serving.
    pub fn start(opts: DropboxOptions) -> anyhow::Result<DropboxEmulator> {
        opts.faults.validate().map_err(anyhow::Error::msg)?;
        if opts.list_limit_default == 0 || opts.list_limit_default > LIST_LIMIT_MAX {
            bail!("list_limit_default = {} is not between 1 and {LIST_LIMIT_MAX}", opts.list_limit_default);
        }
        if opts.sessions_max == 0 || opts.tombstones_max == 0 || opts.connections_max == 0 || opts.entries_max == 0 {
            bail!("sessions_max, tombstones_max, entries_max and connections_max must be above zero");
        }
        let bind = || -> anyhow::Result<std::net::TcpListener> {
            let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        let (api, content) = (bind()?, bind()?);
        let (api_addr, content_addr) = (api.local_addr()?, content.local_addr()?);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads.max(1))
            .thread_name("dropbox-emulator")
            .enable_all()
            .build()
            .context("starting the Dropbox emulator's tokio runtime")?;
        let shared = Arc::new(Shared::new(opts));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let serve_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("dropbox-emulator".into())
            .spawn(move || {
                let served = rt.block_on(async move {
                    let api = tokio::net::TcpListener::from_std(api)?;
                    let content = tokio::net::TcpListener::from_std(content)?;
                    server::serve(serve_shared, api, content, rx).await;
                    Ok::<(), std::io::Error>(())
                });
                if let Err(e) = served {
                    eprintln!("dropbox emulator: {e}");
                }
                // In-flight connections are dropped, not waited for.
                rt.shutdown_background();
            })
            .context("spawning the Dropbox emulator thread")?;
        Ok(DropboxEmulator {
            control: DropboxControl { shared },
            api: api_addr,
            content: content_addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// The api host (RPC routes): `http://127.0.0.1:PORT`, in place of `https://api.dropboxapi.com`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// The content host (uploads, downloads), in place of `https://content.dropboxapi.com`.
    pub fn content_url(&self) -> String {
        format!("http://{}", self.content)
    }

    /// The OAuth token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.api_url())
    }

    /// The authorization page (approves at once), in place of `https://www.dropbox.com/oauth2/authorize`.
    pub fn authorize_url(&self) -> String {
        format!("{}/oauth2/authorize", self.api_url())
    }

    /// The emulator's controls (`stats`, `faults`, `expire_tokens`, `throttle`, `access_token`).
    pub fn admin_url(&self) -> String {
        format!("{}/_emulator", self.api_url())
    }

    /// The app key.
    pub fn app_key(&self) -> &str {
        &self.control.shared.opts.app_key
    }

    /// The app secret.
    pub fn app_secret(&self) -> &str {
        &self.control.shared.opts.app_secret
    }

    /// The seeded refresh token.
    pub fn refresh_token(&self) -> &str {
        &self.control.shared.opts.refresh_token
    }

    /// URLs and credentials, with a fresh access token.
    pub fn endpoints(&self) -> DropboxEndpoints {
        DropboxEndpoints {
            api_url: self.api_url(),
            content_url: self.content_url(),
            token_url: self.token_url(),
            authorize_url: self.authorize_url(),
            admin_url: self.admin_url(),
            app_key: self.app_key().to_string(),
            app_secret: self.app_secret().to_string(),
            refresh_token: self.refresh_token().to_string(),
            access_token: self.access_token(),
            namespace_id: self.namespace_id().to_string(),
        }
    }

    /// The handle, to keep after the emulator is moved.
    pub fn control(&self) -> DropboxControl {
        self.control.clone()
    }
}

impl Drop for DropboxEmulator {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
