//! An incremental decoder for `aws-chunked` request bodies (SigV4 streaming uploads).
//!
//! The body is a run of chunks, `<hex size>[;chunk-signature=...]\r\n<data>\r\n`, ended
//! by a zero-size chunk and optional trailers (`x-amz-checksum-crc32:...\r\n`), then an
//! empty line. Frames from the network split it anywhere, so the decoder keeps only the
//! partial line it is in; data passes through as borrowed slices.

/// Longest chunk-size or trailer line accepted.
const LINE_BYTES_MAX: usize = 8 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// Expecting the `\r\n` after a chunk's data.
    DataEnd,
    /// Reading trailer lines after the last chunk.
    Trailers,
    /// Past the final empty line.
    Done,
}

/// The decoder.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    line: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { state: State::Size, line: Vec::new(), trailers: Vec::new() }
    }
}

impl Decoder {
    /// Feeds `input`, calling `data` with each run of payload bytes.
    pub fn feed(&mut self, mut input: &[u8], data: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        while !input.is_empty() {
            match self.state {
                State::Data(left) => {
                    let n = (left as usize).min(input.len());
                    data(&input[..n]);
                    input = &input[n..];
                    self.state = if left == n as u64 { State::DataEnd } else { State::Data(left - n as u64) };
                }
                State::Done => return Err("bytes after the end of an aws-chunked body".into()),
                State::Size | State::DataEnd | State::Trailers => {
                    let Some(end) = input.iter().position(|&b| b == b'\n') else {
                        self.push_line(input)?;
                        return Ok(());
                    };
                    self.push_line(&input[..end + 1])?;
                    input = &input[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line)?;
                }
            }
        }
        Ok(())
    }

    fn push_line(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.line.len() + bytes.len() > LINE_BYTES_MAX {
            return Err(format!("an aws-chunked header line is over {LINE_BYTES_MAX} bytes"));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_done(&mut self, line: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(line).map_err(|_| "aws-chunked header is not UTF-8".to_string())?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        match self.state {
            State::DataEnd => {
                if !text.is_empty() {
                    return Err("aws-chunked data not followed by CRLF".into());
                }
                self.state = State::Size;
            }
            State::Size => {
                let hex = text.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(hex, 16).map_err(|_| format!("bad aws-chunked size line {text:?}"))?;
                self.state = if size == 0 { State::Trailers } else { State::Data(size) };
            }
            State::Trailers => {
                if text.is_empty() {
                    self.state = State::Done;
                } else {
                    let (name, value) =
                        text.split_once(':').ok_or_else(|| format!("bad aws-chunked trailer {text:?}"))?;
                    self.trailers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
                }
            }
            State::Data(_) | State::Done => unreachable!("lines are read only between chunks"),
        }
        Ok(())
    }

    /// Whether the body ended properly.
    pub fn finished(&self) -> bool {
        // Some clients end with the zero chunk's CRLF and no trailer section.
        self.state == State::Done || (self.state == State::Trailers && self.line.is_empty())
    }

    /// The trailers, names in lower case.
    pub fn trailers(&self) -> &[(String, String)] {
        &self.trailers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(body: &[u8], piece: usize) -> (Vec<u8>, Decoder) {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for p in body.chunks(piece) {
            d.feed(p, &mut |b| out.extend_from_slice(b)).unwrap();
        }
        (out, d)
    }

    #[test]
    fn decodes_across_any_split() {
        let body = b"5;chunk-signature=abc\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n";
        for piece in 1..body.len() {
            let (out, d) = decode_in_pieces(body, piece);
            assert_eq!(out, b"hello world", "split every {piece} bytes");
            assert!(d.finished());
            assert_eq!(d.trailers(), [("x-amz-checksum-crc32".to_string(), "AAAAAA==".to_string())]);
        }
    }

    #[test]
    fn unfinished_and_malformed_bodies_are_caught() {
        let (_, d) = decode_in_pieces(b"5\r\nhel", 2);
        assert!(!d.finished());
        let mut d = Decoder::default();
        assert!(d.feed(b"zz\r\n", &mut |_| {}).is_err());
        let mut d = Decoder::default();
        assert!(d.feed(b"1\r\nab\r\n", &mut |_| {}).is_err());
    }
}
