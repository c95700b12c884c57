//! The synthetic endpoint's request handling (see the parent module for what it does).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use laminar_engine::checksum::{crc32c_combine, ChecksumAlgo, Hasher};
use md5::Digest as _;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::chunked::Decoder;
use super::ManifestEntry;
use crate::workload::{self, Workload};

/// Objects at least this large get a multipart-style ETag, as an upload in parts would.
const MULTIPART_ETAG_BYTES: u64 = 64 << 20;
/// The part size behind those ETags' part counts.
const ETAG_PART_BYTES: u64 = 16 << 20;
/// S3's smallest part, for every part but the last.
const MIN_PART_BYTES: u64 = 5 << 20;
/// Largest body accepted for a control request (Complete, DeleteObjects).
const CONTROL_BODY_BYTES_MAX: usize = 4 << 20;
/// Largest frame of a GET body.
const FRAME_BYTES_MAX: u64 = 1 << 20;
/// Every object's Last-Modified.
const LAST_MODIFIED_HTTP: &str = "Mon, 02 Nov 2026 00:00:00 GMT";
const LAST_MODIFIED_ISO: &str = "2026-11-02T00:00:00.000Z";

/// Percent-encode all but RFC 3986 unreserved characters and `/` (S3's `encoding-type=url`).
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// A generated object: its bytes come from [`workload::slices`].
struct Generated {
    /// The workload's key (without the bucket prefix), which seeds the bytes.
    seed_key: String,
    size: u64,
    crc32c: OnceLock<u32>,
    etag: OnceLock<String>,
}

impl Generated {
    fn crc32c(&self) -> u32 {
        *self.crc32c.get_or_init(|| workload::object_crc32c(&self.seed_key, self.size))
    }

    fn etag(&self) -> &str {
        self.etag.get_or_init(|| {
            if self.size >= MULTIPART_ETAG_BYTES {
                let h = md5::Md5::digest(self.seed_key.as_bytes());
                format!("{}-{}", hex::encode(h), self.size.div_ceil(ETAG_PART_BYTES))
            } else {
                let mut m = md5::Md5::new();
                for s in workload::slices(&self.seed_key, 0, self.size) {
                    m.update(s);
                }
                hex::encode(m.finalize())
            }
        })
    }
}

/// What a written object leaves behind: everything but its bytes.
#[derive(Clone)]
struct Written {
    size: u64,
    crc32c: u32,
    etag: String,
    content_type: Option<String>,
    meta: Vec<(String, String)>,
    /// Whether GET/HEAD with checksum mode may report the CRC32C as the object's.
    reports_crc32c: bool,
}

struct Part {
    size: u64,
    crc32c: u32,
    etag: String,
    /// The MD5 the part's ETag is, when the client sent Content-MD5.
    md5: Option<[u8; 16]>,
}

struct Upload {
    bucket: String,
    key: String,
    content_type: Option<String>,
    meta: Vec<(String, String)>,
    parts: BTreeMap<u32, Part>,
}

/// Counters served at `/_synthetic/stats`.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    bytes_served: AtomicU64,
    bytes_received: AtomicU64,
    checksum_mismatches: AtomicU64,
}

/// Everything the endpoint knows.
pub struct State {
    source_bucket: Option<String>,
    generated: BTreeMap<String, Generated>,
    buckets: Mutex<HashMap<String, BTreeMap<String, Written>>>,
    uploads: Mutex<HashMap<String, Upload>>,
    next_id: AtomicU64,
    stats: Stats,
}

impl State {
    /// An endpoint serving `workload` under `bucket/prefix` (if given) and taking
    /// writes into any other bucket.
    pub fn new(source: Option<(&str, &str, &Workload)>) -> State {
        let mut generated = BTreeMap::new();
        if let Some((_, prefix, w)) = source {
            for o in &w.objects {
                generated.insert(
                    format!("{prefix}{}", o.key),
                    Generated {
                        seed_key: o.key.clone(),
                        size: o.size_bytes,
                        crc32c: OnceLock::new(),
                        etag: OnceLock::new(),
                    },
                );
            }
        }
        State {
            source_bucket: source.map(|s| s.0.to_string()),
            generated,
            buckets: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stats: Stats::default(),
        }
    }

    fn is_source(&self, bucket: &str) -> bool {
        self.source_bucket.as_deref() == Some(bucket)
    }

    /// Every object under `prefix` in `bucket`, with its CRC32C.
    pub fn manifest(&self, bucket: &str, prefix: &str) -> Vec<ManifestEntry> {
        if self.is_source(bucket) {
            return self
                .generated
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, g)| {
                    // Computes and caches the ETag too, so a manifest call warms the
                    // endpoint up before anything is timed.
                    let _ = g.etag();
                    ManifestEntry { key: k.clone(), size_bytes: g.size, crc32c: g.crc32c() }
                })
                .collect();
        }
        let buckets = self.buckets.lock().expect("no handler panics holding the lock");
        let Some(objects) = buckets.get(bucket) else { return Vec::new() };
        objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, w)| ManifestEntry { key: k.clone(), size_bytes: w.size, crc32c: w.crc32c })
            .collect()
    }
}

