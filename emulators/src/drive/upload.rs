//! Uploads: the resumable protocol's rules, and `multipart/related` bodies.
//!
//! A resumable session takes chunks by `Content-Range: bytes FIRST-LAST/TOTAL` (TOTAL may
//! be `*` until the last chunk). The rules, as Google's upload servers apply them:
//!
//! - every chunk but the last is a multiple of 256 KiB (262,144 bytes), or 400;
//! - a chunk may start before what is committed (bytes already persisted are ignored), but
//!   not after it: a gap is 400;
//! - `Content-Length` equals the range's length, the total never changes once named, and
//!   agrees with `X-Upload-Content-Length`;
//! - `bytes */TOTAL` (or `*/*`) with an empty body asks what is committed: 308 with
//!   `Range: bytes=0-N` (no `Range` when nothing is), or the file when it is complete;
//! - a chunk that ends at TOTAL completes the upload: 200 with the file resource;
//! - a session expires (a week on Drive) and then answers 404.
//!
//! When a connection drops mid-chunk the session keeps what arrived, cut down to a 256 KiB
//! boundary, as the upload servers persist in such units; the client finds out with a
//! status query.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::errors::ApiError;
use super::store::{Content, Digests, Hashers, NewFile};

/// The unit every chunk but the last is a multiple of.
pub(crate) const CHUNK_UNIT_BYTES: u64 = 256 << 10;
const _: () = assert!(CHUNK_UNIT_BYTES == 262_144);

/// A parsed `Content-Range` of a session request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentRange {
    /// `bytes */TOTAL` or `bytes */*`: what is committed?
    Query { total: Option<u64> },
    /// `bytes FIRST-LAST/TOTAL` or `bytes FIRST-LAST/*`.
    Chunk { first: u64, last: u64, total: Option<u64> },
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a session request's `Content-Range`; None when it is malformed.
pub(crate) fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let total = if total == "*" { None } else { Some(number(total)?) };
    if range == "*" {
        return Some(ContentRange::Query { total });
    }
    let (a, b) = range.split_once('-')?;
    Some(ContentRange::Chunk { first: number(a)?, last: number(b)?, total })
}

/// What a session request asks for, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Report what is committed (or the file, when complete).
    Status,
    /// Everything is committed and the total is known: complete the upload.
    Finish { total: u64 },
    /// Read the body: drop its first `skip` bytes (already committed), append the rest.
    Append { skip: u64, take: u64, total: Option<u64>, last: bool },
}

/// What a session knows when a request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) committed: u64,
    /// `X-Upload-Content-Length` from the session's start.
    pub(crate) declared: Option<u64>,
    /// The total, once a request named it.
    pub(crate) total: Option<u64>,
}

fn invalid(message: String) -> ApiError {
    ApiError::bad_request(message)
}

/// Checks one session request against the rules in this module's documentation.
/// `content_length` is the request body's length (None when not sent).
pub(crate) fn plan(pos: Position, range: Option<ContentRange>, content_length: Option<u64>) -> Result<Step, ApiError> {
    let len = content_length.unwrap_or(0);
    // Without Content-Range the body is the whole file (a one-request resumable upload).
    let range = range.unwrap_or(if len == 0 {
        ContentRange::Query { total: Some(0) }
    } else {
        ContentRange::Chunk { first: 0, last: len - 1, total: Some(len) }
    });
    let check_total = |t: Option<u64>| -> Result<(), ApiError> {
        let Some(t) = t else { return Ok(()) };
        if let Some(d) = pos.declared.filter(|d| *d != t) {
            return Err(invalid(format!(
                "Invalid request. The total size in Content-Range ({t}) does not match X-Upload-Content-Length ({d})."
            )));
        }
        if let Some(s) = pos.total.filter(|s| *s != t) {
            return Err(invalid(format!(
                "Invalid request. The total size in Content-Range ({t}) differs from an earlier request's ({s})."
            )));
        }
        if t < pos.committed {
            return Err(invalid(format!(
                "Invalid request. The total size ({t}) is less than what is already uploaded ({}).",
                pos.committed
            )));
        }
        Ok(())
    };
    match range {
        ContentRange::Query { total } => {
            if len != 0 {
                return Err(invalid("Invalid request. A status query (bytes */...) must have an empty body.".into()));
            }
            check_total(total)?;
            Ok(match total {
                Some(t) if t == pos.committed => Step::Finish { total: t },
                _ => Step::Status,
            })
        }
        ContentRange::Chunk { first, last, total } => {
            if last < first {
                return Err(invalid(format!("Invalid request. Content-Range bytes {first}-{last} is empty.")));
            }
            let n = last - first + 1;
            if content_length != Some(n) {
                return Err(invalid(format!(
                    "Invalid request. Content-Length ({}) does not match Content-Range ({n} bytes).",
                    content_length.map_or("none".to_string(), |c| c.to_string())
                )));
            }
            check_total(total)?;
            if let Some(t) = total.filter(|t| last >= *t) {
                return Err(invalid(format!(
                    "Invalid request. Content-Range ends at byte {last}, past the total {t}."
                )));
            }
            if first > pos.committed {
                return Err(invalid(format!(
                    "Invalid request. According to the Content-Range header, the upload offset is {first} byte(s), \
which exceeds already uploaded size of {} byte(s).",
                    pos.committed
                )));
            }
            let is_last = total == Some(last + 1);
            if !is_last && n % CHUNK_UNIT_BYTES != 0 {
                return Err(invalid(format!(
                    "Invalid request. Every chunk but the last must be a multiple of {CHUNK_UNIT_BYTES} bytes; \
this one has {n} bytes."
                )));
            }
            let skip = (pos.committed - first).min(n);
            Ok(Step::Append { skip, take: n - skip, total, last: is_last })
        }
    }
}

