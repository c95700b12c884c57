//! Response heads.

/// A parsed response status line and headers.
#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
}

/// A parsed Content-Range: bytes `first..=last` of an object of `total` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// Offset of the first byte sent.
    pub first: u64,
    /// Offset of the last byte sent (inclusive, as on the wire).
    pub last: u64,
    /// The object's size, when the server gave it.
    pub total: Option<u64>,
}

/// The standard reason phrase of the statuses an object store answers with.
fn reason_phrase(status: u16) -> Option<&'static str> {
    Some(match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return None,
    })
}

/// How the body of a response is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

impl ResponseHead {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Content-Length, if present and valid.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.split(',').next()?.trim().parse().ok()
    }

    /// RFC 9112 6.3: every Content-Length value is digits only and they all agree, or
    /// the response has no length anyone can trust (a body cut short, or the next
    /// response's bytes read as this one's).
    fn check_content_length(&self) -> Result<(), String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(name, _)| name == "content-length")
            .flat_map(|(_, value)| value.split(','))
            .map(str::trim)
            .collect();
        let Some(first) = values.first() else { return Ok(()) };
        if let Some(bad) =
            values.iter().find(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.parse::<u64>().is_err())
        {
            return Err(format!("malformed HTTP response: Content-Length {bad:?} is not a length"));
        }
        if values.iter().any(|v| v.parse::<u64>() != first.parse::<u64>()) {
            return Err(format!("malformed HTTP response: conflicting Content-Length values {}", values.join(", ")));
        }
        Ok(())
    }

    /// The status with its standard reason phrase, e.g. `206 Partial Content`, for
    /// errors (the server's own phrase is not kept).
    pub fn status_text(&self) -> String {
        match reason_phrase(self.status) {
            Some(reason) => format!("{} {reason}", self.status),
            None => self.status.to_string(),
        }
    }

    /// Content-Range `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`): `None` without the
    /// header, `Some(Err(value))` when it is not that form (e.g. `bytes */100`).
    pub fn content_range(&self) -> Option<Result<ContentRange, &str>> {
        let raw = self.header("content-range")?;
        let parse = || -> Option<ContentRange> {
            let (unit, rest) = raw.trim().split_once(' ')?;
            if !unit.eq_ignore_ascii_case("bytes") {
                return None;
            }
            let (span, total) = rest.trim().split_once('/')?;
            let (first, last) = span.split_once('-')?;
            let (first, last) = (first.parse().ok()?, last.parse().ok()?);
            let total = if total == "*" { None } else { Some(total.parse().ok()?) };
            let valid = first <= last && total.is_none_or(|t: u64| last < t);
            valid.then_some(ContentRange { first, last, total })
        };
        Some(parse().ok_or(raw))
    }

    pub(crate) fn framing(&self, is_head_request: bool) -> Framing {
        if is_head_request || self.status == 204 || self.status == 304 || (100..200).contains(&self.status) {
            return Framing::Length(0);
        }
        if self.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            return Framing::Chunked;
        }
        match self.content_length() {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    }

    pub(crate) fn keep_alive(&self) -> bool {
        !self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    /// Parses the head at the start of `buf`: `Ok(Some((head, length)))` once the
    /// blank line has arrived, `Ok(None)` while more bytes are needed.
    pub fn parse(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, String> {
        let mut headers = [httparse::EMPTY_HEADER; 96];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = ResponseHead {
                    status: response.code.unwrap_or(0),
                    headers: response
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect(),
                };
                head.check_content_length()?;
                Ok(Some((head, len)))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(format!("malformed HTTP response: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"abc\"\r\n\r\nhello";
        let (head, len) = ResponseHead::parse(raw).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(len, raw.len() - 5);
        assert_eq!(head.header("etag"), Some("\"abc\""));
        assert_eq!(head.framing(false), Framing::Length(5));
        assert_eq!(head.framing(true), Framing::Length(0));
        assert!(ResponseHead::parse(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        assert!(ResponseHead::parse(b"garbage\r\n\r\n").is_err());
        let raw = b"HTTP/1.1 500 x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let (head, _) = ResponseHead::parse(raw).unwrap().unwrap();
        assert_eq!(head.framing(false), Framing::Chunked);
        assert!(!head.keep_alive());
    }

    fn with_range(value: &str) -> ResponseHead {
        ResponseHead { status: 206, headers: vec![("content-range".into(), value.into())] }
    }

    #[test]
    fn parses_content_ranges() {
        let range = |first, last, total| Some(Ok(ContentRange { first, last, total }));
        assert_eq!(with_range("bytes 0-15/104857603").content_range(), range(0, 15, Some(104_857_603)));
        assert_eq!(with_range("bytes 100-104857602/*").content_range(), range(100, 104_857_602, None));
        assert_eq!(with_range("bytes 5-5/6").content_range(), range(5, 5, Some(6)));
        for bad in ["bytes */100", "bytes 9-3/100", "bytes 0-100/100", "items 0-1/2", "bytes 0-x/2", "garbage"] {
            assert_eq!(with_range(bad).content_range(), Some(Err(bad)), "{bad}");
        }
        assert_eq!(ResponseHead::default().content_range(), None);
    }

    #[test]
    fn names_statuses() {
        let head = |status| ResponseHead { status, headers: Vec::new() };
        assert_eq!(head(206).status_text(), "206 Partial Content");
        assert_eq!(head(200).status_text(), "200 OK");
        assert_eq!(head(599).status_text(), "599");
    }
}

#[cfg(test)]
mod proptests {
    //! Heads as servers send them: arbitrary bytes give an error or a head, never a
    //! panic; a well-formed head parses back to what was written, however it is split.

    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;

    use super::*;

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(0x4ead),
            ..ProptestConfig::default()
        }
    }

    /// How a generated head frames its body.
    #[derive(Debug, Clone)]
    enum Body {
        None,
        Length(u64),
        Chunked,
    }

    #[derive(Debug, Clone)]
    struct Head {
        version: &'static str,
        status: u16,
        reason: String,
        /// Headers as written (names in their wire case).
        headers: Vec<(String, String)>,
        body: Body,
        close: bool,
    }

    impl Head {
        fn wire(&self) -> Vec<u8> {
            let mut out = format!("{} {:03} {}\r\n", self.version, self.status, self.reason);
            for (name, value) in self.all_headers() {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            out.push_str("\r\n");
            out.into_bytes()
        }

        fn all_headers(&self) -> Vec<(String, String)> {
            let mut all = self.headers.clone();
            match self.body {
                Body::None => {}
                Body::Length(n) => all.push(("Content-Length".into(), n.to_string())),
                Body::Chunked => all.push(("Transfer-Encoding".into(), "chunked".into())),
            }
            if self.close {
                all.push(("Connection".into(), "close".into()));
            }
            all
        }
    }

    /// Header names that decide framing; the random ones avoid them.
    const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "connection"];

    fn header_name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}"
            .prop_filter("not a framing header", |n| !FRAMING.contains(&n.to_ascii_lowercase().as_str()))
    }

    /// A value as servers write them: no whitespace at either end (httparse trims it),
    /// visible ASCII, spaces and tabs inside, and UTF-8 (x-amz-meta-*, Dropbox-API-Result).
    fn header_value() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[!-~]([!-~ \t]{0,40}[!-~])?", "[!-~éü€😀]([!-~ éü€😀]{0,20}[!-~éü€😀])?",]
    }

    fn head() -> impl Strategy<Value = Head> {
        (
            prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")],
            100u16..=999,
            "[!-~]([!-~ \t]{0,30}[!-~])?",
            prop::collection::vec((header_name(), header_value()), 0..24),
            prop_oneof![
                Just(Body::None),
                any::<u64>().prop_map(Body::Length),
                (0u64..1 << 20).prop_map(Body::Length),
                Just(Body::Chunked)
            ],
            any::<bool>(),
        )
            .prop_map(|(version, status, reason, headers, body, close)| Head {
                version,
                status,
                reason,
                headers,
                body,
                close,
            })
    }

    /// Every accessor of a parsed head, so that none can panic on what a server sent.
    fn exercise(head: &ResponseHead) {
        let _ = head.content_length();
        let _ = head.status_text();
        let _ = head.framing(false);
        let _ = head.framing(true);
        let _ = head.keep_alive();
        if let Some(Ok(range)) = head.content_range() {
            assert!(range.first <= range.last, "{range:?}");
            assert!(range.total.is_none_or(|t| range.last < t), "{range:?}");
        }
    }

    /// Applies byte edits (overwrite, insert, delete) to `bytes`.
    fn mutate(mut bytes: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
        for &(kind, at, byte) in edits {
            let at = if bytes.is_empty() { 0 } else { at % (bytes.len() + 1) };
            match kind % 3 {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.push(byte),
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(Some((head, len))) = ResponseHead::parse(&bytes) {
                prop_assert!(len <= bytes.len());
                exercise(&head);
            }
        }

        #[test]
        fn arbitrary_lines_after_a_status_line_never_panic(
            status in "HTTP/1\\.[01] [0-9]{3} [ -~]{0,20}\r\n",
            lines in prop::collection::vec("[ -~\u{80}-\u{ff}]{0,40}(\r\n|\n|\r)", 0..12),
        ) {
            let mut bytes = status.into_bytes();
            for line in lines {
                bytes.extend_from_slice(line.as_bytes());
            }
            bytes.extend_from_slice(b"\r\n");
            if let Ok(Some((head, _))) = ResponseHead::parse(&bytes) {
                exercise(&head);
            }
        }

        #[test]
        fn mutated_heads_never_panic(
            head in head(),
            edits in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..8),
        ) {
            let bytes = mutate(head.wire(), &edits);
            if let Ok(Some((head, len))) = ResponseHead::parse(&bytes) {
                prop_assert!(len <= bytes.len());
                exercise(&head);
            }
        }

        #[test]
        fn well_formed_heads_parse_back_at_every_split(
            head in head(),
            body in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let wire = head.wire();
            let mut bytes = wire.clone();
            bytes.extend_from_slice(&body);
            for split in 0..wire.len() {
                let partial = ResponseHead::parse(&bytes[..split]);
                prop_assert!(matches!(partial, Ok(None)), "split at {}: {:?}", split, partial);
            }
            let (parsed, len) = ResponseHead::parse(&bytes).unwrap().expect("a complete head");
            prop_assert_eq!(len, wire.len());
            prop_assert_eq!(parsed.status, head.status);
            let want: Vec<(String, String)> =
                head.all_headers().into_iter().map(|(n, v)| (n.to_ascii_lowercase(), v)).collect();
            prop_assert_eq!(&parsed.headers, &want);
            let no_body = (100..200).contains(&head.status) || head.status == 204 || head.status == 304;
            let framing = match head.body {
                _ if no_body => Framing::Length(0),
                Body::Chunked => Framing::Chunked,
                Body::Length(n) => Framing::Length(n),
                Body::None => Framing::UntilClose,
            };
            prop_assert_eq!(parsed.framing(false), framing);
            prop_assert_eq!(parsed.framing(true), Framing::Length(0));
            prop_assert_eq!(parsed.keep_alive(), !head.close);
            if let Body::Length(n) = head.body {
                prop_assert_eq!(parsed.content_length(), Some(n));
            }
            for (name, _) in &want {
                let first = want.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
                prop_assert_eq!(parsed.header(name), first);
            }
        }

        #[test]
        fn content_ranges_parse_back(
            first in any::<u64>(),
            len in any::<u64>(),
            extra in any::<u64>(),
            star in any::<bool>(),
            unit in prop_oneof![Just("bytes"), Just("BYTES"), Just("Bytes")],
        ) {
            // The last byte has an offset below u64::MAX, so that a total can hold it.
            let last = first.saturating_add(len).min(u64::MAX - 1);
            let first = first.min(last);
            let total = if star { None } else { Some((last + 1).saturating_add(extra)) };
            let text = match total {
                Some(t) => format!("{unit} {first}-{last}/{t}"),
                None => format!("{unit} {first}-{last}/*"),
            };
            let head = ResponseHead { status: 206, headers: vec![("content-range".into(), text)] };
            prop_assert_eq!(head.content_range(), Some(Ok(ContentRange { first, last, total })));
        }

        #[test]
        fn arbitrary_content_ranges_never_panic(value in "[ -~]{0,40}|bytes [0-9*/ -]{0,30}") {
            let head = ResponseHead { status: 206, headers: vec![("content-range".into(), value.clone())] };
            match head.content_range() {
                Some(Ok(range)) => {
                    prop_assert!(range.first <= range.last);
                    prop_assert!(range.total.is_none_or(|t| range.last < t));
                }
                Some(Err(raw)) => prop_assert_eq!(raw, value.as_str()),
                None => prop_assert!(false, "the header is there"),
            }
        }
    }

    proptest! {
        #![proptest_config(config(64))]

        /// RFC 9112 6.3: a response with Content-Length values that differ has no
        /// length, and must be treated as an unrecoverable error (taking the first
        /// would cut the body short or run into the next response).
        #[test]
        fn conflicting_content_lengths_are_refused(a in 0u64..1 << 40, b in 0u64..1 << 40) {
            prop_assume!(a != b);
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {a}\r\nContent-Length: {b}\r\n\r\n");
            let taken = match ResponseHead::parse(raw.as_bytes()) {
                Err(_) => None,
                Ok(Some((head, _))) => Some(head.framing(false)),
                Ok(None) => panic!("incomplete"),
            };
            prop_assert!(
                !matches!(taken, Some(Framing::Length(_))),
                "{raw:?} was framed as {taken:?}"
            );
        }
    }

    /// RFC 9112 6.3: a Content-Length that is not 1*DIGIT is an unrecoverable error,
    /// not a length to guess at (`+5`) nor a body read until the connection closes
    /// (on a keep-alive connection: a hang, then the next response taken as this body).
    #[test]
    fn malformed_content_lengths_are_refused() {
        let mut taken_all = Vec::new();
        for value in ["+5", "abc", "-1", "5 5", "0x10", "18446744073709551616"] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n");
            let taken = match ResponseHead::parse(raw.as_bytes()) {
                Err(_) => None,
                Ok(Some((head, _))) => Some(head.framing(false)),
                Ok(None) => panic!("incomplete"),
            };
            if let Some(framing) = taken {
                taken_all.push(format!("{value:?}: {framing:?}"));
            }
        }
        assert!(taken_all.is_empty(), "{taken_all:#?}");
    }
}
