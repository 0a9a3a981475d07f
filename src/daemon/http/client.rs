//! The client half, for one GET: [`Url`] parses the command line,
//! [`Url::request`] builds the request, and [`ResponseParser`] decodes the
//! response incrementally (Content-Length, chunked, or read-until-close),
//! handing body bytes over as they arrive.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use super::{
    content_length, find_head_end, head_lines, is_token, list_values, parse_decimal, Field,
};
use crate::daemon::host::Host;

/// Largest response head (status line plus header fields) the client accepts.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (with extensions) the client accepts.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// A parsed `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Where to connect.
    pub host: Host,
    /// The TCP port, 80 unless given.
    pub port: u16,
    /// The request target: path plus query, starting with `/`, percent-encoded
    /// where the input had spaces or non-ASCII bytes. No fragment.
    pub path: String,
}

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    /// No `scheme://` prefix.
    MissingScheme,
    /// `https://`: ephemera has no TLS.
    Https,
    /// A scheme other than http or https.
    UnsupportedScheme(String),
    /// `user@host` is not supported.
    UserInfo,
    /// The host is empty.
    EmptyHost,
    /// The host is neither a name nor an IP literal.
    BadHost(String),
    /// The port is not a number in 1..=65535.
    BadPort(String),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::MissingScheme => {
                f.write_str("URL has no scheme: write it as http://host[:port]/path")
            }
            UrlError::Https => f.write_str(
                "https is not supported: ephemera speaks plain HTTP only (no TLS); use an http:// URL",
            ),
            UrlError::UnsupportedScheme(s) => {
                write!(f, "unsupported URL scheme {s:?}: only http:// is supported")
            }
            UrlError::UserInfo => f.write_str("user@host URLs are not supported"),
            UrlError::EmptyHost => f.write_str("URL has an empty host"),
            UrlError::BadHost(h) => write!(
                f,
                "bad host {h:?} in URL (IPv6 literals go in brackets: http://[fd00::1]:8080/)"
            ),
            UrlError::BadPort(p) => write!(f, "bad port {p:?} in URL: expected 1-65535"),
        }
    }
}

impl std::error::Error for UrlError {}

impl FromStr for Url {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Url::parse(s)
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.host_header())?;
        f.write_str(&self.path)
    }
}

impl Url {
    /// Parses `http://host[:port][/path][?query][#fragment]`.
    pub fn parse(s: &str) -> Result<Url, UrlError> {
        let s = s.trim();
        let (scheme, rest) = s.split_once("://").ok_or(UrlError::MissingScheme)?;
        if scheme.eq_ignore_ascii_case("https") {
            return Err(UrlError::Https);
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(UrlError::UnsupportedScheme(scheme.to_owned()));
        }
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(auth_end);
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError::BadHost(authority.to_owned()))?;
            let addr: Ipv6Addr = addr
                .parse()
                .map_err(|_| UrlError::BadHost(authority.to_owned()))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| UrlError::BadHost(authority.to_owned()))?,
                ),
            };
            (Host::Ip(IpAddr::V6(addr)), port)
        } else {
            let (h, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if h.is_empty() {
                return Err(UrlError::EmptyHost);
            }
            let host = Host::parse(h).map_err(|_| UrlError::BadHost(h.to_owned()))?;
            (host, port)
        };
        let port = match port {
            // RFC 3986 §3.2.3: an empty port means the default.
            None | Some("") => 80,
            Some(p) => match parse_decimal(p.as_bytes()) {
                Some(n @ 1..=65535) => n as u16,
                _ => return Err(UrlError::BadPort(p.to_owned())),
            },
        };
        let mut target = String::with_capacity(path.len() + 1);
        if !path.starts_with('/') {
            target.push('/');
        }
        for b in path.bytes() {
            if b.is_ascii_graphic() {
                target.push(b as char);
            } else {
                target.push_str(&format!("%{b:02X}"));
            }
        }
        Ok(Url {
            host,
            port,
            path: target,
        })
    }

    /// The `Host` header value: the host, plus `:port` unless it is 80.
    pub fn host_header(&self) -> String {
        if self.port == 80 {
            self.host.to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The bytes of a GET for this URL. It asks the server to close after the
    /// response, so read-until-close bodies end cleanly.
    pub fn request(&self) -> Vec<u8> {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ephemera/{}\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n",
            self.path,
            self.host_header(),
            env!("CARGO_PKG_VERSION")
        )
        .into_bytes()
    }
}