/// What a finished session makes.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Create(Box<NewFile>),
    /// Replaces the content of a file, with a metadata patch applied at the end.
    Update {
        file_id: String,
        patch: serde_json::Value,
        add_parents: Option<String>,
        remove_parents: Option<String>,
        /// `X-Upload-Content-Type`, which becomes the file's type.
        mime_type: Option<String>,
    },
}

/// One resumable session. Its committed bytes count in `held_bytes` (against the
/// storage limit) until the upload completes or the session goes.
pub(crate) struct Session {
    pub(crate) target: Target,
    /// The start request's `fields`, which shape the final answer.
    pub(crate) fields: Option<String>,
    /// `X-Upload-Content-Length`.
    pub(crate) declared: Option<u64>,
    /// The total, once a request named it.
    pub(crate) total: Option<u64>,
    content: Content,
    hashers: Hashers,
    /// The id of the file made, once complete.
    pub(crate) done: Option<String>,
    held_bytes: Arc<AtomicU64>,
}

impl Session {
    pub(crate) fn new(
        target: Target,
        fields: Option<String>,
        declared: Option<u64>,
        held_bytes: Arc<AtomicU64>,
    ) -> Session {
        Session {
            target,
            fields,
            declared,
            total: None,
            content: Content::default(),
            hashers: Hashers::default(),
            done: None,
            held_bytes,
        }
    }

    pub(crate) fn position(&self) -> Position {
        Position { committed: self.content.len(), declared: self.declared, total: self.total }
    }

    pub(crate) fn committed(&self) -> u64 {
        self.content.len()
    }

    /// Appends committed bytes.
    pub(crate) fn commit(&mut self, b: Bytes) {
        // Relaxed: a counter for the storage check, no ordering with other memory.
        self.held_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
        self.hashers.update(&b);
        self.content.push(b);
    }

    /// The committed content and its digests, moved out (the upload is complete).
    pub(crate) fn take(&mut self) -> (Content, Digests) {
        let content = std::mem::take(&mut self.content);
        self.held_bytes.fetch_sub(content.len(), Ordering::Relaxed);
        (content, std::mem::take(&mut self.hashers).finish())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.held_bytes.fetch_sub(self.content.len(), Ordering::Relaxed);
    }
}

/// The parts of a `multipart/related` upload: the metadata JSON, and the media with its
/// type. The media is a slice of `body`, not a copy.
#[derive(Debug, Clone)]
pub(crate) struct Related {
    pub(crate) metadata: Bytes,
    pub(crate) media_type: Option<String>,
    pub(crate) media: Bytes,
}

/// The `boundary` parameter of a `multipart/related` content type.
fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/related") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_string())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..].windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

/// Splits a part into its headers (lowercased names) and its body range.
fn part(body: &[u8], start: usize, end: usize, eol: &[u8]) -> Option<(Vec<(String, String)>, usize)> {
    let blank = [eol, eol].concat();
    // A part with no headers starts with the blank line itself.
    let (head_end, body_start) = if body[start..end].starts_with(eol) {
        (start, start + eol.len())
    } else {
        let at = find(&body[..end], &blank, start)?;
        (at, at + blank.len())
    };
    let head = std::str::from_utf8(&body[start..head_end]).ok()?;
    let mut headers = Vec::new();
    for line in head.split(if eol == b"\r\n" { "\r\n" } else { "\n" }).filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Some((headers, body_start))
}

