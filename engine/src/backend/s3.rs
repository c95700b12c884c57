//! S3-compatible stores.
//!
//! Requests are signed with SigV4 (`aws-sigv4`) over `UNSIGNED-PAYLOAD`: hashing the
//! payload with SHA-256 would cost more CPU than the whole relay. Integrity comes
//! instead from an `x-amz-checksum-*` header (CRC32C by default) that the store
//! verifies, and from checking the ETag (MD5) the store returns when MD5 is computed.
//! Path-style and virtual-hosted-style addressing are both supported; listings use
//! ListObjectsV2 with `encoding-type=url` so any key survives the XML round trip.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

mod account;
mod composite;
mod config;
mod upload;

pub use account::{buckets, Bucket};
pub use config::{account, from_env, split_bucket, S3RemoteConfig, TYPE};

use super::{
    Backend, Capabilities, CopySource, Entry, HashFamily, ListOrder, ListPage, LocalFuture, MetaSupport, ObjectInfo,
    ObjectMeta, PartLimits, PutArgs, Session, SessionState, Sink, Source, Store, UploadMode, UploadPlan, WorkerCtx,
};
use crate::checksum::{Checksum, ChecksumAlgo, Composite, Hashers};
use crate::error::{Error, ErrorClass, Result};
use crate::http::{Endpoint, HttpClient, Request, RequestBody, Response};
use crate::pool::ring::Filler;
use crate::pool::Body;

/// Characters S3 leaves unencoded in a path: unreserved plus `/`.
const PATH_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');
/// Characters left unencoded in a query value: unreserved only.
const QUERY_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

const META_PREFIX: &str = "x-amz-meta-";
const MTIME_META: &str = "mtime";
const PROVENANCE_META: &str = "laminar-provenance";
/// The metadata rclone keeps a file's MD5 in (base64), where the ETag is not its MD5.
const RCLONE_MD5_META: &str = "md5chksum";

/// How to reach one bucket.
#[derive(Clone)]
pub struct S3Config {
    /// Remote name for messages (`src`, or `s3` for the environment).
    pub remote: String,
    /// Endpoint URL.
    pub endpoint: Endpoint,
    /// Signing region.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key; never printed.
    pub secret_access_key: String,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
    /// Bucket name.
    pub bucket: String,
    /// Path-style (`host/bucket/key`) rather than virtual-hosted (`bucket.host/key`).
    pub path_style: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("remote", &self.remote)
            .field("endpoint", &self.endpoint.url())
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

/// A configured bucket; each worker opens its own [`S3Store`].
pub struct S3Backend {
    cfg: Arc<S3Config>,
}

impl S3Backend {
    /// A backend for one bucket.
    pub fn new(cfg: S3Config) -> S3Backend {
        S3Backend { cfg: Arc::new(cfg) }
    }
}

impl Backend for S3Backend {
    fn open_source(&self, ctx: &WorkerCtx) -> Result<Rc<dyn Source>> {
        Ok(Rc::new(S3Store::new(self.cfg.clone(), ctx.http.clone())))
    }

