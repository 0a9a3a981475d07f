//! The server half: [`ServerConn`] is one server-side connection, its
//! request heads read by `httparse`.
//! Received bytes go in through [`ServerConn::handle_input`], bytes to send
//! come out of [`ServerConn::poll_output`], and
//! [`ServerConn::should_close`] says when the daemon should send FIN. Idle
//! timeouts belong to the driver.
//!
//! Invariants: responses leave in request order (RFC 9112 §9.3.2); bodies
//! are produced lazily, so `/bytes/N` never holds more than the caller's
//! output buffer; once a response that closes the connection is queued, no
//! further input is parsed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{content_length, find_head_end, list_values, parse_decimal, trim_ows, Field};

/// Largest request line plus header fields the server accepts; beyond it the
/// answer is 431 and the connection closes.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Responses queued before [`ServerConn::wants_input`] asks the driver to stop
/// reading, so a client that pipelines without reading meets TCP back-pressure.
const MAX_QUEUED_RESPONSES: usize = 32;

/// The period of the `/bytes/N` body: 62 alphanumerics and a newline. An odd
/// length makes an off-by-some offset visible in a diff.
const PATTERN: &[u8; 63] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\n";

/// The byte at `offset` of every `/bytes/N` body.
#[cfg(test)]
pub fn pattern_byte(offset: u64) -> u8 {
    PATTERN[(offset % PATTERN.len() as u64) as usize]
}

/// Fills `buf` with the `/bytes/N` body starting at `offset`.
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    let mut phase = (offset % PATTERN.len() as u64) as usize;
    let mut done = 0;
    while done < buf.len() {
        let n = (PATTERN.len() - phase).min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&PATTERN[phase..phase + n]);
        done += n;
        phase = 0;
    }
}

/// What the server knows about the connection when a request arrives.
#[derive(Clone, Copy)]
pub struct ServerContext<'a> {
    /// The stack's end of the connection (address and port the client dialled).
    pub local: SocketAddr,
    /// The client's end, as the stack saw it (its kernel-chosen ephemeral port).
    pub remote: SocketAddr,
    /// Renders what the `/` page shows after the 4-tuple (the port table
    /// as far as this client may see it); called only when a `/` request
    /// is answered, once per [`ServerConn::handle_input`] call however
    /// many `/` requests it completes.
    pub port_table: &'a dyn Fn() -> String,
}

/// Where a response body comes from.
#[derive(Debug)]
enum Body {
    /// Bytes already rendered; shared so pipelined `/` requests cost one copy.
    Bytes { data: Arc<[u8]>, pos: usize },
    /// The `/bytes/N` pattern, generated on demand.
    Pattern { pos: u64, end: u64 },
}

#[derive(Debug)]
struct Response {
    head: Vec<u8>,
    head_pos: usize,
    body: Body,
}

impl Response {
    /// Copies as much as fits into `buf`; returns the count.
    fn fill(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        if self.head_pos < self.head.len() {
            let k = (self.head.len() - self.head_pos).min(buf.len());
            buf[..k].copy_from_slice(&self.head[self.head_pos..self.head_pos + k]);
            self.head_pos += k;
            n = k;
        }
        let buf = &mut buf[n..];
        match &mut self.body {
            Body::Bytes { data, pos } => {
                let k = (data.len() - *pos).min(buf.len());
                buf[..k].copy_from_slice(&data[*pos..*pos + k]);
                *pos += k;
                n + k
            }
            Body::Pattern { pos, end } => {
                let k = (*end - *pos).min(buf.len() as u64) as usize;
                fill_pattern(*pos, &mut buf[..k]);
                *pos += k as u64;
                n + k
            }
        }
    }

    fn is_done(&self) -> bool {
        self.head_pos == self.head.len()
            && match &self.body {
                Body::Bytes { data, pos } => *pos == data.len(),
                Body::Pattern { pos, end } => pos == end,
            }
    }
}

/// Whether the connection still reads requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    /// Parsing requests.
    Open,
    /// The last response is queued (or the peer is gone); close once it is sent.
    Closing,
}

