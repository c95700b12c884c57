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
        self.header("content-length")?.trim().parse().ok()
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