    fn open_sink(&self, ctx: &WorkerCtx) -> Result<Rc<dyn Sink>> {
        Ok(Rc::new(S3Store::new(self.cfg.clone(), ctx.http.clone())))
    }
}

/// What S3 can do.
const CAPABILITIES: Capabilities = Capabilities {
    upload: UploadMode::Parallel,
    parts: PartLimits {
        min_part_bytes: 5 << 20,
        max_part_bytes: 5 << 30,
        max_parts: 10_000,
        part_alignment_bytes: 1,
        max_single_put_bytes: 5 << 30,
    },
    list_order: ListOrder::Sorted,
    case_sensitive: true,
    reports: &[HashFamily::EtagMd5, HashFamily::Crc32c, HashFamily::Crc64nvme, HashFamily::Sha256],
    verifies: &[
        ChecksumAlgo::Crc32c,
        ChecksumAlgo::Crc64nvme,
        ChecksumAlgo::Sha1,
        ChecksumAlgo::Sha256,
        ChecksumAlgo::Md5,
    ],
    // The MD5 of a single put is checked against its plain-MD5 ETag: the relay counts
    // that through `reports` (EtagMd5).
    checks_after_upload: &[],
    part_streams_per_worker: 0,
    objects_per_s_at_start: 0.0,
    server_side_copy: true,
    metadata: MetaSupport { content_headers: true, user: true, mtime: true },
};

/// What the relay should do about an S3 error answer.
fn classify(status: u16, code: &str) -> ErrorClass {
    match (status, code) {
        (429 | 503, _) | (_, "SlowDown") => ErrorClass::Throttled,
        (_, "RequestTimeout") | (408, _) => ErrorClass::Retryable,
        (s, _) if s >= 500 => ErrorClass::Retryable,
        (401 | 403, _) | (_, "NoSuchBucket" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => ErrorClass::FatalRelay,
        (409 | 412, _) | (_, "PreconditionFailed" | "OperationAborted") => ErrorClass::Conflict,
        _ => ErrorClass::FatalObject,
    }
}

/// One worker's handle on a bucket.
pub struct S3Store {
    cfg: Arc<S3Config>,
    http: HttpClient,
    endpoint: Endpoint,
    /// Set when the store refused a streamed (`aws-chunked` with trailer) part: later
    /// parts from this worker are sent whole.
    streaming_refused: std::cell::Cell<bool>,
    credentials: aws_smithy_runtime_api::client::identity::Identity,
}

struct Call<'a> {
    method: &'static str,
    key: Option<&'a str>,
    query: Vec<(&'static str, String)>,
    headers: Vec<(String, String)>,
    op: &'static str,
    target: &'a str,
}

/// Signs requests the way an S3 remote does, without a connection: for programs that
/// speak S3 themselves (the benchmarks' bare relay) and for measuring what signing
/// costs.
pub struct RequestSigner(S3Store);

impl RequestSigner {
    /// A signer for the bucket and credentials of `cfg`.
    pub fn new(cfg: S3Config) -> RequestSigner {
        RequestSigner(S3Store::new(Arc::new(cfg), HttpClient::default()))
    }

    /// A signer with throwaway credentials for bucket `bkt` at a loopback endpoint.
    pub fn sample() -> RequestSigner {
        RequestSigner::new(S3Config {
            remote: "sample".into(),
            endpoint: Endpoint::parse("http://127.0.0.1:9000").expect("valid URL"),
            region: "us-east-1".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
            bucket: "bkt".into(),
            path_style: true,
        })
    }

    /// The request target (path and query, percent-encoded) of `key` in the bucket, and
    /// `headers` with the signature headers added; the payload goes unsigned
    /// (`UNSIGNED-PAYLOAD`).
    pub fn sign(
        &self,
        method: &str,
        key: Option<&str>,
        query: &[(&'static str, String)],
        mut headers: Vec<(String, String)>,
    ) -> Result<(String, Vec<(String, String)>)> {
        let path = self.0.path(key, query);
        self.0.sign(method, &path, &mut headers, SignableBody::UnsignedPayload)?;
        Ok((path, headers))
    }

    /// Signs an UploadPart of `key` carrying a CRC32C header; returns the headers sent.
    pub fn sign_upload_part(&self, key: &str) -> Result<Vec<(String, String)>> {
        let query = vec![("partNumber", "7".to_string()), ("uploadId", "2~abcdefghijklmnop".to_string())];
        let headers = vec![("x-amz-checksum-crc32c".to_string(), "yZRlqg==".to_string())];
        Ok(self.sign("PUT", Some(key), &query, headers)?.1)
    }
}

/// The payload hash of a streamed body whose checksum comes in a trailer.
const STREAMING_PAYLOAD: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";

impl S3Store {
    fn new(cfg: Arc<S3Config>, http: HttpClient) -> S3Store {
        // No bucket: the account itself (ListBuckets), at the endpoint.
        let endpoint = if cfg.path_style || cfg.bucket.is_empty() {
            cfg.endpoint.clone()
        } else {
            cfg.endpoint.with_host(format!("{}.{}", cfg.bucket, cfg.endpoint.host))
        };
        let credentials = Credentials::new(
            cfg.access_key_id.clone(),
            cfg.secret_access_key.clone(),
            cfg.session_token.clone(),
            None,
            "laminar",
        )
        .into();
        S3Store { cfg, http, endpoint, credentials, streaming_refused: std::cell::Cell::new(false) }
    }

    fn path(&self, key: Option<&str>, query: &[(&'static str, String)]) -> String {
        let mut path = String::with_capacity(64);
        if self.cfg.path_style {
            path.push('/');
            path.push_str(&utf8_percent_encode(&self.cfg.bucket, QUERY_SET).to_string());
        }
        match key {
            Some(key) => {
                path.push('/');
                path.extend(utf8_percent_encode(key, PATH_SET));
            }
            None if path.is_empty() => path.push('/'),
            None => {}
        }
        for (i, (name, value)) in query.iter().enumerate() {
            path.push(if i == 0 { '?' } else { '&' });
            path.push_str(name);
            if !value.is_empty() || !matches!(*name, "uploads") {
                path.push('=');
                path.extend(utf8_percent_encode(value, QUERY_SET));
            }
        }
        path
    }

    fn sign(&self, method: &str, path: &str, headers: &mut Vec<(String, String)>, payload: SignableBody) -> Result<()> {
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&self.credentials)
            .region(&self.cfg.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| Error::Usage(format!("cannot sign requests for remote {}: {e}", self.cfg.remote)))?
            .into();
        let url = format!("{}{}", self.endpoint.url(), path);
        let authority = self.endpoint.authority();
        let signable = SignableRequest::new(
            method,
            url,
            std::iter::once(("host", authority.as_str())).chain(headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
            payload,
        )
        .map_err(|e| Error::Usage(format!("cannot sign a request for remote {}: {e}", self.cfg.remote)))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| Error::Usage(format!("cannot sign a request for remote {}: {e}", self.cfg.remote)))?
            .into_parts();
        for (name, value) in instructions.headers() {
            headers.push((name.to_string(), value.to_string()));
        }
        Ok(())
    }

    async fn call(&self, call: Call<'_>, body: RequestBody) -> Result<(Response, RequestBody)> {
        let path = self.path(call.key, &call.query);
        let mut headers = call.headers;
        let payload = match body {
            RequestBody::Stream(_) => SignableBody::Precomputed(STREAMING_PAYLOAD.to_string()),
            _ => SignableBody::UnsignedPayload,
        };
        self.sign(call.method, &path, &mut headers, payload)?;
        let req = Request { method: call.method, path: &path, headers, op: call.op, target: call.target };
        self.http.send(&self.endpoint, &req, body).await
    }

    /// Sends a call with a small body and reads the whole response; maps error statuses.
    async fn call_small(&self, call: Call<'_>, body: Vec<u8>) -> Result<(crate::http::ResponseHead, Vec<u8>)> {
        let op = call.op;
        let target = call.target.to_string();
        let body = if body.is_empty() { RequestBody::Empty } else { RequestBody::Bytes(body) };
        let (response, _) = self.call(call, body).await?;
        let head = response.head.clone();
        let bytes = response.read_to_vec().await?;
        if head.status >= 300 {
            return Err(self.http_error(op, &target, &head, &bytes));
        }
        Ok((head, bytes))
    }

    fn http_error(&self, op: &'static str, target: &str, head: &crate::http::ResponseHead, body: &[u8]) -> Error {
        let parsed: Option<ErrorXml> = quick_xml::de::from_reader(body).ok();
        // What the server says is shown in one line, whatever it says.
        let (code, message) = match parsed {
            Some(e) => {
                let message = e.message.map(|m| crate::error::one_line(&m, MESSAGE_CHARS_MAX));
                let message = message.filter(|m| !m.is_empty()).unwrap_or_else(|| head.status_text());
                (e.code, message)
            }
            None => (default_code(head.status).to_string(), no_error_document(head, body)),
        };
        let remote = &self.cfg.remote;
        let hint = match (head.status, code.as_str()) {
            (_, "NoSuchBucket") => format!(
                "; bucket {:?} does not exist at {}: create it or fix the URL",
                self.cfg.bucket,
                self.cfg.endpoint.url()
            ),
            (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch") | (401, _) => {
                format!("; check access_key_id and secret_access_key of remote {remote:?}")
            }
            (403, _) => format!("; the credentials of remote {remote:?} are not allowed to do this"),
            (301, _) | (_, "PermanentRedirect" | "AuthorizationHeaderMalformed") => {
                format!("; check the region of remote {remote:?}")
            }
            _ => String::new(),
        };
        let retry_after =
            head.header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
        let class = classify(head.status, &code);
        let code = crate::error::one_line(&code, MESSAGE_CHARS_MAX);
        Error::Http { op, target: target.to_string(), status: head.status, code, message, hint, retry_after, class }
    }

    /// CompleteMultipartUpload and CopyObject may answer 200 with an error document:
    /// the request failed all the same.
    fn error_in_ok_body(
        &self,
        op: &'static str,
        key: &str,
        head: &crate::http::ResponseHead,
        body: &[u8],
    ) -> Result<()> {
        if quick_xml::de::from_reader::<_, ErrorXml>(body).is_ok() {
            let failed = crate::http::ResponseHead { status: 500, headers: head.headers.clone() };
            return Err(self.http_error(op, key, &failed, body));
        }
        Ok(())
    }

    fn meta_headers(&self, args: &PutArgs, headers: &mut Vec<(String, String)>) {
        let meta = &args.meta;
        for (name, value) in [
            ("content-type", &meta.content_type),
            ("content-encoding", &meta.content_encoding),
            ("content-disposition", &meta.content_disposition),
            ("cache-control", &meta.cache_control),
        ] {
            if let Some(value) = value {
                headers.push((name.to_string(), value.clone()));
            }
        }
        for (name, value) in &meta.user {
            headers.push((format!("{META_PREFIX}{name}"), value.clone()));
        }
        if let Some(mtime) = meta.mtime_string() {
            headers.push((format!("{META_PREFIX}{MTIME_META}"), mtime));
        }
        if let Some(p) = &args.provenance {
            headers.push((format!("{META_PREFIX}{PROVENANCE_META}"), p.clone()));
        }
    }

    fn checksum_headers(checksum: &Checksum, headers: &mut Vec<(String, String)>) {
        // A checksum S3 has no header for (Dropbox's content_hash) is not sent.
        if let Some(header) = checksum.algo.s3_header() {
            headers.push((header.to_string(), checksum.to_base64()));
        }
    }

    async fn list_page(&self, prefix: &str, token: Option<String>) -> Result<ListPage> {
        let mut query = vec![("list-type", "2".to_string())];
        if let Some(token) = token {
            query.push(("continuation-token", token));
        }
        query.push(("encoding-type", "url".to_string()));
        query.push(("max-keys", "1000".to_string()));
        query.push(("prefix", prefix.to_string()));
        let target = format!("{}/{}", self.cfg.bucket, prefix);
        let call = Call { method: "GET", key: None, query, headers: Vec::new(), op: "list", target: &target };
        let (_, body) = self.call_small(call, Vec::new()).await?;
        let parsed = parse_list(&body).map_err(|e| {
            let e = crate::error::one_line(&e, MESSAGE_CHARS_MAX);
            Error::protocol("list", &target, format!("unreadable ListObjectsV2 response: {e}"))
        })?;
        let url_encoded = parsed.encoding_type.as_deref() == Some("url");
        let decode = |s: String| -> String {
            if url_encoded {
                // Form-style, as S3 writes it: '+' is a space, a real '+' is %2B.
                percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
            } else {
                s
            }
        };
        let mut entries: Vec<Entry> = parsed
            .contents
            .into_iter()
            .map(|c| Entry {
                key: decode(c.key),
                size: c.size,
                etag: c.etag.map(|e| e.trim_matches('"').to_string()),
                modified_unix_ms: c.last_modified.as_deref().and_then(super::rfc3339::parse_unix_ms),
                ..Entry::default()
            })
            .collect();
        // Stores should list in byte order; enforce it within a page so the merge-join
        // never sees a step back from a store that orders otherwise.
        if !entries.windows(2).all(|w| w[0].key < w[1].key) {
            entries.sort_by(|a, b| a.key.cmp(&b.key));
        }
        let next = if parsed.is_truncated.unwrap_or(false) { parsed.next_continuation_token } else { None };
        Ok(ListPage { entries, next, left_out: Vec::new() })
    }
}

fn default_code(status: u16) -> &'static str {
    match status {
        301 => "PermanentRedirect",
        400 => "BadRequest",
        403 => "AccessDenied",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        408 => "RequestTimeout",
        409 => "Conflict",
        412 => "PreconditionFailed",
        416 => "InvalidRange",
        429 => "TooManyRequests",
        500 => "InternalError",
        501 => "NotImplemented",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "Error",
    }
}

/// Most characters shown of what a server says in an error (its `Code`, its
/// `Message`, why its listing is unreadable).
const MESSAGE_CHARS_MAX: usize = 300;

/// What an error response said when it carried no S3 error document, in one line:
/// the start of its body if it had one (a proxy's HTML page, say).
fn no_error_document(head: &crate::http::ResponseHead, body: &[u8]) -> String {
    const QUOTED_CHARS_MAX: usize = 120;
    if body.is_empty() {
        return "the response carried no S3 error document".to_string();
    }
    let quoted = crate::error::one_line(&String::from_utf8_lossy(body), QUOTED_CHARS_MAX);
    let kind = head.header("content-type").map(|t| format!(" of {t}")).unwrap_or_default();
    format!("the response body ({} bytes{kind}) is no S3 error document: {quoted:?}", body.len())
}

/// Checks the head of the answer to a GET of `range` (end exclusive), before its body
/// is read: the body must hold exactly those bytes, or none of them is used. Returns
/// whether they are the whole object, so that checksums in the head describe them.
///
/// Servers differ. S3 and SeaweedFS answer 206 with the Content-Range sent.
/// `rclone serve s3` (gofakes3) answers 200 with the same Content-Range and body, so a
/// Content-Range equal to the range asked for is taken with either status. A
/// server that ignores Range answers 200 with the whole object and no Content-Range:
/// right only when the range covers the object, an error otherwise (reading past the
/// unwanted bytes would cost a whole object per part).
fn check_range_answer(key: &str, range: (u64, u64), head: &crate::http::ResponseHead) -> Result<bool> {
    let (start, end) = range;
    assert!(end > start, "empty range");
    let want = end - start;
    let asked = format!("bytes={start}-{}", end - 1);
    let status = head.status_text();
    let len = head.content_length();
    let sent = match len {
        Some(n) => format!("{n} bytes"),
        None => "a body of unknown length".to_string(),
    };
    let fail = |detail: String| Err(Error::protocol("get", format!("{key} {asked}"), detail));
    if head.status != 200 && head.status != 206 {
        return fail(format!("expected 206 Partial Content, the server answered {status} with {sent}"));
    }
    match head.content_range() {
        Some(Ok(got)) => {
            if (got.first, got.last) != (start, end - 1) {
                let total = got.total.map_or("*".to_string(), |t| t.to_string());
                return fail(format!(
                    "the server answered {status} with bytes {}-{}/{total}, not the bytes asked for; \
                     the object may have changed during the relay: run it again",
                    got.first, got.last
                ));
            }
            if len != Some(want) {
                return fail(format!("expected {want} bytes, the server answered {status} with {sent}"));
            }
            Ok(start == 0 && got.total == Some(end))
        }
        Some(Err(raw)) => {
            fail(format!("the server answered {status} with Content-Range {raw:?}, which names no bytes it sent"))
        }
        // A 206 without Content-Range breaks RFC 9110, but its length says it holds the
        // part (as this client has always taken it).
        None if head.status == 206 && len == Some(want) => Ok(false),
        None if head.status == 206 => fail(format!("expected {want} bytes, the server answered {status} with {sent}")),
        // The whole object, which is the range asked for only when it starts at 0 and
        // is as long as the range.
        None if start == 0 && len == Some(want) => Ok(true),
        None => match len {
            Some(n) if n > want => fail(format!(
                "expected 206 Partial Content, the server answered {status} with {sent} and no Content-Range: \
                 it ignores Range and sent the whole object; raise --multipart-cutoff (and --ram-buffer) \
                 above {n} bytes so that objects this large are read in one GET"
            )),
            _ => fail(format!(
                "expected 206 Partial Content, the server answered {status} with {sent} and no Content-Range; \
                 the object may have changed during the relay: run it again"
            )),
        },
    }
}

/// Reads object metadata from response headers.
fn info_from_head(head: &crate::http::ResponseHead) -> ObjectInfo {
    let size = match head.header("content-range").and_then(|v| v.rsplit('/').next()).and_then(|v| v.parse().ok()) {
        Some(total) => total,
        None => head.content_length().unwrap_or(0),
    };
    let mut info = ObjectInfo { size, ..ObjectInfo::default() };
    info.etag = head.header("etag").map(|e| e.trim_matches('"').to_string());
    info.meta.content_type = head.header("content-type").map(str::to_string);
    info.meta.content_encoding = head.header("content-encoding").and_then(content_encoding);
    info.meta.content_disposition = head.header("content-disposition").map(str::to_string);
    info.meta.cache_control = head.header("cache-control").map(str::to_string);
    let composite = head.header("x-amz-checksum-type").is_some_and(|t| t.eq_ignore_ascii_case("COMPOSITE"));
    for (name, value) in &head.headers {
        if let Some(user) = name.strip_prefix(META_PREFIX) {
            match user {
                MTIME_META => info.meta.mtime = ObjectMeta::parse_mtime(value),
                // rclone's whole-file MD5, kept for objects it uploads in parts (and
                // kept on as user metadata: the bytes relayed are the same).
                RCLONE_MD5_META => {
                    info.checksums
                        .extend(Checksum::from_base64(ChecksumAlgo::Md5, value).filter(|c| c.bytes.len() == 16));
                    info.meta.user.push((user.to_string(), value.clone()));
                }
                PROVENANCE_META => info.provenance = Some(value.clone()),
                _ => info.meta.user.push((user.to_string(), value.clone())),
            }
        } else if let Some(algo) = name.strip_prefix("x-amz-checksum-").and_then(ChecksumAlgo::parse) {
            // A composite checksum ("...-N") covers parts, not the object.
            if !composite && !value.contains('-') {
                info.checksums.extend(Checksum::from_base64(algo, value));
            } else if composite && Composite::checksum_parts(value).is_some() {
                info.composite_checksum = Some((algo, value.trim().to_string()));
            }
        }
    }
    info
}

/// Content-Encoding without `aws-chunked`, which describes a request's framing, not the
/// object (some stores keep it anyway).
fn content_encoding(value: &str) -> Option<String> {
    let kept: Vec<&str> =
        value.split(',').map(str::trim).filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("aws-chunked")).collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorXml {
    code: String,
    message: Option<String>,
}

/// What a ListObjectsV2 answer says (of what the relay reads).
#[derive(Default)]
struct ListXml {
    is_truncated: Option<bool>,
    next_continuation_token: Option<String>,
    encoding_type: Option<String>,
    contents: Vec<ContentsXml>,
}

/// One `Contents` of a listing.
struct ContentsXml {
    key: String,
    size: u64,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// The fields of a `Contents` read so far.
#[derive(Default)]
struct ContentsFields {
    key: Option<String>,
    size: Option<u64>,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// Reads a ListObjectsV2 answer, on quick-xml's reader rather than its serde
/// deserializer, which trims element text: a key's whitespace at either end is part
/// of it where the server sends keys as XML text (not every S3-compatible server
/// honours `encoding-type=url`). So `Key` and `NextContinuationToken` are taken as
/// sent; a number, a boolean, `ETag` and `EncodingType` may have whitespace around.
/// Elements are matched by local name below the root, whatever it is called; others
/// are skipped.
fn parse_list(body: &[u8]) -> std::result::Result<ListXml, String> {
    use quick_xml::events::Event;
    /// An element whose text is read.
    #[derive(Clone, Copy)]
    enum Leaf {
        IsTruncated,
        NextContinuationToken,
        EncodingType,
        Key,
        Size,
        ETag,
        LastModified,
    }
    let leaf = |depth: usize, in_contents: bool, name: &[u8]| match (depth, in_contents, name) {
        (2, _, b"IsTruncated") => Some(Leaf::IsTruncated),
        (2, _, b"NextContinuationToken") => Some(Leaf::NextContinuationToken),
        (2, _, b"EncodingType") => Some(Leaf::EncodingType),
        (3, true, b"Key") => Some(Leaf::Key),
        (3, true, b"Size") => Some(Leaf::Size),
        (3, true, b"ETag") => Some(Leaf::ETag),
        (3, true, b"LastModified") => Some(Leaf::LastModified),
        _ => None,
    };
    let mut reader = quick_xml::Reader::from_reader(body);
    reader.config_mut().trim_text(false);
    let mut list = ListXml::default();
    // Elements open (the root is at depth 1), the `Contents` open (its fields so
    // far), and the leaf whose text is being read, with its depth.
    let mut depth = 0usize;
    let mut contents: Option<ContentsFields> = None;
    let mut reading: Option<(Leaf, usize, String)> = None;
    loop {
        let event = reader.read_event().map_err(|e| format!("{e} at byte {}", reader.error_position()))?;
        let (name, closes) = match &event {
            Event::Start(e) => (Some(e.local_name()), false),
            Event::Empty(e) => (Some(e.local_name()), true),
            Event::End(_) => (None, true),
            Event::Text(t) => {
                if let Some((.., text)) = reading.as_mut().filter(|(_, at, _)| *at == depth) {
                    text.push_str(&t.unescape().map_err(|e| e.to_string())?);
                }
                continue;
            }
            Event::CData(t) => {
                if let Some((.., text)) = reading.as_mut().filter(|(_, at, _)| *at == depth) {
                    text.push_str(&t.decode().map_err(|e| e.to_string())?);
                }
                continue;
            }
            Event::Eof if depth == 0 => return Err("no root element".into()),
            Event::Eof => return Err("the document ends inside an element".into()),
            _ => continue,
        };
        if let Some(name) = name {
            depth += 1;
            let name = name.as_ref();
            if depth == 2 && name == b"Contents" {
                contents = Some(ContentsFields::default());
            } else if reading.is_none() {
                reading = leaf(depth, contents.is_some(), name).map(|l| (l, depth, String::new()));
            }
        }
        if !closes {
            continue;
        }
        if let Some((what, _, text)) = reading.take_if(|(_, at, _)| *at == depth) {
            let twice = |name: &str| format!("{name} is given twice");
            match (what, contents.as_mut()) {
                (Leaf::IsTruncated, _) if list.is_truncated.is_some() => return Err(twice("IsTruncated")),
                (Leaf::IsTruncated, _) => {
                    list.is_truncated = Some(match text.trim() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        other => return Err(format!("IsTruncated {other:?} is no boolean")),
                    })
                }
                (Leaf::NextContinuationToken, _) if list.next_continuation_token.is_some() => {
                    return Err(twice("NextContinuationToken"))
                }
                (Leaf::NextContinuationToken, _) => list.next_continuation_token = Some(text),
                (Leaf::EncodingType, _) if list.encoding_type.is_some() => return Err(twice("EncodingType")),
                (Leaf::EncodingType, _) => list.encoding_type = Some(text.trim().to_string()),
                (Leaf::Key, Some(ContentsFields { key: key @ None, .. })) => *key = Some(text),
                (Leaf::Size, Some(ContentsFields { size: size @ None, .. })) => {
                    *size = Some(text.trim().parse().map_err(|e| format!("Size {text:?}: {e}"))?)
                }
                (Leaf::ETag, Some(ContentsFields { etag: etag @ None, .. })) => *etag = Some(text.trim().to_string()),
                (Leaf::LastModified, Some(ContentsFields { last_modified: at @ None, .. })) => {
                    *at = Some(text.trim().to_string())
                }
                (Leaf::Key | Leaf::Size | Leaf::ETag | Leaf::LastModified, _) => {
                    return Err(twice("a field of a Contents"))
                }
            }
        }
        if depth == 2 {
            if let Some(ContentsFields { key, size, etag, last_modified }) = contents.take() {
                let key = key.ok_or("a Contents has no Key")?;
                let size = size.ok_or_else(|| format!("Contents {key:?} has no Size"))?;
                list.contents.push(ContentsXml { key, size, etag, last_modified });
            }
        }
        depth = depth.checked_sub(1).ok_or("an end tag closes nothing")?;
        if depth == 0 {
            return Ok(list);
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InitiateXml {
    upload_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CopyResultXml {
    #[serde(rename = "ETag")]
    etag: Option<String>,
}

/// The CompleteMultipartUpload element carrying a part's checksum.
fn part_checksum_element(algo: ChecksumAlgo) -> Option<&'static str> {
    match algo {
        ChecksumAlgo::Crc32c => Some("ChecksumCRC32C"),
        ChecksumAlgo::Crc64nvme => Some("ChecksumCRC64NVME"),
        ChecksumAlgo::Sha256 => Some("ChecksumSHA256"),
        ChecksumAlgo::Sha1 => Some("ChecksumSHA1"),
        ChecksumAlgo::Md5 | ChecksumAlgo::DropboxContentHash => None,
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Store for S3Store {
    fn list<'a>(&'a self, prefix: &'a str, token: Option<String>) -> LocalFuture<'a, Result<ListPage>> {
        Box::pin(self.list_page(prefix, token))
    }

    fn stat<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Option<ObjectInfo>>> {
        Box::pin(async move {
            let headers = vec![("x-amz-checksum-mode".to_string(), "ENABLED".to_string())];
            let call = Call { method: "HEAD", key: Some(key), query: Vec::new(), headers, op: "stat", target: key };
            let (response, _) = self.call(call, RequestBody::Empty).await?;
            let head = response.head.clone();
            response.discard().await?;
            match head.status {
                200 => Ok(Some(info_from_head(&head))),
                404 => Ok(None),
                _ => Err(self.http_error("stat", key, &head, &[])),
            }
        })
    }

    fn describe(&self) -> String {
        format!("s3 {} bucket {}", self.cfg.endpoint.url(), self.cfg.bucket)
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn check<'a>(&'a self, _writable: bool) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let query = vec![("list-type", "2".to_string()), ("max-keys", "1".to_string())];
            let target = self.cfg.bucket.clone();
            let call = Call { method: "GET", key: None, query, headers: Vec::new(), op: "check", target: &target };
            match self.call_small(call, Vec::new()).await {
                Ok(_) => Ok(()),
                Err(Error::Http { status: 404, code, op, target, message, retry_after, .. })
                    if code == "NoSuchBucket" || code == "NotFound" =>
                {
                    Err(Error::Http {
                        class: ErrorClass::FatalRelay,
                        op,
                        target,
                        status: 404,
                        code: "NoSuchBucket".into(),
                        message,
                        hint: format!(
                            "; bucket {:?} does not exist at {}: create it or fix the URL",
                            self.cfg.bucket,
                            self.cfg.endpoint.url()
                        ),
                        retry_after,
                    })
                }
                Err(e) => Err(e),
            }
        })
    }
}

impl Source for S3Store {
    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Option<(u64, u64)>,
        body: Body,
        hashers: &'a mut Hashers,
    ) -> LocalFuture<'a, Result<(Body, ObjectInfo)>> {
        Box::pin(async move {
            let mut headers = vec![("x-amz-checksum-mode".to_string(), "ENABLED".to_string())];
            if let Some((start, end)) = range {
                assert!(end > start, "empty range");
                headers.push(("range".to_string(), format!("bytes={}-{}", start, end - 1)));
            }
            let call = Call { method: "GET", key: Some(key), query: Vec::new(), headers, op: "get", target: key };
            let (response, _) = self.call(call, RequestBody::Empty).await?;
            let head = response.head.clone();
            if head.status >= 300 {
                let bytes = response.read_to_vec().await.unwrap_or_default();
                return Err(self.http_error("get", key, &head, &bytes));
            }
            let mut info = info_from_head(&head);
            let whole_object = match range {
                Some(range) => check_range_answer(key, range, &head)?,
                None if head.status != 200 => {
                    let detail = format!("expected 200 OK, the server answered {}", head.status_text());
                    return Err(Error::protocol("get", key, detail));
                }
                None => true,
            };
            if !whole_object {
                // Checksums in a ranged response describe the whole object, which we
                // are not hashing here.
                info.checksums.clear();
            }
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
            let (start, end) = range;
            assert!(end > start, "empty range");
            let headers = vec![("range".to_string(), format!("bytes={}-{}", start, end - 1))];
            let call = Call { method: "GET", key: Some(key), query: Vec::new(), headers, op: "get", target: key };
            let (response, _) = self.call(call, RequestBody::Empty).await?;
            let head = response.head.clone();
            if head.status >= 300 {
                let bytes = response.read_to_vec().await.unwrap_or_default();
                return Err(self.http_error("get", key, &head, &bytes));
            }
            check_range_answer(key, range, &head)?;
            response.read_stream(filler, hashers).await?;
            Ok(head.header("etag").map(|e| e.trim_matches('"').to_string()))
        })
    }

    fn composite<'a>(&'a self, key: &'a str, info: &'a ObjectInfo) -> LocalFuture<'a, Result<Option<Composite>>> {
        Box::pin(self.composite_of(key, info))
    }

    fn copy_source(&self, key: &str) -> Option<CopySource> {
        Some(CopySource {
            identity: format!("{}|{}|{}", self.cfg.endpoint.url(), self.cfg.access_key_id, self.cfg.region),
            reference: format!(
                "/{}/{}",
                utf8_percent_encode(&self.cfg.bucket, QUERY_SET),
                utf8_percent_encode(key, PATH_SET)
            ),
        })
    }
}

impl S3Store {
    fn check_etag(
        op: &'static str,
        key: &str,
        head: &crate::http::ResponseHead,
        md5_hex: Option<&str>,
    ) -> Result<String> {
        let etag = head.header("etag").map(|e| e.trim_matches('"').to_string()).unwrap_or_default();
        if let Some(md5) = md5_hex {
            if crate::checksum::etag_is_md5(&etag) && !etag.eq_ignore_ascii_case(md5) {
                return Err(Error::Integrity {
                    op,
                    target: key.to_string(),
                    detail: format!("the store computed MD5 {etag}, the relay sent bytes with MD5 {md5}"),
                });
            }
        }
        Ok(etag)
    }

    async fn send_data(&self, call: Call<'_>, body: Body, md5_hex: Option<&str>) -> Result<String> {
        let op = call.op;
        let key = call.target.to_string();
        let (response, _) = self.call(call, RequestBody::Chunks(body)).await?;
        let head = response.head.clone();
        let bytes = response.read_to_vec().await?;
        if head.status >= 300 {
            return Err(self.data_error(op, &key, &head, &bytes));
        }
        Self::check_etag(op, &key, &head, md5_hex)
    }

    /// The error for a failed upload of data: a checksum the store checked and found
    /// different means the bytes changed in flight.
    fn data_error(&self, op: &'static str, key: &str, head: &crate::http::ResponseHead, body: &[u8]) -> Error {
        let err = self.http_error(op, key, head, body);
        if let Error::Http { code, message, .. } = &err {
            if code == "BadDigest" || code == "InvalidDigest" || code == "XAmzContentChecksumMismatch" {
                return Error::Integrity {
                    op,
                    target: key.to_string(),
                    detail: format!("the store said {code}: {message}"),
                };
            }
        }
        err
    }

    /// Whether parts carrying `algo` can stream with a trailer on this worker.
    fn streams_parts(&self, algo: ChecksumAlgo) -> bool {
        algo.s3_algorithm().is_some() && !self.streaming_refused.get()
    }
}

impl Sink for S3Store {
    fn mkdir<'a>(&'a self, _key: &'a str) -> LocalFuture<'a, Result<super::Made>> {
        Box::pin(async move { Ok(super::Made::Bucket(self.create_bucket().await?)) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let call = Call {
                method: "DELETE",
                key: Some(key),
                query: Vec::new(),
                headers: Vec::new(),
                op: "delete",
                target: key,
            };
            self.call_small(call, Vec::new()).await.map(drop)
        })
    }
    fn begin<'a>(&'a self, key: &'a str, plan: UploadPlan, args: &'a PutArgs) -> LocalFuture<'a, Result<Session<'a>>> {
        Box::pin(upload::begin(self, key, plan, args))
    }

    fn resume(&self, state: SessionState) -> Result<Session<'_>> {
        upload::resume(self, state)
    }

    fn put_dir_marker<'a>(&'a self, key: &'a str, args: &'a PutArgs) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut headers = Vec::with_capacity(4);
            self.meta_headers(args, &mut headers);
            let call = Call { method: "PUT", key: Some(key), query: Vec::new(), headers, op: "put", target: key };
            self.call_small(call, Vec::new()).await.map(drop)
        })
    }

    fn can_copy_from(&self, source: &CopySource) -> bool {
        source.identity == format!("{}|{}|{}", self.cfg.endpoint.url(), self.cfg.access_key_id, self.cfg.region)
    }

    fn copy_object<'a>(
        &'a self,
        source: &'a CopySource,
        key: &'a str,
        args: &'a PutArgs,
    ) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut headers = vec![
                ("x-amz-copy-source".to_string(), source.reference.clone()),
                ("x-amz-metadata-directive".to_string(), "REPLACE".to_string()),
            ];
            self.meta_headers(args, &mut headers);
            let call = Call { method: "PUT", key: Some(key), query: Vec::new(), headers, op: "copy", target: key };
            let (head, body) = self.call_small(call, Vec::new()).await?;
            self.error_in_ok_body("copy", key, &head, &body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(path_style: bool) -> S3Store {
        S3Store::new(
            Arc::new(S3Config {
                remote: "t".into(),
                endpoint: Endpoint::parse("http://127.0.0.1:9000").unwrap(),
                region: "us-east-1".into(),
                access_key_id: "AK".into(),
                secret_access_key: "SK".into(),
                session_token: None,
                bucket: "bkt".into(),
                path_style,
            }),
            HttpClient::default(),
        )
    }

    #[test]
    fn paths_encode_keys() {
        let s = store(true);
        assert_eq!(s.path(Some("a b/c+d%e/ü"), &[]), "/bkt/a%20b/c%2Bd%25e/%C3%BC");
        assert_eq!(
            s.path(None, &[("list-type", "2".into()), ("prefix", "x/y".into())]),
            "/bkt?list-type=2&prefix=x%2Fy"
        );
        assert_eq!(s.path(Some("k"), &[("uploads", String::new())]), "/bkt/k?uploads");
        let v = store(false);
        assert_eq!(v.path(Some("k"), &[]), "/k");
        assert_eq!(v.path(None, &[]), "/");
        assert_eq!(v.endpoint.host, "bkt.127.0.0.1");
    }

    #[test]
    fn signs_without_payload_hash() {
        let s = store(true);
        let mut headers = vec![("x-amz-checksum-crc32c".to_string(), "AAAAAA==".to_string())];
        s.sign("PUT", "/bkt/k", &mut headers, SignableBody::UnsignedPayload).unwrap();
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"authorization"));
        assert!(headers.iter().any(|(n, v)| n == "x-amz-content-sha256" && v == "UNSIGNED-PAYLOAD"));
        // The secret never appears in what is sent.
        assert!(headers.iter().all(|(_, v)| !v.contains("SK")));

        // A streamed body signs its trailer form instead.
        let mut headers = vec![("x-amz-trailer".to_string(), "x-amz-checksum-crc32c".to_string())];
        s.sign("PUT", "/bkt/k", &mut headers, SignableBody::Precomputed(STREAMING_PAYLOAD.into())).unwrap();
        assert!(headers.iter().any(|(n, v)| n == "x-amz-content-sha256" && v == STREAMING_PAYLOAD));
    }

    #[test]
    fn aws_chunked_is_not_object_metadata() {
        assert_eq!(content_encoding("aws-chunked"), None);
        assert_eq!(content_encoding("gzip,aws-chunked").as_deref(), Some("gzip"));
        assert_eq!(content_encoding("br").as_deref(), Some("br"));
    }

    #[test]
    fn parses_list_xml() {
        let xml = r#"<?xml version="1.0"?><ListBucketResult><Name>b</Name><IsTruncated>true</IsTruncated>
            <NextContinuationToken>tok</NextContinuationToken><EncodingType>url</EncodingType>
            <Contents><Key>a%20b</Key><Size>3</Size><ETag>"abc"</ETag></Contents>
            <Contents><Key>c</Key><Size>0</Size></Contents></ListBucketResult>"#;
        let parsed = parse_list(xml.as_bytes()).unwrap();
        assert_eq!(parsed.contents.len(), 2);
        assert_eq!(parsed.next_continuation_token.as_deref(), Some("tok"));
        assert_eq!(parsed.contents[0].etag.as_deref(), Some("\"abc\""));
        assert_eq!((parsed.is_truncated, parsed.encoding_type.as_deref()), (Some(true), Some("url")));
        // Text as sent, in pieces (references, CDATA, comments) or none; elements
        // matched by local name; what is not read skipped, however deep.
        let xml = "<s3:R xmlns:s3=\"x\"><s3:Contents><Owner><Key>no</Key></Owner><Key> a&amp;<![CDATA[<b>]]>\
                   <!-- c --> </Key><Size> 7\n</Size><ETag>\n\"e\" </ETag></s3:Contents>\
                   <Contents><Key/><Size>0</Size></Contents><IsTruncated>\n0\n</IsTruncated></s3:R>";
        let parsed = parse_list(xml.as_bytes()).unwrap();
        let keys: Vec<(&str, u64, Option<&str>)> =
            parsed.contents.iter().map(|c| (c.key.as_str(), c.size, c.etag.as_deref())).collect();
        assert_eq!(keys, [(" a&<b> ", 7, Some("\"e\"")), ("", 0, None)]);
        assert_eq!(parsed.is_truncated, Some(false));
        for (xml, why) in [
            ("", "no root element"),
            ("<R><Contents><Key>a</Key></Contents></R>", "has no Size"),
            ("<R><Contents><Size>1</Size></Contents></R>", "has no Key"),
            ("<R><Contents><Key>a</Key><Key>b</Key><Size>1</Size></Contents></R>", "given twice"),
            ("<R><Contents><Key>a</Key><Size>-1</Size></Contents></R>", "Size \"-1\""),
            ("<R><IsTruncated>yes</IsTruncated></R>", "no boolean"),
            ("<R><Contents>", "ends inside an element"),
            ("<R></Contents></R>", ""),
        ] {
            let e = parse_list(xml.as_bytes()).map(|_| ()).unwrap_err();
            assert!(e.contains(why), "{xml:?} gave {e:?}");
        }
    }

    fn answer(status: u16, headers: &[(&str, &str)]) -> crate::http::ResponseHead {
        crate::http::ResponseHead {
            status,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn ranged_answers_are_taken_only_when_they_hold_the_range() {
        const MIB: u64 = 1 << 20;
        let size = 100 * MIB + 3;
        let last = (96 * MIB, size);
        let last_range = format!("bytes {}-{}/{size}", 96 * MIB, size - 1);
        let last_len = (size - 96 * MIB).to_string();
        // S3 and SeaweedFS: 206 with the Content-Range.
        let s3 = answer(206, &[("content-range", &last_range), ("content-length", &last_len)]);
        assert!(!check_range_answer("k", last, &s3).unwrap());
        // rclone serve s3: 200 with the Content-Range of the range asked for.
        let gofakes3 = answer(200, &[("content-range", &last_range), ("content-length", &last_len)]);
        assert!(!check_range_answer("k", last, &gofakes3).unwrap());
        // A range that is the whole object, however it is answered, is the whole object.
        let whole = answer(200, &[("content-length", "10")]);
        assert!(check_range_answer("k", (0, 10), &whole).unwrap());
        let whole_206 = answer(206, &[("content-range", "bytes 0-9/10"), ("content-length", "10")]);
        assert!(check_range_answer("k", (0, 10), &whole_206).unwrap());
        // A 206 without Content-Range of the right length (as before).
        assert!(!check_range_answer("k", (5, 10), &answer(206, &[("content-length", "5")])).unwrap());

        let refused = |range: (u64, u64), head: crate::http::ResponseHead| {
            let err = check_range_answer("out/parts/100m+3", range, &head).unwrap_err();
            assert!(err.is_retryable());
            err.to_string()
        };
        // The whole object for a range of it: no bytes taken, and the error says why.
        let ignored = answer(200, &[("content-length", &size.to_string())]);
        let err = refused(last, ignored.clone());
        assert_eq!(
            err,
            format!(
                "get out/parts/100m+3 bytes={}-{}: expected 206 Partial Content, the server answered 200 OK \
                 with {size} bytes and no Content-Range: it ignores Range and sent the whole object; raise \
                 --multipart-cutoff (and --ram-buffer) above {size} bytes so that objects this large are read \
                 in one GET",
                96 * MIB,
                size - 1
            )
        );
        assert!(refused((0, 16 * MIB), ignored).contains("expected 206 Partial Content, the server answered 200 OK"));
        // Bytes from elsewhere in the object, or too few or too many, are refused.
        let elsewhere = answer(200, &[("content-range", "bytes 0-9/100"), ("content-length", "10")]);
        assert!(refused((10, 20), elsewhere).contains("bytes=10-19: the server answered 200 OK with bytes 0-9/100"));
        let short = answer(206, &[("content-range", "bytes 10-19/100"), ("content-length", "9")]);
        assert!(refused((10, 20), short).contains("expected 10 bytes, the server answered 206 Partial Content with 9"));
        let unsatisfiable = answer(206, &[("content-range", "bytes */100"), ("content-length", "10")]);
        assert!(refused((10, 20), unsatisfiable).contains("Content-Range \"bytes */100\""));
        let smaller = answer(200, &[("content-length", "5")]);
        assert!(refused((0, 10), smaller).contains("changed during the relay"));
        let chunked = answer(206, &[("content-range", "bytes 10-19/100"), ("transfer-encoding", "chunked")]);
        assert!(refused((10, 20), chunked).contains("a body of unknown length"));
        assert!(refused((10, 20), answer(204, &[])).contains("the server answered 204 No Content"));
    }

    #[test]
    fn errors_without_an_error_document_say_what_came() {
        let s = store(true);
        let empty = s.http_error("get", "k", &answer(502, &[]), b"");
        assert_eq!(empty.to_string(), "get k: HTTP 502 BadGateway: the response carried no S3 error document");
        assert!(empty.is_retryable());
        let html = b"<html>\n<body>\n  <h1>502 Bad Gateway</h1>\n</body>\n</html>\n";
        let page = s.http_error("get", "k", &answer(502, &[("content-type", "text/html")]), html);
        assert_eq!(
            page.to_string(),
            format!(
                "get k: HTTP 502 BadGateway: the response body ({} bytes of text/html) is no S3 error document: \
                 \"<html> <body> <h1>502 Bad Gateway</h1> </body> </html>\"",
                html.len()
            )
        );
        let long = "x ".repeat(500);
        let cut = s.http_error("put", "k", &answer(500, &[]), long.as_bytes()).to_string();
        assert!(cut.ends_with(&format!("\"{}...\"", "x ".repeat(60))), "{cut}");
        assert!(!cut.contains('\n'));
        // A document without a message gets the status instead of nothing.
        let bare = s.http_error("get", "k", &answer(404, &[]), b"<Error><Code>NoSuchKey</Code></Error>");
        assert_eq!(bare.to_string(), "get k: HTTP 404 NoSuchKey: 404 Not Found");
        let denied = s.http_error("get", "k", &answer(403, &[]), b"");
        assert_eq!(
            denied.to_string(),
            "get k: HTTP 403 AccessDenied: the response carried no S3 error document; the credentials of remote \
             \"t\" are not allowed to do this"
        );
        assert!(denied.is_fatal());
    }

    #[test]
    fn reads_metadata_headers() {
        let head = crate::http::ResponseHead {
            status: 206,
            headers: vec![
                ("content-range".into(), "bytes 0-9/100".into()),
                ("content-length".into(), "10".into()),
                ("content-type".into(), "text/plain".into()),
                ("x-amz-meta-mtime".into(), "1700000000.25".into()),
                ("x-amz-meta-color".into(), "blue".into()),
                ("x-amz-checksum-crc32c".into(), "AAAAAQ==".into()),
            ],
        };
        let info = info_from_head(&head);
        assert_eq!(info.size, 100);
        assert_eq!(info.meta.mtime, Some((1_700_000_000, 250_000_000)));
        assert_eq!(info.meta.user, vec![("color".to_string(), "blue".to_string())]);
        assert_eq!(info.checksums, vec![Checksum::from_crc32c(1)]);
    }
}

#[cfg(test)]
mod proptests {
    //! S3's XML as servers write it: arbitrary and mutated documents give an error or
    //! a value, never a panic; a generated listing (keys with any characters, escaped
    //! or URL-encoded, sizes up to u64::MAX, quoted ETags) lists back to its entries
    //! through `list_page` against a peer on loopback; error documents are found,
    //! also in the 200 answer of a CompleteMultipartUpload.

    use std::io::{Read, Write};
    use std::net::TcpListener;

    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;

    use super::*;
    use crate::runtime::{block_on, Driver};

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig { cases, failure_persistence: None, rng_seed: RngSeed::Fixed(0x53), ..ProptestConfig::default() }
    }

    const WAIT: Duration = Duration::from_secs(10);

    /// A store on `127.0.0.1:port`, path-style.
    fn store_at(port: u16) -> S3Store {
        S3Store::new(
            Arc::new(S3Config {
                remote: "t".into(),
                endpoint: Endpoint { tls: false, host: "127.0.0.1".into(), port },
                region: "us-east-1".into(),
                access_key_id: "AK".into(),
                secret_access_key: "SK".into(),
                session_token: None,
                bucket: "bkt".into(),
                path_style: true,
            }),
            HttpClient::new(WAIT, WAIT),
        )
    }

    thread_local! {
        /// A store for the readers that send nothing (a client is costly to make).
        static IDLE: S3Store = store_at(1);
    }

    fn idle<T>(f: impl FnOnce(&S3Store) -> T) -> T {
        IDLE.with(f)
    }

    /// Answers one request with `status` and `body`, then closes.
    fn serve(status: u16, body: Vec<u8>) -> (u16, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(WAIT)).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let mut answer = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            answer.extend_from_slice(&body);
            let _ = stream.write_all(&answer);
        });
        (port, handle)
    }

    /// A small deterministic choice stream, for how each character is written.
    struct Choices(u64);

    impl Choices {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// Text as an XML element's content, each special character escaped one of the
    /// ways servers do (named, decimal or hexadecimal references, or literally where
    /// XML allows it).
    fn xml_text(s: &str, choices: &mut Choices) -> String {
        let mut out = String::new();
        for c in s.chars() {
            let numeric =
                |c: char, hex: bool| if hex { format!("&#x{:X};", c as u32) } else { format!("&#{};", c as u32) };
            match c {
                '&' => out.push_str(["&amp;", "&#38;", "&#x26;"][choices.next(3) as usize]),
                '<' => out.push_str(["&lt;", "&#60;", "&#x3c;"][choices.next(3) as usize]),
                '>' => out.push_str(["&gt;", ">"][choices.next(2) as usize]),
                '"' => out.push_str(["&quot;", "\""][choices.next(2) as usize]),
                '\'' => out.push_str(["&apos;", "'"][choices.next(2) as usize]),
                '\r' => out.push_str("&#13;"),
                c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push_str(&numeric(c, true)),
                c if !c.is_ascii() && choices.next(4) == 0 => out.push_str(&numeric(c, choices.next(2) == 0)),
                c => out.push(c),
            }
        }
        out
    }

    /// A key as S3 writes it with `encoding-type=url`: form-style percent-encoding.
    fn url_encoded(s: &str, choices: &mut Choices) -> String {
        let mut out = String::new();
        for &b in s.as_bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
                b' ' if choices.next(2) == 0 => out.push('+'),
                b'/' if choices.next(2) == 0 => out.push('/'),
                b if choices.next(2) == 0 => out.push_str(&format!("%{b:02X}")),
                b => out.push_str(&format!("%{b:02x}")),
            }
        }
        out
    }

    /// One listed object: key, size, ETag (its hex and how it is quoted).
    type Object = (String, u64, Option<(String, u8)>);

    fn etag() -> impl Strategy<Value = Option<(String, u8)>> {
        prop::option::of(("[0-9a-f]{32}(-[1-9][0-9]{0,3})?", 0u8..3))
    }

    /// Keys as XML text, whitespace at either end included.
    fn raw_key() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 /._+%&<>\"'=?#:;é€😀\t\n-]{1,24}"
    }

    fn url_key() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 /._+%&<>\"'=?#:;é€😀\t\n\r\u{1}\u{7f}-]{1,24}"
    }

    #[derive(Debug, Clone)]
    struct Listing {
        objects: Vec<Object>,
        url: bool,
        token: Option<String>,
        truncated: bool,
        declaration: bool,
        pretty: bool,
        seed: u64,
    }

    impl Listing {
        fn xml(&self) -> String {
            let mut choices = Choices(self.seed);
            let nl = if self.pretty { "\n  " } else { "" };
            let mut x = String::new();
            if self.declaration {
                x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
            }
            x.push_str("<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
            x.push_str(&format!(
                "{nl}<Name>bkt</Name>{nl}<Prefix></Prefix>{nl}<KeyCount>{}</KeyCount>",
                self.objects.len()
            ));
            x.push_str(&format!("{nl}<MaxKeys>1000</MaxKeys>{nl}<IsTruncated>{}</IsTruncated>", self.truncated));
            if let Some(token) = &self.token {
                x.push_str(&format!(
                    "{nl}<NextContinuationToken>{}</NextContinuationToken>",
                    xml_text(token, &mut choices)
                ));
            }
            if self.url {
                x.push_str(&format!("{nl}<EncodingType>url</EncodingType>"));
            }
            for (key, size, etag) in &self.objects {
                let key = if self.url { url_encoded(key, &mut choices) } else { xml_text(key, &mut choices) };
                x.push_str(&format!("{nl}<Contents>{nl}<Key>{key}</Key>"));
                x.push_str(&format!("{nl}<LastModified>2024-01-02T03:04:05.000Z</LastModified>"));
                if let Some((hex, quoting)) = etag {
                    let etag = match quoting {
                        0 => format!("&quot;{hex}&quot;"),
                        1 => format!("\"{hex}\""),
                        _ => hex.clone(),
                    };
                    x.push_str(&format!("{nl}<ETag>{etag}</ETag>"));
                }
                x.push_str(&format!("{nl}<Size>{size}</Size>{nl}<StorageClass>STANDARD</StorageClass>"));
                x.push_str(&format!("{nl}<Owner><ID>abc</ID><DisplayName>x</DisplayName></Owner></Contents>"));
            }
            x.push_str(&format!("{nl}<CommonPrefixes><Prefix>p/</Prefix></CommonPrefixes>"));
            x.push_str("</ListBucketResult>");
            x
        }

        /// The entries `list_page` must give: decoded, unquoted, in key order.
        fn entries(&self) -> Vec<Entry> {
            let mut entries: Vec<Entry> = self
                .objects
                .iter()
                .map(|(key, size, etag)| Entry {
                    key: key.clone(),
                    size: *size,
                    etag: etag.as_ref().map(|(hex, _)| hex.clone()),
                    // `xml` writes this LastModified for every object.
                    modified_unix_ms: Some(1_704_164_645_000),
                    ..Entry::default()
                })
                .collect();
            entries.sort_by(|a, b| a.key.cmp(&b.key));
            entries
        }
    }

    fn listing() -> impl Strategy<Value = Listing> {
        any::<bool>().prop_flat_map(|url| {
            let key = if url { url_key().boxed() } else { raw_key().boxed() };
            (
                prop::collection::vec((key, prop_oneof![any::<u64>(), Just(u64::MAX), Just(0)], etag()), 0..12),
                prop::option::of("[A-Za-z0-9+/=]{1,40}"),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<u64>(),
            )
                .prop_map(move |(objects, token, truncated, declaration, pretty, seed)| Listing {
                    objects,
                    url,
                    token,
                    truncated,
                    declaration,
                    pretty,
                    seed,
                })
        })
    }

    fn list_through_loopback(xml: &str) -> Result<ListPage> {
        let (port, peer) = serve(200, xml.as_bytes().to_vec());
        let store = store_at(port);
        let page = block_on(Driver::Epoll, store.list_page("", None)).unwrap();
        peer.join().unwrap();
        page
    }

    fn mutate(mut bytes: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
        for &(kind, at, byte) in edits {
            let at = at % (bytes.len() + 1);
            match kind % 5 {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                3 => bytes.truncate(at),
                _ => {
                    // Repeat a stretch: elements twice, or an element inside itself.
                    let end = (at + usize::from(byte)).min(bytes.len());
                    let copy = bytes[at..end].to_vec();
                    bytes.splice(at..at, copy);
                }
            }
        }
        bytes
    }

    fn edits() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
        prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..8)
    }

    /// Every XML document type this module reads.
    fn parse_all(bytes: &[u8]) {
        let _ = parse_list(bytes);
        let _ = quick_xml::de::from_reader::<_, ErrorXml>(bytes);
        let _ = quick_xml::de::from_reader::<_, InitiateXml>(bytes);
        let _ = quick_xml::de::from_reader::<_, CopyResultXml>(bytes);
    }

    fn error_document(code: &str, message: Option<&str>, choices: &mut Choices) -> String {
        let mut x = format!("<Error><Code>{}</Code>", xml_text(code, choices));
        if let Some(m) = message {
            x.push_str(&format!("<Message>{}</Message>", xml_text(m, choices)));
        }
        x.push_str("<Resource>/bkt/k</Resource><RequestId>4442587FB7D0A2F9</RequestId><HostId>h</HostId></Error>");
        x
    }

    fn answer(status: u16) -> crate::http::ResponseHead {
        crate::http::ResponseHead { status, headers: vec![("content-type".into(), "application/xml".into())] }
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            parse_all(text.as_bytes());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            parse_all(&bytes);
            idle(|s| {
                let _ = s.http_error("get", "k", &answer(500), &bytes).to_string();
                let _ = s.error_in_ok_body("complete-multipart", "k", &answer(200), &bytes);
            });
        }

        #[test]
        fn xml_shaped_text_never_panics(
            parts in prop::collection::vec(
                prop_oneof![
                    Just("<ListBucketResult>".to_string()),
                    Just("</ListBucketResult>".to_string()),
                    Just("<Contents>".to_string()),
                    Just("</Contents>".to_string()),
                    Just("<Key>".to_string()),
                    Just("</Key>".to_string()),
                    Just("<Size>".to_string()),
                    Just("</Size>".to_string()),
                    Just("<Error><Code>".to_string()),
                    Just("</Code></Error>".to_string()),
                    Just("<![CDATA[".to_string()),
                    Just("]]>".to_string()),
                    Just("<!--".to_string()),
                    Just("-->".to_string()),
                    Just("<!DOCTYPE x [<!ENTITY e \"&e;&e;\">]>".to_string()),
                    Just("&e;".to_string()),
                    Just("&#xFFFFFFFF;".to_string()),
                    Just("&#0;".to_string()),
                    Just("&unknown;".to_string()),
                    "[0-9]{1,25}",
                    "[ -~]{0,10}",
                ],
                0..40,
            ),
        ) {
            parse_all(parts.concat().as_bytes());
        }

        #[test]
        fn mutated_listings_never_panic(listing in listing(), edits in edits()) {
            let bytes = mutate(listing.xml().into_bytes(), &edits);
            parse_all(&bytes);
        }

        #[test]
        fn generated_listings_parse_to_their_contents(listing in listing()) {
            let parsed = parse_list(listing.xml().as_bytes()).unwrap();
            prop_assert_eq!(parsed.contents.len(), listing.objects.len());
            prop_assert_eq!(parsed.is_truncated, Some(listing.truncated));
            prop_assert_eq!(parsed.next_continuation_token, listing.token.clone());
            for (c, (key, size, _)) in parsed.contents.iter().zip(&listing.objects) {
                prop_assert_eq!(c.size, *size);
                if !listing.url {
                    prop_assert_eq!(&c.key, key);
                }
            }
        }

        #[test]
        fn error_documents_give_their_code_and_message(
            code in "[A-Za-z]{1,30}",
            message in prop::option::of("[!-~é€]([ -~é€]{0,60}[!-~é€])?"),
            status in prop_oneof![Just(400u16), Just(403), Just(404), Just(409), Just(500), Just(503)],
            seed in any::<u64>(),
        ) {
            let xml = error_document(&code, message.as_deref(), &mut Choices(seed));
            let e = idle(|s| s.http_error("get", "k", &answer(status), xml.as_bytes()));
            let Error::Http { code: got_code, message: got_message, .. } = &e else {
                panic!("not an HTTP error: {e}");
            };
            prop_assert_eq!(got_code, &code);
            let want = message.clone().unwrap_or_else(|| answer(status).status_text());
            prop_assert_eq!(got_message, &want);
            prop_assert!(!e.to_string().contains('\n'), "{}", e);
        }

        /// What is not an error document is quoted in one line.
        #[test]
        fn other_error_bodies_are_one_line(body in prop::collection::vec(any::<u8>(), 0..400)) {
            prop_assume!(quick_xml::de::from_reader::<_, ErrorXml>(&body[..]).is_err());
            let e = idle(|s| s.http_error("get", "k", &answer(502), &body).to_string());
            prop_assert!(!e.contains('\n') && !e.contains('\r'), "{}", e);
        }

        /// A CompleteMultipartUpload answered 200: a result is success, an error document
        /// (after the whitespace S3 sends while it works) a failure with its code.
        #[test]
        fn completions_tell_results_from_errors(
            key in raw_key(),
            etag in "[0-9a-f]{32}-[1-9][0-9]{0,3}",
            checksum in prop::option::of("[A-Za-z0-9+/]{6}=="),
            code in "[A-Za-z]{1,30}",
            padding in "[ \n\r\t]{0,200}",
            padding_first in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut choices = Choices(seed);
            let declaration = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
            let mut result = format!(
                "<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <Location>http://h/bkt/{k}</Location><Bucket>bkt</Bucket><Key>{k}</Key><ETag>&quot;{etag}&quot;</ETag>",
                k = xml_text(&key, &mut choices),
            );
            if let Some(c) = &checksum {
                result.push_str(&format!("<ChecksumCRC32C>{c}</ChecksumCRC32C><ChecksumType>COMPOSITE</ChecksumType>"));
            }
            result.push_str("</CompleteMultipartUploadResult>");
            let error = error_document(&code, Some("We encountered an internal error. Please try again."), &mut choices);
            for (doc, is_error) in [(result, false), (error, true)] {
                let body =
                    if padding_first { format!("{padding}{declaration}{doc}") } else { format!("{declaration}{padding}{doc}") };
                let got = idle(|s| s.error_in_ok_body("complete-multipart", "k", &answer(200), body.as_bytes()));
                match got {
                    Ok(()) => prop_assert!(!is_error, "an error document taken as success: {:?}", body),
                    Err(Error::Http { code: got, .. }) => {
                        prop_assert!(is_error, "a result taken as an error: {:?}", body);
                        prop_assert_eq!(&got, &code);
                    }
                    Err(e) => prop_assert!(false, "{}", e),
                }
            }
        }

        #[test]
        fn arbitrary_content_encodings_never_panic(value in "[ -~]{0,40}") {
            if let Some(kept) = content_encoding(&value) {
                prop_assert!(!kept.to_ascii_lowercase().split(", ").any(|t| t == "aws-chunked"));
                prop_assert!(!kept.is_empty());
            }
        }
    }

    proptest! {
        #![proptest_config(config(48))]

        #[test]
        fn generated_listings_list_back(listing in listing()) {
            let page = list_through_loopback(&listing.xml()).map_err(|e| e.to_string());
            let next = if listing.truncated { listing.token.clone() } else { None };
            let page = page.map(|p| (p.entries, p.next));
            prop_assert_eq!(page, Ok((listing.entries(), next)));
        }
    }

    /// Without `encoding-type=url` honoured (the request asks for it; not every
    /// S3-compatible server applies it), keys come as XML text, and are listed with
    /// their whitespace at either end: `<Key> a</Key>` lists ` a`, not `a`
    /// (engine/src/backend/s3.rs, `parse_list`).
    #[test]
    fn raw_keys_keep_their_whitespace() {
        for key in [" a", "b ", "\tc", "d\n", "  "] {
            let listing = Listing {
                objects: vec![(key.to_string(), 1, None)],
                url: false,
                token: None,
                truncated: false,
                declaration: true,
                pretty: false,
                seed: 0,
            };
            let page = list_through_loopback(&listing.xml()).map(|p| p.entries).map_err(|e| e.to_string());
            assert_eq!(page, Ok(listing.entries()), "{key:?}");
        }
    }

    fn header_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "bytes [0-9]{1,21}-[0-9]{1,21}/([0-9]{1,21}|\\*)",
            "[0-9]{1,21}",
            "-?[0-9]{1,20}(\\.[0-9]{0,12})?",
            "[A-Za-z0-9+/=]{0,50}",
            "[ -~]{0,30}",
            Just("COMPOSITE".to_string()),
            Just("aws-chunked, gzip".to_string()),
        ]
    }

    fn head_headers() -> impl Strategy<Value = Vec<(String, String)>> {
        let name = prop::sample::select(
            &[
                "content-range",
                "content-length",
                "etag",
                "content-type",
                "content-encoding",
                "x-amz-checksum-crc32c",
                "x-amz-checksum-crc64nvme",
                "x-amz-checksum-sha256",
                "x-amz-checksum-type",
                "x-amz-meta-mtime",
                "x-amz-meta-laminar-provenance",
                "x-amz-meta-",
                "transfer-encoding",
            ][..],
        );
        prop::collection::vec((name.prop_map(str::to_string), header_value()), 0..8)
    }

    proptest! {
        #![proptest_config(config(512))]

        /// The head of a GET or HEAD: metadata is read without a panic, and a range
        /// answer is taken only when it holds exactly the bytes asked for.
        #[test]
        fn object_heads_never_panic_and_ranges_hold_what_was_asked(
            status in prop_oneof![Just(200u16), Just(206), Just(204), Just(416), 100u16..600],
            headers in head_headers(),
            start in prop_oneof![Just(0u64), any::<u64>()],
            len in prop_oneof![1u64..1 << 40, Just(1)],
        ) {
            let head = crate::http::ResponseHead { status, headers };
            let _ = info_from_head(&head);
            let end = start.saturating_add(len);
            prop_assume!(end > start);
            if check_range_answer("k", (start, end), &head).is_ok() {
                prop_assert!(status == 200 || status == 206);
                prop_assert_eq!(head.content_length(), Some(end - start));
                if let Some(range) = head.content_range() {
                    let range = range.expect("a Content-Range taken is valid");
                    prop_assert_eq!((range.first, range.last), (start, end - 1));
                }
            }
        }
    }

    /// An error document's Code and Message are put in one line, like a body that is
    /// no error document: `<Error><Code>X</Code><Message>a\nFORGED: b</Message></Error>`
    /// gives the message `a FORGED: b` (engine/src/backend/s3.rs, `http_error`).
    #[test]
    fn error_messages_stay_on_one_line() {
        let body = b"<Error><Code>InternalError</Code><Message>a\nFORGED: b</Message></Error>";
        let e = store_at(1).http_error("get", "k", &answer(500), body).to_string();
        assert_eq!(e, "get k: HTTP 500 InternalError: a FORGED: b");
        let body = b"<Error><Code>A&#10;B</Code><Message>&#27;[31m  red&#x202E;\t</Message></Error>";
        let e = store_at(1).http_error("get", "k", &answer(500), body).to_string();
        assert_eq!(e, "get k: HTTP 500 A B: [31m  red");
        let body = b"<Error><Code>X</Code><Message>&#13;</Message></Error>";
        let e = store_at(1).http_error("get", "k", &answer(500), body).to_string();
        assert_eq!(e, "get k: HTTP 500 X: 500 Internal Server Error");
    }
}