/// One server-side HTTP/1.1 connection of the built-in web service.
///
/// Routes: `/` is a text page naming the client's 4-tuple and showing the
/// port table; `/bytes/N` is N bytes of [`fill_pattern`]; anything else is 404.
/// Only GET and HEAD are served (others get 405 with `Allow`).
#[derive(Debug)]
pub struct ServerConn {
    /// Received bytes not yet consumed; `inbuf[start..]` is the live part.
    inbuf: Vec<u8>,
    start: usize,
    /// Where the search for the end of the current head resumes.
    scan: usize,
    /// Request body bytes still to skip (we never use request bodies).
    discard: u64,
    /// The current head's request line is complete and valid.
    line_checked: bool,
    queue: VecDeque<Response>,
    state: ServerState,
    /// A request head has been complete at least once.
    served_one: bool,
}

impl Default for ServerConn {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerConn {
    /// A fresh connection, ready for the first request.
    pub fn new() -> Self {
        ServerConn {
            inbuf: Vec::new(),
            start: 0,
            scan: 0,
            discard: 0,
            line_checked: false,
            queue: VecDeque::new(),
            state: ServerState::Open,
            served_one: false,
        }
    }

    /// Whether the server waits for (the rest of) a request head while it
    /// has nothing to send: from the start of the connection until its
    /// first head is complete, and from the first byte of each later head
    /// until it is complete. The driver bounds this time
    /// ([`Self::handle_head_timeout`]); waiting between requests is idle
    /// time, which it bounds separately.
    pub fn awaiting_head(&self) -> bool {
        self.state == ServerState::Open
            && self.queue.is_empty()
            && self.discard == 0
            && (!self.served_one || self.inbuf.len() > self.start)
    }

    /// The request head took too long: answer 408 (RFC 9110 section
    /// 15.5.9) and close once it is sent.
    pub fn handle_head_timeout(&mut self) {
        if self.state == ServerState::Open {
            self.queue_error(Status::REQUEST_TIMEOUT);
        }
        self.inbuf = Vec::new();
        self.start = 0;
        self.scan = 0;
    }

    /// Consumes bytes received from the client. Every complete request in
    /// them is answered (the responses wait in [`Self::poll_output`]); a
    /// partial request is kept until the rest arrives. `ctx` is used for the
    /// `/` page of any request completed by these bytes.
    pub fn handle_input(&mut self, data: &[u8], ctx: &ServerContext<'_>) {
        if self.state != ServerState::Open {
            return;
        }
        self.inbuf.extend_from_slice(data);
        let mut page: Option<Arc<[u8]>> = None;
        while self.state == ServerState::Open {
            if self.discard > 0 {
                let avail = (self.inbuf.len() - self.start) as u64;
                let n = avail.min(self.discard);
                self.start += n as usize;
                self.scan = self.start;
                self.line_checked = false;
                self.discard -= n;
                if self.discard > 0 {
                    break;
                }
            }
            // RFC 9112 §2.2: ignore empty lines before a request line.
            if !self.line_checked {
                loop {
                    let rest = &self.inbuf[self.start..];
                    if rest.starts_with(b"\r\n") {
                        self.start += 2;
                    } else if rest.starts_with(b"\n") {
                        self.start += 1;
                    } else {
                        break;
                    }
                }
                self.scan = self.scan.max(self.start);
                // Reject a bad request line at once rather than waiting for
                // a blank line that a non-HTTP client may never send.
                if let Some(rel) = self.inbuf[self.scan..].iter().position(|&b| b == b'\n') {
                    let line = &self.inbuf[self.start..=self.scan + rel];
                    if let Err(status) = check_request_line(line) {
                        self.queue_error(status);
                        break;
                    }
                    self.line_checked = true;
                }
            }
            let Some(end) = find_head_end(&self.inbuf, self.start, self.scan) else {
                self.scan = self.inbuf.len();
                if self.inbuf.len() - self.start > MAX_REQUEST_HEAD {
                    self.queue_error(Status::HEADERS_TOO_LARGE);
                }
                break;
            };
            let head_start = self.start;
            self.start = end;
            self.scan = end;
            self.line_checked = false;
            self.served_one = true;
            if end - head_start > MAX_REQUEST_HEAD {
                self.queue_error(Status::HEADERS_TOO_LARGE);
                break;
            }
            let parsed = parse_request(&self.inbuf[head_start..end]);
            match parsed {
                Ok(req) => {
                    self.discard = req.content_length;
                    self.respond(&req, ctx, &mut page);
                }
                Err(status) => self.queue_error(status),
            }
        }
        if self.state == ServerState::Open {
            self.inbuf.drain(..self.start);
            self.scan -= self.start;
            self.start = 0;
        } else {
            self.inbuf = Vec::new();
            self.start = 0;
            self.scan = 0;
        }
    }

