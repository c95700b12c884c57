//! The HTTP side: two loopback listeners (the api host, which also serves OAuth and the
//! emulator's own `/_emulator/` controls, and the content host), each connection
//! behind the throughput cap, and the path every API call takes: route lookup,
//! latency, host, bearer token, injected throttling and server errors,
//! `Dropbox-API-Path-Root`, then the route's style (RPC, upload, download). Every error
//! goes through [`super::wire::error_answer`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::request::Parts;
use http::{header, Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::auth::Auth;
use super::body::{drain, read_body, read_small, EmuBody, ReadError, Throttled};
use super::namespace::Namespace;
use super::properties::Templates;
use super::routes::{self, Host, Jobs, Route, Style};
use super::sessions::{BodyHasher, Sessions};
use super::wire::{ascii_json, error_answer, parse_header_arg, parse_range, ApiError, ArgSource, RangeSpec};
use super::{DropboxOptions, DropboxStats, Faults, UPLOAD_BYTES_MAX};

/// Largest RPC argument read (a 1,000-entry `finish_batch_v2` is a few hundred KiB).
const RPC_BODY_BYTES_MAX: usize = 8 << 20;
/// Largest OAuth or control request body.
const SMALL_BODY_BYTES_MAX: usize = 64 << 10;
const RPC_CONTENT_TYPES: [&str; 3] =
    ["application/json", "application/json; charset=utf-8", "text/plain; charset=dropbox-cors-hack"];
const UPLOAD_CONTENT_TYPES: [&str; 2] = ["application/octet-stream", "text/plain; charset=dropbox-cors-hack"];

/// Form encoding: all but unreserved characters, space as `+`.
const FORM: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Everything behind the one store lock: a commit sees the namespace and its session together.
pub(crate) struct Store {
    pub ns: Namespace,
    pub sessions: Sessions,
    pub jobs: Jobs,
    pub templates: Templates,
}

#[derive(Default)]
pub(crate) struct Counters {
    /// By route; bounded by the route table (unknown routes count as one).
    requests: Mutex<BTreeMap<&'static str, u64>>,
    // All Relaxed: statistics, each read on its own.
    throttled: AtomicU64,
    write_throttled: AtomicU64,
    batch_entries_busy: AtomicU64,
    server_errors: AtomicU64,
    dropped: AtomicU64,
    auth_rejected: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: Arc<AtomicU64>,
    serial: AtomicU64,
}

/// The emulator's state, shared by every connection and the control handle.
pub(crate) struct Shared {
    pub opts: DropboxOptions,
    pub ns_id: String,
    /// Stamped into cursors: another instance's are refused.
    pub epoch: u64,
    store: Mutex<Store>,
    pub auth: Mutex<Auth>,
    faults: Mutex<Faults>,
    rng: Mutex<fastrand::Rng>,
    /// API calls still to answer 429 in the current storm.
    storm_left: AtomicU64,
    /// `finish_batch*` entries still to answer `too_many_write_operations`.
    busy_entries_left: AtomicU64,
    /// The live per-connection cap, read by every connection's IO.
    throughput: Arc<AtomicU64>,
    commits_in_flight: AtomicU32,
    pub counters: Counters,
}

static EPOCHS: AtomicU64 = AtomicU64::new(1);

impl Shared {
    pub(crate) fn new(opts: DropboxOptions) -> Shared {
        let ns = Namespace::new(opts.seed, opts.quota_bytes, opts.tombstones_max, opts.entries_max);
        let sessions = Sessions::new(
            opts.seed,
            opts.sessions_max,
            Duration::from_secs(opts.session_lifetime_s),
            opts.session_bytes_max,
        );
        let auth = Auth::new(opts.seed, &opts.app_key, &opts.app_secret, &opts.refresh_token, &opts.redirect_uris);
        // Relaxed: a counter only has to be unique.
        let epoch = opts.seed.rotate_left(17) ^ EPOCHS.fetch_add(1, Ordering::Relaxed);
        Shared {
            ns_id: format!("{}", 1_000_000 + opts.seed % 9_000_000),
            epoch,
            store: Mutex::new(Store { ns, sessions, jobs: Jobs::default(), templates: Templates::new(opts.seed) }),
            auth: Mutex::new(auth),
            throughput: Arc::new(AtomicU64::new(opts.faults.throughput_bytes_per_s)),
            faults: Mutex::new(opts.faults.clone()),
            rng: Mutex::new(fastrand::Rng::with_seed(opts.seed)),
            storm_left: AtomicU64::new(0),
            busy_entries_left: AtomicU64::new(0),
            commits_in_flight: AtomicU32::new(0),
            counters: Counters::default(),
            opts,
        }
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().expect("no handler panics holding the store lock")
    }

    pub(crate) fn auth(&self) -> MutexGuard<'_, Auth> {
        self.auth.lock().expect("no handler panics holding the auth lock")
    }

    pub(crate) fn faults(&self) -> Faults {
        self.faults.lock().expect("no handler panics holding the faults lock").clone()
    }

    pub(crate) fn set_faults(&self, f: Faults) {
        // Relaxed: connections pick the new cap up on their next read or write.
        self.throughput.store(f.throughput_bytes_per_s, Ordering::Relaxed);
        *self.faults.lock().expect("no handler panics holding the faults lock") = f;
    }

    pub(crate) fn throttle_next(&self, n: u64) {
        // Relaxed: a count, read on its own.
        self.storm_left.store(n, Ordering::Relaxed);
    }

    pub(crate) fn busy_batch_entries_next(&self, n: u64) {
        // Relaxed: a count, read on its own.
        self.busy_entries_left.store(n, Ordering::Relaxed);
    }

    /// Whether the next `finish_batch*` entry is one of a storm's: it fails with
    /// `too_many_write_operations`, its session left as it was.
    pub(crate) fn batch_entry_busy(&self) -> bool {
        // Relaxed: a count, read on its own.
        let busy =
            self.busy_entries_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
        if busy {
            self.counters.batch_entries_busy.fetch_add(1, Ordering::Relaxed);
        }
        busy
    }

    pub(crate) fn token_lifetime(&self) -> Duration {
        Duration::from_secs(self.faults().token_lifetime_s)
    }

    fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().expect("no panics holding the rng").f64() < p
    }

    /// If this upload body (of `content_length` bytes) is the next one `drop_uploads`
    /// cuts, after how many bytes; counts it down.
    fn take_drop_upload(&self, content_length: Option<u64>) -> Option<u64> {
        let mut f = self.faults.lock().expect("no handler panics holding the faults lock");
        let d = f.drop_uploads.as_mut().filter(|d| d.next > 0)?;
        let after = d.after_bytes.max(1);
        if content_length? <= after {
            return None;
        }
        d.next -= 1;
        Some(after)
    }

    fn below(&self, n: u64) -> u64 {
        assert!(n > 0);
        self.rng.lock().expect("no panics holding the rng").u64(..n)
    }

    fn count(&self, route: &'static str) {
        *self.counters.requests.lock().expect("no panics holding the counters").entry(route).or_default() += 1;
    }

    pub(crate) fn stats(&self) -> DropboxStats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.counters;
        let requests = c
            .requests
            .lock()
            .expect("no panics holding the counters")
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let store = self.store();
        DropboxStats {
            requests,
            throttled: r(&c.throttled),
            write_throttled: r(&c.write_throttled),
            batch_entries_busy: r(&c.batch_entries_busy),
            server_errors: r(&c.server_errors),
            dropped_connections: r(&c.dropped),
            auth_rejected: r(&c.auth_rejected),
            // Acquire pairs with the slots' AcqRel updates.
            commits_in_flight: self.commits_in_flight.load(Ordering::Acquire),
            open_sessions: store.sessions.open(),
            session_bytes: store.sessions.held_bytes(),
            entries: store.ns.len(),
            used_bytes: store.ns.used_bytes(),
            bytes_received: r(&c.bytes_received),
            bytes_sent: r(&c.bytes_sent),
        }
    }

    fn error_response(&self, route: &str, err: &ApiError, serial: u64) -> Response<EmuBody> {
        let c = &self.counters;
        match err {
            ApiError::RateLimited { .. } => c.throttled.fetch_add(1, Ordering::Relaxed),
            ApiError::Server(_) => c.server_errors.fetch_add(1, Ordering::Relaxed),
            ApiError::Auth(_) => c.auth_rejected.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let a = error_answer(route, err, serial);
        let mut b = Response::builder().status(a.status).header(header::CONTENT_TYPE, a.content_type);
        for (k, v) in a.headers {
            b = b.header(k, v);
        }
        b.body(EmuBody::full(a.body)).expect("valid response parts")
    }

    fn commit_slot(&self) -> Result<CommitSlot<'_>, ApiError> {
        let f = self.faults();
        // AcqRel pairs with the decrement in CommitSlot::drop: the count is exact.
        let before = self.commits_in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = CommitSlot(&self.commits_in_flight);
        if f.commits_concurrent_max > 0 && before >= f.commits_concurrent_max {
            drop(slot);
            self.counters.write_throttled.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::RateLimited { reason: "too_many_write_operations", retry_after_s: f.retry_after_s });
        }
        Ok(slot)
    }
}

