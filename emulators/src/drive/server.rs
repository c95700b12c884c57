//! The HTTP side: accepting connections, routing, the steps every API request goes
//! through (count, latency, authentication, injected faults), the token endpoint, the
//! control endpoints, and the response bodies (including one that cuts itself off).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::auth::{self, Accounts, Grant, Tokens};
use super::conn::{ConnIo, ConnShared};
use super::consent::Grants;
use super::errors::ApiError;
use super::faults::{Class, FaultState, Faults};
use super::store::Store;
use super::upload::Session;
use super::{files, uploads, DriveOptions, DriveStats, SessionStats};

/// Largest body of a request that carries no file bytes (JSON metadata, token forms).
pub(crate) const SMALL_BODY_BYTES_MAX: usize = 1 << 20;
/// Most body bytes read and thrown away before an early error answer; past it the
/// connection is closed instead.
const DRAIN_BYTES_MAX: u64 = 64 << 20;
/// Largest frame of a response body.
const FRAME_BYTES_MAX: usize = 1 << 20;
/// Largest segment a request body is gathered into.
pub(crate) const SEGMENT_BYTES_MAX: usize = 1 << 20;

/// The methods counted in the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Token,
    Authorize,
    AboutGet,
    DrivesList,
    DrivesGet,
    FilesList,
    FilesGet,
    FilesGetMedia,
    FilesExport,
    FilesCreate,
    FilesCreateMedia,
    FilesCreateMultipart,
    FilesCreateResumable,
    FilesUpdate,
    FilesUpdateMedia,
    FilesUpdateMultipart,
    FilesUpdateResumable,
    FilesDelete,
    UploadChunk,
    Control,
    Unknown,
}

const OPS: [(Op, &str); 21] = [
    (Op::Token, "token"),
    (Op::Authorize, "authorize"),
    (Op::AboutGet, "about.get"),
    (Op::DrivesList, "drives.list"),
    (Op::DrivesGet, "drives.get"),
    (Op::FilesList, "files.list"),
    (Op::FilesGet, "files.get"),
    (Op::FilesGetMedia, "files.get_media"),
    (Op::FilesExport, "files.export"),
    (Op::FilesCreate, "files.create"),
    (Op::FilesCreateMedia, "files.create_media"),
    (Op::FilesCreateMultipart, "files.create_multipart"),
    (Op::FilesCreateResumable, "files.create_resumable"),
    (Op::FilesUpdate, "files.update"),
    (Op::FilesUpdateMedia, "files.update_media"),
    (Op::FilesUpdateMultipart, "files.update_multipart"),
    (Op::FilesUpdateResumable, "files.update_resumable"),
    (Op::FilesDelete, "files.delete"),
    (Op::UploadChunk, "upload.chunk"),
    (Op::Control, "control"),
    (Op::Unknown, "unknown"),
];

impl Op {
    fn index(self) -> usize {
        OPS.iter().position(|(o, _)| *o == self).expect("every op is listed")
    }

    fn class(self) -> Class {
        match self {
            Op::FilesGetMedia | Op::FilesExport => Class::Download,
            Op::FilesCreateMedia
            | Op::FilesCreateMultipart
            | Op::FilesCreateResumable
            | Op::FilesUpdateMedia
            | Op::FilesUpdateMultipart
            | Op::FilesUpdateResumable
            | Op::UploadChunk => Class::Upload,
            _ => Class::Metadata,
        }
    }

    pub(crate) fn is_create(self) -> bool {
        matches!(self, Op::FilesCreate | Op::FilesCreateMedia | Op::FilesCreateMultipart | Op::FilesCreateResumable)
    }
}

/// Counters.
#[derive(Default)]
pub(crate) struct Stats {
    requests: [AtomicU64; OPS.len()],
    throttled: Mutex<BTreeMap<String, u64>>,
    server_errors: AtomicU64,
    unauthorized: AtomicU64,
    pub(crate) dropped: AtomicU64,
    refresh_grants: AtomicU64,
    jwt_grants: AtomicU64,
    code_grants: AtomicU64,
    refused_grants: AtomicU64,
}

