//! The `ephemera up` daemon: sets up the OS edge (TUN, pcap, control
//! socket, signals, privilege drop) around the sans-IO stack and runs the
//! event loop.
//!
//! Setup order matters: the TUN is opened and configured first, while we
//! are still privileged; then the files the daemon writes; then privileges
//! are dropped; then signals. If any step fails, everything opened so far is
//! closed on return, and a non-persistent TUN disappears with its fd, so
//! nothing is left half-configured.

pub mod control;
pub mod http;
pub mod privileges;
pub mod signals;
pub mod socks;

use std::fs::File;
use std::io::{self, BufWriter};
use std::net::IpAddr;
use std::path::Path;

use crate::cli::{control_path, UpArgs};
use crate::device::{tun, PcapWriter, Tun};

/// Which setup step an OS error came from, for [`explain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// Opening `/dev/net/tun` and attaching to the interface.
    OpenTun,
    /// One configuration ioctl, named.
    Configure(&'a str),
    /// Creating the pcap file.
    Pcap(&'a Path),
    /// Creating the control socket.
    Control(&'a Path),
    /// Dropping to `--user`.
    DropPrivileges(&'a str),
}

/// One line naming the cause of a setup failure and the fix.
pub fn explain(step: Step<'_>, tun_name: &str, err: &io::Error) -> String {
    let errno = err.raw_os_error();
    let denied = matches!(errno, Some(libc::EPERM) | Some(libc::EACCES));
    match step {
        Step::OpenTun => match errno {
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => format!(
                "cannot open /dev/net/tun ({err}): load the tun module (modprobe tun), or give the container /dev/net/tun"
            ),
            // open(2) of the device node itself was refused.
            Some(libc::EACCES) => format!(
                "cannot open /dev/net/tun: permission denied; run as root, or have root make it usable (chmod 0666 /dev/net/tun is the usual mode) and create the interface for you with `ip tuntap add dev {tun_name} mode tun user $USER`, then run with --no-configure"
            ),
            // TUNSETIFF was refused: creating needs CAP_NET_ADMIN, attaching
            // needs the interface to be ours.
            Some(libc::EPERM) => format!(
                "cannot open TUN interface {tun_name}: permission denied; run as root (or with CAP_NET_ADMIN), or have root create it for you with `ip tuntap add dev {tun_name} mode tun user $USER`, configure it with ip(8), and run with --no-configure"
            ),
            Some(libc::EBUSY) => {
                format!("TUN interface {tun_name} is busy: another process has it open; stop that process or choose another --tun")
            }
            Some(libc::EINVAL) => format!(
                "interface {tun_name} exists but is not a TUN device without packet info (a TAP, or made with `pi`?); choose another --tun or remove it with `ip link del {tun_name}`"
            ),
            _ => format!("cannot open TUN interface {tun_name}: {err}"),
        },
        Step::Configure(what) => match errno {
            _ if denied => format!(
                "cannot configure {tun_name} ({what}): permission denied; run as root or with CAP_NET_ADMIN, or configure it yourself with ip(8) and pass --no-configure"
            ),
            Some(libc::EEXIST) => format!(
                "cannot configure {tun_name} ({what}): the address is already assigned; remove it with `ip addr del` or pass --no-configure"
            ),
            Some(libc::EINVAL) => format!("cannot configure {tun_name} ({what}): the kernel rejected the value"),
            _ => format!("cannot configure {tun_name} ({what}): {err}"),
        },
        Step::Pcap(path) => format!("cannot write pcap file {}: {err}", path.display()),
        Step::Control(path) => match err.kind() {
            io::ErrorKind::AddrInUse => format!(
                "control socket {} is in use: is another `ephemera up --tun {tun_name}` running? Stop it or pass --control PATH",
                path.display()
            ),
            _ if denied => format!(
                "cannot create control socket {}: permission denied; pass --control PATH in a directory you can write",
                path.display()
            ),
            _ => format!("cannot create control socket {}: {err}", path.display()),
        },
        Step::DropPrivileges(user) => match err.kind() {
            io::ErrorKind::NotFound => format!("--user {user}: no such user"),
            _ if denied => format!("--user {user}: cannot switch user without root ({err}); run as root or leave out --user"),
            _ => format!("--user {user}: cannot drop privileges: {err}"),
        },
    }
}

/// Set the kernel side of the interface: MTU, its address in the stack's
/// subnet (IPv4, and IPv6 if asked), link up.
fn configure(args: &UpArgs) -> Result<(), String> {
    let name = args.tun.as_str();
    let fail = |what: &str, e: io::Error| explain(Step::Configure(what), name, &e);
    tun::set_mtu(name, args.mtu).map_err(|e| fail("MTU", e))?;
    if let Some(IpAddr::V4(kernel)) = args.addr.kernel_peer() {
        tun::set_ipv4(name, kernel, args.addr.prefix).map_err(|e| fail("IPv4 address", e))?;
    }
    if let Some(IpAddr::V6(kernel)) = args.addr6.and_then(|c| c.kernel_peer()) {
        let prefix = args.addr6.map_or(128, |c| c.prefix);
        tun::add_ipv6(name, kernel, prefix).map_err(|e| fail("IPv6 address", e))?;
    }
    tun::set_up(name).map_err(|e| fail("link up", e))
}

/// The OS resources the daemon runs on, opened and ready.
#[derive(Debug)]
pub struct Edge {
    /// The TUN device.
    pub tun: Tun,
    /// The MTU the stack must use (the interface's, with --no-configure).
    pub mtu: u32,
    /// The pcap writer, with `--pcap`.
    pub pcap: Option<PcapWriter<BufWriter<File>>>,
    /// The control socket.
    pub control: control::ControlServer,
    /// SIGINT/SIGTERM, as a pollable fd.
    pub signals: signals::SignalPipe,
}

/// Validate `args`, then open and configure everything `up` needs, in
/// order, and drop privileges. Errors are one line naming cause and fix.
pub fn open_edge(args: &UpArgs) -> Result<Edge, String> {
    args.validate()?;
    let name = args.tun.as_str();
    let owner = match &args.user {
        Some(user) => {
            // SAFETY: geteuid cannot fail.
            if unsafe { libc::geteuid() } != 0 {
                return Err(format!("--user {user} needs the daemon to start as root"));
            }
            Some(
                privileges::lookup_user(user)
                    .map_err(|e| explain(Step::DropPrivileges(user), name, &e))?,
            )
        }
        None => None,
    };

    let tun = Tun::open(name).map_err(|e| explain(Step::OpenTun, name, &e))?;
    let mtu = if args.no_configure {
        let actual =
            tun::mtu(name).map_err(|e| explain(Step::Configure("reading MTU"), name, &e))?;
        if actual != args.mtu {
            log::warn!(
                "{name} has MTU {actual}, not {}; using {actual} (--no-configure)",
                args.mtu
            );
        }
        // Only a warning: the operator may have set things up their way.
        let expected = args.addr.kernel_peer();
        match tun::ipv4(name) {
            Ok((have, prefix))
                if Some(IpAddr::V4(have)) == expected && prefix == args.addr.prefix => {}
            Ok((have, prefix)) => log::warn!(
                "{name} has {have}/{prefix}; for --addr {} the kernel side is expected at {}/{}",
                args.addr,
                expected.map_or_else(String::new, |a| a.to_string()),
                args.addr.prefix
            ),
            Err(_) => log::warn!(
                "{name} has no IPv4 address; the kernel cannot reach the stack until it gets one"
            ),
        }
        actual
    } else {
        configure(args)?;
        args.mtu
    };
    let kernel = args
        .addr
        .kernel_peer()
        .map_or_else(String::new, |a| a.to_string());
    log::info!("{name}: stack {}, kernel {kernel}, MTU {mtu}", args.addr);

    let pcap = match &args.pcap {
        Some(path) => {
            let file = File::create(path).map_err(|e| explain(Step::Pcap(path), name, &e))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                    .map_err(|e| explain(Step::Pcap(path), name, &e))?;
            }
            Some(
                PcapWriter::new(BufWriter::new(file))
                    .map_err(|e| explain(Step::Pcap(path), name, &e))?,
            )
        }
        None => None,
    };

    let path = control_path(args.control.as_deref(), name);
    let control = control::ControlServer::bind(&path, owner)
        .map_err(|e| explain(Step::Control(&path), name, &e))?;
    log::info!("control socket {}", path.display());

    if let Some(user) = &args.user {
        privileges::drop_privileges(user)
            .map_err(|e| explain(Step::DropPrivileges(user), name, &e))?;
        log::info!("dropped privileges to {user}");
    }
    let signals = signals::SignalPipe::install()
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    Ok(Edge {
        tun,
        mtu,
        pcap,
        control,
        signals,
    })
}

/// `ephemera up`: open the edge, then serve until SIGINT/SIGTERM.
pub fn run(args: &UpArgs) -> Result<(), String> {
    let _edge = open_edge(args)?;
    Err("the event loop is not wired to the stack yet".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn setup_errors_name_cause_and_fix() {
        let m = explain(Step::OpenTun, "tun0", &os(libc::ENOENT));
        assert!(
            m.contains("/dev/net/tun") && m.contains("modprobe tun"),
            "{m}"
        );
        let m = explain(Step::OpenTun, "tun0", &os(libc::EPERM));
        assert!(
            m.contains("CAP_NET_ADMIN")
                && m.contains("ip tuntap add dev tun0 mode tun user")
                && m.contains("--no-configure"),
            "{m}"
        );
        let m = explain(Step::OpenTun, "tun0", &os(libc::EACCES));
        assert!(
            m.contains("/dev/net/tun") && m.contains("--no-configure"),
            "{m}"
        );
        let m = explain(Step::OpenTun, "tun0", &os(libc::EBUSY));
        assert!(m.contains("busy") && m.contains("--tun"), "{m}");
        let m = explain(Step::OpenTun, "tun0", &os(libc::EINVAL));
        assert!(m.contains("not a TUN"), "{m}");
        let m = explain(Step::Configure("MTU"), "tun0", &os(libc::EPERM));
        assert!(m.contains("MTU") && m.contains("--no-configure"), "{m}");
        let m = explain(Step::Configure("IPv6 address"), "tun0", &os(libc::EEXIST));
        assert!(m.contains("already assigned"), "{m}");
        let p = Path::new("/run/ephemera/tun0.sock");
        let m = explain(
            Step::Control(p),
            "tun0",
            &io::Error::new(io::ErrorKind::AddrInUse, "x"),
        );
        assert!(
            m.contains("/run/ephemera/tun0.sock") && m.contains("--control"),
            "{m}"
        );
        let m = explain(
            Step::DropPrivileges("bob"),
            "tun0",
            &io::Error::new(io::ErrorKind::NotFound, "x"),
        );
        assert_eq!(m, "--user bob: no such user");
        for m in [
            explain(Step::OpenTun, "tun0", &os(libc::EIO)),
            explain(Step::Pcap(Path::new("/x.pcap")), "tun0", &os(libc::EACCES)),
        ] {
            assert!(!m.contains('\n'), "{m}");
        }
    }
}