/// One of the namespace's concurrent commits, released on drop.
struct CommitSlot<'a>(&'a AtomicU32);

impl Drop for CommitSlot<'_> {
    fn drop(&mut self) {
        // AcqRel pairs with the increment in Shared::commit_slot.
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "a commit slot is released once");
    }
}

/// The error that makes hyper drop a connection.
#[derive(Debug)]
pub(crate) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped")
    }
}

impl std::error::Error for Dropped {}

enum Fail {
    Api(ApiError),
    /// Drop the connection (injected, or the client's body broke).
    Drop {
        injected: bool,
    },
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Fail {
        Fail::Api(e)
    }
}

/// Accepts connections on both listeners until `stop` fires.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    api: tokio::net::TcpListener,
    content: tokio::net::TcpListener,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(shared.opts.connections_max));
    let a = tokio::spawn(accept(shared.clone(), api, Host::Api, permits.clone()));
    let c = tokio::spawn(accept(shared, content, Host::Content, permits));
    let _ = stop.await;
    a.abort();
    c.abort();
}

async fn accept(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    host: Host,
    permits: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            // Out of descriptors or similar: keep serving the connections we have.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(Throttled::new(stream, shared.throughput.clone()));
            let svc = hyper::service::service_fn(move |req| handle(shared.clone(), host, req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            drop(permit);
        });
    }
}