/// A response body: nothing, a buffer, or a range of generated bytes.
pub enum SynthBody {
    /// One buffer (possibly empty).
    Full(Option<Bytes>),
    /// Generated bytes of `seed_key` from `offset`, `left` to go.
    Pattern { seed_key: String, offset: u64, left: u64 },
}

impl Body for SynthBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            SynthBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            SynthBody::Pattern { seed_key, offset, left } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let want = (*left).min(FRAME_BYTES_MAX);
                let slice = workload::slices(seed_key, *offset, want).next().expect("want > 0");
                *offset += slice.len() as u64;
                *left -= slice.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(slice)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SynthBody::Full(b) => b.is_none(),
            SynthBody::Pattern { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SynthBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            SynthBody::Pattern { left, .. } => SizeHint::with_exact(*left),
        }
    }
}

type Resp = Response<SynthBody>;

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

fn error(status: StatusCode, code: &str, message: &str, resource: &str) -> Resp {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message><Resource>{}</Resource><RequestId>synthetic</RequestId></Error>",
        xml_escape(message),
        xml_escape(resource)
    );
    let mut r = Response::new(SynthBody::Full(Some(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", "application/xml".parse().expect("static"));
    r
}

fn xml(body: String) -> Resp {
    let mut r = Response::new(SynthBody::Full(Some(Bytes::from(body))));
    r.headers_mut().insert("content-type", "application/xml".parse().expect("static"));
    r
}

fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(SynthBody::Full(None));
    *r.status_mut() = status;
    r
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Parses a query string into decoded pairs.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
            (dec(k), dec(v))
        })
        .collect()
}

/// Parses `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`: `Ok(None)` for no range,
/// `Err(())` when unsatisfiable or malformed.
pub fn parse_range(value: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = value else { return Ok(None) };
    if size == 0 {
        return Err(());
    }
    let spec = value.trim().strip_prefix("bytes=").ok_or(())?;
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end_incl) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size.checked_sub(1).ok_or(())?)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() { size.saturating_sub(1) } else { b.parse::<u64>().map_err(|_| ())?.min(size - 1) };
        (start, end)
    };
    if start >= size || end_incl < start {
        return Err(());
    }
    Ok(Some((start, end_incl + 1)))
}

/// Handles one request.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    let query = query_pairs(req.uri().query().unwrap_or(""));
    if let Some(admin) = path.strip_prefix("/_synthetic/") {
        return Ok(admin_request(&state, admin, &query));
    }
    let decoded = percent_decode_str(&path).decode_utf8_lossy().into_owned();
    let trimmed = decoded.strip_prefix('/').unwrap_or(&decoded);
    let (bucket, key) = match trimmed.split_once('/') {
        Some((b, k)) => (b.to_string(), k.to_string()),
        None => (trimmed.to_string(), String::new()),
    };
    let has = |name: &str| query.iter().any(|(k, _)| k == name);
    let get = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let method = req.method().clone();
    let resp = if bucket.is_empty() {
        xml("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListAllMyBucketsResult><Buckets></Buckets></ListAllMyBucketsResult>".into())
    } else if key.is_empty() {
        match method {
            Method::GET if has("uploads") => list_uploads(&state, &bucket),
            Method::GET if has("location") => {
                xml("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint>us-east-1</LocationConstraint>"
                    .into())
            }
            Method::GET => list(&state, &bucket, &query),
            Method::HEAD => empty(StatusCode::OK),
            Method::PUT => {
                if !state.is_source(&bucket) {
                    state.buckets.lock().expect("lock").entry(bucket.clone()).or_default();
                }
                empty(StatusCode::OK)
            }
            Method::POST if has("delete") => delete_objects(&state, &bucket, req).await,
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not supported on a bucket", &path),
        }
    } else {
        match method {
            Method::GET | Method::HEAD => read_object(&state, &bucket, &key, req.headers(), method == Method::HEAD),
            Method::PUT if state.is_source(&bucket) => {
                error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "the generated bucket is read-only", &path)
            }
            Method::PUT if req.headers().contains_key("x-amz-copy-source") => {
                if has("uploadId") {
                    error(
                        StatusCode::NOT_IMPLEMENTED,
                        "NotImplemented",
                        "UploadPartCopy is not implemented here",
                        &path,
                    )
                } else {
                    copy_object(&state, &bucket, &key, req.headers())
                }
            }
            Method::PUT if has("uploadId") => {
                let number = get("partNumber").and_then(|n| n.parse::<u32>().ok());
                let id = get("uploadId").unwrap_or("").to_string();
                match number {
                    Some(n @ 1..=10_000) => upload_part(&state, &bucket, &key, &id, n, req).await,
                    _ => error(StatusCode::BAD_REQUEST, "InvalidArgument", "partNumber must be 1 to 10000", &path),
                }
            }
            Method::PUT => put_object(&state, &bucket, &key, req).await,
            Method::POST if has("uploads") => create_upload(&state, &bucket, &key, req.headers()),
            Method::POST if has("uploadId") => {
                let id = get("uploadId").unwrap_or("").to_string();
                complete_upload(&state, &bucket, &key, &id, req).await
            }
            Method::DELETE if has("uploadId") => {
                let id = get("uploadId").unwrap_or("");
                match state.uploads.lock().expect("lock").remove(id) {
                    Some(_) => empty(StatusCode::NO_CONTENT),
                    None => error(StatusCode::NOT_FOUND, "NoSuchUpload", "no such upload", &path),
                }
            }
            Method::DELETE => {
                if let Some(objects) = state.buckets.lock().expect("lock").get_mut(&bucket) {
                    objects.remove(&key);
                }
                empty(StatusCode::NO_CONTENT)
            }
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not supported on an object", &path),
        }
    };
    Ok(resp)
}