/// Settings fixed at start.
pub(crate) struct Settings {
    pub(crate) user_email: String,
    pub(crate) user_name: String,
    pub(crate) require_auth: bool,
    pub(crate) storage_limit_bytes: u64,
    pub(crate) sessions_max: usize,
    pub(crate) session_lifetime: Duration,
    pub(crate) simple_upload_bytes_max: u64,
    pub(crate) export_bytes_max: u64,
    pub(crate) page_size_max: usize,
    pub(crate) connections_max: usize,
}

/// Counters of one session, readable without its lock.
#[derive(Default)]
pub(crate) struct SessionCounters {
    pub(crate) committed: AtomicU64,
    pub(crate) received: AtomicU64,
    /// `u64::MAX` until the total is named.
    pub(crate) total: AtomicU64,
    pub(crate) complete: AtomicBool,
}

/// A session in the map.
pub(crate) struct SessionEntry {
    pub(crate) session: Arc<tokio::sync::Mutex<Session>>,
    pub(crate) counters: Arc<SessionCounters>,
    pub(crate) name: String,
    pub(crate) started: Instant,
    pub(crate) touched: Instant,
    /// The start request's `supportsAllDrives`.
    pub(crate) supports_all_drives: bool,
}

/// Everything the emulator knows.
pub(crate) struct State {
    pub(crate) settings: Settings,
    pub(crate) accounts: Accounts,
    pub(crate) api_url: String,
    store: Mutex<Store>,
    pub(crate) sessions: Mutex<HashMap<String, SessionEntry>>,
    /// Bytes held by open sessions (counted against the storage limit).
    pub(crate) session_bytes: Arc<AtomicU64>,
    tokens: Mutex<(Tokens, fastrand::Rng)>,
    grants: Mutex<Grants>,
    pub(crate) rng: Mutex<fastrand::Rng>,
    pub(crate) faults: Arc<FaultState>,
    pub(crate) stats: Stats,
}

impl State {
    pub(crate) fn new(opts: DriveOptions, addr: SocketAddr) -> State {
        let api_url = format!("http://{addr}");
        State {
            settings: Settings {
                user_email: opts.user_email,
                user_name: opts.user_name,
                require_auth: opts.require_auth,
                storage_limit_bytes: opts.storage_limit_bytes,
                sessions_max: opts.sessions_max,
                session_lifetime: Duration::from_secs(opts.session_lifetime_s),
                simple_upload_bytes_max: opts.simple_upload_bytes_max,
                export_bytes_max: opts.export_bytes_max,
                page_size_max: opts.page_size_max,
                connections_max: opts.connections_max,
            },
            accounts: Accounts {
                client_id: opts.client_id,
                client_secret: opts.client_secret,
                refresh_token: opts.refresh_token,
                service_account_email: opts.service_account_email,
                token_url: format!("{api_url}/token"),
            },
            store: Mutex::new(Store::new(opts.seed, &opts.shared_drives, opts.files_max)),
            sessions: Mutex::new(HashMap::new()),
            session_bytes: Arc::new(AtomicU64::new(0)),
            tokens: Mutex::new((Tokens::default(), fastrand::Rng::with_seed(opts.seed ^ 0x70c3))),
            grants: Mutex::new(Grants::new(opts.seed)),
            rng: Mutex::new(fastrand::Rng::with_seed(opts.seed ^ 0x9a9e)),
            faults: Arc::new(FaultState::new(opts.faults, opts.seed)),
            stats: Stats::default(),
            api_url,
        }
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().expect("no handler panics holding the store")
    }