// ---------------------------------------------------------------------------
// Client: response parser
// ---------------------------------------------------------------------------

/// The status line and header fields of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The reason phrase, possibly empty.
    pub reason: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// The first value of header `name` (case-insensitive).
    #[cfg(test)]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a response could not be parsed. After one, the parser stays failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// The status line is not `HTTP/1.x NNN reason`.
    BadStatusLine,
    /// A header line is malformed.
    BadHeader,
    /// The head exceeds [`MAX_RESPONSE_HEAD`].
    HeadTooLarge,
    /// Content-Length is malformed or given twice with different values.
    BadContentLength,
    /// Chunked framing is malformed.
    BadChunk,
    /// 101 Switching Protocols was not asked for.
    UnexpectedUpgrade,
    /// The connection closed before the response was complete.
    Truncated,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResponseError::BadStatusLine => "malformed HTTP status line",
            ResponseError::BadHeader => "malformed HTTP header line",
            ResponseError::HeadTooLarge => "HTTP response head too large",
            ResponseError::BadContentLength => "malformed Content-Length",
            ResponseError::BadChunk => "malformed chunked encoding",
            ResponseError::UnexpectedUpgrade => "unexpected 101 Switching Protocols",
            ResponseError::Truncated => "connection closed before the response was complete",
        })
    }
}

impl std::error::Error for ResponseError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line into `buf`.
    Size,
    /// This many chunk-data bytes to go.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Reading trailer lines until a blank one.
    Trailer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ResponseState {
    Head,
    Length(u64),
    Chunked(ChunkState),
    UntilClose,
    Done,
    Failed(ResponseError),
}

/// Incremental parser for the response to one GET (RFC 9112 §6.3 framing).
#[derive(Debug)]
pub struct ResponseParser {
    state: ResponseState,
    /// Partial head, chunk-size line or trailer section.
    buf: Vec<u8>,
    scan: usize,
    head: Option<ResponseHead>,
}

impl Default for ResponseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseParser {
    /// A parser for the response to a GET (not HEAD: a HEAD response has no
    /// body whatever its Content-Length says).
    pub fn new() -> Self {
        ResponseParser {
            state: ResponseState::Head,
            buf: Vec::new(),
            scan: 0,
            head: None,
        }
    }

