//! SOCKS5 username/password credentials (RFC 1929) from `--socks-auth
//! FILE`.
//!
//! The file has one `USER:PASSWORD` per line, split at the first colon (a
//! user name cannot contain one; a password can); blank lines and lines
//! starting with `#` are skipped; a CR before the newline is dropped. Both
//! fields are 1-255 octets (RFC 1929's limits) and user names are unique.
//! The passwords are in clear, so the file must be the daemon's (owned by
//! the user who starts it, or root), a regular file reached without a
//! link, and closed to group and others (mode 0600 or 0400): it is refused
//! otherwise, before anything is set up. It is read once, at start.
//!
//! A check compares the offered pair with every entry, all 255 octets of
//! each field and its length, in constant time (`subtle`), so how long it
//! takes says nothing about which user exists or how much of a password
//! was right.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use subtle::{Choice, ConstantTimeEq};

/// Longest user name or password, RFC 1929 section 2 (a one-octet length).
pub const MAX_FIELD: usize = 255;
/// Largest credentials file read.
const MAX_FILE: u64 = 1 << 20;

/// One field, padded to its maximum so every comparison is as long.
#[derive(Clone)]
struct Field {
    len: u8,
    bytes: [u8; MAX_FIELD],
}

impl Field {
    /// `s` as a field; `None` if empty or longer than [`MAX_FIELD`].
    fn new(s: &[u8]) -> Option<Field> {
        let len = u8::try_from(s.len()).ok().filter(|&n| n > 0)?;
        let mut bytes = [0u8; MAX_FIELD];
        bytes[..s.len()].copy_from_slice(s);
        Some(Field { len, bytes })
    }

    /// The same length and octets, in time independent of both.
    fn ct_eq(&self, other: &Field) -> Choice {
        self.len.ct_eq(&other.len) & self.bytes.ct_eq(&other.bytes)
    }
}

/// The users allowed to use the SOCKS proxy, and their passwords.
#[derive(Clone)]
pub struct Credentials {
    users: Vec<(Field, Field)>,
}

impl fmt::Debug for Credentials {
    /// How many users; never a name or a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({} users)", self.users.len())
    }
}

