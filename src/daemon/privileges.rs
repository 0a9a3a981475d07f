//! Dropping root once the TUN is open: the fd keeps working, nothing else
//! privileged is needed afterwards.

use std::io;

use nix::unistd::{getegid, geteuid, getgid, getuid, setgid, setgroups, setuid, Gid, Uid, User};

/// The uid and gid of `user` (`getpwnam_r`); `NotFound` if there is none.
pub fn lookup_user(user: &str) -> io::Result<(u32, u32)> {
    if user.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "user name contains NUL",
        ));
    }
    match User::from_name(user)? {
        Some(u) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no such user: {user}"),
        )),
    }
}

/// Become `user` for good: supplementary groups cleared to the user's
/// primary group, then gid, then uid (in that order: after `setuid` the
/// others are no longer allowed). The C library's calls, which nix makes,
/// change every thread's credentials, not only the caller's. Verified
/// afterwards, including that root cannot be regained.
pub fn drop_privileges(user: &str) -> io::Result<()> {
    let (uid, gid) = lookup_user(user)?;
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    let step = |result: nix::Result<()>, what: &str| {
        result.map_err(|e| {
            let e = io::Error::from(e);
            io::Error::new(e.kind(), format!("{what}: {e}"))
        })
    };
    step(setgroups(&[gid]), "setgroups")?;
    step(setgid(gid), "setgid")?;
    step(setuid(uid), "setuid")?;
    let regained = !uid.is_root() && setuid(Uid::from_raw(0)).is_ok();
    if getuid() != uid || geteuid() != uid || getgid() != gid || getegid() != gid || regained {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("privileges were not fully dropped to {user}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(lookup_user("root").unwrap(), (0, 0));
        let err = lookup_user("no-such-user-ephemera").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("no-such-user-ephemera"));
        assert_eq!(
            lookup_user("a\0b").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            drop_privileges("no-such-user-ephemera").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    /// Dropping privileges is for good, so it runs in a child process: this
    /// same test binary, re-run with only this test and a marker variable.
    #[test]
    fn drop_to_nobody_in_a_child() {
        const MARK: &str = "EPHEMERA_TEST_DROP_CHILD";
        if std::env::var_os(MARK).is_some() {
            drop_privileges("nobody").unwrap();
            let (uid, euid) = (getuid(), geteuid());
            assert!(!uid.is_root());
            assert_eq!(uid, euid);
            assert_eq!(
                std::fs::read("/etc/shadow").map_err(|e| e.kind()),
                Err(io::ErrorKind::PermissionDenied)
            );
            return;
        }
        if !geteuid().is_root() || lookup_user("nobody").is_err() {
            eprintln!("SKIP drop_to_nobody_in_a_child: needs root and a `nobody` user");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "daemon::privileges::tests::drop_to_nobody_in_a_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(MARK, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "{text}");
    }
}