    /// The client closed its sending side (FIN). Requests already complete
    /// are still answered; a partial one is dropped; then the connection closes.
    pub fn handle_eof(&mut self) {
        self.state = ServerState::Closing;
        self.inbuf = Vec::new();
        self.start = 0;
        self.scan = 0;
    }

    /// Writes pending response bytes into `buf`; returns how many. Bodies are
    /// generated here, one buffer at a time.
    pub fn poll_output(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            let Some(resp) = self.queue.front_mut() else {
                break;
            };
            n += resp.fill(&mut buf[n..]);
            if resp.is_done() {
                self.queue.pop_front();
            }
        }
        n
    }

    /// Whether [`Self::poll_output`] has anything to write.
    #[cfg(test)]
    pub fn has_output(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether the driver should keep reading from the client. False while
    /// many responses are queued (back-pressure on pipelining) or once the
    /// connection is closing.
    pub fn wants_input(&self) -> bool {
        self.state == ServerState::Open && self.queue.len() < MAX_QUEUED_RESPONSES
    }

    /// True once everything is sent and the connection should be closed.
    pub fn should_close(&self) -> bool {
        self.state == ServerState::Closing && self.queue.is_empty()
    }

    fn respond(&mut self, req: &Request, ctx: &ServerContext<'_>, page: &mut Option<Arc<[u8]>>) {
        let keep = req.keep_alive;
        let conn = connection_header(keep, req.http10);
        if !req.method.is_served() {
            // RFC 9110 §15.5.6: a 405 carries Allow.
            let body = status_body(Status::METHOD_NOT_ALLOWED);
            let head = response_head(
                Status::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                body.len() as u64,
                &format!("Allow: GET, HEAD\r\n{conn}"),
            );
            self.push(head, bytes_body(body.as_bytes(), false), keep);
            return;
        }
        let head_only = req.method == Method::Head;
        let path = req.path.as_str();
        if path == "/" {
            let data = page
                .get_or_insert_with(|| Arc::from(render_page(ctx).into_bytes()))
                .clone();
            let head = response_head(
                Status::OK,
                "text/plain; charset=utf-8",
                data.len() as u64,
                conn,
            );
            let body = if head_only {
                bytes_body(b"", false)
            } else {
                Body::Bytes { data, pos: 0 }
            };
            self.push(head, body, keep);
        } else if let Some(n) = path.strip_prefix("/bytes/") {
            match parse_decimal(n.as_bytes()) {
                Some(len) => {
                    let head = response_head(Status::OK, "application/octet-stream", len, conn);
                    let end = if head_only { 0 } else { len };
                    self.push(head, Body::Pattern { pos: 0, end }, keep);
                }
                None => self.queue_error(Status::BAD_REQUEST),
            }
        } else {
            let body = status_body(Status::NOT_FOUND);
            let head = response_head(
                Status::NOT_FOUND,
                "text/plain; charset=utf-8",
                body.len() as u64,
                conn,
            );
            self.push(head, bytes_body(body.as_bytes(), head_only), keep);
        }
    }

    /// Queues an error response after which the connection closes: the
    /// framing of whatever follows a bad request cannot be trusted.
    fn queue_error(&mut self, status: Status) {
        let body = status_body(status);
        let conn = connection_header(false, false);
        let head = response_head(status, "text/plain; charset=utf-8", body.len() as u64, conn);
        self.push(head, bytes_body(body.as_bytes(), false), false);
    }

    fn push(&mut self, head: Vec<u8>, body: Body, keep_alive: bool) {
        self.queue.push_back(Response {
            head,
            head_pos: 0,
            body,
        });
        if !keep_alive {
            self.state = ServerState::Closing;
        }
    }
}

fn bytes_body(data: &[u8], head_only: bool) -> Body {
    Body::Bytes {
        data: if head_only {
            Arc::from(&b""[..])
        } else {
            Arc::from(data)
        },
        pos: 0,
    }
}

fn render_page(ctx: &ServerContext<'_>) -> String {
    let mut page = format!(
        "ephemera: a user-space TCP/IP stack with its own port table\n\n\
         you are {} -> {}\n\n",
        ctx.remote, ctx.local
    );
    page.push_str(&(ctx.port_table)());
    if !page.ends_with('\n') {
        page.push('\n');
    }
    page
}

fn connection_header(keep_alive: bool, http10: bool) -> &'static str {
    match (keep_alive, http10) {
        (false, _) => "Connection: close\r\n",
        // RFC 9112 §9.3: an HTTP/1.0 client needs to be told the connection persists.
        (true, true) => "Connection: keep-alive\r\n",
        (true, false) => "",
    }
}