    pub(crate) fn tokens(&self) -> MutexGuard<'_, (Tokens, fastrand::Rng)> {
        self.tokens.lock().expect("no handler panics holding the tokens")
    }

    pub(crate) fn grants(&self) -> MutexGuard<'_, Grants> {
        self.grants.lock().expect("no handler panics holding the grants")
    }

    pub(crate) fn sessions(&self) -> MutexGuard<'_, HashMap<String, SessionEntry>> {
        self.sessions.lock().expect("no handler panics holding the sessions")
    }

    /// Room left under the storage limit, counting what open sessions hold.
    pub(crate) fn storage_room(&self) -> u64 {
        let used = self.store().stored_bytes() + self.session_bytes.load(Ordering::Relaxed);
        self.settings.storage_limit_bytes.saturating_sub(used)
    }

    pub(crate) fn expire_sessions(&self) {
        self.sessions().clear();
    }

    pub(crate) fn stats(&self) -> DriveStats {
        let requests = OPS
            .iter()
            .map(|(op, name)| ((*name).to_string(), self.stats.requests[op.index()].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let mut sessions: Vec<SessionStats> = self
            .sessions()
            .iter()
            .map(|(id, e)| {
                let total = e.counters.total.load(Ordering::Relaxed);
                SessionStats {
                    id: id.clone(),
                    name: e.name.clone(),
                    committed_bytes: e.counters.committed.load(Ordering::Relaxed),
                    received_bytes: e.counters.received.load(Ordering::Relaxed),
                    total_bytes: (total != u64::MAX).then_some(total),
                    complete: e.counters.complete.load(Ordering::Relaxed),
                }
            })
            .collect();
        sessions.sort_by(|a, b| a.id.cmp(&b.id));
        let (stored_bytes, files) = {
            let s = self.store();
            (s.stored_bytes(), s.len() as u64)
        };
        DriveStats {
            requests,
            throttled: self.stats.throttled.lock().expect("no panics holding the counters").clone(),
            server_errors: self.stats.server_errors.load(Ordering::Relaxed),
            unauthorized: self.stats.unauthorized.load(Ordering::Relaxed),
            dropped_connections: self.stats.dropped.load(Ordering::Relaxed),
            refresh_grants: self.stats.refresh_grants.load(Ordering::Relaxed),
            jwt_grants: self.stats.jwt_grants.load(Ordering::Relaxed),
            code_grants: self.stats.code_grants.load(Ordering::Relaxed),
            refused_grants: self.stats.refused_grants.load(Ordering::Relaxed),
            uploaded_today_bytes: self.faults.uploaded_today(),
            stored_bytes,
            files,
            sessions,
        }
    }

    fn count(&self, op: Op) {
        self.stats.requests[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error answer in the statistics.
    pub(crate) fn count_error(&self, e: &ApiError) {
        if e.is_throttle() {
            let kind = if e.message == super::errors::DAILY_UPLOAD_LIMIT_MESSAGE {
                "dailyUploadLimit".to_string()
            } else {
                e.reason.to_string()
            };
            *self
                .stats
                .throttled
                .lock()
                .expect("no panics holding the counters")
                .entry(format!("{kind}/{}", e.status.as_u16()))
                .or_insert(0) += 1;
        } else if e.reason == "backendError" {
            self.stats.server_errors.fetch_add(1, Ordering::Relaxed);
        } else if e.status == StatusCode::UNAUTHORIZED {
            self.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves until `stop` fires.
pub(crate) async fn serve(
    state: Arc<State>,
    listener: std::net::TcpListener,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a non-blocking listener in a runtime");
    let permits = Arc::new(tokio::sync::Semaphore::new(state.settings.connections_max));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut stop => return,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                // Out of descriptors or similar: keep serving the connections there are.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let shared = Arc::new(ConnShared::default());
            let io = ConnIo::new(stream, shared.clone(), state.faults.clone());
            let service = hyper::service::service_fn(move |req| handle(state.clone(), shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .await;
            drop(permit);
        });
    }
}

/// Returned to hyper to close a connection without an answer.
#[derive(Debug)]
pub(crate) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the emulator")
    }
}

impl std::error::Error for Dropped {}

/// A response body: one buffer, or slices of a file's content, optionally cut short.
pub(crate) enum RespBody {
    Full(Option<Bytes>),
    Slices {
        slices: std::collections::VecDeque<Bytes>,
        sent: u64,
        cut_after: Option<u64>,
        conn: Arc<ConnShared>,
        state: Arc<State>,
        left: u64,
    },
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Dropped;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Dropped>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Slices { slices, sent, cut_after, conn, state, left } => {
                if let Some(cut) = *cut_after {
                    if *sent >= cut {
                        conn.kill();
                        state.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        *cut_after = None;
                        return Poll::Ready(Some(Err(Dropped)));
                    }
                }
                let Some(mut front) = slices.pop_front() else { return Poll::Ready(None) };
                let mut n = front.len().min(FRAME_BYTES_MAX);
                if let Some(cut) = *cut_after {
                    n = n.min(usize::try_from(cut - *sent).unwrap_or(usize::MAX));
                }
                let frame = front.split_to(n);
                if !front.is_empty() {
                    slices.push_front(front);
                }
                *sent += n as u64;
                *left -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(frame))))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespBody::Slices { left, .. } => SizeHint::with_exact(*left),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Slices { left, cut_after, .. } => *left == 0 && cut_after.is_none(),
        }
    }
}

