//! The HTTP control sidecar: the JSON API under `/v1`, probes, metrics and the
//! dashboard, on axum. It is not the byte path: every handler is a few lock-held
//! reads or a hand-off to a job's thread.
//!
//! Every error is JSON, `{"error": "..."}`, with the status saying whose fault it is:
//! 400 malformed JSON, 422 a well-formed request naming something wrong (unknown
//! field, unknown remote, bad URL, bad value), 401 a missing or wrong token, 404 an
//! unknown job or route, 405 a wrong method, 409 an action the job's state does not
//! allow (naming the state), 503 while shutting down. A client's mistake is never a 500.
//!
//! Before any route, one guard refuses what a browser could be tricked into sending
//! (CSRF, DNS rebinding) and what exceeds the listener's limits:
//! - a request whose `Origin` is not this appliance (`403`), or `Sec-Fetch-Site:
//!   cross-site`;
//! - without a token, a `Host` that is not a loopback name or the listen address
//!   (`403`): a page on another name that resolves to 127.0.0.1 cannot reach the API;
//! - a body that is not `Content-Type: application/json` (`415`); a POST with no body
//!   and no type (`curl -X POST .../pause`) is fine;
//! - more header fields or bytes than allowed (`431`), a body over the limit (`413`),
//!   a request slower than the request timeout (`408`), each naming the limit.
//!
//! With a token, every route but `/healthz` and the dashboard's page needs it; the page
//! holds no data (what it shows comes through the API, with the token the operator
//! pastes), and a browser cannot send a header on navigation. `/metrics` names jobs and
//! remotes, so it needs the token too unless `--metrics-public`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::jobs::{JobError, JobSpec, Jobs};
use crate::listen::Limits;

/// The OpenAPI document, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");
/// The dashboard, served at `/`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// What handlers share.
#[derive(Clone)]
pub struct App {
    /// The jobs and their engine.
    pub jobs: Arc<Jobs>,
    /// The bearer token, when the API requires one.
    pub token: Option<Arc<String>>,
    /// What the guard checks requests against.
    pub guard: Arc<Guard>,
}

/// What the guard in front of every route knows.
pub struct Guard {
    /// The listener's limits.
    pub limits: Limits,
    /// The address the API listens on (a `Host` naming its IP is this appliance).
    pub listen: SocketAddr,
    /// Whether `/metrics` is open without the token.
    pub metrics_public: bool,
}

/// An error answer.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The one place job errors become statuses.
impl From<JobError> for ApiError {
    fn from(e: JobError) -> ApiError {
        let status = match &e {
            JobError::NotFound(_) => StatusCode::NOT_FOUND,
            JobError::Conflict { .. } => StatusCode::CONFLICT,
            JobError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            JobError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// Parses a JSON body: 400 if it is not JSON, 422 if it is JSON of the wrong shape.
/// No body reads as `{}`; a body of whitespace alone is not JSON.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    let refused = |e: serde_json::Error| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}"))
            }
            Category::Data => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid request: {e}")),
        }
    };
    // serde also reads a struct from a JSON array (`[64]` as `{"transfers": 64}`); every
    // body the API takes is an object. (JSON's whitespace is these four bytes, not
    // `is_ascii_whitespace`, which takes a form feed too.)
    let is_space = |b: &&u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    if body.iter().find(|b| !is_space(b)) != Some(&b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(refused)?;
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid request: the body must be a JSON object"));
    }
    serde_json::from_slice(body).map_err(refused)
}

/// The router, with auth where it applies.
pub fn router(app: App) -> Router {
    let mut api = Router::new()
        .route("/readyz", get(readyz))
        .route("/v1/jobs", get(list_jobs).post(submit))
        .route("/v1/jobs/{id}", get(show).patch(patch))
        .route("/v1/jobs/{id}/pause", post(pause))
        .route("/v1/jobs/{id}/resume", post(resume))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/verify", post(verify))
        .route("/v1/workers", get(workers))
        .route("/v1/openapi.json", get(openapi));
    let mut open = Router::new().route("/", get(dashboard)).route("/healthz", get(healthz));
    if app.guard.metrics_public {
        open = open.route("/metrics", get(metrics));
    } else {
        api = api.route("/metrics", get(metrics));
    }
    let api = api.route_layer(axum::middleware::from_fn_with_state(app.clone(), require_token));
    open.merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::max(app.guard.limits.max_body_bytes))
        .with_state(app)
}