fn admin_request(state: &State, what: &str, query: &[(String, String)]) -> Resp {
    let get = |name: &str| query.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
    let body = match what {
        "manifest" => serde_json::to_string(&state.manifest(get("bucket"), get("prefix"))).expect("serialises"),
        "stats" => {
            let s = &state.stats;
            serde_json::json!({
                "requests": s.requests.load(Ordering::Relaxed),
                "bytes_served": s.bytes_served.load(Ordering::Relaxed),
                "bytes_received": s.bytes_received.load(Ordering::Relaxed),
                "checksum_mismatches": s.checksum_mismatches.load(Ordering::Relaxed),
            })
            .to_string()
        }
        _ => return error(StatusCode::NOT_FOUND, "NoSuchAdminCall", "use /_synthetic/manifest or /stats", what),
    };
    let mut r = Response::new(SynthBody::Full(Some(Bytes::from(body))));
    r.headers_mut().insert("content-type", "application/json".parse().expect("static"));
    r
}

fn b64_u32(v: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(v.to_be_bytes())
}

fn read_object(state: &State, bucket: &str, key: &str, headers: &HeaderMap, head_only: bool) -> Resp {
    let resource = format!("/{bucket}/{key}");
    let checksum_mode = header(headers, "x-amz-checksum-mode").is_some_and(|v| v.eq_ignore_ascii_case("enabled"));
    let (size, etag, crc, content_type, meta, seed) = if state.is_source(bucket) {
        let Some(g) = state.generated.get(key) else {
            return error(StatusCode::NOT_FOUND, "NoSuchKey", "no such key", &resource);
        };
        (g.size, g.etag().to_string(), checksum_mode.then(|| g.crc32c()), None, Vec::new(), Some(g.seed_key.clone()))
    } else {
        let buckets = state.buckets.lock().expect("lock");
        let Some(w) = buckets.get(bucket).and_then(|b| b.get(key)) else {
            return error(StatusCode::NOT_FOUND, "NoSuchKey", "no such key", &resource);
        };
        let crc = (checksum_mode && w.reports_crc32c).then_some(w.crc32c);
        (w.size, w.etag.clone(), crc, w.content_type.clone(), w.meta.clone(), None)
    };
    let range = match parse_range(header(headers, "range"), size) {
        Ok(r) => r,
        Err(()) => {
            let mut r =
                error(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange", "the range is not satisfiable", &resource);
            r.headers_mut().insert("content-range", format!("bytes */{size}").parse().expect("ascii"));
            return r;
        }
    };
    let (start, end) = range.unwrap_or((0, size));
    let body = match (&seed, head_only) {
        (_, true) => SynthBody::Full(None),
        (Some(seed), false) => {
            state.stats.bytes_served.fetch_add(end - start, Ordering::Relaxed);
            SynthBody::Pattern { seed_key: seed.clone(), offset: start, left: end - start }
        }
        (None, false) => {
            return error(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                "written objects keep no bytes here; only HEAD and listings see them",
                &resource,
            )
        }
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    let mut set = |name: &str, value: String| {
        if let (Ok(n), Ok(v)) = (http::HeaderName::try_from(name), http::HeaderValue::try_from(value)) {
            h.insert(n, v);
        }
    };
    set("content-length", (end - start).to_string());
    set("etag", format!("\"{etag}\""));
    set("last-modified", LAST_MODIFIED_HTTP.to_string());
    set("accept-ranges", "bytes".to_string());
    set("content-type", content_type.unwrap_or_else(|| "application/octet-stream".to_string()));
    for (k, v) in meta {
        set(&k, v);
    }
    if range.is_some() {
        set("content-range", format!("bytes {start}-{}/{size}", end - 1));
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    } else if let Some(crc) = crc {
        set("x-amz-checksum-crc32c", b64_u32(crc));
        set("x-amz-checksum-type", "FULL_OBJECT".to_string());
    }
    r
}

/// The first key after `cursor` (or at `prefix`, whichever is later) under `prefix`.
fn next_key<'a, V>(map: &'a BTreeMap<String, V>, prefix: &str, cursor: &str) -> Option<(&'a String, &'a V)> {
    use std::ops::Bound;
    let start = if cursor >= prefix { Bound::Excluded(cursor) } else { Bound::Included(prefix) };
    map.range::<str, _>((start, Bound::Unbounded)).next().filter(|(k, _)| k.starts_with(prefix))
}

fn list(state: &State, bucket: &str, query: &[(String, String)]) -> Resp {
    let get = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let v2 = get("list-type") == Some("2");
    let prefix = get("prefix").unwrap_or("");
    let delimiter = get("delimiter").filter(|d| !d.is_empty());
    let max_keys = get("max-keys").and_then(|m| m.parse::<usize>().ok()).unwrap_or(1000).min(1000);
    let url = get("encoding-type") == Some("url");
    let enc = |s: &str| if url { utf8_percent_encode(s, KEY_ENCODE).to_string() } else { xml_escape(s) };
    // V2 continuation tokens are the hex of the key to continue after.
    let token = get("continuation-token").map(|t| hex::decode(t).ok().and_then(|b| String::from_utf8(b).ok()));
    let after = match (v2, token) {
        (true, Some(None)) => {
            return error(StatusCode::BAD_REQUEST, "InvalidArgument", "the continuation token is invalid", bucket)
        }
        (true, Some(Some(t))) => t,
        (true, None) => get("start-after").unwrap_or("").to_string(),
        (false, _) => get("marker").unwrap_or("").to_string(),
    };
    let buckets = state.buckets.lock().expect("lock");
    let written = buckets.get(bucket);
    if !state.is_source(bucket) && written.is_none() && state.source_bucket.is_some() {
        return error(StatusCode::NOT_FOUND, "NoSuchBucket", "no such bucket", bucket);
    }
    // Each step is one ordered lookup, so a common prefix over many keys costs one step.
    let next = |cursor: &str| -> Option<(String, u64, String)> {
        if state.is_source(bucket) {
            next_key(&state.generated, prefix, cursor).map(|(k, g)| (k.clone(), g.size, g.etag().to_string()))
        } else {
            written.and_then(|m| next_key(m, prefix, cursor)).map(|(k, w)| (k.clone(), w.size, w.etag.clone()))
        }
    };
    let mut contents = String::new();
    let mut prefixes: Vec<String> = Vec::new();
    let mut count = 0;
    let mut cursor = after.clone();
    let mut truncated = false;
    while let Some((key, size, etag)) = next(&cursor) {
        if count == max_keys {
            truncated = true;
            break;
        }
        count += 1;
        if let Some(i) = delimiter.and_then(|d| key[prefix.len()..].find(d).map(|i| i + d.len())) {
            let p = key[..prefix.len() + i].to_string();
            // Past every key under the common prefix.
            cursor = format!("{p}\u{10ffff}");
            prefixes.push(p);
            continue;
        }
        contents.push_str(&format!(
            "<Contents><Key>{}</Key><LastModified>{LAST_MODIFIED_ISO}</LastModified><ETag>&quot;{etag}&quot;</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>",
            enc(&key)
        ));
        cursor = key;
    }
    drop(buckets);
    let mut body = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult>");
    body.push_str(&format!(
        "<Name>{}</Name><Prefix>{}</Prefix><MaxKeys>{max_keys}</MaxKeys>",
        xml_escape(bucket),
        enc(prefix)
    ));
    if let Some(d) = delimiter {
        body.push_str(&format!("<Delimiter>{}</Delimiter>", enc(d)));
    }
    if url {
        body.push_str("<EncodingType>url</EncodingType>");
    }
    body.push_str(&format!("<IsTruncated>{truncated}</IsTruncated>"));
    if v2 {
        body.push_str(&format!("<KeyCount>{count}</KeyCount>"));
        if truncated {
            body.push_str(&format!("<NextContinuationToken>{}</NextContinuationToken>", hex::encode(&cursor)));
        }
    } else {
        body.push_str(&format!("<Marker>{}</Marker>", enc(&after)));
        if truncated {
            body.push_str(&format!("<NextMarker>{}</NextMarker>", enc(&cursor)));
        }
    }
    body.push_str(&contents);
    for p in prefixes {
        body.push_str(&format!("<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>", enc(&p)));
    }
    body.push_str("</ListBucketResult>");
    xml(body)
}

fn list_uploads(state: &State, bucket: &str) -> Resp {
    let uploads = state.uploads.lock().expect("lock");
    let mut body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListMultipartUploadsResult><Bucket>{}</Bucket><IsTruncated>false</IsTruncated>",
        xml_escape(bucket)
    );
    let mut listed: Vec<_> = uploads.iter().filter(|(_, u)| u.bucket == bucket).collect();
    listed.sort_by(|a, b| (&a.1.key, a.0).cmp(&(&b.1.key, b.0)));
    for (id, u) in listed {
        body.push_str(&format!(
            "<Upload><Key>{}</Key><UploadId>{id}</UploadId><Initiated>{LAST_MODIFIED_ISO}</Initiated></Upload>",
            xml_escape(&u.key)
        ));
    }
    body.push_str("</ListMultipartUploadsResult>");
    xml(body)
}