/// A status code with its reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Status(u16, &'static str);

impl Status {
    const OK: Status = Status(200, "OK");
    const BAD_REQUEST: Status = Status(400, "Bad Request");
    const NOT_FOUND: Status = Status(404, "Not Found");
    const METHOD_NOT_ALLOWED: Status = Status(405, "Method Not Allowed");
    const REQUEST_TIMEOUT: Status = Status(408, "Request Timeout");
    const HEADERS_TOO_LARGE: Status = Status(431, "Request Header Fields Too Large");
    const NOT_IMPLEMENTED: Status = Status(501, "Not Implemented");
    const VERSION_NOT_SUPPORTED: Status = Status(505, "HTTP Version Not Supported");
}

fn status_body(status: Status) -> String {
    format!("{} {}\n", status.0, status.1)
}

/// The status line and header fields. No `Date`: RFC 9110 §6.6.1 says a
/// server without a reliable clock must not send one, and this module has no clock.
fn response_head(status: Status, content_type: &str, len: u64, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\nServer: ephemera\r\nContent-Type: {content_type}\r\n\
         Content-Length: {len}\r\n{extra}\r\n",
        status.0, status.1
    )
    .into_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Other,
}

impl Method {
    fn is_served(self) -> bool {
        self != Method::Other
    }
}

#[derive(Debug)]
struct Request {
    method: Method,
    /// The path without query, from origin-form or absolute-form.
    path: String,
    http10: bool,
    keep_alive: bool,
    content_length: u64,
}

/// Checks a request line, its LF included, before the rest of the head
/// arrives: `Ok` if the head may go on, the status to answer if not.
fn check_request_line(line: &[u8]) -> Result<(), Status> {
    // No room for fields: a valid line then reads as a partial head.
    let mut req = httparse::Request::new(&mut []);
    match req.parse(line) {
        Ok(_) | Err(httparse::Error::TooManyHeaders) => Ok(()),
        Err(httparse::Error::Version) => version_fallback(line).map(|_| ()),
        Err(_) => Err(Status::BAD_REQUEST),
    }
}

/// For a head httparse refused for its version: where its minor version
/// digit is if it is `HTTP/1.x` with a later x, to be read as 1.1 (RFC
/// 9110 §2.5: a server reads a later minor version as its own); 505 for
/// another `HTTP/d.d`; 400 for anything else.
fn version_fallback(head: &[u8]) -> Result<usize, Status> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(_), Some(_), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::BAD_REQUEST);
    };
    match version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit() => Ok(line.len() - 1),
        [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            Err(Status::VERSION_NOT_SUPPORTED)
        }
        _ => Err(Status::BAD_REQUEST),
    }
}

/// Parses a complete head (request line, fields, blank line): its syntax
/// with httparse, then what this server requires on top of it.
fn parse_request(head: &[u8]) -> Result<Request, Status> {
    match parse_head(head) {
        Err(httparse::Error::Version) => {
            let minor = version_fallback(head)?;
            let mut as_11 = head.to_vec();
            as_11[minor] = b'1';
            parse_head(&as_11).map_err(|_| Status::BAD_REQUEST)?
        }
        r => r.map_err(|e| match e {
            httparse::Error::TooManyHeaders => Status::HEADERS_TOO_LARGE,
            _ => Status::BAD_REQUEST,
        })?,
    }
}

/// [`parse_request`] once httparse has accepted the syntax: the inner
/// `Result` says what the server makes of it.
fn parse_head(head: &[u8]) -> Result<Result<Request, Status>, httparse::Error> {
    // Room for every line of the head: no valid request is refused for
    // its number of fields, and the head is bounded (MAX_REQUEST_HEAD).
    let lines = head.iter().filter(|&&b| b == b'\n').count();
    let mut headers = vec![httparse::EMPTY_HEADER; lines];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(head)?.is_partial() {
        // The caller found the blank line, so httparse cannot want more.
        return Ok(Err(Status::BAD_REQUEST));
    }
    Ok(interpret(&req))
}