async fn handle(shared: Arc<Shared>, host: Host, req: Request<Incoming>) -> Result<Response<EmuBody>, Dropped> {
    // Relaxed: only has to differ from call to call.
    let serial = shared.counters.serial.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    let mut resp = if host == Host::Api && path.starts_with("/_emulator/") {
        admin(&shared, &path["/_emulator/".len()..], req).await
    } else if host == Host::Api && path == "/oauth2/token" {
        shared.count("oauth2/token");
        oauth_token(&shared, req).await
    } else if host == Host::Api && path == "/oauth2/authorize" {
        shared.count("oauth2/authorize");
        oauth_authorize(&shared, &req)
    } else {
        match path.strip_prefix("/2/").and_then(routes::find) {
            None => {
                shared.count("unknown");
                drain(req.into_body(), &shared.counters.bytes_received).await;
                let name = path.strip_prefix("/2/").unwrap_or(&path);
                shared.error_response(name, &ApiError::UnknownRoute, serial)
            }
            Some(route) => {
                shared.count(route.name);
                match process(&shared, host, route, req).await {
                    Ok(r) => r,
                    Err(Fail::Api(e)) => shared.error_response(route.name, &e, serial),
                    Err(Fail::Drop { injected }) => {
                        if injected {
                            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        return Err(Dropped);
                    }
                }
            }
        }
    };
    let id = format!("{:032x}", u128::from(serial + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
    resp.headers_mut().insert("x-dropbox-request-id", id.parse().expect("hex is a valid header value"));
    Ok(resp)
}

async fn process(
    shared: &Shared,
    host: Host,
    route: &'static Route,
    req: Request<Incoming>,
) -> Result<Response<EmuBody>, Fail> {
    let (parts, body) = req.into_parts();
    let faults = shared.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if let Err(e) = precheck(shared, host, route, &parts, &faults) {
        drain(body, &shared.counters.bytes_received).await;
        return Err(Fail::Api(e));
    }
    match route.style {
        Style::Rpc => rpc(shared, route, &parts, body).await,
        Style::Upload => upload(shared, route, &parts, body, &faults).await,
        Style::Download => {
            drain(body, &shared.counters.bytes_received).await;
            download(shared, &parts, &faults)
        }
    }
}

fn host_name(h: Host) -> &'static str {
    match h {
        Host::Api => "api.dropboxapi.com",
        Host::Content => "content.dropboxapi.com",
    }
}

fn precheck(shared: &Shared, host: Host, route: &Route, parts: &Parts, faults: &Faults) -> Result<(), ApiError> {
    let method_ok = parts.method == Method::POST || (route.style == Style::Download && parts.method == Method::GET);
    if !method_ok {
        return Err(ApiError::BadInput(format!("Unsupported HTTP method {}", parts.method)));
    }
    if route.host() != host {
        return Err(ApiError::BadInput(format!(
            "Request sent to the wrong host: this function is served by {}, not {}",
            host_name(route.host()),
            host_name(host)
        )));
    }
    bearer(shared, parts)?;
    // Relaxed: a count, read on its own.
    let storm = shared.storm_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
    if storm || shared.chance(faults.too_many_requests_rate) {
        return Err(ApiError::RateLimited { reason: "too_many_requests", retry_after_s: faults.retry_after_s });
    }
    if shared.chance(faults.server_error_rate) {
        return Err(ApiError::Server(if shared.below(2) == 0 { 500 } else { 503 }));
    }
    path_root(shared, parts)
}

fn bearer(shared: &Shared, parts: &Parts) -> Result<(), ApiError> {
    let value = match parts.headers.get(header::AUTHORIZATION) {
        Some(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        None => query_param(&parts.uri, "authorization").ok_or_else(|| {
            ApiError::BadInput("Must provide HTTP header \"Authorization\" or URL parameter \"authorization\".".into())
        })?,
    };
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).ok_or_else(|| {
        ApiError::BadInput(format!(
            "Invalid authorization value in HTTP header \"Authorization\": \"{value}\".  Expecting \"Bearer <oauth2-access-token>\"."
        ))
    })?;
    shared.auth().check(token.trim()).map_err(ApiError::Auth)
}

fn path_root(shared: &Shared, parts: &Parts) -> Result<(), ApiError> {
    let Some(h) = parts.headers.get("dropbox-api-path-root") else { return Ok(()) };
    let bad = |m: &str| ApiError::BadInput(format!("HTTP header \"Dropbox-API-Path-Root\": {m}"));
    let v: Value = serde_json::from_slice(h.as_bytes()).map_err(|_| bad("could not decode input as JSON"))?;
    let ns = shared.ns_id.as_str();
    match v.get(".tag").and_then(Value::as_str) {
        Some("home") => Ok(()),
        Some("root") if v["root"] == ns => Ok(()),
        Some("root") => Err(ApiError::PathRoot(json!({
            ".tag": "invalid_root",
            "invalid_root": { ".tag": "user", "root_namespace_id": ns, "home_namespace_id": ns },
        }))),
        Some("namespace_id") if v["namespace_id"] == ns => Ok(()),
        Some("namespace_id") => Err(ApiError::PathRoot(json!({ ".tag": "no_permission" }))),
        _ => Err(bad("expected a PathRoot union (home, root, namespace_id)")),
    }
}

fn content_type(parts: &Parts) -> String {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        .unwrap_or_default()
}

fn bad_content_type(got: &str, allowed: &[&str]) -> ApiError {
    let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    ApiError::BadInput(format!("Bad HTTP \"Content-Type\" header: \"{got}\".  Expecting one of {}.", list.join(", ")))
}

fn json_response(v: &Value) -> Response<EmuBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(EmuBody::full(serde_json::to_vec(v).expect("JSON values serialise")))
        .expect("valid response parts")
}

async fn rpc(shared: &Shared, route: &Route, parts: &Parts, body: Incoming) -> Result<Response<EmuBody>, Fail> {
    let ct = content_type(parts);
    // A route without an argument may come with no body and so no Content-Type.
    let bare = route.void_arg && parts.headers.get(header::CONTENT_TYPE).is_none() && body.is_end_stream();
    if !bare && !RPC_CONTENT_TYPES.iter().any(|t| t.eq_ignore_ascii_case(&ct)) {
        drain(body, &shared.counters.bytes_received).await;
        return Err(bad_content_type(&ct, &RPC_CONTENT_TYPES).into());
    }
    let _slot = match route.commits.then(|| shared.commit_slot()).transpose() {
        Ok(s) => s,
        Err(e) => {
            drain(body, &shared.counters.bytes_received).await;
            return Err(e.into());
        }
    };
    let raw = match read_small(body, RPC_BODY_BYTES_MAX).await {
        Ok(b) => b,
        Err(ReadError::TooLarge) => return Err(ApiError::BadInput("request body: too large".into()).into()),
        Err(_) => return Err(Fail::Drop { injected: false }),
    };
    shared.counters.bytes_received.fetch_add(raw.len() as u64, Ordering::Relaxed);
    let arg: Value = if raw.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&raw).map_err(|_| ApiError::arg(ArgSource::Body, "could not decode input as JSON"))?
    };
    let answer = routes::rpc(shared, route, &arg)?;
    hold_commit(shared, route).await;
    Ok(json_response(&answer))
}

