//! SOCKS5 server handshake (RFC 1928), sans-IO.
//!
//! [`SocksServer`] is one client connection up to the point where it becomes a
//! plain byte relay. The driver feeds received bytes to
//! [`SocksServer::handle_input`], sends what [`SocksServer::poll_output`]
//! yields, takes the CONNECT target from [`SocksServer::poll_target`], opens
//! the outbound connection itself, and reports back with
//! [`SocksServer::handle_connected`] or [`SocksServer::handle_connect_failed`].
//! Once [`SocksServer::is_established`], it relays, starting with
//! [`SocksServer::take_payload`]: client bytes that arrived with or after the
//! request, before the relay began.
//!
//! Methods: "no authentication" (0x00), or, when the server is given
//! [`Credentials`], only "username/password" (0x02, RFC 1929: the pair is
//! checked in constant time; a wrong one gets status 01 and the
//! connection closes). CONNECT and UDP ASSOCIATE (RFC 1928 §7: the target
//! is then where the client's datagrams will come from, and the driver
//! answers with its relay's address) are supported; BIND gets reply 07.
//! Bytes may arrive split
//! at any boundary. A wrong version closes without a reply (there
//! is no SOCKS5 reply a non-SOCKS5 client would understand); other errors get
//! the RFC reply code, then the connection closes.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use crate::daemon::credentials::Credentials;

/// RFC 1928 §3 and §4: the protocol version byte.
const VERSION: u8 = 5;
/// RFC 1928 §3: "NO AUTHENTICATION REQUIRED".
const METHOD_NO_AUTH: u8 = 0x00;
/// RFC 1928 §3: "USERNAME/PASSWORD" (RFC 1929).
const METHOD_USERPASS: u8 = 0x02;
/// RFC 1928 §3: "NO ACCEPTABLE METHODS".
const METHOD_NONE_ACCEPTABLE: u8 = 0xff;
/// RFC 1929 §2: the version of the username/password subnegotiation.
const USERPASS_VERSION: u8 = 0x01;
/// RFC 1928 §4 commands.
const CMD_CONNECT: u8 = 0x01;
/// RFC 1928 §4: UDP ASSOCIATE (§7).
const CMD_UDP_ASSOCIATE: u8 = 0x03;
/// RFC 1928 §5 address types.
const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;
/// Early client data buffered while the outbound connect is in progress,
/// before [`SocksServer::wants_input`] asks the driver to stop reading.
const MAX_EARLY_PAYLOAD: usize = 64 * 1024;

/// Where the client asked to connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SocksTarget {
    /// An IPv4 or IPv6 address (ATYP 0x01 / 0x04).
    Addr(SocketAddr),
    /// A domain name for the daemon to resolve (ATYP 0x03), and the port.
    Domain(String, u16),
}

impl fmt::Display for SocksTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocksTarget::Addr(a) => write!(f, "{a}"),
            SocksTarget::Domain(d, p) => write!(f, "{d}:{p}"),
        }
    }
}

/// RFC 1928 §6 reply field (REP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplyCode {
    /// 0x00 succeeded.
    Succeeded = 0x00,
    /// 0x01 general SOCKS server failure.
    GeneralFailure = 0x01,
    /// 0x02 connection not allowed by ruleset.
    NotAllowed = 0x02,
    /// 0x03 network unreachable.
    NetworkUnreachable = 0x03,
    /// 0x04 host unreachable (also: a name that does not resolve).
    HostUnreachable = 0x04,
    /// 0x05 connection refused.
    ConnectionRefused = 0x05,
    /// 0x06 TTL expired. Kept so the table is RFC 1928's whole; no
    /// failure the stack reports maps to it.
    #[allow(dead_code)]
    TtlExpired = 0x06,
    /// 0x07 command not supported.
    CommandNotSupported = 0x07,
    /// 0x08 address type not supported.
    AddressTypeNotSupported = 0x08,
}

