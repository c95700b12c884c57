//! Response heads.

/// A parsed response status line and headers.
#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
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
}