/// A commit keeps its slot `commit_hold_ms` after its work (see [`Faults`]).
async fn hold_commit(shared: &Shared, route: &Route) {
    let hold_ms = shared.faults().commit_hold_ms;
    if route.commits && hold_ms > 0 {
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
    }
}

/// A content route's argument: the `Dropbox-API-Arg` header, or the `arg` parameter.
fn content_arg(parts: &Parts) -> Result<(Value, ArgSource), ApiError> {
    if let Some(h) = parts.headers.get("dropbox-api-arg") {
        return Ok((parse_header_arg(h.as_bytes())?, ArgSource::Header));
    }
    if let Some(q) = query_param(&parts.uri, "arg") {
        let v =
            serde_json::from_str(&q).map_err(|_| ApiError::arg(ArgSource::Query, "could not decode input as JSON"))?;
        return Ok((v, ArgSource::Query));
    }
    Err(ApiError::BadInput("Must provide HTTP header \"Dropbox-API-Arg\" or URL parameter \"arg\".".into()))
}

async fn upload(
    shared: &Shared,
    route: &Route,
    parts: &Parts,
    body: Incoming,
    faults: &Faults,
) -> Result<Response<EmuBody>, Fail> {
    let ct = content_type(parts);
    let before_body = (|| {
        if !UPLOAD_CONTENT_TYPES.iter().any(|t| t.eq_ignore_ascii_case(&ct)) {
            return Err(bad_content_type(&ct, &UPLOAD_CONTENT_TYPES));
        }
        let (arg, source) = content_arg(parts)?;
        let slot = route.commits.then(|| shared.commit_slot()).transpose()?;
        let prepared = routes::upload_prepare(shared, route, &arg, source)?;
        Ok((slot, prepared))
    })();
    let (slot, (job, plan, want_call_hash)) = match before_body {
        Ok(x) => x,
        Err(e) => {
            drain(body, &shared.counters.bytes_received).await;
            return Err(e.into());
        }
    };
    let content_length = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let drop_at = shared.take_drop_upload(content_length).or_else(|| {
        shared.chance(faults.drop_upload_rate).then(|| match content_length {
            Some(n) if n > 1 => 1 + shared.below(n - 1),
            _ => 1,
        })
    });
    let mut hasher = BodyHasher::new(plan, want_call_hash);
    let data =
        match read_body(body, content_length, UPLOAD_BYTES_MAX, drop_at, &mut hasher, &shared.counters.bytes_received)
            .await
        {
            Ok(d) => d,
            Err(ReadError::TooLarge) => return Err(ApiError::tag("payload_too_large").into()),
            Err(ReadError::Dropped) => return Err(Fail::Drop { injected: true }),
            Err(ReadError::Broken) => return Err(Fail::Drop { injected: false }),
        };
    let out = routes::upload_complete(shared, job, hasher.finish(data))?;
    hold_commit(shared, route).await;
    drop(slot);
    Ok(json_response(&out))
}