impl From<io::ErrorKind> for ReplyCode {
    /// Maps a failed connect or resolve to the reply a client understands.
    /// A timeout becomes host unreachable, as most SOCKS servers report it.
    fn from(kind: io::ErrorKind) -> Self {
        match kind {
            io::ErrorKind::ConnectionRefused => ReplyCode::ConnectionRefused,
            io::ErrorKind::NetworkUnreachable | io::ErrorKind::NetworkDown => {
                ReplyCode::NetworkUnreachable
            }
            io::ErrorKind::HostUnreachable | io::ErrorKind::TimedOut | io::ErrorKind::NotFound => {
                ReplyCode::HostUnreachable
            }
            io::ErrorKind::PermissionDenied => ReplyCode::NotAllowed,
            io::ErrorKind::Unsupported => ReplyCode::AddressTypeNotSupported,
            _ => ReplyCode::GeneralFailure,
        }
    }
}

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocksState {
    /// Waiting for (the rest of) the method-selection message.
    Greeting,
    /// Username/password chosen; waiting for (the rest of) the
    /// subnegotiation (RFC 1929).
    Auth,
    /// Method chosen (and the client authenticated, if it had to);
    /// waiting for (the rest of) the request.
    Request,
    /// CONNECT parsed; the driver is connecting to the target.
    Connecting,
    /// Success reply queued; relay once it is sent.
    Established,
    /// An error ended the handshake; close once output is sent.
    Closing,
}

/// One SOCKS5 client connection during its handshake.
#[derive(Debug)]
pub struct SocksServer {
    state: SocksState,
    /// Who may log in; `None`: no authentication.
    auth: Option<Arc<Credentials>>,
    /// The client offered a wrong username/password (reported once).
    auth_failed: bool,
    /// Every login fails, whatever is offered: a client the rules refuse
    /// learns nothing about the passwords.
    logins_refused: bool,
    /// Handshake bytes not yet parsed.
    inbuf: Vec<u8>,
    /// Reply bytes not yet sent; `out[out_pos..]` is pending.
    out: Vec<u8>,
    out_pos: usize,
    target: Option<SocksTarget>,
    /// The request was UDP ASSOCIATE: the target is where the client's
    /// datagrams will come from (zeros: not known yet).
    udp: bool,
    /// Client bytes after the request, for the caller to forward.
    payload: Vec<u8>,
}

impl Default for SocksServer {
    fn default() -> Self {
        Self::new(None)
    }
}

impl SocksServer {
    /// A connection waiting for the client's greeting; with `auth`, the
    /// client must log in as one of its users.
    pub fn new(auth: Option<Arc<Credentials>>) -> Self {
        SocksServer {
            state: SocksState::Greeting,
            auth,
            auth_failed: false,
            logins_refused: false,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            target: None,
            udp: false,
            payload: Vec::new(),
        }
    }

    /// Where the handshake is.
    pub fn state(&self) -> SocksState {
        self.state
    }

    /// Consumes bytes received from the client. Handshake bytes are parsed;
    /// bytes past the request are kept for [`Self::take_payload`].
    pub fn handle_input(&mut self, data: &[u8]) {
        match self.state {
            SocksState::Closing => {}
            SocksState::Connecting | SocksState::Established => {
                self.payload.extend_from_slice(data);
            }
            SocksState::Greeting | SocksState::Auth | SocksState::Request => {
                self.inbuf.extend_from_slice(data);
                self.parse();
            }
        }
    }

    /// Fail every login from now on (RFC 1929 status 01), without looking
    /// at what is offered: for a client the rules refuse, so it cannot use
    /// this server to guess passwords.
    pub fn refuse_logins(&mut self) {
        self.logins_refused = true;
    }

    /// Whether the client just failed to log in; true once per failure.
    pub fn take_auth_failure(&mut self) -> bool {
        std::mem::take(&mut self.auth_failed)
    }

    /// Whether the client has yet to send its whole request: the part of
    /// the handshake it controls, which the driver bounds in time.
    pub fn in_handshake(&self) -> bool {
        matches!(
            self.state,
            SocksState::Greeting | SocksState::Auth | SocksState::Request
        )
    }