/// The checks before any route (see the module's docs).
async fn guard(State(app): State<App>, request: Request, next: Next) -> Response {
    let limits = app.guard.limits;
    if let Err(e) = screen(&app, &request) {
        return e.into_response();
    }
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request was not complete within {} (the control API's request timeout)",
                humantime::format_duration(limits.request_timeout)
            ),
        )
        .into_response(),
    }
}

/// The guard's checks on a request's head.
fn screen(app: &App, request: &Request) -> Result<(), ApiError> {
    let limits = app.guard.limits;
    let headers = request.headers();
    if headers.len() > limits.max_headers {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request has {} header fields; the control API allows {}", headers.len(), limits.max_headers),
        ));
    }
    let header_bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if header_bytes > limits.max_header_bytes {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request's header fields are {header_bytes} bytes; the control API allows {}",
                limits.max_header_bytes
            ),
        ));
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if app.token.is_none() {
        if let Some(host) = host.filter(|h| !is_local_host(h, app.guard.listen)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Host {host:?} is not this appliance: without a token the API answers only requests to \
                     {} or a loopback name such as localhost (a guard against DNS rebinding); \
                     give --token-file to serve other names",
                    app.guard.listen
                ),
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        if host.is_none_or(|h| !authority.eq_ignore_ascii_case(h)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("cross-origin requests are refused (Origin {origin:?}); use the dashboard this appliance serves, or a client that is not a browser"),
            ));
        }
    }
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross-site requests are refused (Sec-Fetch-Site: cross-site)",
        ));
    }
    if matches!(*request.method(), Method::POST | Method::PATCH | Method::PUT | Method::DELETE) {
        let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("?"));
        let has_body = headers.contains_key(header::TRANSFER_ENCODING)
            || headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() != "0");
        let json = content_type
            .is_some_and(|t| t.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"));
        if !json && (content_type.is_some() || has_body) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "the body must be JSON sent as Content-Type: application/json (got {}); with curl, use --json",
                    content_type.map_or("no Content-Type".to_string(), |t| format!("{t:?}"))
                ),
            ));
        }
    }
    Ok(())
}

/// Whether a `Host` header names this appliance on loopback: `localhost` (or a name
/// under it), a loopback IP, or the listen address's IP.
fn is_local_host(host: &str, listen: SocketAddr) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(ip, _)| ip)
    } else {
        host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(n, _)| n)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip == listen.ip())
}

/// Turns any error answer that is not JSON yet (axum's own rejections: a path that is
/// not UTF-8, a body over the size limit) into `{"error": "..."}`.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("the request body is over the control API's limit of {} bytes", crate::listen::MAX_BODY_BYTES)
    } else if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text.trim().to_string()
    };
    ApiError::new(status, message).into_response()
}

/// Checks `Authorization: Bearer <token>` in constant time, when a token is set.
async fn require_token(State(app): State<App>, request: Request, next: Next) -> Response {
    if let Some(token) = &app.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|g| {
            use subtle::ConstantTimeEq;
            bool::from(g.as_bytes().ct_eq(token.as_bytes()))
        });
        if !ok {
            let why = if given.is_none() {
                "this endpoint needs Authorization: Bearer <token> (the token in the appliance's --token-file)"
            } else {
                "the bearer token is wrong"
            };
            return ApiError::new(StatusCode::UNAUTHORIZED, why).into_response();
        }
    }
    next.run(request).await
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route for {method} {}; see GET /v1/openapi.json", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}; see GET /v1/openapi.json", uri.path()),
    )
}

async fn dashboard() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], DASHBOARD).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") })).into_response()
}

