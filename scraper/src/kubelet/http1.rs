//! HTTP/1.1 framing of one `GET` and its response, just what a kubelet scrape needs.
//!
//! Why not hyper's client: with ~1250 kept-alive kubelet connections per shard, hyper-util's
//! pooled client holds per idle connection an adaptive read buffer that grows to ~32 KiB, an
//! 8 KiB header write buffer, an 8 KiB dispatch-channel block and an ~8 KiB connection task:
//! ~60 KiB each, ~75 MiB per shard (measured with heaptrack, see `docs/benchmarks.md`). Here an
//! idle connection is only its TLS stream; buffers exist only while a scrape runs.
//!
//! Pure functions, no I/O: [`request`] writes the request, [`parse_head`] reads the status and
//! the framing headers, [`ChunkedDecoder`] undoes `Transfer-Encoding: chunked` incrementally.

/// Largest response head accepted (status line and headers), in bytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line or trailer line accepted, in bytes.
const MAX_LINE_BYTES: usize = 8 * 1024;

/// A response that is not well-formed HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The head did not end within [`MAX_HEAD_BYTES`].
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// The status line is not `HTTP/1.x NNN ...`.
    #[error("malformed status line")]
    StatusLine,
    /// A header line has no colon or a non-token name.
    #[error("malformed header line")]
    HeaderLine,
    /// `Content-Length` is not a number, or two of them disagree.
    #[error("invalid Content-Length")]
    ContentLength,
    /// A chunk-size line or trailer is malformed or too long.
    #[error("malformed chunked encoding: {0}")]
    Chunked(&'static str),
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// Exactly this many bytes (`Content-Length`, or 0 for 204/304).
    Known(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// What the head of a response says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// How the body is delimited.
    pub body: BodyLength,
    /// Whether the connection may carry another request afterwards.
    pub keep_alive: bool,
    /// Bytes of the head, including the empty line that ends it.
    pub len: usize,
}

/// The bytes of `GET path HTTP/1.1` to `host:port`, with `Accept: text/plain` and, when given,
/// an `Authorization` header value.
pub fn request(path: &str, host: &str, port: u16, authorization: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + authorization.map_or(0, <[u8]>::len));
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    if host.contains(':') && !host.starts_with('[') {
        out.push(b'[');
        out.extend_from_slice(host.as_bytes());
        out.push(b']');
    } else {
        out.extend_from_slice(host.as_bytes());
    }
    out.push(b':');
    out.extend_from_slice(port.to_string().as_bytes());
    out.extend_from_slice(b"\r\nAccept: text/plain\r\nUser-Agent: shardmetrics-scraper\r\n");
    if let Some(v) = authorization {
        out.extend_from_slice(b"Authorization: ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Parses the response head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, FramingError> {
    let Some(len) = head_end(buf) else {
        return if buf.len() > MAX_HEAD_BYTES { Err(FramingError::HeadTooLarge) } else { Ok(None) };
    };
    if len > MAX_HEAD_BYTES {
        return Err(FramingError::HeadTooLarge);
    }
    let mut lines = buf[..len].split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().ok_or(FramingError::StatusLine)?;
    let (http11, status) = parse_status_line(status_line)?;
    let mut keep_alive = http11;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        let colon = line.iter().position(|b| *b == b':').ok_or(FramingError::HeaderLine)?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|b| is_token(*b)) {
            return Err(FramingError::HeaderLine);
        }
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok()).ok_or(FramingError::ContentLength)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(FramingError::ContentLength);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only the last coding decides how the body ends (RFC 9112 6.3).
            let last = value.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii();
            chunked = last.eq_ignore_ascii_case(b"chunked");
            other_coding = !chunked && !value.is_empty();
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        }
    }
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        BodyLength::Known(0)
    } else if chunked {
        BodyLength::Chunked
    } else if other_coding {
        BodyLength::UntilClose
    } else {
        content_length.map_or(BodyLength::UntilClose, BodyLength::Known)
    };
    if body == BodyLength::UntilClose {
        keep_alive = false;
    }
    Ok(Some(Head { status, body, keep_alive, len }))
}