pub(crate) type Resp = Response<RespBody>;

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Resp {
    let body = Bytes::from(serde_json::to_vec(v).expect("a JSON value serialises"));
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json; charset=UTF-8")
        .header(CONTENT_LENGTH, body.len())
        .body(RespBody::Full(Some(body)))
        .expect("a valid response")
}

pub(crate) fn empty_response(status: StatusCode) -> Resp {
    Response::builder().status(status).header(CONTENT_LENGTH, 0).body(RespBody::Full(None)).expect("a valid response")
}

pub(crate) fn error_response(state: &State, e: &ApiError) -> Resp {
    state.count_error(e);
    let mut r = json_response(e.status, &e.to_json());
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\""),
        );
    }
    r
}

/// A request, taken apart.
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) segments: Vec<String>,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Incoming,
    pub(crate) conn: Arc<ConnShared>,
}

impl Req {
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The `fields` selection; an empty one (`fields=`, as Google's Go client sends
    /// `Fields("")`) selects what no `fields` selects.
    pub(crate) fn fields(&self) -> Option<&str> {
        self.param("fields").filter(|f| !f.trim().is_empty())
    }

    /// A boolean parameter: `true` is true, anything else false.
    pub(crate) fn flag(&self, name: &str) -> bool {
        self.param(name) == Some("true")
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.trim().parse().ok())
    }

    /// Reads a small body (metadata JSON, a token form), at most `SMALL_BODY_BYTES_MAX`.
    pub(crate) async fn small_body(&mut self) -> Result<Bytes, ApiError> {
        let mut out = BytesMut::new();
        while let Some(frame) = self.body.frame().await {
            let frame = frame.map_err(|_| ApiError::bad_request("The request body could not be read."))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > SMALL_BODY_BYTES_MAX {
                    return Err(ApiError::bad_request("The request body is too large."));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out.freeze())
    }

    /// Reads the body as JSON metadata: empty is `{}`.
    pub(crate) async fn json_body(&mut self) -> Result<Value, ApiError> {
        let b = self.small_body().await?;
        if b.iter().all(u8::is_ascii_whitespace) {
            return Ok(json!({}));
        }
        let v: Value = serde_json::from_slice(&b)
            .map_err(|e| ApiError::bad_request(format!("Invalid JSON payload received. {e}")))?;
        if !v.is_object() {
            return Err(ApiError::bad_request("Invalid JSON payload received. The metadata must be an object."));
        }
        Ok(v)
    }

    /// Reads and throws away what is left of the body (before an early answer), so the
    /// client gets the answer and not a reset. False when it was too long to drain.
    pub(crate) async fn drain(&mut self) -> bool {
        let mut n = 0u64;
        while let Some(frame) = self.body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Ok(d) = frame.into_data() {
                n += d.len() as u64;
                if n > DRAIN_BYTES_MAX {
                    return false;
                }
            }
        }
        true
    }
}

/// The connection's answer to one request.
pub(crate) type Answer = Result<Resp, Dropped>;