/// User metadata and content type to keep from a request.
fn kept_headers(headers: &HeaderMap) -> (Option<String>, Vec<(String, String)>) {
    let content_type = header(headers, "content-type").map(str::to_string);
    let meta = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-amz-meta-"))
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    (content_type, meta)
}

/// The checksums a body must match, from headers or aws-chunked trailers.
struct Received {
    size: u64,
    crc32c: u32,
    md5: Option<[u8; 16]>,
}

/// Reads a request body (plain or aws-chunked), verifying every checksum the client
/// gave. `want_md5` computes MD5 even when the client sent none (single PUT ETags).
async fn receive(state: &State, req: Request<Incoming>, want_md5: bool) -> Result<Received, Resp> {
    let resource = req.uri().path().to_string();
    let headers = req.headers().clone();
    let content_sha256 = header(&headers, "x-amz-content-sha256").unwrap_or("");
    let chunked = header(&headers, "content-encoding").is_some_and(|e| e.contains("aws-chunked"))
        || content_sha256.starts_with("STREAMING-");
    let declared: Option<u64> = if chunked {
        header(&headers, "x-amz-decoded-content-length").and_then(|v| v.parse().ok())
    } else {
        header(&headers, "content-length").and_then(|v| v.parse().ok())
    };
    let content_md5 = header(&headers, "content-md5").map(str::to_string);
    let sha256_hex = (content_sha256.len() == 64 && content_sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| content_sha256.to_ascii_lowercase());
    // Which checksums to compute: any named in headers or announced as trailers.
    let announced = header(&headers, "x-amz-trailer").unwrap_or("").to_ascii_lowercase();
    let wants = |name: &str| headers.contains_key(name) || announced.contains(name);
    let mut crc32 = (wants("x-amz-checksum-crc32")).then(crc32fast::Hasher::new);
    let mut crc64 = wants("x-amz-checksum-crc64nvme").then(|| Hasher::new(ChecksumAlgo::Crc64nvme));
    let mut sha = (wants("x-amz-checksum-sha256") || sha256_hex.is_some()).then(|| Hasher::new(ChecksumAlgo::Sha256));
    let mut md5 = (want_md5 || content_md5.is_some()).then(md5::Md5::new);
    let mut crc32c = 0u32;
    let mut size = 0u64;
    let mut decoder = chunked.then(Decoder::default);
    let mut body = req.into_body();
    let mut consume = |data: &[u8]| {
        size += data.len() as u64;
        crc32c = crc32c::crc32c_append(crc32c, data);
        if let Some(h) = crc32.as_mut() {
            h.update(data);
        }
        if let Some(h) = crc64.as_mut() {
            h.update(data);
        }
        if let Some(h) = sha.as_mut() {
            h.update(data);
        }
        if let Some(h) = md5.as_mut() {
            h.update(data);
        }
    };
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "IncompleteBody",
                    &format!("reading the body: {e}"),
                    &resource,
                ))
            }
        };
        let Ok(data) = frame.into_data() else { continue };
        state.stats.bytes_received.fetch_add(data.len() as u64, Ordering::Relaxed);
        match decoder.as_mut() {
            Some(d) => d
                .feed(&data, &mut consume)
                .map_err(|e| error(StatusCode::BAD_REQUEST, "InvalidRequest", &e, &resource))?,
            None => consume(&data),
        }
    }
    let trailers: Vec<(String, String)> = decoder.as_ref().map(|d| d.trailers().to_vec()).unwrap_or_default();
    if let Some(d) = &decoder {
        if !d.finished() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "IncompleteBody",
                "the aws-chunked body ended early",
                &resource,
            ));
        }
    }
    if declared.is_some_and(|n| n != size) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "IncompleteBody",
            &format!("{size} bytes received, {} declared", declared.unwrap_or(0)),
            &resource,
        ));
    }
    let given = |name: &str| -> Option<String> {
        header(&headers, name)
            .map(str::to_string)
            .or_else(|| trailers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    };
    let md5_bytes: Option<[u8; 16]> = md5.map(|m| m.finalize().into());
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut checks: Vec<(String, String, String)> = Vec::new();
    if let Some(v) = content_md5 {
        checks.push(("Content-MD5".into(), v, b64(&md5_bytes.expect("computed when sent"))));
    }
    if let Some(v) = given("x-amz-checksum-crc32c") {
        checks.push(("x-amz-checksum-crc32c".into(), v, b64_u32(crc32c)));
    }
    if let (Some(v), Some(h)) = (given("x-amz-checksum-crc32"), crc32) {
        checks.push(("x-amz-checksum-crc32".into(), v, b64_u32(h.finalize())));
    }
    if let (Some(v), Some(h)) = (given("x-amz-checksum-crc64nvme"), crc64) {
        checks.push(("x-amz-checksum-crc64nvme".into(), v, h.finish().to_base64()));
    }
    let sha = sha.map(|h| h.finish());
    if let (Some(v), Some(h)) = (given("x-amz-checksum-sha256"), &sha) {
        checks.push(("x-amz-checksum-sha256".into(), v, h.to_base64()));
    }
    if let (Some(v), Some(h)) = (sha256_hex, &sha) {
        checks.push(("x-amz-content-sha256".into(), v, h.to_hex()));
    }
    for (name, sent, computed) in checks {
        if sent.trim() != computed {
            state.stats.checksum_mismatches.fetch_add(1, Ordering::Relaxed);
            return Err(error(
                StatusCode::BAD_REQUEST,
                "BadDigest",
                &format!("the {name} you specified ({sent}) did not match the body's ({computed})"),
                &resource,
            ));
        }
    }
    Ok(Received { size, crc32c, md5: md5_bytes })
}

