//! The wire formats: error answers (one function maps each kind to its status and
//! body), the ASCII-only JSON of `Dropbox-API-Arg` and `Dropbox-API-Result`, typed
//! argument reading with Dropbox-style 400 messages, and the `%Y-%m-%dT%H:%M:%SZ`
//! timestamps.

use crate::time::{civil_from_days, days_from_civil};
use serde_json::{json, Map, Value};

/// Where a route's argument came from; 400 messages name it as Dropbox does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArgSource {
    /// An RPC route's JSON body.
    Body,
    /// The `Dropbox-API-Arg` header of a content route.
    Header,
    /// The `arg` URL parameter of a content route.
    Query,
}

impl ArgSource {
    fn prefix(self) -> &'static str {
        match self {
            ArgSource::Body => "request body",
            ArgSource::Header => "HTTP header \"Dropbox-API-Arg\"",
            ArgSource::Query => "URL parameter \"arg\"",
        }
    }
}

/// Every way a request can fail, each with the status and body Dropbox sends.
#[derive(Debug, Clone)]
pub(crate) enum ApiError {
    /// 400, plain text: `Error in call to API function "<route>": <message>`.
    BadInput(String),
    /// 400, plain text, the message as is (no route prefix: a bad URL or host).
    BadRequest(String),
    /// 409, the route's error union.
    Route(Value),
    /// 401, an `AuthError` tag (`invalid_access_token`, `expired_access_token`).
    Auth(&'static str),
    /// 429, a `RateLimitReason` tag with `Retry-After`.
    RateLimited { reason: &'static str, retry_after_s: u64 },
    /// 500 or 503, plain text.
    Server(u16),
    /// 422, a `PathRootError`.
    PathRoot(Value),
    /// 404: no such API function.
    UnknownRoute,
    /// 416, for a range past the end of the file.
    RangeNotSatisfiable { size: u64 },
    /// A limit of the emulator itself, not of Dropbox (its memory bound): 507.
    EmulatorLimit(String),
}

impl ApiError {
    /// A 409 whose union is `{".tag": tag}`.
    pub(crate) fn tag(tag: &str) -> ApiError {
        ApiError::Route(json!({ ".tag": tag }))
    }

    /// A 400 naming the argument's source: `<source>: <message>`.
    pub(crate) fn arg(source: ArgSource, message: impl std::fmt::Display) -> ApiError {
        ApiError::BadInput(format!("{}: {message}", source.prefix()))
    }
}

/// An answer ready to send: status, content type, extra headers, body.
pub(crate) struct ErrorAnswer {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The one place an [`ApiError`] becomes a status and a body. `variant` picks the
/// `error_summary` suffix (Dropbox varies it so that clients match on the tag, not
/// the whole string).
pub(crate) fn error_answer(route: &str, err: &ApiError, variant: u64) -> ErrorAnswer {
    let text = |status: u16, body: String| ErrorAnswer {
        status,
        content_type: "text/plain; charset=utf-8",
        headers: Vec::new(),
        body: body.into_bytes(),
    };
    let json_answer = |status: u16, v: Value, headers: Vec<(&'static str, String)>| ErrorAnswer {
        status,
        content_type: "application/json",
        headers,
        body: serde_json::to_vec(&v).expect("JSON values serialise"),
    };
    let dots = ".".repeat(1 + (variant % 3) as usize);
    match err {
        ApiError::BadInput(m) => text(400, format!("Error in call to API function \"{route}\": {m}")),
        ApiError::BadRequest(m) => text(400, m.clone()),
        ApiError::Route(v) => json_answer(409, json!({ "error_summary": summary(v, &dots), "error": v }), Vec::new()),
        ApiError::Auth(tag) => {
            json_answer(401, json!({ "error_summary": format!("{tag}/{dots}"), "error": { ".tag": tag } }), Vec::new())
        }
        ApiError::RateLimited { reason, retry_after_s } => json_answer(
            429,
            json!({
                "error_summary": format!("{reason}/{dots}"),
                "error": { "reason": { ".tag": reason }, "retry_after": retry_after_s },
            }),
            vec![("retry-after", retry_after_s.to_string())],
        ),
        ApiError::Server(s) => {
            let mut a = text(*s, "Internal Server Error (emulated)".to_string());
            if *s == 503 {
                a.headers.push(("retry-after", "1".to_string()));
            }
            a
        }
        ApiError::PathRoot(v) => {
            json_answer(422, json!({ "error_summary": summary(v, &dots), "error": v }), Vec::new())
        }
        ApiError::UnknownRoute => text(404, format!("Unknown API function: \"{route}\"")),
        ApiError::RangeNotSatisfiable { size } => {
            let mut a = text(416, format!("Requested range not satisfiable (file size {size})"));
            a.headers.push(("content-range", format!("bytes */{size}")));
            a
        }
        ApiError::EmulatorLimit(m) => text(507, format!("Dropbox emulator limit: {m}")),
    }
}

/// `path/conflict/file/...` from `{".tag": "path", "reason": {".tag": "conflict", ...}}`:
/// each union's tag, then the tag of its value (a member of the same name, or the
/// first struct field that is itself a union).
pub(crate) fn summary(v: &Value, dots: &str) -> String {
    let mut out = String::new();
    let mut cur = v;
    for _ in 0..8 {
        let Some(tag) = cur.get(".tag").and_then(Value::as_str) else { break };
        out.push_str(tag);
        out.push('/');
        let next = cur.get(tag).filter(|n| n.get(".tag").is_some()).or_else(|| {
            cur.as_object()
                .and_then(|o| o.iter().find(|(k, n)| k.as_str() != ".tag" && n.get(".tag").is_some()).map(|(_, n)| n))
        });
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    out.push_str(dots);
    out
}

/// JSON safe for an HTTP header: every character from 0x7F up is written as a
/// `\uXXXX` escape (UTF-16, surrogate pairs above the BMP), as Dropbox writes
/// `Dropbox-API-Result` and asks clients to write `Dropbox-API-Arg`.
pub(crate) fn ascii_json(v: &Value) -> String {
    let s = serde_json::to_string(v).expect("JSON values serialise");
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if (c as u32) < 0x7F {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    debug_assert!(out.bytes().all(|b| b < 0x7F));
    out
}

/// Parses a `Dropbox-API-Arg` header: JSON in UTF-8, without DEL. Dropbox asks for
/// `\uXXXX` escapes of DEL and of every non-ASCII character, but reads raw UTF-8 as
/// UTF-8: Dropbox's Go SDK (and so rclone's `files/upload` and `upload_session/finish`)
/// has always sent paths raw (rclone#3609 shows one on the wire, 2019), and Dropbox
/// answers them. What it cannot read is bytes that are not UTF-8 (a client that wrote
/// the header as Latin-1), which is Dropbox's "could not decode input as JSON".
pub(crate) fn parse_header_arg(raw: &[u8]) -> Result<Value, ApiError> {
    const BAD: &str = "could not decode input as JSON";
    if raw.contains(&0x7F) || std::str::from_utf8(raw).is_err() {
        return Err(ApiError::arg(ArgSource::Header, BAD));
    }
    serde_json::from_slice(raw).map_err(|_| ApiError::arg(ArgSource::Header, BAD))
}

/// Reads a route's argument object field by field, with Dropbox-style messages.
pub(crate) struct Args<'a> {
    obj: Option<&'a Map<String, Value>>,
    source: ArgSource,
    /// Dotted path of this object inside the argument, for messages (`cursor.offset`).
    at: String,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

impl<'a> Args<'a> {
    /// The top-level argument; `null` reads as an empty struct (routes with no
    /// required fields accept it, as the SDK sends `null` for no argument).
    pub(crate) fn new(v: &'a Value, source: ArgSource) -> Result<Args<'a>, ApiError> {
        match v {
            Value::Object(o) => Ok(Args { obj: Some(o), source, at: String::new() }),
            Value::Null => Ok(Args { obj: None, source, at: String::new() }),
            other => Err(ApiError::arg(source, format!("expected object, got {}", kind(other)))),
        }
    }

    /// Where the argument came from.
    pub(crate) fn source(&self) -> ArgSource {
        self.source
    }

    /// `field`'s dotted name inside the argument, as messages write it.
    pub(crate) fn field_name(&self, field: &str) -> String {
        self.name(field)
    }

    fn name(&self, field: &str) -> String {
        if self.at.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.at)
        }
    }

    /// A 400 about `field`.
    pub(crate) fn err(&self, field: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError::arg(self.source, format!("{}: {message}", self.name(field)))
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.and_then(|o| o.get(field)).filter(|v| !v.is_null())
    }

    fn missing(&self, field: &str) -> ApiError {
        ApiError::arg(self.source, format!("missing required field '{}'", self.name(field)))
    }

    /// A required string.
    pub(crate) fn str(&self, field: &str) -> Result<&'a str, ApiError> {
        self.opt_str(field)?.ok_or_else(|| self.missing(field))
    }

    /// An optional string.
    pub(crate) fn opt_str(&self, field: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(field, format!("expected string, got {}", kind(other)))),
        }
    }

    /// A boolean, `default` when absent.
    pub(crate) fn bool(&self, field: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(field) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.err(field, format!("expected boolean, got {}", kind(other)))),
        }
    }

    /// An unsigned integer, `None` when absent.
    pub(crate) fn opt_u64(&self, field: &str) -> Result<Option<u64>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) => Ok(Some(x)),
                None => Err(self.err(field, format!("{n} is not a valid unsigned integer"))),
            },
            Some(other) => Err(self.err(field, format!("expected integer, got {}", kind(other)))),
        }
    }

    /// A required unsigned integer.
    pub(crate) fn u64(&self, field: &str) -> Result<u64, ApiError> {
        self.opt_u64(field)?.ok_or_else(|| self.missing(field))
    }

    /// A required nested struct.
    pub(crate) fn object(&self, field: &str) -> Result<Args<'a>, ApiError> {
        match self.get(field) {
            None => Err(self.missing(field)),
            Some(Value::Object(o)) => Ok(Args { obj: Some(o), source: self.source, at: self.name(field) }),
            Some(other) => Err(self.err(field, format!("expected object, got {}", kind(other)))),
        }
    }

    /// A required list.
    pub(crate) fn list(&self, field: &str) -> Result<&'a Vec<Value>, ApiError> {
        match self.get(field) {
            None => Err(self.missing(field)),
            Some(Value::Array(a)) => Ok(a),
            Some(other) => Err(self.err(field, format!("expected list, got {}", kind(other)))),
        }
    }

    /// An optional list.
    pub(crate) fn opt_list(&self, field: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(self.err(field, format!("expected list, got {}", kind(other)))),
        }
    }

    /// An element of a list read with [`Args::list`], as a struct.
    pub(crate) fn element(&self, field: &str, index: usize, v: &'a Value) -> Result<Args<'a>, ApiError> {
        let at = format!("{}[{index}]", self.name(field));
        match v {
            Value::Object(o) => Ok(Args { obj: Some(o), source: self.source, at }),
            other => Err(ApiError::arg(self.source, format!("{at}: expected object, got {}", kind(other)))),
        }
    }

    /// A union: `"tag"` or `{".tag": "tag", ...}`, `None` when absent. Returns the tag
    /// and the union's object (for members with values).
    pub(crate) fn union(&self, field: &str) -> Result<Option<(&'a str, Option<Args<'a>>)>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(tag)) => Ok(Some((tag, None))),
            Some(Value::Object(o)) => match o.get(".tag") {
                Some(Value::String(tag)) => {
                    Ok(Some((tag, Some(Args { obj: Some(o), source: self.source, at: self.name(field) }))))
                }
                _ => Err(self.err(field, "missing '.tag' key")),
            },
            Some(other) => Err(self.err(field, format!("expected union, got {}", kind(other)))),
        }
    }

    /// A timestamp field (`%Y-%m-%dT%H:%M:%SZ`), as Unix seconds.
    pub(crate) fn opt_timestamp(&self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.opt_str(field)? {
            None => Ok(None),
            Some(s) => parse_timestamp(s)
                .map(Some)
                .ok_or_else(|| self.err(field, format!("'{s}' is not a valid timestamp (%Y-%m-%dT%H:%M:%SZ)"))),
        }
    }
}

