//! Dropping root once the TUN is open: the fd keeps working, nothing else
//! privileged is needed afterwards.

use std::ffi::CString;
use std::io;

/// The uid and gid of `user` (`getpwnam_r`); `NotFound` if there is none.
pub fn lookup_user(user: &str) -> io::Result<(libc::uid_t, libc::gid_t)> {
    let name = CString::new(user)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain data, filled in by getpwnam_r.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the stated buffer size.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no such user: {user}"),
            ));
        }
        return Ok((pwd.pw_uid, pwd.pw_gid));
    }
}

/// Become `user` for good: supplementary groups cleared to the user's
/// primary group, then gid, then uid (in that order: after `setuid` the
/// others are no longer allowed). Verified afterwards, including that root
/// cannot be regained.
pub fn drop_privileges(user: &str) -> io::Result<()> {
    let (uid, gid) = lookup_user(user)?;
    let check = |rc: libc::c_int, what: &str| {
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        Ok(())
    };
    // SAFETY: plain credential syscalls with valid arguments.
    unsafe {
        check(libc::setgroups(1, &gid), "setgroups")?;
        check(libc::setgid(gid), "setgid")?;
        check(libc::setuid(uid), "setuid")?;
    }
    // SAFETY: credential getters cannot fail; setuid(0) is the probe.
    let (ruid, euid, rgid, egid, regained) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
            uid != 0 && libc::setuid(0) == 0,
        )
    };
    if ruid != uid || euid != uid || rgid != gid || egid != gid || regained {
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
            // SAFETY: credential getters cannot fail.
            let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
            assert_ne!(uid, 0);
            assert_eq!(uid, euid);
            assert_eq!(
                std::fs::read("/etc/shadow").map_err(|e| e.kind()),
                Err(io::ErrorKind::PermissionDenied)
            );
            return;
        }
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 || lookup_user("nobody").is_err() {
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