fn store(state: &State, bucket: &str, key: &str, w: Written) {
    state.buckets.lock().expect("lock").entry(bucket.to_string()).or_default().insert(key.to_string(), w);
}

fn etag_response(etag: &str, extra: Option<(&str, String)>) -> Resp {
    let mut r = empty(StatusCode::OK);
    r.headers_mut().insert("etag", format!("\"{etag}\"").parse().expect("hex"));
    if let Some((name, value)) = extra {
        if let (Ok(n), Ok(v)) = (http::HeaderName::try_from(name), http::HeaderValue::try_from(value)) {
            r.headers_mut().insert(n, v);
        }
    }
    r
}

async fn put_object(state: &State, bucket: &str, key: &str, req: Request<Incoming>) -> Resp {
    let (content_type, meta) = kept_headers(req.headers());
    let reports_crc32c = req.headers().contains_key("x-amz-checksum-crc32c")
        || header(req.headers(), "x-amz-trailer").is_some_and(|t| t.contains("crc32c"));
    let got = match receive(state, req, true).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let etag = hex::encode(got.md5.expect("computed for single PUTs"));
    store(
        state,
        bucket,
        key,
        Written { size: got.size, crc32c: got.crc32c, etag: etag.clone(), content_type, meta, reports_crc32c },
    );
    etag_response(&etag, reports_crc32c.then(|| ("x-amz-checksum-crc32c", b64_u32(got.crc32c))))
}