/// Unix seconds as Dropbox writes times: `2015-05-12T15:50:38Z`.
pub(crate) fn format_timestamp(unix_s: i64) -> String {
    let (days, secs) = (unix_s.div_euclid(86_400), unix_s.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Parses `%Y-%m-%dT%H:%M:%SZ` exactly (Dropbox takes no fractions or offsets).
pub(crate) fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = &s[r];
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok()).flatten()
    };
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d == 0 || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days_in_month = {
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][mo as usize - 1]
    };
    if d > days_in_month {
        return None;
    }
    Some(days_from_civil(i64::from(y), mo, d) * 86_400 + i64::from(h * 3600 + mi * 60 + se.min(59)))
}

/// Now, in Unix seconds.
pub(crate) fn now_unix_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A parsed `Range: bytes=...` header against a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeSpec {
    /// No range, or one this emulator serves whole (several ranges): 200.
    Whole,
    /// `[start, end)`: 206.
    Part { start: u64, end: u64 },
    /// Past the end: 416.
    Unsatisfiable,
}

/// Reads one `bytes=a-b`, `bytes=a-` or `bytes=-n` range.
pub(crate) fn parse_range(header: Option<&str>, size: u64) -> Result<RangeSpec, ApiError> {
    let Some(h) = header else { return Ok(RangeSpec::Whole) };
    let bad = || ApiError::BadRequest(format!("Invalid Range header: {h:?}"));
    let spec = h.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Ok(RangeSpec::Whole);
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (a, b) = (a.trim(), b.trim());
    let parse = |t: &str| t.parse::<u64>().map_err(|_| bad());
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (true, true) => return Err(bad()),
        (true, false) => {
            let n = parse(b)?;
            if n == 0 {
                return Ok(RangeSpec::Unsatisfiable);
            }
            (size.saturating_sub(n), size)
        }
        (false, true) => (parse(a)?, size),
        (false, false) => {
            let (s, e) = (parse(a)?, parse(b)?);
            if e < s {
                return Err(bad());
            }
            (s, e.saturating_add(1).min(size))
        }
    };
    if start >= size {
        return Ok(RangeSpec::Unsatisfiable);
    }
    Ok(RangeSpec::Part { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for (s, t) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2015-05-12T15:50:38Z", 1_431_445_838),
            ("2000-02-29T23:59:59Z", 951_868_799),
            ("2026-11-02T00:00:00Z", 1_793_577_600),
        ] {
            assert_eq!(parse_timestamp(s), Some(t), "{s}");
            assert_eq!(format_timestamp(t), s);
        }
        for bad in ["2015-05-12T15:50:38", "2015-05-12T15:50:38.5Z", "2015-02-30T00:00:00Z", "2015-13-01T00:00:00Z"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_json_is_ascii_and_round_trips() {
        let v = json!({ "path": "/caf\u{e9}/\u{1F600}\u{7f}" });
        let s = ascii_json(&v);
        assert!(s.is_ascii() && !s.contains('\u{7f}'), "{s}");
        assert!(s.contains("\\u00e9") && s.contains("\\ud83d\\ude00") && s.contains("\\u007f"), "{s}");
        assert_eq!(serde_json::from_str::<Value>(&s).unwrap(), v);
    }

    #[test]
    fn header_arg_takes_escapes_and_utf8_and_refuses_latin1_and_del() {
        let ok = parse_header_arg(br#"{"path": "/caf\u00e9"}"#).unwrap();
        assert_eq!(ok["path"], "/caf\u{e9}");
        let raw = parse_header_arg("{\"path\": \"/caf\u{e9} \u{1F600}\"}".as_bytes()).unwrap();
        assert_eq!(raw["path"], "/caf\u{e9} \u{1F600}");
        for raw in [&b"{\"path\": \"/a\x7f\"}"[..], b"{\"path\": \"/caf\xe9\"}", b"{\"path\": \"/\xc3\"}"] {
            let err = parse_header_arg(raw).unwrap_err();
            let a = error_answer("files/upload", &err, 0);
            assert_eq!(a.status, 400);
            assert_eq!(
                String::from_utf8(a.body).unwrap(),
                "Error in call to API function \"files/upload\": HTTP header \"Dropbox-API-Arg\": could not decode input as JSON"
            );
        }
    }

    #[test]
    fn summaries_follow_nested_tags() {
        let v = json!({".tag": "path", "reason": {".tag": "conflict", "conflict": {".tag": "file"}}, "upload_session_id": "x"});
        assert_eq!(summary(&v, ".."), "path/conflict/file/..");
        let v = json!({".tag": "lookup_failed", "lookup_failed": {".tag": "incorrect_offset", "correct_offset": 4}});
        assert_eq!(summary(&v, "."), "lookup_failed/incorrect_offset/.");
        let a = error_answer("r", &ApiError::RateLimited { reason: "too_many_requests", retry_after_s: 3 }, 0);
        assert_eq!(a.status, 429);
        assert_eq!(a.headers, vec![("retry-after", "3".to_string())]);
        let body: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["error"]["retry_after"], 3);
        assert_eq!(body["error"]["reason"][".tag"], "too_many_requests");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10).unwrap(), RangeSpec::Whole);
        assert_eq!(parse_range(Some("bytes=0-0"), 10).unwrap(), RangeSpec::Part { start: 0, end: 1 });
        assert_eq!(parse_range(Some("bytes=2-"), 10).unwrap(), RangeSpec::Part { start: 2, end: 10 });
        assert_eq!(parse_range(Some("bytes=-3"), 10).unwrap(), RangeSpec::Part { start: 7, end: 10 });
        assert_eq!(parse_range(Some("bytes=5-100"), 10).unwrap(), RangeSpec::Part { start: 5, end: 10 });
        assert_eq!(parse_range(Some("bytes=10-"), 10).unwrap(), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0"), 0).unwrap(), RangeSpec::Unsatisfiable);
        assert!(parse_range(Some("bytes=5-2"), 10).is_err());
        assert!(parse_range(Some("items=0-1"), 10).is_err());
    }
}