/// Where the head ends (just past its empty line), if it does within `buf`.
fn head_end(buf: &[u8]) -> Option<usize> {
    let limit = buf.len().min(MAX_HEAD_BYTES + 4);
    let mut i = 0;
    while i < limit {
        let nl = buf[i..limit].iter().position(|b| *b == b'\n')? + i;
        // "\n\n" or "\n\r\n" after this newline ends the head.
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => return Some(nl + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// `HTTP/1.1 200 OK` → (is HTTP/1.1, 200).
fn parse_status_line(line: &[u8]) -> Result<(bool, u16), FramingError> {
    let rest = line.strip_prefix(b"HTTP/1.").ok_or(FramingError::StatusLine)?;
    let (minor, rest) = rest.split_first().ok_or(FramingError::StatusLine)?;
    let http11 = match minor {
        b'1' => true,
        b'0' => false,
        _ => return Err(FramingError::StatusLine),
    };
    let code = rest.strip_prefix(b" ").and_then(|r| r.get(..3)).ok_or(FramingError::StatusLine)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(4).is_some_and(|b| *b != b' ') {
        return Err(FramingError::StatusLine);
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    Ok((http11, status))
}

/// RFC 9110 token characters (header names).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Decodes a `Transfer-Encoding: chunked` body fed in pieces of any size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line: value so far, hex digits seen, bytes of the line seen, and
    /// whether an extension (or whitespace) started.
    Size { value: u64, digits: u8, line: usize, ext: bool },
    /// After the CR of a chunk-size line.
    SizeLf { value: u64 },
    /// Inside chunk data: bytes left.
    Data(u64),
    /// After chunk data: expecting CR LF.
    DataCr,
    /// After the CR following chunk data.
    DataLf,
    /// Reading a trailer line (after the last chunk): bytes of the line seen.
    Trailer { line: usize },
    /// After the CR of a trailer line.
    TrailerLf { line: usize },
    /// The body ended.
    Done,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        ChunkedDecoder { state: ChunkState::Size { value: 0, digits: 0, line: 0, ext: false } }
    }

    /// Whether the terminating chunk and trailers were read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes of `input`, appending the chunk data to `out`, up to the end of the body.
    /// Returns how many bytes were consumed (less than `input.len()` only once done).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, FramingError> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                Done => return Ok(i),
                Data(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len() - i);
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 { DataCr } else { Data(left) };
                    continue;
                }
                Size { value, digits, line, ext } => {
                    if line >= MAX_LINE_BYTES {
                        return Err(FramingError::Chunked("chunk-size line too long"));
                    }
                    match b {
                        b'\r' | b'\n' if digits == 0 => return Err(FramingError::Chunked("missing chunk size")),
                        b'\r' => SizeLf { value },
                        b'\n' => after_size(value),
                        _ if ext => Size { value, digits, line: line + 1, ext },
                        b';' | b' ' | b'\t' if digits > 0 => Size { value, digits, line: line + 1, ext: true },
                        _ => {
                            let d = (b as char).to_digit(16).ok_or(FramingError::Chunked("invalid chunk size"))?;
                            if digits >= 15 {
                                return Err(FramingError::Chunked("chunk size too large"));
                            }
                            Size { value: (value << 4) | u64::from(d), digits: digits + 1, line: line + 1, ext }
                        }
                    }
                }
                SizeLf { value } => match b {
                    b'\n' => after_size(value),
                    _ => return Err(FramingError::Chunked("CR without LF after chunk size")),
                },
                DataCr => match b {
                    b'\r' => DataLf,
                    b'\n' => Size { value: 0, digits: 0, line: 0, ext: false },
                    _ => return Err(FramingError::Chunked("chunk data longer than its size")),
                },
                DataLf => match b {
                    b'\n' => Size { value: 0, digits: 0, line: 0, ext: false },
                    _ => return Err(FramingError::Chunked("CR without LF after chunk data")),
                },
                Trailer { line } => match b {
                    b'\r' => TrailerLf { line },
                    b'\n' if line == 0 => Done,
                    b'\n' => Trailer { line: 0 },
                    _ if line >= MAX_LINE_BYTES => return Err(FramingError::Chunked("trailer line too long")),
                    _ => Trailer { line: line + 1 },
                },
                TrailerLf { line } => match b {
                    b'\n' if line == 0 => Done,
                    b'\n' => Trailer { line: 0 },
                    _ => return Err(FramingError::Chunked("CR without LF in trailers")),
                },
            };
            i += 1;
        }
        Ok(i)
    }
}