fn copy_object(state: &State, bucket: &str, key: &str, headers: &HeaderMap) -> Resp {
    let source = header(headers, "x-amz-copy-source").unwrap_or("");
    let source = percent_decode_str(source.trim_start_matches('/')).decode_utf8_lossy().into_owned();
    let source = source.split('?').next().unwrap_or("").to_string();
    let (sb, sk) = source.split_once('/').unwrap_or((&source, ""));
    let record = if state.is_source(sb) {
        state.generated.get(sk).map(|g| Written {
            size: g.size,
            crc32c: g.crc32c(),
            etag: g.etag().to_string(),
            content_type: None,
            meta: Vec::new(),
            reports_crc32c: true,
        })
    } else {
        state.buckets.lock().expect("lock").get(sb).and_then(|b| b.get(sk)).cloned()
    };
    let Some(mut record) = record else {
        return error(StatusCode::NOT_FOUND, "NoSuchKey", "the copy source does not exist", &source);
    };
    if header(headers, "x-amz-metadata-directive").is_some_and(|d| d.eq_ignore_ascii_case("REPLACE")) {
        let (ct, meta) = kept_headers(headers);
        record.content_type = ct;
        record.meta = meta;
    }
    let etag = record.etag.clone();
    store(state, bucket, key, record);
    xml(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyObjectResult><LastModified>{LAST_MODIFIED_ISO}</LastModified><ETag>&quot;{etag}&quot;</ETag></CopyObjectResult>"
    ))
}