fn download(shared: &Shared, parts: &Parts, faults: &Faults) -> Result<Response<EmuBody>, Fail> {
    let (arg, source) = content_arg(parts)?;
    let (meta, content) = routes::download(shared, &arg, source)?;
    let size = content.len();
    let range = parse_range(parts.headers.get(header::RANGE).and_then(|v| v.to_str().ok()), size)?;
    let (status, start, end) = match range {
        RangeSpec::Whole => (StatusCode::OK, 0, size),
        RangeSpec::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeSpec::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size }.into()),
    };
    let len = end - start;
    // At least one byte goes out, so the answer has begun: the cut is mid-body.
    let cut = (len > 1 && shared.chance(faults.drop_download_rate)).then(|| 1 + shared.below(len - 1));
    if cut.is_some() {
        shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("dropbox-api-result", ascii_json(&meta));
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1));
    }
    let body = EmuBody::chunks(content.slices(start, end), cut, Some(shared.counters.bytes_sent.clone()));
    Ok(b.body(body).expect("valid response parts"))
}

fn text(status: u16, body: impl Into<String>) -> Response<EmuBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(EmuBody::full(Bytes::from(body.into())))
        .expect("valid response parts")
}

fn json_status(status: u16, v: &Value) -> Response<EmuBody> {
    let mut r = json_response(v);
    *r.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    r
}