/// The state after a complete chunk-size line.
fn after_size(value: u64) -> ChunkState {
    if value == 0 { ChunkState::Trailer { line: 0 } } else { ChunkState::Data(value) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_host_and_carries_the_token() {
        let r = request("/metrics/resource", "10.0.0.1", 10250, Some(b"Bearer t"));
        assert_eq!(
            std::str::from_utf8(&r).unwrap(),
            "GET /metrics/resource HTTP/1.1\r\nHost: 10.0.0.1:10250\r\nAccept: text/plain\r\nUser-Agent: shardmetrics-scraper\r\nAuthorization: Bearer t\r\n\r\n"
        );
        let r = request("/x", "fd00::1", 1, None);
        assert!(std::str::from_utf8(&r).unwrap().contains("Host: [fd00::1]:1\r\n"));
    }

    #[test]
    fn a_head_is_parsed_only_once_complete() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nbody...";
        for cut in 0..full.len() - 7 {
            assert_eq!(parse_head(&full[..cut]), Ok(None), "cut at {cut}");
        }
        let head = parse_head(full).unwrap().unwrap();
        assert_eq!(head, Head { status: 200, body: BodyLength::Known(12), keep_alive: true, len: full.len() - 7 });
    }

    #[test]
    fn chunked_wins_over_content_length_and_close_or_http10_end_keep_alive() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.body, h.keep_alive), (BodyLength::Chunked, true));
        let h = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.body, h.keep_alive), (BodyLength::Known(0), false));
        let h = parse_head(b"HTTP/1.0 200 OK\nContent-Length: 3\n\n").unwrap().unwrap();
        assert_eq!((h.body, h.keep_alive, h.len), (BodyLength::Known(3), false, 35));
        let h = parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n").unwrap().unwrap();
        assert!(h.keep_alive);
        let h = parse_head(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.body, h.keep_alive), (BodyLength::UntilClose, false), "no length: the body ends at close");
        let h = parse_head(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.status, 401);
        let h = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.body, h.keep_alive), (BodyLength::Known(0), true));
    }

    #[test]
    fn malformed_heads_are_errors_not_panics() {
        for bad in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), Err(FramingError::StatusLine), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"), Err(FramingError::HeaderLine));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n"), Err(FramingError::HeaderLine));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), Err(FramingError::ContentLength));
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(FramingError::ContentLength)
        );
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(parse_head(&huge), Err(FramingError::HeadTooLarge));
    }

    fn decode_in_pieces(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), FramingError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        for p in input.chunks(piece) {
            consumed += d.decode(p, &mut out)?;
            if d.is_done() {
                break;
            }
        }
        assert!(d.is_done(), "not done after {consumed} bytes");
        Ok((out, consumed))
    }

    #[test]
    fn a_chunked_body_decodes_the_same_whatever_the_read_sizes() {
        let body = b"5\r\nhello\r\n1;name=value\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for piece in 1..body.len() {
            let (out, consumed) = decode_in_pieces(body, piece).unwrap();
            assert_eq!(out, b"hello 0123456789");
            assert_eq!(consumed, body.len() - 4, "stops at the end of the body (piece {piece})");
        }
        let (out, _) = decode_in_pieces(b"3\nabc\n0\n\n", 2).unwrap();
        assert_eq!(out, b"abc", "bare LF line ends are tolerated");
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [&b"\r\n"[..], b"xyz\r\n", b"3\r\nabcd\r\n", b"3\rX", b"1234567890abcdef0\r\n", b";ext\r\n"] {
            let mut out = Vec::new();
            assert!(ChunkedDecoder::new().decode(bad, &mut out).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"1;".to_vec();
        long.resize(MAX_LINE_BYTES + 10, b'x');
        assert!(ChunkedDecoder::new().decode(&long, &mut Vec::new()).is_err());
    }
}