async fn handle(state: Arc<State>, conn: Arc<ConnShared>, req: Request<Incoming>) -> Answer {
    let (parts, body) = req.into_parts();
    let segments: Vec<String> = parts
        .uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let query = auth::parse_urlencoded(parts.uri.query().unwrap_or(""));
    let mut req = Req { method: parts.method, segments, query, headers: parts.headers, body, conn };
    let op = route(&req);
    state.count(op);
    if op == Op::Control {
        return Ok(control(&state, &mut req).await);
    }
    let latency = state.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if op == Op::Token {
        return Ok(token(&state, &mut req).await);
    }
    if op == Op::Authorize {
        req.drain().await;
        return Ok(authorize(&state, &req));
    }
    if op == Op::Unknown {
        req.drain().await;
        return Ok(error_response(&state, &ApiError::no_such_method()));
    }
    // A session's URI is its credential: chunks need no token (as on Google's servers).
    if op != Op::UploadChunk {
        if let Err(e) = authenticate(&state, &req) {
            req.drain().await;
            return Ok(error_response(&state, &e));
        }
    }
    if let Some(e) = state.faults.injected(op.class()) {
        req.drain().await;
        return Ok(error_response(&state, &e));
    }
    if op.is_create() && !state.faults.allow_create() {
        req.drain().await;
        return Ok(error_response(&state, &ApiError::user_rate_limit()));
    }
    match op {
        Op::AboutGet => Ok(files::about(&state, &req)),
        Op::DrivesList => Ok(files::drives_list(&state, &req)),
        Op::DrivesGet => Ok(files::drives_get(&state, &req)),
        Op::FilesList => Ok(files::list(&state, &req)),
        Op::FilesGet | Op::FilesGetMedia => Ok(files::get(&state, &req)),
        Op::FilesExport => Ok(files::export(&state, &req)),
        Op::FilesCreate => Ok(files::create(&state, &mut req).await),
        Op::FilesUpdate => Ok(files::update(&state, &mut req).await),
        Op::FilesDelete => Ok(files::delete(&state, &req)),
        Op::UploadChunk => uploads::chunk(&state, &mut req).await,
        Op::FilesCreateMedia | Op::FilesCreateMultipart | Op::FilesUpdateMedia | Op::FilesUpdateMultipart => {
            uploads::one_request(&state, &mut req, op).await
        }
        Op::FilesCreateResumable | Op::FilesUpdateResumable => Ok(uploads::start(&state, &mut req, op).await),
        Op::Token | Op::Authorize | Op::Control | Op::Unknown => unreachable!("answered above"),
    }
}

fn route(req: &Req) -> Op {
    let s: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let m = &req.method;
    let upload_type = req.param("uploadType");
    let session = req.param("upload_id").is_some();
    match (m.as_str(), s.as_slice()) {
        ("POST", ["token"]) => Op::Token,
        ("GET", ["o", "oauth2", "v2", "auth"]) => Op::Authorize,
        (_, ["_emulator", ..]) => Op::Control,
        ("GET", ["drive", "v3", "about"]) => Op::AboutGet,
        ("GET", ["drive", "v3", "drives"]) => Op::DrivesList,
        ("GET", ["drive", "v3", "drives", _]) => Op::DrivesGet,
        ("GET", ["drive", "v3", "files"]) => Op::FilesList,
        ("POST", ["drive", "v3", "files"]) => Op::FilesCreate,
        ("GET", ["drive", "v3", "files", _]) if req.param("alt") == Some("media") => Op::FilesGetMedia,
        ("GET", ["drive", "v3", "files", _]) => Op::FilesGet,
        ("PATCH", ["drive", "v3", "files", _]) => Op::FilesUpdate,
        ("DELETE", ["drive", "v3", "files", _]) => Op::FilesDelete,
        ("GET", ["drive", "v3", "files", _, "export"]) => Op::FilesExport,
        ("PUT" | "POST", ["upload", "drive", "v3", "files"] | ["upload", "drive", "v3", "files", _]) if session => {
            Op::UploadChunk
        }
        ("POST", ["upload", "drive", "v3", "files"]) => match upload_type {
            Some("multipart") => Op::FilesCreateMultipart,
            Some("resumable") => Op::FilesCreateResumable,
            _ => Op::FilesCreateMedia,
        },
        ("PATCH", ["upload", "drive", "v3", "files", _]) => match upload_type {
            Some("multipart") => Op::FilesUpdateMultipart,
            Some("resumable") => Op::FilesUpdateResumable,
            _ => Op::FilesUpdateMedia,
        },
        _ => Op::Unknown,
    }
}

fn authenticate(state: &State, req: &Req) -> Result<(), ApiError> {
    if !state.settings.require_auth {
        return Ok(());
    }
    let Some(h) = req.header("authorization") else { return Err(ApiError::login_required()) };
    let token = h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")).unwrap_or("");
    if token.is_empty() {
        return Err(ApiError::login_required());
    }
    if state.tokens().0.valid(token) {
        Ok(())
    } else {
        Err(ApiError::invalid_credentials())
    }
}