    /// Writes pending reply bytes into `buf`; returns how many.
    pub fn poll_output(&mut self, buf: &mut [u8]) -> usize {
        let pending = &self.out[self.out_pos..];
        let n = pending.len().min(buf.len());
        buf[..n].copy_from_slice(&pending[..n]);
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        n
    }

    /// Whether [`Self::poll_output`] has anything to write.
    pub fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// The CONNECT target, once the request is parsed; returned only once.
    #[must_use]
    pub fn poll_target(&mut self) -> Option<SocksTarget> {
        self.target.take()
    }

    /// The outbound connection is up, bound locally at `bound`: queue the
    /// success reply (RFC 1928 §6, BND.ADDR/BND.PORT). Ignored in other states.
    pub fn handle_connected(&mut self, bound: SocketAddr) {
        if self.state == SocksState::Connecting {
            self.reply(ReplyCode::Succeeded, bound);
            self.state = SocksState::Established;
        }
    }

    /// The outbound connection (or the name lookup) failed: queue the reply
    /// and close. `Succeeded` is reported as a general failure. Ignored in
    /// other states.
    pub fn handle_connect_failed(&mut self, code: ReplyCode) {
        if self.state == SocksState::Connecting {
            let code = match code {
                ReplyCode::Succeeded => ReplyCode::GeneralFailure,
                c => c,
            };
            self.fail(code);
        }
    }