    /// Consumes received bytes, appending decoded body bytes to `body`. The
    /// caller may drain `body` between calls, so a large body is never held
    /// whole. Bytes after a complete response are ignored.
    pub fn handle_input(&mut self, data: &[u8], body: &mut Vec<u8>) -> Result<(), ResponseError> {
        let mut data = data;
        while !data.is_empty() {
            let used = match self.step(data, body) {
                Ok(used) => used,
                Err(e) => {
                    self.state = ResponseState::Failed(e.clone());
                    self.buf = Vec::new();
                    return Err(e);
                }
            };
            data = &data[used..];
        }
        match &self.state {
            ResponseState::Failed(e) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// The server closed the connection. Completes a read-until-close body;
    /// anything else unfinished is [`ResponseError::Truncated`].
    pub fn handle_eof(&mut self) -> Result<(), ResponseError> {
        match &self.state {
            ResponseState::UntilClose | ResponseState::Done => {
                self.state = ResponseState::Done;
                Ok(())
            }
            ResponseState::Failed(e) => Err(e.clone()),
            _ => {
                self.state = ResponseState::Failed(ResponseError::Truncated);
                Err(ResponseError::Truncated)
            }
        }
    }

    /// The final (non-1xx) response head, once parsed.
    #[cfg(test)]
    pub fn head(&self) -> Option<&ResponseHead> {
        self.head.as_ref()
    }

    /// The status code, once the head is parsed.
    pub fn status(&self) -> Option<u16> {
        self.head.as_ref().map(|h| h.status)
    }

    /// Whether the whole response has been received.
    pub fn is_complete(&self) -> bool {
        self.state == ResponseState::Done
    }

    /// Handles a prefix of `data`; returns how many bytes it used (at least one
    /// unless the state is terminal, where it swallows everything).
    fn step(&mut self, data: &[u8], body: &mut Vec<u8>) -> Result<usize, ResponseError> {
        match self.state.clone() {
            ResponseState::Done | ResponseState::Failed(_) => Ok(data.len()),
            ResponseState::Head => {
                let old = self.buf.len();
                let room = MAX_RESPONSE_HEAD + 1 - old;
                let take = data.len().min(room);
                self.buf.extend_from_slice(&data[..take]);
                let Some(end) = find_head_end(&self.buf, 0, self.scan) else {
                    self.scan = self.buf.len();
                    if self.buf.len() > MAX_RESPONSE_HEAD {
                        return Err(ResponseError::HeadTooLarge);
                    }
                    return Ok(take);
                };
                let head = parse_response_head(&self.buf[..end])?;
                self.buf = Vec::new();
                self.scan = 0;
                let used = end - old;
                match head.status {
                    101 => return Err(ResponseError::UnexpectedUpgrade),
                    // RFC 9110 §15.2: interim responses precede the final one.
                    100..=199 => return Ok(used),
                    _ => {}
                }
                self.state = response_framing(&head)?;
                self.head = Some(head);
                Ok(used)
            }
            ResponseState::Length(left) => {
                let k = (data.len() as u64).min(left) as usize;
                body.extend_from_slice(&data[..k]);
                self.state = if left - k as u64 == 0 {
                    ResponseState::Done
                } else {
                    ResponseState::Length(left - k as u64)
                };
                Ok(k)
            }
            ResponseState::UntilClose => {
                body.extend_from_slice(data);
                Ok(data.len())
            }
            ResponseState::Chunked(ChunkState::Data(left)) => {
                let k = (data.len() as u64).min(left) as usize;
                body.extend_from_slice(&data[..k]);
                let left = left - k as u64;
                self.state = ResponseState::Chunked(if left == 0 {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(left)
                });
                Ok(k)
            }
            ResponseState::Chunked(ChunkState::DataEnd) => {
                match (self.buf.as_slice(), data[0]) {
                    ([], b'\r') => self.buf.push(b'\r'),
                    ([] | [b'\r'], b'\n') => {
                        self.buf.clear();
                        self.state = ResponseState::Chunked(ChunkState::Size);
                    }
                    _ => return Err(ResponseError::BadChunk),
                }
                Ok(1)
            }
            ResponseState::Chunked(ChunkState::Size) => {
                let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                    self.buf.extend_from_slice(data);
                    if self.buf.len() > MAX_CHUNK_LINE {
                        return Err(ResponseError::BadChunk);
                    }
                    return Ok(data.len());
                };
                self.buf.extend_from_slice(&data[..nl]);
                if self.buf.len() > MAX_CHUNK_LINE {
                    return Err(ResponseError::BadChunk);
                }
                let size = parse_chunk_size(&mut self.buf).ok_or(ResponseError::BadChunk)?;
                self.buf.clear();
                self.state = ResponseState::Chunked(if size == 0 {
                    // The zero chunk's CRLF is consumed: the trailer section
                    // starts on a fresh line, so seed the blank-line search.
                    self.buf.push(b'\n');
                    ChunkState::Trailer
                } else {
                    ChunkState::Data(size)
                });
                Ok(nl + 1)
            }
            ResponseState::Chunked(ChunkState::Trailer) => {
                // `buf` starts with the '\n' that ended the last-chunk line, so
                // an immediately blank line is found as "\n\r\n" or "\n\n".
                let old = self.buf.len();
                let take = data.len().min(MAX_RESPONSE_HEAD + 2 - old);
                self.buf.extend_from_slice(&data[..take]);
                match find_head_end(&self.buf, 0, self.scan.max(1)) {
                    Some(end) => {
                        self.buf = Vec::new();
                        self.scan = 0;
                        self.state = ResponseState::Done;
                        Ok(end - old)
                    }
                    None => {
                        self.scan = self.buf.len();
                        if self.buf.len() > MAX_RESPONSE_HEAD + 1 {
                            return Err(ResponseError::HeadTooLarge);
                        }
                        Ok(take)
                    }
                }
            }
        }
    }
}

/// The size on a chunk-size line (RFC 9112 §7.1: `1*HEXDIG [BWS ; ext...]`),
/// its LF already split off and its CR, if any, still on. httparse reads
/// the line once it ends in CRLF; leading whitespace is skipped, as before
/// httparse, and an empty size is refused (httparse reads it as 0).
fn parse_chunk_size(line: &mut Vec<u8>) -> Option<u64> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let start = line.iter().position(|&b| b != b' ' && b != b'\t')?;
    if !line[start].is_ascii_hexdigit() {
        return None;
    }
    line.extend_from_slice(b"\r\n");
    match httparse::parse_chunk_size(&line[start..]) {
        Ok(httparse::Status::Complete((_, size))) => Some(size),
        _ => None,
    }
}