/// Parses a `multipart/related` upload body: exactly two parts, metadata (JSON) then media.
/// Line ends may be CRLF (RFC 2046) or LF (what Python's email package writes); the first
/// delimiter line says which.
pub(crate) fn parse_related(content_type: &str, body: &Bytes) -> Result<Related, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("Malformed multipart body: {why}."));
    let b = boundary(content_type).ok_or_else(|| bad("no multipart/related boundary"))?;
    let delim = format!("--{b}").into_bytes();
    let first = find(body, &delim, 0).ok_or_else(|| bad("no delimiter"))?;
    if first != 0 && body[first - 1] != b'\n' {
        return Err(bad("the first delimiter is not at a line start"));
    }
    let after = first + delim.len();
    let eol: &[u8] = if body[after..].starts_with(b"\r\n") {
        b"\r\n"
    } else if body[after..].starts_with(b"\n") {
        b"\n"
    } else {
        return Err(bad("the delimiter line does not end"));
    };
    let sep = [eol, delim.as_slice()].concat();
    let mut bounds = Vec::new();
    let mut start = after + eol.len();
    loop {
        let end = find(body, &sep, start).ok_or_else(|| bad("a part does not end"))?;
        bounds.push((start, end));
        let next = end + sep.len();
        if body[next..].starts_with(b"--") {
            break;
        }
        if !body[next..].starts_with(eol) {
            return Err(bad("a delimiter line does not end"));
        }
        start = next + eol.len();
        if bounds.len() > 2 {
            return Err(bad("more than two parts"));
        }
    }
    if bounds.len() != 2 {
        return Err(bad("an upload has exactly two parts, metadata then media"));
    }
    let (meta_headers, meta_start) =
        part(body, bounds[0].0, bounds[0].1, eol).ok_or_else(|| bad("metadata headers"))?;
    let meta_type = meta_headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.as_str()).unwrap_or("");
    if !meta_type.to_ascii_lowercase().starts_with("application/json") {
        return Err(bad("the first part is not application/json"));
    }
    let (media_headers, media_start) = part(body, bounds[1].0, bounds[1].1, eol).ok_or_else(|| bad("media headers"))?;
    let media_type = media_headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.clone());
    let encoding = media_headers.iter().find(|(k, _)| k == "content-transfer-encoding").map(|(_, v)| v.to_lowercase());
    let raw = body.slice(media_start..bounds[1].1);
    let media = match encoding.as_deref() {
        None | Some("binary" | "8bit" | "7bit") => raw,
        Some("base64") => {
            use base64::Engine as _;
            let clean: Vec<u8> = raw.iter().copied().filter(|c| !c.is_ascii_whitespace()).collect();
            Bytes::from(base64::engine::general_purpose::STANDARD.decode(clean).map_err(|_| bad("bad base64 media"))?)
        }
        Some(_) => return Err(bad("unknown Content-Transfer-Encoding")),
    };
    Ok(Related { metadata: body.slice(meta_start..bounds[0].1), media_type, media })
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: u64 = CHUNK_UNIT_BYTES;

    fn pos(committed: u64) -> Position {
        Position { committed, declared: None, total: None }
    }

    #[test]
    fn content_range_syntax() {
        assert_eq!(parse_content_range("bytes */100"), Some(ContentRange::Query { total: Some(100) }));
        assert_eq!(parse_content_range("bytes */*"), Some(ContentRange::Query { total: None }));
        assert_eq!(
            parse_content_range("bytes 0-262143/*"),
            Some(ContentRange::Chunk { first: 0, last: 262_143, total: None })
        );
        assert_eq!(
            parse_content_range("bytes 5-9/10"),
            Some(ContentRange::Chunk { first: 5, last: 9, total: Some(10) })
        );
        for bad in ["", "bytes", "bytes 0-1", "bytes=0-1/2", "bytes -1/2", "bytes 0-/2", "bytes a-b/c", "items 0-1/2"] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chunks_but_the_last_are_256k_multiples() {
        let total = Some(3 * U + 5);
        let ok = plan(pos(0), Some(ContentRange::Chunk { first: 0, last: 2 * U - 1, total }), Some(2 * U)).unwrap();
        assert_eq!(ok, Step::Append { skip: 0, take: 2 * U, total, last: false });
        let e = plan(pos(0), Some(ContentRange::Chunk { first: 0, last: U, total }), Some(U + 1)).unwrap_err();
        assert_eq!((e.status.as_u16(), e.reason), (400, "badRequest"));
        // Unknown total: every chunk is a non-last chunk.
        assert!(plan(pos(0), Some(ContentRange::Chunk { first: 0, last: 999, total: None }), Some(1000)).is_err());
        // The last chunk may be any length.
        let last =
            plan(pos(3 * U), Some(ContentRange::Chunk { first: 3 * U, last: 3 * U + 4, total }), Some(5)).unwrap();
        assert_eq!(last, Step::Append { skip: 0, take: 5, total, last: true });
    }

    #[test]
    fn offsets_lengths_and_totals() {
        let total = Some(4 * U);
        // Resent bytes are skipped.
        let s = plan(pos(U), Some(ContentRange::Chunk { first: 0, last: 2 * U - 1, total }), Some(2 * U)).unwrap();
        assert_eq!(s, Step::Append { skip: U, take: U, total, last: false });
        // A gap is refused.
        let e = plan(pos(U), Some(ContentRange::Chunk { first: 2 * U, last: 3 * U - 1, total }), Some(U)).unwrap_err();
        assert!(e.message.contains("exceeds already uploaded size of 262144"), "{}", e.message);
        // Content-Length must match the range.
        assert!(plan(pos(0), Some(ContentRange::Chunk { first: 0, last: U - 1, total }), Some(U - 1)).is_err());
        assert!(plan(pos(0), Some(ContentRange::Chunk { first: 0, last: U - 1, total }), None).is_err());
        // Past the total, or a total that moves, or disagrees with X-Upload-Content-Length.
        assert!(plan(pos(0), Some(ContentRange::Chunk { first: 0, last: U - 1, total: Some(U - 1) }), Some(U)).is_err());
        let fixed = Position { committed: U, declared: None, total: Some(4 * U) };
        assert!(
            plan(fixed, Some(ContentRange::Chunk { first: U, last: 2 * U - 1, total: Some(5 * U) }), Some(U)).is_err()
        );
        let declared = Position { committed: 0, declared: Some(10), total: None };
        assert!(plan(declared, Some(ContentRange::Chunk { first: 0, last: 10, total: Some(11) }), Some(11)).is_err());
    }

    #[test]
    fn status_queries_and_implicit_ranges() {
        assert_eq!(plan(pos(U), Some(ContentRange::Query { total: None }), Some(0)).unwrap(), Step::Status);
        assert_eq!(plan(pos(U), Some(ContentRange::Query { total: Some(2 * U) }), None).unwrap(), Step::Status);
        assert_eq!(
            plan(pos(U), Some(ContentRange::Query { total: Some(U) }), Some(0)).unwrap(),
            Step::Finish { total: U }
        );
        assert!(plan(pos(U), Some(ContentRange::Query { total: None }), Some(3)).is_err(), "a query has no body");
        // No Content-Range: the body is the whole file; an empty one finishes an empty file.
        assert_eq!(plan(pos(0), None, Some(0)).unwrap(), Step::Finish { total: 0 });
        assert_eq!(plan(pos(0), None, Some(7)).unwrap(), Step::Append { skip: 0, take: 7, total: Some(7), last: true });
    }

    #[test]
    fn related_bodies_crlf_and_lf() {
        let meta = br#"{"name":"a.bin"}"#;
        let media = b"\x00\x01\r\n--not-the-boundary\r\n\xff";
        for eol in ["\r\n", "\n"] {
            let mut body = Vec::new();
            body.extend_from_slice(
                format!("--===b=={eol}Content-Type: application/json{eol}MIME-Version: 1.0{eol}{eol}").as_bytes(),
            );
            body.extend_from_slice(meta);
            body.extend_from_slice(
                format!("{eol}--===b=={eol}Content-Type: image/png{eol}Content-Transfer-Encoding: binary{eol}{eol}")
                    .as_bytes(),
            );
            body.extend_from_slice(media);
            body.extend_from_slice(format!("{eol}--===b==--{eol}").as_bytes());
            let r = parse_related("multipart/related; boundary=\"===b==\"", &Bytes::from(body)).unwrap();
            assert_eq!(&r.metadata[..], meta);
            assert_eq!(&r.media[..], media, "eol {eol:?}");
            assert_eq!(r.media_type.as_deref(), Some("image/png"));
        }
        let one_part = Bytes::from_static(b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b--\r\n");
        assert!(parse_related("multipart/related; boundary=b", &one_part).is_err());
        assert!(parse_related("multipart/mixed; boundary=b", &one_part).is_err());
    }
}
