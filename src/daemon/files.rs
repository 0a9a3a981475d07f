//! The files and directories the daemon makes, as root, at paths others
//! may name: the pcap capture and the control socket's directory.
//!
//! Every path given on the command line is treated as an attacker's: a
//! file is only ever *created* (`O_CREAT | O_EXCL | O_NOFOLLOW`), never
//! opened if something is already there, so a planted symbolic link, hard
//! link or device is refused rather than followed, truncated or handed to
//! another user. Ownership and modes are set on the descriptor (`fchown`,
//! the mode given to `open`/`mkdir`), never by path after the fact. A
//! directory is checked with `lstat`, so a link in its place is refused
//! too.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::unistd::{fchown, Gid, Uid};

/// A user and group, as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The user id.
    pub uid: u32,
    /// The user's primary group id.
    pub gid: u32,
}

/// Create a new file at `path` for writing, mode 0600, and give it to
/// `owner` (the user the daemon will run as) if one is named.
///
/// `O_CREAT | O_EXCL | O_NOFOLLOW`: if anything exists at `path` (a file,
/// a link planted by another user, a FIFO) the call fails with
/// `AlreadyExists` and nothing is touched. Checking an existing file
/// instead (regular, ours, one link) and then truncating it would race
/// with whoever can write its directory; refusing costs the operator an
/// `rm`. The owner is changed on the descriptor, so it is this file's and
/// no other's.
pub fn create_new_private(path: &Path, owner: Option<Owner>) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if let Some(o) = owner {
        if let Err(e) = fchown(
            &file,
            Some(Uid::from_raw(o.uid)),
            Some(Gid::from_raw(o.gid)),
        ) {
            // Do not leave an empty file of the wrong owner behind.
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(e.into());
        }
    }
    Ok(file)
}

/// What a directory that holds the control socket must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirRule {
    /// Owned by `uid` with no permission for group or others (mode 0700
    /// or stricter): `$XDG_RUNTIME_DIR`, and the `/tmp/ephemera-UID`
    /// directory a non-root daemon uses without it.
    Private {
        /// The owner it must have.
        uid: u32,
    },
    /// Owned by `uid` or by root, and not writable by group or others:
    /// nobody else can put a socket (or anything) in it.
    NotShared {
        /// The owner it may have besides root.
        uid: u32,
    },
}

/// Why a directory was refused, as one line naming it and the fix.
fn refuse(dir: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} {why}: another user could put their own socket there; \
             fix it, or pass --control PATH in a directory only you can write",
            dir.display()
        ),
    )
}

/// Check `dir` with `lstat` against `rule`: a directory (not a link to
/// one), with the owner and mode the rule asks for.
pub fn check_dir(dir: &Path, rule: DirRule) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(refuse(dir, "is a symbolic link, not a directory".into()));
    }
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        ));
    }
    let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
    match rule {
        DirRule::Private { uid } => {
            if owner != uid {
                return Err(refuse(dir, format!("belongs to uid {owner}, not {uid}")));
            }
            if mode & 0o077 != 0 {
                return Err(refuse(
                    dir,
                    format!("has mode {mode:04o}; it must be private (0700)"),
                ));
            }
        }
        DirRule::NotShared { uid } => {
            if owner != uid && owner != 0 {
                return Err(refuse(
                    dir,
                    format!("belongs to uid {owner}, neither {uid} nor root"),
                ));
            }
            if mode & 0o022 != 0 {
                return Err(refuse(
                    dir,
                    format!("has mode {mode:04o}: others may write in it"),
                ));
            }
        }
    }
    Ok(())
}