/// What the server acts on in a request httparse accepted.
fn interpret(req: &httparse::Request<'_, '_>) -> Result<Request, Status> {
    let bad = Status::BAD_REQUEST;
    let http10 = req.version == Some(0);
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        _ => Method::Other,
    };
    // httparse lets octets above 0x7f through; a target is ASCII.
    let target = req.path.unwrap_or_default().as_bytes();
    if !target.iter().all(u8::is_ascii_graphic) {
        return Err(bad);
    }
    let path = request_path(target).ok_or(bad)?;
    let fields: Vec<Field<'_>> = req
        .headers
        .iter()
        .map(|h| (h.name.as_bytes(), trim_ows(h.value)))
        .collect();
    // RFC 9112 §3.2: exactly one Host in an HTTP/1.1 request.
    let hosts = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"host"))
        .count();
    if hosts > 1 || (!http10 && hosts == 0) {
        return Err(bad);
    }
    // RFC 9112 §6.1: a transfer coding we do not decode gets 501.
    if fields
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(b"transfer-encoding"))
    {
        return Err(Status::NOT_IMPLEMENTED);
    }
    let content_length = content_length(&fields).map_err(|()| bad)?.unwrap_or(0);
    // RFC 9112 §9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive".
    let conn = list_values(&fields, "connection");
    let has = |t: &str| conn.iter().any(|v| v.eq_ignore_ascii_case(t.as_bytes()));
    let keep_alive = !has("close") && (!http10 || has("keep-alive"));
    Ok(Request {
        method,
        path,
        http10,
        keep_alive,
        content_length,
    })
}