fn parse_response_head(head: &[u8]) -> Result<ResponseHead, ResponseError> {
    let lines = head_lines(head).map_err(|()| ResponseError::BadHeader)?;
    let (status_line, field_lines) = lines.split_first().ok_or(ResponseError::BadStatusLine)?;
    let status_line = std::str::from_utf8(status_line).map_err(|_| ResponseError::BadStatusLine)?;
    let (version, rest) = status_line
        .split_once(' ')
        .ok_or(ResponseError::BadStatusLine)?;
    let vb = version.as_bytes();
    if !(vb.len() == 8 && vb.starts_with(b"HTTP/1.") && vb[7].is_ascii_digit()) {
        return Err(ResponseError::BadStatusLine);
    }
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    if code.len() != 3 {
        return Err(ResponseError::BadStatusLine);
    }
    let status = parse_decimal(code.as_bytes())
        .filter(|s| (100..=999).contains(s))
        .ok_or(ResponseError::BadStatusLine)? as u16;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in field_lines {
        let text = String::from_utf8_lossy(line);
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            // RFC 9112 §5.2: a user agent may replace obs-fold with SP.
            let (_, value) = headers.last_mut().ok_or(ResponseError::BadHeader)?;
            value.push(' ');
            value.push_str(text.trim());
            continue;
        }
        let (name, value) = text.split_once(':').ok_or(ResponseError::BadHeader)?;
        if !is_token(name.as_bytes()) {
            return Err(ResponseError::BadHeader);
        }
        headers.push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
    }
    Ok(ResponseHead {
        status,
        reason: reason.to_owned(),
        headers,
    })
}