fn create_upload(state: &State, bucket: &str, key: &str, headers: &HeaderMap) -> Resp {
    let (content_type, meta) = kept_headers(headers);
    let id = format!("synthetic-{:016x}", state.next_id.fetch_add(1, Ordering::Relaxed));
    state.uploads.lock().expect("lock").insert(
        id.clone(),
        Upload { bucket: bucket.to_string(), key: key.to_string(), content_type, meta, parts: BTreeMap::new() },
    );
    xml(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult><Bucket>{}</Bucket><Key>{}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
        xml_escape(bucket),
        xml_escape(key)
    ))
}

async fn upload_part(state: &State, bucket: &str, key: &str, id: &str, number: u32, req: Request<Incoming>) -> Resp {
    let resource = format!("/{bucket}/{key}");
    let known = state.uploads.lock().expect("lock").get(id).is_some_and(|u| u.bucket == bucket && u.key == key);
    if !known {
        return error(StatusCode::NOT_FOUND, "NoSuchUpload", "no such upload", &resource);
    }
    let got = match receive(state, req, false).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    // Real stores make a part's ETag its MD5; without Content-MD5 this endpoint computes
    // no MD5, and the ETag is an opaque value that still names the part's bytes.
    let etag = match got.md5 {
        Some(m) => hex::encode(m),
        None => format!("{:08x}{:016x}{:08x}", got.crc32c, got.size, number),
    };
    let mut uploads = state.uploads.lock().expect("lock");
    let Some(upload) = uploads.get_mut(id) else {
        return error(StatusCode::NOT_FOUND, "NoSuchUpload", "the upload was aborted", &resource);
    };
    upload.parts.insert(number, Part { size: got.size, crc32c: got.crc32c, etag: etag.clone(), md5: got.md5 });
    etag_response(&etag, Some(("x-amz-checksum-crc32c", b64_u32(got.crc32c))))
}

/// `(part number, ETag)` pairs of a CompleteMultipartUpload body.
fn parse_complete(body: &str) -> Result<Vec<(u32, String)>, String> {
    let mut parts = Vec::new();
    for chunk in body.split("<Part>").skip(1) {
        let field = |name: &str| -> Option<String> {
            let open = format!("<{name}>");
            let start = chunk.find(&open)? + open.len();
            let end = chunk[start..].find(&format!("</{name}>"))? + start;
            Some(chunk[start..end].trim().to_string())
        };
        let number = field("PartNumber").and_then(|n| n.parse().ok()).ok_or("a Part without a PartNumber")?;
        let etag = field("ETag").ok_or("a Part without an ETag")?;
        let etag = etag.replace("&quot;", "").replace("&#34;", "").trim_matches('"').to_string();
        parts.push((number, etag));
    }
    if parts.is_empty() {
        return Err("no parts".into());
    }
    Ok(parts)
}

async fn complete_upload(state: &State, bucket: &str, key: &str, id: &str, req: Request<Incoming>) -> Resp {
    let resource = format!("/{bucket}/{key}");
    let full_crc = header(req.headers(), "x-amz-checksum-crc32c").map(str::to_string);
    let body = match read_small_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let listed = match parse_complete(&String::from_utf8_lossy(&body)) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, "MalformedXML", &e, &resource),
    };
    let mut uploads = state.uploads.lock().expect("lock");
    let Some(upload) = uploads.get(id).filter(|u| u.bucket == bucket && u.key == key) else {
        return error(StatusCode::NOT_FOUND, "NoSuchUpload", "no such upload", &resource);
    };
    let mut crc = 0u32;
    let mut size = 0u64;
    let mut md5s = Vec::with_capacity(listed.len() * 16);
    for (i, (number, etag)) in listed.iter().enumerate() {
        if i > 0 && *number <= listed[i - 1].0 {
            return error(StatusCode::BAD_REQUEST, "InvalidPartOrder", "parts must be in ascending order", &resource);
        }
        let Some(part) = upload.parts.get(number).filter(|p| p.etag == *etag) else {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidPart",
                &format!("part {number} was not uploaded with ETag {etag}"),
                &resource,
            );
        };
        if i + 1 < listed.len() && part.size < MIN_PART_BYTES {
            return error(
                StatusCode::BAD_REQUEST,
                "EntityTooSmall",
                &format!(
                    "part {number} is {} bytes; every part but the last must be at least {MIN_PART_BYTES}",
                    part.size
                ),
                &resource,
            );
        }
        crc = crc32c_combine(crc, part.crc32c, part.size);
        size += part.size;
        match part.md5 {
            Some(m) => md5s.extend_from_slice(&m),
            None => md5s.extend_from_slice(part.etag.as_bytes()),
        }
    }
    if let Some(sent) = full_crc {
        if sent.trim() != b64_u32(crc) {
            state.stats.checksum_mismatches.fetch_add(1, Ordering::Relaxed);
            return error(
                StatusCode::BAD_REQUEST,
                "BadDigest",
                &format!("the full-object CRC32C you specified ({sent}) did not match the parts' ({})", b64_u32(crc)),
                &resource,
            );
        }
    }
    let etag = format!("{}-{}", hex::encode(md5::Md5::digest(&md5s)), listed.len());
    let upload = uploads.remove(id).expect("looked up above");
    drop(uploads);
    store(
        state,
        bucket,
        key,
        Written {
            size,
            crc32c: crc,
            etag: etag.clone(),
            content_type: upload.content_type,
            meta: upload.meta,
            reports_crc32c: true,
        },
    );
    xml(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUploadResult><Bucket>{}</Bucket><Key>{}</Key><ETag>&quot;{etag}&quot;</ETag><ChecksumCRC32C>{}</ChecksumCRC32C><ChecksumType>FULL_OBJECT</ChecksumType></CompleteMultipartUploadResult>",
        xml_escape(bucket),
        xml_escape(key),
        b64_u32(crc)
    ))
}