/// Make `dir` (mode `mode`, parents as needed) unless it exists; then
/// check it against `rule`. A directory someone else made first, or a
/// link in its place, fails the check.
pub fn ensure_dir(dir: &Path, mode: u32, rule: DirRule) -> io::Result<()> {
    match DirBuilder::new().recursive(true).mode(mode).create(dir) {
        Ok(()) => {}
        // `recursive` reports an existing non-directory as this.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_dir(dir, rule)
}

/// Make (or take over) the per-interface directory `dir` under a parent
/// only root can write, for the control socket of a daemon that will run
/// as `owner`: mode 0700, owned by `owner`, so that user can create and
/// remove the socket after dropping root, and nobody else can reach it.
///
/// Ownership and mode are set on a descriptor opened with `O_NOFOLLOW`;
/// the parent's check (root's, not writable by others) is what makes
/// taking over a leftover directory safe.
pub fn ensure_owned_dir(dir: &Path, owner: Owner) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        ensure_dir(parent, 0o755, DirRule::NotShared { uid: 0 })?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let fd = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory", dir.display()),
            ),
            _ => e,
        })?;
    let meta = fd.metadata()?;
    if meta.uid() != owner.uid || meta.gid() != owner.gid {
        fchown(
            &fd,
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(owner.gid)),
        )?;
    }
    if meta.mode() & 0o7777 != 0o700 {
        nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A fresh directory under the temp dir, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);
    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("eph-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn a_new_file_is_private_and_nothing_existing_is_opened() {
        let dir = TempDir::new("new");
        let path = dir.0.join("trace.pcap");
        let f = create_new_private(&path, None).unwrap();
        let meta = f.metadata().unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), me());
        drop(f);

        // A second run on the same name is refused: the file stays.
        std::fs::write(&path, b"earlier capture").unwrap();
        let e = create_new_private(&path, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"earlier capture");

        // A planted link, dangling or not, is not followed.
        let target = dir.0.join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        let link = dir.0.join("link.pcap");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = create_new_private(&link, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        let dangling = dir.0.join("dangling.pcap");
        std::os::unix::fs::symlink(dir.0.join("nothing-here"), &dangling).unwrap();
        assert!(create_new_private(&dangling, None).is_err());
        assert!(!dir.0.join("nothing-here").exists());
    }

    #[test]
    fn a_new_file_goes_to_the_user_the_daemon_runs_as() {
        if me() != 0 {
            eprintln!("SKIP a_new_file_goes_to_the_user_the_daemon_runs_as: needs root");
            return;
        }
        let dir = TempDir::new("owner");
        let path = dir.0.join("trace.pcap");
        let owner = Owner {
            uid: 65534,
            gid: 65534,
        };
        let meta = create_new_private(&path, Some(owner))
            .unwrap()
            .metadata()
            .unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        assert_eq!(meta.mode() & 0o777, 0o600);
    }

    #[test]
    fn directories_are_checked_without_following_links() {
        let dir = TempDir::new("dirs");
        let private = dir.0.join("private");
        ensure_dir(&private, 0o700, DirRule::Private { uid: me() }).unwrap();
        assert_eq!(std::fs::metadata(&private).unwrap().mode() & 0o777, 0o700);
        // Again: it exists and passes.
        ensure_dir(&private, 0o700, DirRule::Private { uid: me() }).unwrap();

        // Not private enough, someone else's, a link, a file.
        let open = dir.0.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = ensure_dir(&open, 0o700, DirRule::Private { uid: me() }).unwrap_err();
        assert!(e.to_string().contains("mode 0755"), "{e}");
        assert!(e.to_string().contains("--control"), "{e}");
        check_dir(&open, DirRule::NotShared { uid: me() }).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = check_dir(&open, DirRule::NotShared { uid: me() }).unwrap_err();
        assert!(e.to_string().contains("others may write"), "{e}");

        let e = check_dir(&private, DirRule::Private { uid: me() + 1 }).unwrap_err();
        assert!(e.to_string().contains("belongs to uid"), "{e}");

        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        let e = ensure_dir(&link, 0o700, DirRule::Private { uid: me() }).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");

        let file = dir.0.join("file");
        std::fs::write(&file, b"").unwrap();
        let e = ensure_dir(&file, 0o700, DirRule::Private { uid: me() }).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn an_owned_directory_is_made_or_taken_over_through_its_descriptor() {
        if me() != 0 {
            eprintln!(
                "SKIP an_owned_directory_is_made_or_taken_over_through_its_descriptor: needs root"
            );
            return;
        }
        let dir = TempDir::new("owned");
        let d = dir.0.join("tun0");
        let nobody = Owner {
            uid: 65534,
            gid: 65534,
        };
        ensure_owned_dir(&d, nobody).unwrap();
        let meta = std::fs::symlink_metadata(&d).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (65534, 0o700));
        // A later daemon on the same interface without --user takes it back.
        let root = Owner { uid: 0, gid: 0 };
        ensure_owned_dir(&d, root).unwrap();
        assert_eq!(std::fs::symlink_metadata(&d).unwrap().uid(), 0);

        // A link in its place is refused, and its target left alone.
        let elsewhere = dir.0.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let link = dir.0.join("tun1");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let e = ensure_owned_dir(&link, nobody).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert_eq!(std::fs::metadata(&elsewhere).unwrap().uid(), 0);

        // Its parent must be root's and closed to others.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_owned_dir(&dir.0.join("tun2"), nobody).unwrap_err();
        assert!(e.to_string().contains("others may write"), "{e}");
    }
}