async fn readyz(State(app): State<App>) -> Response {
    let engine = app.jobs.engine();
    let ready = engine.ready() && !app.jobs.closing();
    let body = json!({
        "ready": ready,
        "workers": engine.workers().len(),
        "driver": engine.driver().to_string(),
        "config_loaded": true,
        "shutting_down": app.jobs.closing(),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::render(&app.jobs))
        .into_response()
}

async fn list_jobs(State(app): State<App>) -> ApiResult {
    let jobs: Vec<_> = app.jobs.list().iter().map(|j| j.view()).collect();
    Ok(axum::Json(json!({ "jobs": jobs })).into_response())
}

async fn submit(State(app): State<App>, body: Bytes) -> ApiResult {
    let spec: JobSpec = parse(&body)?;
    let job = app.jobs.submit(spec)?;
    let location = format!("/v1/jobs/{}", job.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], axum::Json(job.view())).into_response())
}

async fn show(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    Ok(axum::Json(app.jobs.get(&id)?.view()).into_response())
}

async fn patch(State(app): State<App>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    app.jobs.get(&id)?;
    let scale: crate::jobs::Scale = parse(&body)?;
    Ok(axum::Json(app.jobs.scale(&id, &scale)?.view()).into_response())
}

async fn pause(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    Ok(axum::Json(app.jobs.pause(&id)?.view()).into_response())
}

async fn resume(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    Ok(axum::Json(app.jobs.resume(&id)?.view()).into_response())
}

async fn cancel(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    Ok(axum::Json(app.jobs.cancel(&id)?.view()).into_response())
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    #[serde(default)]
    download: bool,
}

async fn verify(State(app): State<App>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    app.jobs.get(&id)?;
    let req: VerifyRequest = parse(&body)?;
    let job = app.jobs.verify(&id, req.download)?;
    Ok((StatusCode::ACCEPTED, axum::Json(job.view())).into_response())
}

async fn workers(State(app): State<App>) -> ApiResult {
    let workers: Vec<_> = app
        .jobs
        .engine()
        .workers()
        .iter()
        .map(|w| {
            use std::sync::atomic::Ordering::Relaxed;
            json!({
                "index": w.index,
                "cpu": w.cpu,
                "driver": w.driver().map(|d| d.to_string()),
                "cpu_seconds": w.cpu_seconds(),
                "ram_buffer_bytes": w.pool_bytes(),
                "ram_buffer_bytes_in_use": w.pool_bytes_in_use(),
                "objects_in_flight": w.objects_in_flight.load(Relaxed),
                "parts_in_flight": w.parts_in_flight.load(Relaxed),
                "bytes_relayed": w.shard.bytes_written.load(Relaxed),
            })
        })
        .collect();
    // The NVMe stage is the engine's, shared by its workers (null: none configured).
    let stage = app.jobs.engine().stage().map(|s| {
        json!({
            "bytes_in_use": s.used_bytes(),
            "quota_bytes": s.quota_bytes(),
            "bytes_written": s.bytes_written.load(std::sync::atomic::Ordering::Relaxed),
            "bytes_read": s.bytes_read.load(std::sync::atomic::Ordering::Relaxed),
        })
    });
    Ok(axum::Json(json!({ "workers": workers, "stage": stage })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        n: u32,
    }

    fn parsed(body: &str) -> Result<u32, StatusCode> {
        parse::<Body>(&Bytes::from(body.to_string())).map(|b| b.n).map_err(|e| e.status)
    }

    #[test]
    fn a_body_is_a_json_object_or_nothing() {
        const BAD: StatusCode = StatusCode::BAD_REQUEST;
        const UNPROCESSABLE: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;
        assert_eq!(parsed(""), Ok(0));
        assert_eq!(parsed(" {\"n\": 3}\r\n"), Ok(3));
        assert_eq!(parsed("[3]"), Err(UNPROCESSABLE), "serde alone reads it as {{\"n\": 3}}");
        assert_eq!(parsed("[]"), Err(UNPROCESSABLE));
        assert_eq!(parsed("null"), Err(UNPROCESSABLE));
        assert_eq!(parsed("{\"m\": 1}"), Err(UNPROCESSABLE));
        assert_eq!(parsed(" \r\n\t"), Err(BAD), "whitespace alone is not JSON");
        assert_eq!(parsed("\x0c{}"), Err(BAD), "a form feed is not JSON's whitespace");
        assert_eq!(parsed("[1,"), Err(BAD));
        assert_eq!(parsed("{\"n\": 3"), Err(BAD));
    }
}