    /// Client bytes received after the request, to forward to the target
    /// first. Empties the buffer.
    #[must_use]
    pub fn take_payload(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.payload)
    }

    /// Whether the request (once parsed) is UDP ASSOCIATE rather than
    /// CONNECT: then the driver binds a relay and reports its address
    /// with [`Self::handle_connected`], and the connection carries no
    /// more bytes of the client's.
    pub fn is_udp_associate(&self) -> bool {
        self.udp
    }

    /// True once the success reply is sent: from now on the driver relays
    /// bytes both ways (after [`Self::take_payload`]).
    pub fn is_established(&self) -> bool {
        self.state == SocksState::Established && !self.has_output()
    }

    /// True once the connection should be closed (an error reply, if any, is sent).
    pub fn should_close(&self) -> bool {
        self.state == SocksState::Closing && !self.has_output()
    }

    /// Whether the driver should keep reading from the client.
    pub fn wants_input(&self) -> bool {
        match self.state {
            SocksState::Greeting | SocksState::Auth | SocksState::Request => true,
            SocksState::Connecting | SocksState::Established => {
                self.payload.len() < MAX_EARLY_PAYLOAD
            }
            SocksState::Closing => false,
        }
    }

    fn parse(&mut self) {
        loop {
            let used = match self.state {
                SocksState::Greeting => self.parse_greeting(),
                SocksState::Auth => self.parse_auth(),
                SocksState::Request => self.parse_request(),
                _ => None,
            };
            match used {
                Some(n) => {
                    // Overwrite what was read (a password, maybe) before
                    // the buffer lets it go.
                    self.inbuf[..n].fill(0);
                    self.inbuf.drain(..n);
                }
                None => break,
            }
            if !self.in_handshake() {
                break;
            }
        }
        match self.state {
            SocksState::Connecting => self.payload = std::mem::take(&mut self.inbuf),
            SocksState::Closing => self.inbuf = Vec::new(),
            _ => {}
        }
    }

    /// RFC 1928 §3: VER NMETHODS METHODS. Returns bytes used once complete.
    fn parse_greeting(&mut self) -> Option<usize> {
        let buf = &self.inbuf;
        let &ver = buf.first()?;
        if ver != VERSION {
            self.close_silently();
            return None;
        }
        let nmethods = usize::from(*buf.get(1)?);
        let methods = buf.get(2..2 + nmethods)?;
        if self.auth.is_some() {
            // Credentials configured: username/password or nothing.
            if methods.contains(&METHOD_USERPASS) {
                self.out.extend_from_slice(&[VERSION, METHOD_USERPASS]);
                self.state = SocksState::Auth;
            } else {
                self.out
                    .extend_from_slice(&[VERSION, METHOD_NONE_ACCEPTABLE]);
                self.state = SocksState::Closing;
            }
        } else if methods.contains(&METHOD_NO_AUTH) {
            self.out.extend_from_slice(&[VERSION, METHOD_NO_AUTH]);
            self.state = SocksState::Request;
        } else {
            // RFC 1928 §3: "the client MUST close the connection"; we close too.
            self.out
                .extend_from_slice(&[VERSION, METHOD_NONE_ACCEPTABLE]);
            self.state = SocksState::Closing;
        }
        Some(2 + nmethods)
    }

    /// RFC 1929 §2: VER ULEN UNAME PLEN PASSWD, answered VER STATUS.
    /// Returns bytes used once complete.
    fn parse_auth(&mut self) -> Option<usize> {
        let buf = &self.inbuf;
        let &ver = buf.first()?;
        if ver != USERPASS_VERSION {
            self.close_silently();
            return None;
        }
        let ulen = usize::from(*buf.get(1)?);
        let plen = usize::from(*buf.get(2 + ulen)?);
        let end = 3 + ulen + plen;
        let msg = buf.get(..end)?;
        let (user, pass) = (&msg[2..2 + ulen], &msg[3 + ulen..end]);
        let ok = !self.logins_refused && self.auth.as_ref().is_some_and(|c| c.check(user, pass));
        // RFC 1929 §2: STATUS 0 is success; on failure the server MUST
        // close the connection.
        self.out
            .extend_from_slice(&[USERPASS_VERSION, u8::from(!ok)]);
        if ok {
            self.state = SocksState::Request;
        } else {
            self.auth_failed = true;
            self.state = SocksState::Closing;
        }
        Some(end)
    }

    /// RFC 1928 §4: VER CMD RSV ATYP DST.ADDR DST.PORT. Returns bytes used
    /// once complete.
    fn parse_request(&mut self) -> Option<usize> {
        let buf = &self.inbuf;
        let &ver = buf.first()?;
        if ver != VERSION {
            self.close_silently();
            return None;
        }
        let &cmd = buf.get(1)?;
        // RSV (buf[2]) is ignored: be liberal in what we accept.
        let &atyp = buf.get(3)?;
        let (addr_len, addr_start) = match atyp {
            ATYP_IPV4 => (4, 4),
            ATYP_IPV6 => (16, 4),
            ATYP_DOMAIN => (usize::from(*buf.get(4)?), 5),
            _ => {
                // The length of an unknown address is unknowable: reply now.
                self.fail(ReplyCode::AddressTypeNotSupported);
                return None;
            }
        };
        let end = addr_start + addr_len + 2;
        let req = buf.get(..end)?;
        // Read the whole request before answering, so closing does not
        // leave unread bytes behind (which would make the close a reset).
        if cmd != CMD_CONNECT && cmd != CMD_UDP_ASSOCIATE {
            self.fail(ReplyCode::CommandNotSupported);
            return Some(end);
        }
        self.udp = cmd == CMD_UDP_ASSOCIATE;
        let addr = &req[addr_start..addr_start + addr_len];
        let port = u16::from_be_bytes([req[end - 2], req[end - 1]]);
        let target = match atyp {
            ATYP_IPV4 => {
                let a: [u8; 4] = addr.try_into().ok()?;
                SocksTarget::Addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port))
            }
            ATYP_IPV6 => {
                let a: [u8; 16] = addr.try_into().ok()?;
                SocksTarget::Addr(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
            }
            _ => match domain(addr) {
                Some(name) => SocksTarget::Domain(name, port),
                None => {
                    // An empty or non-text name cannot resolve.
                    self.fail(ReplyCode::HostUnreachable);
                    return Some(end);
                }
            },
        };
        self.target = Some(target);
        self.state = SocksState::Connecting;
        Some(end)
    }

    fn close_silently(&mut self) {
        self.state = SocksState::Closing;
        self.inbuf = Vec::new();
    }

    fn fail(&mut self, code: ReplyCode) {
        // RFC 1928 §6: the failure reply carries an unused bound address.
        let unspecified = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        self.reply(code, unspecified);
        self.state = SocksState::Closing;
        self.payload = Vec::new();
    }

    /// RFC 1928 §6: VER REP RSV ATYP BND.ADDR BND.PORT.
    fn reply(&mut self, code: ReplyCode, bound: SocketAddr) {
        self.out.extend_from_slice(&[VERSION, code as u8, 0]);
        match bound.ip() {
            IpAddr::V4(a) => {
                self.out.push(ATYP_IPV4);
                self.out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.out.push(ATYP_IPV6);
                self.out.extend_from_slice(&a.octets());
            }
        }
        self.out.extend_from_slice(&bound.port().to_be_bytes());
    }
}