async fn read_small_body(req: Request<Incoming>) -> Result<Vec<u8>, Resp> {
    let resource = req.uri().path().to_string();
    let mut body = req.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| error(StatusCode::BAD_REQUEST, "IncompleteBody", &e.to_string(), &resource))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > CONTROL_BODY_BYTES_MAX {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "MaxMessageLengthExceeded",
                    "request body too large",
                    &resource,
                ));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

async fn delete_objects(state: &State, bucket: &str, req: Request<Incoming>) -> Resp {
    let body = match read_small_body(req).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(r) => return r,
    };
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteResult>");
    let mut buckets = state.buckets.lock().expect("lock");
    for chunk in body.split("<Key>").skip(1) {
        let Some(end) = chunk.find("</Key>") else { continue };
        let key = chunk[..end].replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
        if let Some(objects) = buckets.get_mut(bucket) {
            objects.remove(&key);
        }
        out.push_str(&format!("<Deleted><Key>{}</Key></Deleted>", xml_escape(&key)));
    }
    out.push_str("</DeleteResult>");
    xml(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Ok(Some((0, 5))));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Ok(Some((5, 10))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some((7, 10))));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Ok(Some((8, 10))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Err(()));
        assert_eq!(parse_range(Some("items=0-1"), 10), Err(()));
    }

    #[test]
    fn complete_bodies() {
        let body = "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"ab\"</ETag></Part><Part><ETag>&quot;cd&quot;</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>";
        assert_eq!(parse_complete(body).unwrap(), [(1, "ab".to_string()), (2, "cd".to_string())]);
        assert!(parse_complete("<CompleteMultipartUpload/>").is_err());
    }

    fn listing(state: &State, query: &str) -> String {
        let r = list(state, "src", &query_pairs(query));
        match r.into_body() {
            SynthBody::Full(Some(b)) => String::from_utf8(b.to_vec()).unwrap(),
            _ => panic!("listing has a body"),
        }
    }

    #[test]
    fn lists_with_delimiters_and_pages() {
        let w = Workload::named("tiny").unwrap();
        let state = State::new(Some(("src", "data/", &w)));
        let top = listing(&state, "list-type=2&prefix=data/&delimiter=/");
        assert!(top.contains("<Prefix>data/g0-16384/</Prefix>") && top.contains("<Prefix>data/g1-41943040/</Prefix>"));
        assert!(!top.contains("<Contents>"), "{top}");
        // Pages of 7 over 20 + 2 keys, V2 and V1, see every key once.
        for v2 in [true, false] {
            let mut seen = Vec::new();
            let mut after = String::new();
            loop {
                let q = if v2 {
                    format!("list-type=2&prefix=data/&max-keys=7&continuation-token={after}")
                } else {
                    format!("prefix=data/&max-keys=7&marker={after}")
                };
                let page = listing(&state, &q);
                for part in page.split("<Key>").skip(1) {
                    seen.push(part[..part.find("</Key>").unwrap()].to_string());
                }
                let tag = if v2 { "NextContinuationToken" } else { "NextMarker" };
                let Some(start) = page.find(&format!("<{tag}>")) else { break };
                let rest = &page[start + tag.len() + 2..];
                after = rest[..rest.find('<').unwrap()].to_string();
            }
            assert_eq!(seen.len(), 22, "v2 {v2}");
            assert!(seen.windows(2).all(|p| p[0] < p[1]));
        }
    }
}