async fn token(state: &State, req: &mut Req) -> Resp {
    let body = match req.small_body().await {
        Ok(b) => b,
        Err(e) => return error_response(state, &e),
    };
    let form = auth::parse_urlencoded(&String::from_utf8_lossy(&body));
    let now_s = super::time::now_ms() / 1000;
    let granted = {
        let mut grants = state.grants();
        auth::check_grant(&form, &state.accounts, &mut grants, now_s)
    };
    match granted {
        Ok(auth::Granted { grant, scope, refresh_token }) => {
            let lifetime = state.faults.token_lifetime();
            let token = {
                let mut t = state.tokens();
                let (tokens, rng) = &mut *t;
                tokens.issue(lifetime, rng)
            };
            let counter = match grant {
                Grant::Refresh => &state.stats.refresh_grants,
                Grant::Jwt => &state.stats.jwt_grants,
                Grant::Code => &state.stats.code_grants,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let mut body = json!({"access_token": token, "expires_in": lifetime.as_secs(), "scope": scope, "token_type": "Bearer"});
            if let Some(rt) = refresh_token {
                body["refresh_token"] = rt.into();
            }
            json_response(StatusCode::OK, &body)
        }
        Err((status, body)) => {
            state.stats.refused_grants.fetch_add(1, Ordering::Relaxed);
            json_response(status, &body)
        }
    }
}

/// The consent page, approved at once: a redirect carrying the code, or Google's error.
fn authorize(state: &State, req: &Req) -> Resp {
    let answer = state.grants().authorize(&req.query, &state.accounts);
    match answer {
        Ok(location) => {
            let mut r = empty_response(StatusCode::FOUND);
            r.headers_mut().insert(http::header::LOCATION, HeaderValue::from_str(&location).expect("an encoded URL"));
            r
        }
        Err((status, body)) => json_response(status, &body),
    }
}

/// Merges `patch` into `base`: objects key by key, anything else replaced.
fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, p) => *b = p,
    }
}

async fn control(state: &State, req: &mut Req) -> Resp {
    let what: Vec<&str> = req.segments.iter().skip(1).map(String::as_str).collect();
    let bad = |m: String| json_response(StatusCode::BAD_REQUEST, &json!({"error": m}));
    match (req.method.as_str(), what.as_slice()) {
        ("GET", ["stats"]) => {
            json_response(StatusCode::OK, &serde_json::to_value(state.stats()).expect("serialisable"))
        }
        ("GET", ["tree"]) => {
            let root = state.store().root_id().to_string();
            let tree: Vec<Value> = state
                .store()
                .tree(&root)
                .into_iter()
                .map(|t| json!({"path": t.path, "id": t.id, "mimeType": t.mime_type, "size": t.size_bytes, "md5": t.md5, "trashed": t.trashed}))
                .collect();
            json_response(StatusCode::OK, &Value::Array(tree))
        }
        ("GET", ["faults"]) => {
            json_response(StatusCode::OK, &serde_json::to_value(state.faults.get()).expect("serialisable"))
        }
        ("POST", ["faults"]) => {
            let patch = match req.json_body().await {
                Ok(v) => v,
                Err(e) => return bad(e.message),
            };
            let mut current = serde_json::to_value(state.faults.get()).expect("serialisable");
            merge(&mut current, patch);
            match serde_json::from_value::<Faults>(current) {
                Ok(f) => {
                    state.faults.set(f);
                    json_response(StatusCode::OK, &serde_json::to_value(state.faults.get()).expect("serialisable"))
                }
                Err(e) => bad(format!("bad faults: {e}")),
            }
        }
        ("POST", ["faults", "reset"]) => {
            state.faults.set(Faults::default());
            json_response(StatusCode::OK, &serde_json::to_value(state.faults.get()).expect("serialisable"))
        }
        ("POST", ["expire_tokens"]) => {
            state.tokens().0.expire_all();
            empty_response(StatusCode::NO_CONTENT)
        }
        ("POST", ["expire_codes"]) => {
            state.grants().expire_codes();
            empty_response(StatusCode::NO_CONTENT)
        }
        ("POST", ["expire_sessions"]) => {
            state.expire_sessions();
            empty_response(StatusCode::NO_CONTENT)
        }
        ("POST", ["new_day"]) => {
            state.faults.new_day();
            empty_response(StatusCode::NO_CONTENT)
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "no such control endpoint"})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches_nested_objects() {
        let mut base = json!({"a": 1, "t": {"next": 0, "rate": 0.5}, "n": null});
        merge(&mut base, json!({"t": {"next": 2}, "n": {"x": 1}}));
        assert_eq!(base, json!({"a": 1, "t": {"next": 2, "rate": 0.5}, "n": {"x": 1}}));
    }

    #[test]
    fn op_names_are_unique() {
        let mut names: Vec<_> = OPS.iter().map(|(_, n)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OPS.len());
    }
}