impl Credentials {
    /// Parse the file's text; errors name the line.
    pub fn parse(text: &[u8]) -> Result<Credentials, String> {
        let mut users: Vec<(Field, Field)> = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let n = i + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(format!("line {n}: write USER:PASSWORD"));
            };
            let (user, pass) = (&line[..colon], &line[colon + 1..]);
            let user = Field::new(user)
                .ok_or_else(|| format!("line {n}: the user name must be 1-{MAX_FIELD} octets"))?;
            let pass = Field::new(pass)
                .ok_or_else(|| format!("line {n}: the password must be 1-{MAX_FIELD} octets"))?;
            if users.iter().any(|(u, _)| bool::from(u.ct_eq(&user))) {
                return Err(format!("line {n}: that user name is already given"));
            }
            users.push((user, pass));
        }
        if users.is_empty() {
            return Err("no USER:PASSWORD line".into());
        }
        Ok(Credentials { users })
    }

    /// Read `path` as the user `owner_uid` (who starts the daemon): a
    /// regular file, not through a link, owned by that user or root, mode
    /// 0600 or stricter. Errors are one line naming the file and the fix.
    pub fn load(path: &Path, owner_uid: u32) -> Result<Credentials, String> {
        let p = path.display();
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => {
                    format!("--socks-auth {p} is a symbolic link; name the file itself")
                }
                _ => format!("--socks-auth {p}: {e}"),
            })?;
        let meta = file
            .metadata()
            .map_err(|e| format!("--socks-auth {p}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("--socks-auth {p} is not a regular file"));
        }
        if meta.uid() != owner_uid && meta.uid() != 0 {
            return Err(format!(
                "--socks-auth {p} belongs to uid {}, neither you nor root: its owner would decide who may use the proxy",
                meta.uid()
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "--socks-auth {p} has mode {mode:04o}: group or others may read or change the passwords; chmod 600 {p}"
            ));
        }
        let mut text = Vec::new();
        file.take(MAX_FILE + 1)
            .read_to_end(&mut text)
            .map_err(|e| format!("--socks-auth {p}: {e}"))?;
        if text.len() as u64 > MAX_FILE {
            return Err(format!("--socks-auth {p} is larger than {MAX_FILE} octets"));
        }
        Credentials::parse(&text).map_err(|e| format!("--socks-auth {p}: {e}"))
    }

    /// Whether `user` with `password` is allowed. Every entry is compared
    /// in full whatever matches, in constant time.
    pub fn check(&self, user: &[u8], password: &[u8]) -> bool {
        // An impossible field (empty or too long) still costs a full pass.
        let (offered_user, offered_pass, possible) = match (Field::new(user), Field::new(password))
        {
            (Some(u), Some(p)) => (u, p, Choice::from(1)),
            _ => (
                Field {
                    len: 0,
                    bytes: [0; MAX_FIELD],
                },
                Field {
                    len: 0,
                    bytes: [0; MAX_FIELD],
                },
                Choice::from(0),
            ),
        };
        let mut ok = Choice::from(0);
        for (u, p) in &self.users {
            ok |= u.ct_eq(&offered_user) & p.ct_eq(&offered_pass);
        }
        bool::from(ok & possible)
    }

    /// How many users.
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::files::tests::TempDir;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_file_format() {
        let c =
            Credentials::parse(b"# users of the proxy\r\nalice:s3cret\r\n\nbob:pa:ss:word\n  \n");
        // "  " is not a comment, a blank line, or USER:PASSWORD.
        assert_eq!(c.unwrap_err(), "line 5: write USER:PASSWORD");
        let c = Credentials::parse(b"# users of the proxy\r\nalice:s3cret\r\n\nbob:pa:ss:word\n")
            .unwrap();
        assert_eq!(c.users(), 2);
        assert!(c.check(b"alice", b"s3cret"));
        assert!(c.check(b"bob", b"pa:ss:word"), "a password may hold colons");
        assert!(!c.check(b"alice", b"s3cret\r"));
        assert!(!c.check(b"alice", b"pa:ss:word"), "another user's password");
        assert!(!c.check(b"alice", b"s3cre"));
        assert!(!c.check(b"alice", b"s3crett"));
        assert!(!c.check(b"Alice", b"s3cret"));
        assert!(!c.check(b"", b""));
        assert!(!c.check(b"carol", b"s3cret"));
        assert!(!c.check(&[b'a'; 300], b"s3cret"));
        assert_eq!(format!("{c:?}"), "Credentials(2 users)");

        let long = format!("u:{}\n", "p".repeat(256));
        for (bad, why) in [
            (&b"alice\n"[..], "line 1: write USER:PASSWORD"),
            (b":pw\n", "line 1: the user name must be 1-255 octets"),
            (b"u:\n", "line 1: the password must be 1-255 octets"),
            (long.as_bytes(), "line 1: the password must be 1-255 octets"),
            (b"a:1\na:2\n", "line 2: that user name is already given"),
            (b"# nobody\n", "no USER:PASSWORD line"),
            (b"", "no USER:PASSWORD line"),
        ] {
            assert_eq!(Credentials::parse(bad).unwrap_err(), why);
        }
        let max = format!("{}:{}\n", "u".repeat(255), "p".repeat(255));
        let c = Credentials::parse(max.as_bytes()).unwrap();
        assert!(c.check("u".repeat(255).as_bytes(), "p".repeat(255).as_bytes()));
    }

    #[test]
    fn the_file_must_be_private_and_not_a_link() {
        let dir = TempDir::new("creds");
        let me = nix::unistd::geteuid().as_raw();
        let path = dir.0.join("socks.auth");
        std::fs::write(&path, b"alice:s3cret\n").unwrap();
        let chmod =
            |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        chmod(0o600);
        assert!(Credentials::load(&path, me)
            .unwrap()
            .check(b"alice", b"s3cret"));
        chmod(0o400);
        assert!(Credentials::load(&path, me).is_ok());
        for mode in [0o640, 0o604, 0o660, 0o644, 0o620] {
            chmod(mode);
            let e = Credentials::load(&path, me).unwrap_err();
            assert!(
                e.contains(&format!("mode 0{mode:o}")) && e.contains("chmod 600"),
                "{e}"
            );
        }
        chmod(0o600);
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = Credentials::load(&link, me).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        let e = Credentials::load(&dir.0, me).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = Credentials::load(&dir.0.join("missing"), me).unwrap_err();
        assert!(e.contains("missing") && e.contains("No such file"), "{e}");
        std::fs::write(&path, b"no colon\n").unwrap();
        let e = Credentials::load(&path, me).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        if me == 0 {
            std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
            let e = Credentials::load(&path, 0).unwrap_err();
            assert!(e.contains("uid 4242"), "{e}");
        }
    }
}