/// The path of an origin-form or absolute-form target, without its query.
/// Asterisk-form (`*`) maps to itself, which no route matches.
fn request_path(target: &[u8]) -> Option<String> {
    let target = std::str::from_utf8(target).ok()?;
    let path = if target.starts_with('/') || target == "*" {
        target
    } else {
        // RFC 9112 §3.2.2: a server must accept absolute-form.
        let scheme_end = target.find("://")?;
        if !target[..scheme_end].eq_ignore_ascii_case("http") {
            return None;
        }
        let rest = &target[scheme_end + 3..];
        rest.find('/').map_or("/", |i| &rest[i..])
    };
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    Some(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "tcp LISTEN 10.7.0.2:80 *:*\n";

    fn ctx() -> ServerContext<'static> {
        ServerContext {
            local: "10.7.0.2:80".parse().unwrap(),
            remote: "10.7.0.1:43512".parse().unwrap(),
            port_table: &|| TABLE.to_string(),
        }
    }

    /// Drains all output in small buffers, as a congested socket would.
    fn drain(conn: &mut ServerConn) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = conn.poll_output(&mut buf);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    fn exchange(input: &[u8]) -> (String, ServerConn) {
        let mut conn = ServerConn::new();
        conn.handle_input(input, &ctx());
        let out = drain(&mut conn);
        (String::from_utf8(out).unwrap(), conn)
    }

    /// Splits a byte stream of responses into (status, headers, body) with the
    /// client parser, one response per Content-Length.
    fn statuses(out: &str) -> Vec<u16> {
        out.match_indices("HTTP/1.1 ")
            .map(|(i, _)| out[i + 9..i + 12].parse().unwrap())
            .collect()
    }

    #[test]
    fn root_page_names_the_four_tuple_and_the_port_table() {
        let (out, conn) = exchange(b"GET / HTTP/1.1\r\nHost: 10.7.0.2\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Content-Type: text/plain; charset=utf-8\r\n"));
        assert!(out.contains("you are 10.7.0.1:43512 -> 10.7.0.2:80\n"));
        assert!(out.contains(TABLE));
        assert!(!out.contains("Connection: close"));
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.ends_with(&format!("Content-Length: {}", body.len())));
        assert!(!conn.should_close(), "HTTP/1.1 keeps the connection alive");
        assert!(conn.wants_input());
    }

    #[test]
    fn ipv6_four_tuple_is_shown_in_brackets() {
        let mut conn = ServerConn::new();
        let ctx = ServerContext {
            local: "[fd00:7::2]:80".parse().unwrap(),
            remote: "[fd00:7::1]:50000".parse().unwrap(),
            port_table: &String::new,
        };
        conn.handle_input(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &ctx);
        let out = String::from_utf8(drain(&mut conn)).unwrap();
        assert!(out.contains("you are [fd00:7::1]:50000 -> [fd00:7::2]:80\n"));
    }

    #[test]
    fn request_split_at_every_byte_gives_the_same_response() {
        let req = b"GET /bytes/100?x=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\n\r\n";
        let (whole, _) = exchange(req);
        let mut conn = ServerConn::new();
        for b in req {
            assert!(!conn.has_output());
            conn.handle_input(std::slice::from_ref(b), &ctx());
        }
        assert_eq!(String::from_utf8(drain(&mut conn)).unwrap(), whole);
        assert!(whole.starts_with("HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn pipelined_requests_in_one_read_are_answered_in_order() {
        let reqs = b"GET /bytes/3 HTTP/1.1\r\nHost: a\r\n\r\n\
                     GET /nope HTTP/1.1\r\nHost: a\r\n\r\n\
                     HEAD / HTTP/1.1\r\nHost: a\r\n\r\n\
                     GET /bytes/2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n\
                     GET /bytes/1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let (out, conn) = exchange(reqs);
        assert_eq!(statuses(&out), [200, 404, 200, 200], "{out}");
        assert!(out.contains("Content-Length: 3\r\n\r\n012HTTP/1.1 404"));
        assert!(out.ends_with("Connection: close\r\n\r\n01"), "{out}");
        assert!(conn.should_close(), "the fifth request is never answered");
    }

    #[test]
    fn bytes_route_has_exact_length_and_pattern() {
        let (out, _) = exchange(b"GET /bytes/200 HTTP/1.1\r\nHost: a\r\n\r\n");
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Content-Length: 200"));
        assert!(head.contains("Content-Type: application/octet-stream\r\n"));
        assert_eq!(body.len(), 200);
        let expected: Vec<u8> = (0..200).map(pattern_byte).collect();
        assert_eq!(body.as_bytes(), expected);
        assert!(body.starts_with("0123456789ABC"));
        assert_eq!(&body[62..64], "\n0");
    }

    #[test]
    fn ten_gigabytes_stream_lazily() {
        let n: u64 = 10_000_000_000;
        let mut conn = ServerConn::new();
        let req = format!("GET /bytes/{n} HTTP/1.1\r\nHost: a\r\n\r\n");
        conn.handle_input(req.as_bytes(), &ctx());
        let mut buf = vec![0u8; 64 * 1024];
        let k = conn.poll_output(&mut buf);
        assert_eq!(k, buf.len());
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.ends_with(&format!("Content-Length: {n}")));
        let mut offset = body.len() as u64;
        assert!(body
            .bytes()
            .enumerate()
            .all(|(i, b)| b == pattern_byte(i as u64)));
        // A few more chunks continue the pattern where the last left off.
        for _ in 0..16 {
            assert_eq!(conn.poll_output(&mut buf), buf.len());
            assert_eq!(buf[0], pattern_byte(offset));
            assert_eq!(
                buf[buf.len() - 1],
                pattern_byte(offset + buf.len() as u64 - 1)
            );
            offset += buf.len() as u64;
        }
        assert!(conn.has_output());
    }

    #[test]
    fn head_gets_headers_without_body() {
        let (out, _) = exchange(b"HEAD /bytes/10000000000 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(out.contains("Content-Length: 10000000000\r\n"));
        assert!(out.ends_with("\r\n\r\n"));
        let (out, _) = exchange(b"HEAD /missing HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(out.ends_with("\r\n\r\n"));
    }

    #[test]
    fn bad_byte_counts_are_400_and_close() {
        for path in [
            "/bytes/",
            "/bytes/-1",
            "/bytes/1x",
            "/bytes/99999999999999999999",
            "/bytes/+5",
        ] {
            let (out, conn) =
                exchange(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
            assert!(
                out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{path}: {out}"
            );
            assert!(out.contains("Connection: close\r\n"));
            assert!(conn.should_close());
        }
    }

    #[test]
    fn unknown_path_is_404_and_keeps_alive() {
        let (out, conn) = exchange(b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(out.ends_with("\r\n\r\n404 Not Found\n"));
        assert!(!conn.should_close());
    }

    #[test]
    fn other_methods_get_405_with_allow_and_their_body_is_skipped() {
        let (out, conn) = exchange(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
              GET /bytes/1 HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert_eq!(statuses(&out), [405, 200], "{out}");
        assert!(out.contains("Allow: GET, HEAD\r\n"));
        assert!(!conn.should_close());
    }

    #[test]
    fn request_body_split_across_reads_is_skipped() {
        let mut conn = ServerConn::new();
        conn.handle_input(
            b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
            &ctx(),
        );
        conn.handle_input(b"defg", &ctx());
        conn.handle_input(b"hijGET / HTTP/1.1\r\nHost: a\r\n\r\n", &ctx());
        let out = String::from_utf8(drain(&mut conn)).unwrap();
        assert_eq!(statuses(&out), [405, 200]);
    }

    #[test]
    fn connection_close_is_honoured() {
        let (out, conn) = exchange(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(out.contains("Connection: close\r\n"));
        assert!(conn.should_close());
        assert!(!conn.wants_input());
    }

    #[test]
    fn should_close_waits_until_output_is_drained() {
        let mut conn = ServerConn::new();
        conn.handle_input(b"GET /bytes/100 HTTP/1.0\r\n\r\n", &ctx());
        assert!(!conn.should_close());
        let mut buf = [0u8; 50];
        conn.poll_output(&mut buf);
        assert!(!conn.should_close());
        drain(&mut conn);
        assert!(conn.should_close());
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let (out, conn) = exchange(b"GET / HTTP/1.0\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(out.contains("Connection: close\r\n"));
        assert!(conn.should_close());
        let (out, conn) = exchange(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(out.contains("Connection: keep-alive\r\n"));
        assert!(!conn.should_close());
    }

    #[test]
    fn missing_or_duplicate_host_in_http11_is_400() {
        let (out, conn) = exchange(b"GET / HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400 "));
        assert!(conn.should_close());
        let (out, _) = exchange(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400 "));
    }

    #[test]
    fn malformed_request_lines_are_400_and_close() {
        let cases: &[&[u8]] = &[
            b"GET\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / FTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\rHost: a\r\n\r\n",
            b"GET ftp://x/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n",
            b"\xff\xfe / HTTP/1.1\r\n\r\n",
        ];
        for case in cases {
            let (out, conn) = exchange(case);
            assert!(
                out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{:?}: {out}",
                String::from_utf8_lossy(case)
            );
            assert!(out.contains("Connection: close\r\n"));
            assert!(conn.should_close());
        }
    }

    #[test]
    fn bad_request_line_is_rejected_before_any_blank_line() {
        // A non-HTTP client (here SSH) never sends the blank line that ends a head.
        let mut conn = ServerConn::new();
        conn.handle_input(b"SSH-2.0-Open", &ctx());
        assert!(!conn.has_output());
        conn.handle_input(b"SSH_9.6\r\n", &ctx());
        let out = String::from_utf8(drain(&mut conn)).unwrap();
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(conn.should_close());
    }

    #[test]
    fn a_later_http_1_minor_version_is_served_as_1_1() {
        // RFC 9110 §2.5; httparse itself knows only 1.0 and 1.1.
        let (out, conn) = exchange(b"GET /bytes/2 HTTP/1.2\r\nHost: a\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n01"), "{out}");
        assert!(!conn.should_close());
    }

    #[test]
    fn other_protocol_errors() {
        let (out, conn) = exchange(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 505 "));
        assert!(conn.should_close());
        let (out, conn) =
            exchange(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 501 "));
        assert!(conn.should_close());
    }

    #[test]
    fn absolute_form_lf_only_and_leading_blank_lines_are_accepted() {
        let (out, _) = exchange(b"\r\n\nGET http://10.7.0.2/bytes/4 HTTP/1.1\nHost: a\n\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n0123"));
    }

    #[test]
    fn a_head_is_awaited_until_complete_and_a_late_one_gets_408() {
        let mut conn = ServerConn::new();
        assert!(conn.awaiting_head(), "from the start of the connection");
        conn.handle_input(b"GET / HTTP/1.1\r\nHost: a\r\n", &ctx());
        assert!(conn.awaiting_head());
        conn.handle_input(b"\r\n", &ctx());
        assert!(!conn.awaiting_head(), "complete; a response is queued");
        let _ = drain(&mut conn);
        assert!(!conn.awaiting_head(), "between requests: idle, not a head");
        conn.handle_input(b"G", &ctx());
        assert!(conn.awaiting_head(), "the next head has begun");
        conn.handle_head_timeout();
        assert!(!conn.awaiting_head());
        let out = String::from_utf8(drain(&mut conn)).unwrap();
        assert!(out.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{out}");
        assert!(out.contains("Connection: close\r\n"), "{out}");
        assert!(conn.should_close());
        // A body being skipped is not a head.
        let mut conn = ServerConn::new();
        conn.handle_input(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n",
            &ctx(),
        );
        let _ = drain(&mut conn);
        conn.handle_input(b"12345", &ctx());
        assert!(!conn.awaiting_head());
    }

    #[test]
    fn oversized_head_is_431_and_close() {
        let mut conn = ServerConn::new();
        conn.handle_input(b"GET / HTTP/1.1\r\nHost: a\r\n", &ctx());
        let filler = format!("X-Filler: {}\r\n", "a".repeat(1000));
        for _ in 0..17 {
            conn.handle_input(filler.as_bytes(), &ctx());
        }
        let out = String::from_utf8(drain(&mut conn)).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        assert!(conn.should_close());
        // A complete head that arrives in one read but is too large is also 431.
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "b".repeat(MAX_REQUEST_HEAD)
        );
        let (out, _) = exchange(big.as_bytes());
        assert!(out.starts_with("HTTP/1.1 431 "));
        // Just under the limit is fine.
        let ok = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "b".repeat(MAX_REQUEST_HEAD - 100)
        );
        let (out, _) = exchange(ok.as_bytes());
        assert!(out.starts_with("HTTP/1.1 200 "));
    }

    #[test]
    fn eof_answers_complete_requests_then_closes() {
        let mut conn = ServerConn::new();
        conn.handle_input(b"GET /bytes/2 HTTP/1.1\r\nHost: a\r\n\r\nGET / HT", &ctx());
        conn.handle_eof();
        assert!(!conn.should_close());
        let out = String::from_utf8(drain(&mut conn)).unwrap();
        assert_eq!(statuses(&out), [200]);
        assert!(conn.should_close());
    }

    #[test]
    fn pipelining_without_reading_applies_back_pressure() {
        let mut conn = ServerConn::new();
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".repeat(MAX_QUEUED_RESPONSES);
        conn.handle_input(&req, &ctx());
        assert!(!conn.wants_input());
        drain(&mut conn);
        assert!(conn.wants_input());
    }

    use ephemera::{Rng, SeededRng};

    #[test]
    fn random_garbage_never_panics_and_gets_an_error_reply() {
        let mut rng = SeededRng::new(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let len = (rng.next_u64() % 40_000) as usize + 1;
            let garbage: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let mut conn = ServerConn::new();
            let mut out = Vec::new();
            let mut rest = &garbage[..];
            while !rest.is_empty() {
                let k = ((rng.next_u64() % 300) as usize + 1).min(rest.len());
                conn.handle_input(&rest[..k], &ctx());
                rest = &rest[k..];
                let mut buf = [0u8; 97];
                let n = conn.poll_output(&mut buf[..(rng.next_u64() % 97) as usize]);
                out.extend_from_slice(&buf[..n]);
            }
            conn.handle_eof();
            out.extend(drain(&mut conn));
            assert!(conn.should_close());
            // Either the garbage never formed a line (then EOF just closes) or
            // it got a 4xx/5xx.
            if garbage.len() > MAX_REQUEST_HEAD || garbage.contains(&b'\n') {
                let text = String::from_utf8_lossy(&out);
                assert!(
                    text.contains("HTTP/1.1 4") || text.contains("HTTP/1.1 5"),
                    "round {round}: {text}"
                );
            }
        }
    }

    #[test]
    fn random_garbage_after_a_valid_prefix_never_panics() {
        let mut rng = SeededRng::new(42);
        let alphabet = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n:,;\t 0123456789";
        for _ in 0..2000 {
            let len = (rng.next_u64() % 400) as usize;
            let mut input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
            input.extend(
                (0..len).map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize]),
            );
            let mut conn = ServerConn::new();
            for piece in input.chunks((rng.next_u64() % 9) as usize + 1) {
                conn.handle_input(piece, &ctx());
            }
            let out = drain(&mut conn);
            assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
        }
    }
}