async fn oauth_token(shared: &Shared, req: Request<Incoming>) -> Response<EmuBody> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        drain(body, &shared.counters.bytes_received).await;
        return json_status(400, &json!({ "error": "invalid_request", "error_description": "POST required" }));
    }
    let basic = parts.headers.get(header::AUTHORIZATION).and_then(|v| {
        let v = v.to_str().ok()?.strip_prefix("Basic ")?;
        let raw = base64::engine::general_purpose::STANDARD.decode(v.trim()).ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (id, secret) = s.split_once(':')?;
        Some((form_value(id), form_value(secret)))
    });
    let raw = match read_small(body, SMALL_BODY_BYTES_MAX).await {
        Ok(b) => b,
        Err(_) => return json_status(400, &json!({ "error": "invalid_request", "error_description": "bad body" })),
    };
    let mut form: HashMap<String, String> =
        parts.uri.query().map(form_decode).unwrap_or_default().into_iter().collect();
    form.extend(form_decode(&String::from_utf8_lossy(&raw)));
    let lifetime = shared.token_lifetime();
    match shared.auth().token(&form, basic, lifetime) {
        Ok(v) => json_response(&v),
        Err(e) => json_status(e.status, &e.body),
    }
}

fn oauth_authorize(shared: &Shared, req: &Request<Incoming>) -> Response<EmuBody> {
    let q: HashMap<String, String> = req.uri().query().map(form_decode).unwrap_or_default().into_iter().collect();
    match shared.auth().authorize(&q) {
        Ok(a) => match a.redirect {
            Some(to) => Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, to)
                .body(EmuBody::empty())
                .expect("valid response parts"),
            None => text(200, a.code),
        },
        Err(m) => text(400, m),
    }
}

async fn admin(shared: &Shared, cmd: &str, req: Request<Incoming>) -> Response<EmuBody> {
    let method = req.method().clone();
    let raw = read_small(req.into_body(), SMALL_BODY_BYTES_MAX).await.unwrap_or_default();
    match (method, cmd) {
        (Method::GET, "stats") => json_response(&serde_json::to_value(shared.stats()).expect("stats serialise")),
        (Method::GET, "faults") => json_response(&serde_json::to_value(shared.faults()).expect("faults serialise")),
        (Method::POST, "faults") => {
            match serde_json::from_slice::<Faults>(&raw).map_err(|e| e.to_string()).and_then(|f| {
                f.validate()?;
                Ok(f)
            }) {
                Ok(f) => {
                    shared.set_faults(f.clone());
                    json_response(&serde_json::to_value(f).expect("faults serialise"))
                }
                Err(e) => text(400, format!("faults: {e}")),
            }
        }
        (Method::POST, "expire_tokens") => {
            shared.auth().expire_all();
            json_response(&json!({}))
        }
        (Method::POST, "expire_codes") => {
            shared.auth().expire_codes();
            json_response(&json!({}))
        }
        (Method::POST, "throttle") => {
            match serde_json::from_slice::<Value>(&raw).ok().and_then(|v| v["requests"].as_u64()) {
                Some(n) => {
                    shared.throttle_next(n);
                    json_response(&json!({ "requests": n }))
                }
                None => text(400, "throttle: expected {\"requests\": N}"),
            }
        }
        (Method::POST, "busy_batch_entries") => {
            match serde_json::from_slice::<Value>(&raw).ok().and_then(|v| v["entries"].as_u64()) {
                Some(n) => {
                    shared.busy_batch_entries_next(n);
                    json_response(&json!({ "entries": n }))
                }
                None => text(400, "busy_batch_entries: expected {\"entries\": N}"),
            }
        }
        (Method::POST, "access_token") => {
            let lifetime = shared.token_lifetime();
            let token = shared.auth().mint_access(lifetime);
            json_response(&json!({ "access_token": token, "expires_in": lifetime.as_secs() }))
        }
        _ => text(404, format!("no emulator control {cmd:?}")),
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs.
pub(crate) fn form_decode(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_value(k), form_value(v))
        })
        .collect()
}

fn form_value(s: &str) -> String {
    percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// Encodes one form value (space as `+`).
pub(crate) fn form_encode(s: &str) -> String {
    utf8_percent_encode(s, FORM).to_string().replace("%20", "+")
}

fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    uri.query().and_then(|q| form_decode(q).into_iter().find(|(k, _)| k == name).map(|(_, v)| v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_round_trip() {
        assert_eq!(
            form_decode("a=1&b=x+y%2Fz&c"),
            vec![("a".into(), "1".into()), ("b".into(), "x y/z".into()), ("c".into(), String::new())]
        );
        assert_eq!(form_encode("a b/ü"), "a+b%2F%C3%BC");
    }
}