/// RFC 9112 §6.3: how the body of this (GET) response is delimited.
fn response_framing(head: &ResponseHead) -> Result<ResponseState, ResponseError> {
    if head.status == 204 || head.status == 304 {
        return Ok(ResponseState::Done);
    }
    let fields: Vec<Field<'_>> = head
        .headers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    let codings = list_values(&fields, "transfer-encoding");
    if let Some(last) = codings.last() {
        // Transfer-Encoding overrides Content-Length; a final coding other
        // than chunked means the body runs until close.
        return Ok(if last.eq_ignore_ascii_case(b"chunked") {
            ResponseState::Chunked(ChunkState::Size)
        } else {
            ResponseState::UntilClose
        });
    }
    match content_length(&fields).map_err(|()| ResponseError::BadContentLength)? {
        Some(0) => Ok(ResponseState::Done),
        Some(n) => Ok(ResponseState::Length(n)),
        None => Ok(ResponseState::UntilClose),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::http::{pattern_byte, ServerConn, ServerContext};
    use ephemera::{Rng, SeededRng};

    fn ctx() -> ServerContext<'static> {
        ServerContext {
            local: "10.7.0.2:80".parse().unwrap(),
            remote: "10.7.0.1:43512".parse().unwrap(),
            port_table: &String::new,
        }
    }

    #[test]
    fn url_parsing() {
        let u = Url::parse("http://10.7.0.1:8000/file.bin?x=1#frag").unwrap();
        assert_eq!(u.host, Host::Ip("10.7.0.1".parse().unwrap()));
        assert_eq!(u.port, 8000);
        assert_eq!(u.path, "/file.bin?x=1");
        assert_eq!(u.to_string(), "http://10.7.0.1:8000/file.bin?x=1");

        let u = Url::parse("http://[fd00:7::1]:8080").unwrap();
        assert_eq!(u.host, Host::Ip("fd00:7::1".parse().unwrap()));
        assert_eq!(u.port, 8080);
        assert_eq!(u.path, "/");
        assert_eq!(u.host_header(), "[fd00:7::1]:8080");

        let u: Url = "HTTP://Example.COM?q".parse().unwrap();
        assert_eq!(u.host, Host::Name("example.com".into()));
        assert_eq!(u.port, 80);
        assert_eq!(u.path, "/?q");
        assert_eq!(u.host_header(), "example.com");

        let u = Url::parse("http://h:/a b/é").unwrap();
        assert_eq!(u.port, 80);
        assert_eq!(u.path, "/a%20b/%C3%A9");
    }

    #[test]
    fn url_errors_say_what_is_wrong() {
        assert_eq!(Url::parse("https://x/"), Err(UrlError::Https));
        assert!(UrlError::Https
            .to_string()
            .contains("https is not supported"));
        assert_eq!(Url::parse("x/y"), Err(UrlError::MissingScheme));
        assert_eq!(
            Url::parse("ftp://x/"),
            Err(UrlError::UnsupportedScheme("ftp".into()))
        );
        assert_eq!(Url::parse("http:///p"), Err(UrlError::EmptyHost));
        assert_eq!(Url::parse("http://u:p@h/"), Err(UrlError::UserInfo));
        assert!(matches!(
            Url::parse("http://h:0/"),
            Err(UrlError::BadPort(_))
        ));
        assert!(matches!(
            Url::parse("http://h:65536/"),
            Err(UrlError::BadPort(_))
        ));
        assert!(matches!(
            Url::parse("http://h:x/"),
            Err(UrlError::BadPort(_))
        ));
        assert!(matches!(
            Url::parse("http://fd00::1/"),
            Err(UrlError::BadHost(_))
        ));
        assert!(matches!(
            Url::parse("http://[nope]/"),
            Err(UrlError::BadHost(_))
        ));
        assert!(matches!(
            Url::parse("http://[::1]x/"),
            Err(UrlError::BadHost(_))
        ));
        assert!(matches!(
            Url::parse("http://a b/"),
            Err(UrlError::BadHost(_))
        ));
    }

    #[test]
    fn request_bytes() {
        let u = Url::parse("http://[::1]:8080/f?x").unwrap();
        let req = String::from_utf8(u.request()).unwrap();
        assert!(
            req.starts_with("GET /f?x HTTP/1.1\r\nHost: [::1]:8080\r\n"),
            "{req}"
        );
        assert!(req.contains("Connection: close\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }

    /// Feeds `input` in pieces of `split` bytes, returns (status, body, complete).
    fn parse_response(
        input: &[u8],
        split: usize,
        eof: bool,
    ) -> Result<(u16, Vec<u8>), ResponseError> {
        let mut p = ResponseParser::new();
        let mut body = Vec::new();
        for piece in input.chunks(split.max(1)) {
            p.handle_input(piece, &mut body)?;
        }
        if eof {
            p.handle_eof()?;
        }
        assert!(p.is_complete());
        Ok((p.status().unwrap(), body))
    }

    #[test]
    fn content_length_response_at_every_split() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloIGNORED";
        for split in 1..resp.len() {
            assert_eq!(
                parse_response(resp, split, false).unwrap(),
                (200, b"hello".to_vec())
            );
        }
    }

    #[test]
    fn chunked_response_at_every_split() {
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                     5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 1..resp.len() {
            let (status, body) = parse_response(resp, split, false).unwrap();
            assert_eq!(status, 200);
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz");
        }
        let bare = b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n";
        for split in 1..bare.len() {
            assert_eq!(parse_response(bare, split, false).unwrap().1, b"abc");
        }
    }

    #[test]
    fn read_until_close_response() {
        let resp = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nall of it";
        let (status, body) = parse_response(resp, 3, true).unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"all of it"[..]));
    }

    #[test]
    fn interim_and_bodyless_responses() {
        let resp =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno";
        let mut p = ResponseParser::new();
        let mut body = Vec::new();
        p.handle_input(resp, &mut body).unwrap();
        assert_eq!(p.head().unwrap().status, 404);
        assert_eq!(p.head().unwrap().reason, "Not Found");
        assert_eq!(p.head().unwrap().header("content-length"), Some("2"));
        assert_eq!(body, b"no");
        assert!(p.is_complete());
        let (s, b) = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", 1, false).unwrap();
        assert_eq!((s, b.len()), (204, 0));
    }

    #[test]
    fn body_streams_as_it_arrives() {
        let mut p = ResponseParser::new();
        let mut body = Vec::new();
        p.handle_input(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nabc",
            &mut body,
        )
        .unwrap();
        assert_eq!(p.status(), Some(200));
        assert_eq!(body, b"abc");
        body.clear();
        p.handle_input(b"de", &mut body).unwrap();
        assert_eq!(body, b"de");
        assert!(!p.is_complete());
        assert_eq!(p.handle_eof(), Err(ResponseError::Truncated));
    }

    #[test]
    fn malformed_responses_are_errors() {
        let cases: &[(&[u8], ResponseError)] = &[
            (b"HTTP/2 200 OK\r\n\r\n", ResponseError::BadStatusLine),
            (b"HTTP/1.1 20 OK\r\n\r\n", ResponseError::BadStatusLine),
            (b"SSH-2.0-OpenSSH\r\n\r\n", ResponseError::BadStatusLine),
            (
                b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                ResponseError::BadHeader,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                ResponseError::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                ResponseError::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                ResponseError::BadChunk,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXY",
                ResponseError::BadChunk,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
                ResponseError::BadChunk,
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                ResponseError::UnexpectedUpgrade,
            ),
        ];
        for (input, err) in cases {
            let mut p = ResponseParser::new();
            let mut body = Vec::new();
            assert_eq!(
                p.handle_input(input, &mut body).as_ref(),
                Err(err),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            // Stays failed.
            assert_eq!(p.handle_input(b"more", &mut body).as_ref(), Err(err));
        }
        let mut p = ResponseParser::new();
        let huge = vec![b'a'; MAX_RESPONSE_HEAD + 10];
        assert_eq!(
            p.handle_input(&huge, &mut Vec::new()),
            Err(ResponseError::HeadTooLarge)
        );
    }

    #[test]
    fn client_round_trip_against_the_server() {
        let mut conn = ServerConn::new();
        let url = Url::parse("http://10.7.0.2/bytes/100000").unwrap();
        conn.handle_input(&url.request(), &ctx());
        let mut p = ResponseParser::new();
        let mut body = Vec::new();
        let mut buf = [0u8; 1500];
        let mut total = 0;
        loop {
            let n = conn.poll_output(&mut buf);
            if n == 0 {
                break;
            }
            p.handle_input(&buf[..n], &mut body).unwrap();
            for (i, b) in body.iter().enumerate() {
                assert_eq!(*b, pattern_byte((total + i) as u64));
            }
            total += body.len();
            body.clear();
        }
        assert!(p.is_complete());
        assert_eq!(total, 100_000);
        assert!(
            conn.should_close(),
            "the client asked for Connection: close"
        );
    }

    #[test]
    fn random_garbage_never_panics_the_client_parser() {
        let mut rng = SeededRng::new(7);
        let alphabet =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 12;\r\n0a";
        for round in 0..3000 {
            let len = (rng.next_u64() % 600) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    let r = rng.next_u64();
                    if round % 2 == 0 {
                        r as u8
                    } else {
                        alphabet[(r % alphabet.len() as u64) as usize]
                    }
                })
                .collect();
            let mut p = ResponseParser::new();
            let mut body = Vec::new();
            let mut failed = false;
            for piece in input.chunks((rng.next_u64() % 17) as usize + 1) {
                failed |= p.handle_input(piece, &mut body).is_err();
            }
            failed |= p.handle_eof().is_err();
            // Random bytes essentially never start with "HTTP/1.".
            if round % 2 == 0 && len > 8 {
                assert!(failed, "round {round}");
            }
        }
    }
}