/// A domain name from the request: non-empty printable ASCII without spaces.
/// (RFC 1928 names are bytes; anything else would not resolve anyway.)
fn domain(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    String::from_utf8(bytes.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut SocksServer) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 5];
        loop {
            let n = s.poll_output(&mut buf);
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    const GREETING: &[u8] = &[5, 2, 2, 0];
    const CONNECT_V4: &[u8] = &[5, 1, 0, 1, 10, 7, 0, 1, 0x1f, 0x40];

    #[test]
    fn connect_ipv4_happy_path() {
        let mut s = SocksServer::new(None);
        s.handle_input(GREETING);
        assert_eq!(drain(&mut s), [5, 0]);
        assert_eq!(s.state(), SocksState::Request);
        s.handle_input(CONNECT_V4);
        assert!(!s.has_output(), "no reply before the connect result");
        assert_eq!(
            s.poll_target(),
            Some(SocksTarget::Addr("10.7.0.1:8000".parse().unwrap()))
        );
        assert_eq!(s.poll_target(), None, "the target is handed over once");
        assert!(!s.is_established());
        s.handle_connected("10.7.0.2:49152".parse().unwrap());
        assert!(!s.is_established(), "not until the reply is sent");
        assert_eq!(drain(&mut s), [5, 0, 0, 1, 10, 7, 0, 2, 0xc0, 0x00]);
        assert!(s.is_established());
        assert!(!s.should_close());
    }

    #[test]
    fn connect_ipv6_and_domain() {
        let mut s = SocksServer::new(None);
        let mut req = vec![5, 1, 0, 4];
        req.extend_from_slice(&"fd00:7::1".parse::<Ipv6Addr>().unwrap().octets());
        req.extend_from_slice(&[0, 80]);
        s.handle_input(&[5, 1, 0]);
        assert_eq!(drain(&mut s), [5, 0]);
        s.handle_input(&req);
        assert_eq!(
            s.poll_target(),
            Some(SocksTarget::Addr("[fd00:7::1]:80".parse().unwrap()))
        );
        s.handle_connected("[fd00:7::2]:50000".parse().unwrap());
        let reply = drain(&mut s);
        assert_eq!(reply[..4], [5, 0, 0, 4][..], "IPv6 bound address");
        assert_eq!(reply.len(), 4 + 16 + 2);
        assert_eq!(reply[20..], 50000u16.to_be_bytes());

        let mut s = SocksServer::new(None);
        let mut req = vec![5, 1, 0, 5, 1, 0, 3, 11];
        req.extend_from_slice(b"example.com");
        req.extend_from_slice(&[0x01, 0xbb]);
        s.handle_input(&req);
        let target = s.poll_target().unwrap();
        assert_eq!(target, SocksTarget::Domain("example.com".into(), 443));
        assert_eq!(target.to_string(), "example.com:443");
    }

    #[test]
    fn handshake_split_at_every_byte() {
        let mut all = GREETING.to_vec();
        all.extend_from_slice(&[5, 1, 0, 3, 9]);
        all.extend_from_slice(b"localhost");
        all.extend_from_slice(&[0, 7]);
        all.extend_from_slice(b"early");
        for split in 1..all.len() {
            let mut s = SocksServer::new(None);
            for piece in all.chunks(split) {
                s.handle_input(piece);
            }
            assert_eq!(drain(&mut s), [5, 0], "split {split}");
            assert_eq!(
                s.poll_target(),
                Some(SocksTarget::Domain("localhost".into(), 7))
            );
            assert_eq!(s.take_payload(), b"early", "split {split}");
        }
    }

    #[test]
    fn bytes_after_the_request_become_the_first_payload() {
        let mut s = SocksServer::new(None);
        let mut all = GREETING.to_vec();
        all.extend_from_slice(CONNECT_V4);
        all.extend_from_slice(b"GET / HTTP/1.1\r\n");
        s.handle_input(&all);
        s.handle_input(b"Host: x\r\n\r\n");
        let _ = s.poll_target();
        s.handle_connected("10.7.0.2:49152".parse().unwrap());
        s.handle_input(b"more");
        assert_eq!(s.take_payload(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\nmore");
        assert!(s.take_payload().is_empty());
    }

    #[test]
    fn no_acceptable_method_replies_ff_and_closes() {
        for greeting in [&[5u8, 1, 2][..], &[5, 0], &[5, 3, 1, 2, 3]] {
            let mut s = SocksServer::new(None);
            s.handle_input(greeting);
            assert_eq!(drain(&mut s), [5, 0xff]);
            assert!(s.should_close());
            s.handle_input(CONNECT_V4);
            assert!(!s.has_output(), "nothing after closing");
            assert_eq!(s.poll_target(), None);
        }
    }

    #[test]
    fn wrong_version_closes_without_reply() {
        // A SOCKS4 greeting, an HTTP request, and a bad request version.
        for input in [&[4u8, 1, 0, 80, 10, 7, 0, 1, 0][..], b"GET / HTTP/1.1\r\n"] {
            let mut s = SocksServer::new(None);
            s.handle_input(input);
            assert!(s.should_close());
            assert!(drain(&mut s).is_empty());
        }
        let mut s = SocksServer::new(None);
        s.handle_input(&[5, 1, 0, 4, 1, 0, 1]);
        assert_eq!(drain(&mut s), [5, 0]);
        assert!(s.should_close());
    }

    #[test]
    fn udp_associate_gives_the_target_and_waits_for_the_relay() {
        let mut s = SocksServer::new(None);
        s.handle_input(GREETING);
        let mut req = CONNECT_V4.to_vec();
        req[1] = 3;
        s.handle_input(&req);
        assert_eq!(drain(&mut s), [5, 0]);
        assert!(s.is_udp_associate());
        assert!(s.poll_target().is_some());
        let relay: SocketAddr = "10.7.0.2:40001".parse().unwrap();
        s.handle_connected(relay);
        assert_eq!(drain(&mut s), [5, 0, 0, 1, 10, 7, 0, 2, 0x9c, 0x41]);
        assert!(s.is_established());
    }

    #[test]
    fn unsupported_commands_reply_07() {
        // BIND, and what RFC 1928 does not define.
        for cmd in [2u8, 9] {
            let mut s = SocksServer::new(None);
            s.handle_input(GREETING);
            let mut req = CONNECT_V4.to_vec();
            req[1] = cmd;
            // Split so the reply waits for the whole request.
            s.handle_input(&req[..6]);
            assert_eq!(drain(&mut s), [5, 0]);
            assert!(!s.should_close());
            s.handle_input(&req[6..]);
            assert_eq!(drain(&mut s), [5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
            assert!(s.should_close());
            assert_eq!(s.poll_target(), None);
        }
    }

    #[test]
    fn unknown_address_type_replies_08() {
        let mut s = SocksServer::new(None);
        s.handle_input(GREETING);
        s.handle_input(&[5, 1, 0, 2, 1, 2, 3]);
        assert_eq!(drain(&mut s), [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert!(s.should_close());
    }

    #[test]
    fn bad_domain_replies_04() {
        for name in [&b""[..], b"a b", b"\xff\xfe"] {
            let mut s = SocksServer::new(None);
            let mut req = vec![5, 1, 0, 5, 1, 0, 3, name.len() as u8];
            req.extend_from_slice(name);
            req.extend_from_slice(&[0, 80]);
            s.handle_input(&req);
            assert_eq!(drain(&mut s), [5, 0, 5, 4, 0, 1, 0, 0, 0, 0, 0, 0]);
            assert!(s.should_close());
        }
    }

    #[test]
    fn connect_failures_map_to_rfc_codes() {
        let cases = [
            (ReplyCode::GeneralFailure, 1),
            (ReplyCode::NetworkUnreachable, 3),
            (ReplyCode::HostUnreachable, 4),
            (ReplyCode::ConnectionRefused, 5),
            (ReplyCode::TtlExpired, 6),
            (ReplyCode::AddressTypeNotSupported, 8),
            (ReplyCode::Succeeded, 1),
        ];
        for (code, byte) in cases {
            let mut s = SocksServer::new(None);
            s.handle_input(GREETING);
            s.handle_input(CONNECT_V4);
            s.handle_input(b"early data is dropped");
            let _ = s.poll_target();
            s.handle_connect_failed(code);
            assert_eq!(drain(&mut s), [5, 0, 5, byte, 0, 1, 0, 0, 0, 0, 0, 0]);
            assert!(s.should_close());
            assert!(s.take_payload().is_empty());
            // A late success report changes nothing.
            s.handle_connected("10.7.0.2:1".parse().unwrap());
            assert!(!s.has_output());
        }
        assert_eq!(
            ReplyCode::from(io::ErrorKind::ConnectionRefused),
            ReplyCode::ConnectionRefused
        );
        assert_eq!(
            ReplyCode::from(io::ErrorKind::HostUnreachable),
            ReplyCode::HostUnreachable
        );
        assert_eq!(
            ReplyCode::from(io::ErrorKind::NetworkUnreachable),
            ReplyCode::NetworkUnreachable
        );
        assert_eq!(
            ReplyCode::from(io::ErrorKind::Other),
            ReplyCode::GeneralFailure
        );
    }

    fn with_users() -> SocksServer {
        let users = Credentials::parse(b"alice:s3cret\n").unwrap();
        SocksServer::new(Some(Arc::new(users)))
    }

    fn login(user: &[u8], pass: &[u8]) -> Vec<u8> {
        let mut m = vec![1, user.len() as u8];
        m.extend_from_slice(user);
        m.push(pass.len() as u8);
        m.extend_from_slice(pass);
        m
    }

    #[test]
    fn username_password_is_required_when_there_are_users() {
        // RFC 1929: method 02, then VER 1 ULEN UNAME PLEN PASSWD; status 0.
        let mut all = vec![5, 2, 0, 2];
        all.extend(login(b"alice", b"s3cret"));
        all.extend_from_slice(CONNECT_V4);
        for split in 1..all.len() {
            let mut s = with_users();
            for piece in all.chunks(split) {
                s.handle_input(piece);
            }
            assert_eq!(drain(&mut s), [5, 2, 1, 0], "split {split}");
            assert!(!s.take_auth_failure());
            assert_eq!(
                s.poll_target(),
                Some(SocksTarget::Addr("10.7.0.1:8000".parse().unwrap()))
            );
        }
    }

    #[test]
    fn a_wrong_password_gets_status_1_and_the_connection_closes() {
        for (user, pass) in [
            (&b"alice"[..], &b"wrong"[..]),
            (b"alice", b"s3cret!"),
            (b"mallory", b"s3cret"),
            (b"", b""),
        ] {
            let mut s = with_users();
            s.handle_input(&[5, 1, 2]);
            s.handle_input(&login(user, pass));
            s.handle_input(CONNECT_V4);
            assert_eq!(drain(&mut s), [5, 2, 1, 1]);
            assert!(s.should_close());
            assert!(s.take_auth_failure());
            assert!(!s.take_auth_failure(), "reported once");
            assert_eq!(s.poll_target(), None);
        }
    }

    #[test]
    fn refused_logins_fail_even_with_the_right_password() {
        let mut s = with_users();
        s.refuse_logins();
        s.handle_input(&[5, 1, 2]);
        s.handle_input(&login(b"alice", b"s3cret"));
        assert_eq!(drain(&mut s), [5, 2, 1, 1]);
        assert!(s.should_close() && s.take_auth_failure());
    }

    #[test]
    fn without_username_password_offered_no_method_is_acceptable() {
        let mut s = with_users();
        s.handle_input(&[5, 1, 0]);
        assert_eq!(drain(&mut s), [5, 0xff]);
        assert!(s.should_close());
        // A bad subnegotiation version closes without a reply.
        let mut s = with_users();
        s.handle_input(&[5, 1, 2, 5, 1, 0]);
        assert_eq!(drain(&mut s), [5, 2]);
        assert!(s.should_close() && !s.take_auth_failure());
    }

    #[test]
    fn early_payload_applies_back_pressure() {
        let mut s = SocksServer::new(None);
        s.handle_input(GREETING);
        s.handle_input(CONNECT_V4);
        assert!(s.wants_input());
        s.handle_input(&vec![0u8; MAX_EARLY_PAYLOAD]);
        assert!(!s.wants_input());
        let _ = s.take_payload();
        assert!(s.wants_input());
    }

    use ephemera::{Rng, SeededRng};

    /// Feeds `input` in random pieces, draining output in random sizes.
    fn feed(rng: &mut SeededRng, input: &[u8]) -> (SocksServer, Vec<u8>) {
        let mut s = SocksServer::new(None);
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let k = ((rng.next_u64() % 7) as usize + 1).min(rest.len());
            s.handle_input(&rest[..k]);
            rest = &rest[k..];
            let mut buf = [0u8; 3];
            let n = s.poll_output(&mut buf[..(rng.next_u64() % 4) as usize]);
            out.extend_from_slice(&buf[..n]);
        }
        out.extend(drain(&mut s));
        (s, out)
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = SeededRng::new(0x2545_f491_4f6c_dd1d);
        for _ in 0..5000 {
            let len = (rng.next_u64() % 64) as usize + 1;
            let garbage: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let (s, out) = feed(&mut rng, &garbage);
            if garbage[0] != VERSION {
                assert!(s.should_close());
                assert!(out.is_empty(), "wrong version: close without reply");
            }
        }
    }

    #[test]
    fn random_requests_get_a_reply_or_a_target() {
        let mut rng = SeededRng::new(99);
        for _ in 0..5000 {
            let len = (rng.next_u64() % 40) as usize + 1;
            let mut input = GREETING.to_vec();
            input.push(VERSION);
            // Bias CMD and ATYP towards the interesting values.
            input.push((rng.next_u64() % 4) as u8);
            input.push(0);
            input.push((rng.next_u64() % 6) as u8);
            input.extend((0..len).map(|_| rng.next_u64() as u8));
            let (mut s, out) = feed(&mut rng, &input);
            assert_eq!(out[..2], [5, 0]);
            match s.state() {
                SocksState::Closing => {
                    let reply = &out[2..];
                    assert_eq!(reply.len(), 10, "{reply:?}");
                    assert_eq!(reply[0], VERSION);
                    assert!([4, 7, 8].contains(&reply[1]), "{reply:?}");
                }
                SocksState::Connecting => {
                    assert!(s.poll_target().is_some());
                    assert_eq!(out.len(), 2);
                }
                SocksState::Request => assert_eq!(out.len(), 2, "incomplete request"),
                other => panic!("unexpected state {other:?}"),
            }
        }
    }
}
