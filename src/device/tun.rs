//! A TUN device: raw IP packets in and out of the kernel, without packet
//! info, non-blocking, plus the ioctls that configure the kernel's side of
//! it (address, netmask, MTU, link up).
//!
//! Opening needs `CAP_NET_ADMIN`, unless the interface was created
//! beforehand for this user (`ip tuntap add dev tun0 mode tun user $USER`);
//! configuring always needs it. Errors are the OS's, untouched: the daemon
//! names the cause and the fix.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::net::if_::if_nametoindex;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use tun_tap::{Iface, Mode};

use super::gso;

/// Longest interface name Linux accepts (`IFNAMSIZ` less the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Largest MTU the daemon configures (the IPv4 total-length limit).
pub const MAX_MTU: u32 = 65535;

/// An open, non-blocking TUN device. Closing it (drop) removes the
/// interface unless it was created persistent beforehand.
#[derive(Debug)]
pub struct Tun {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Opened by `tun-tap`: one bare IP packet per read or write.
    Plain(Iface),
    /// Opened with `IFF_VNET_HDR`: every packet behind a virtio-net header,
    /// so writes may carry TCP segmentation offload ([`gso`]).
    /// The device as a `File`: its vectored reads and writes are
    /// `readv(2)`/`writev(2)`, header and packet in one call.
    Offload { file: File, name: String },
}

impl Tun {
    /// Open (creating if needed) the TUN interface `name` in IP mode without
    /// packet info, and make it non-blocking.
    ///
    /// Typical errors: `NotFound` (no `/dev/net/tun`), `PermissionDenied`
    /// (`EPERM`: no `CAP_NET_ADMIN` and the interface is not ours),
    /// `ResourceBusy` (`EBUSY`: another process has it open), `InvalidInput`
    /// (`EINVAL`: a TAP or packet-info interface has that name).
    pub fn open(name: &str) -> io::Result<Tun> {
        check_name(name)?;
        let iface = Iface::without_packet_info(name, Mode::Tun)?;
        iface.set_non_blocking()?;
        Ok(Tun {
            kind: Kind::Plain(iface),
        })
    }

    /// [`open`](Self::open), but with a virtio-net header on every packet
    /// (`IFF_VNET_HDR`), so that [`send_all`](Self::send_all) can hand the
    /// kernel runs of TCP segments as one offloaded packet. Nothing is
    /// offloaded towards us (`TUNSETOFFLOAD` 0): the kernel still
    /// segments and checksums what it sends. `tun-tap` cannot set the
    /// flag, so this opens `/dev/net/tun` itself; same errors as `open`.
    pub fn open_with_offload(name: &str) -> io::Result<Tun> {
        let mut req = IfReq::named(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        req.set_short((libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short);
        ifreq_ioctl(file.as_fd(), IfIoctl::TunSetIff, &mut req)?;
        let hdr_len = gso::VNET_HDR_LEN as libc::c_int;
        let fd = file.as_raw_fd();
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through its pointer, which
        // points at a local; TUNSETOFFLOAD takes its argument (no offloads)
        // by value. Both act on `fd`, which `file` holds open.
        let failed = unsafe {
            libc::ioctl(
                fd,
                libc::TUNSETVNETHDRSZ as _,
                &hdr_len as *const libc::c_int,
            ) < 0
                || libc::ioctl(fd, libc::TUNSETOFFLOAD as _, 0 as libc::c_ulong) < 0
        };
        if failed {
            return Err(io::Error::last_os_error());
        }
        let name = req.name();
        Ok(Tun {
            kind: Kind::Offload { file, name },
        })
    }

    /// The interface's name, as the kernel reports it.
    pub fn name(&self) -> &str {
        match &self.kind {
            Kind::Plain(iface) => iface.name(),
            Kind::Offload { name, .. } => name,
        }
    }

    /// Read one packet into `buf`; `WouldBlock` when none is queued. A
    /// packet longer than `buf` is truncated, so size `buf` to the MTU.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.kind {
            Kind::Plain(iface) => iface.recv(buf),
            Kind::Offload { file, .. } => {
                // The header says nothing we need: with no offload towards
                // us, packets arrive whole and checksummed.
                let mut hdr = [0u8; gso::VNET_HDR_LEN];
                let n = (&*file)
                    .read_vectored(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)])?;
                Ok(n.saturating_sub(gso::VNET_HDR_LEN))
            }
        }
    }

    /// Write one IP packet to the kernel.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        match &self.kind {
            Kind::Plain(iface) => iface.send(packet),
            Kind::Offload { file, .. } => write_with(file, gso::VnetHdr::default(), packet),
        }
    }

    /// Write a batch of IP packets, in order; with offload, runs of one TCP
    /// flow's segments go as one packet ([`gso::coalesce`]). Each failed
    /// write is reported to `failed` with the octets it carried; the rest
    /// go on (a full kernel queue drops packets, as a link would).
    pub fn send_all(&self, batch: Vec<Vec<u8>>, mut failed: impl FnMut(usize, io::Error)) {
        match &self.kind {
            Kind::Plain(iface) => {
                for p in batch {
                    if let Err(e) = iface.send(&p) {
                        failed(p.len(), e);
                    }
                }
            }
            Kind::Offload { file, .. } => {
                for (hdr, p) in gso::coalesce(batch) {
                    if let Err(e) = write_with(file, hdr, &p) {
                        failed(p.len(), e);
                    }
                }
            }
        }
    }
}

/// The device's descriptor, to wait on with `poll(2)`.
impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        match &self.kind {
            Kind::Plain(iface) => iface.as_raw_fd(),
            Kind::Offload { file, .. } => file.as_raw_fd(),
        }
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.kind {
            // SAFETY: `iface` owns this descriptor and keeps it open for
            // as long as `self`, and so the borrow, lives.
            Kind::Plain(iface) => unsafe { BorrowedFd::borrow_raw(iface.as_raw_fd()) },
            Kind::Offload { file, .. } => file.as_fd(),
        }
    }
}

/// Write `packet` behind the virtio-net header `hdr` in one `writev(2)`;
/// the packet octets written.
fn write_with(file: &File, hdr: gso::VnetHdr, packet: &[u8]) -> io::Result<usize> {
    let hdr = hdr.to_bytes();
    let n = (&*file).write_vectored(&[IoSlice::new(&hdr), IoSlice::new(packet)])?;
    Ok(n.saturating_sub(gso::VNET_HDR_LEN))
}

/// Reject names the kernel would silently truncate or reinterpret.
fn check_name(name: &str) -> io::Result<()> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == b'%' || b == 0 || b.is_ascii_whitespace());
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "bad interface name {name:?}: 1-{MAX_NAME_LEN} bytes, no '/', ':', '%' or spaces"
            ),
        ));
    }
    Ok(())
}

/// `struct ifreq` (netdevice(7)): an interface name, then a union this
/// module reads and writes as octets: a `struct sockaddr_in` (address,
/// netmask), an `int` (MTU) or a `short` (flags).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; IFREQ_DATA],
}

/// Octets of `ifreq`'s union (`struct ifmap`, the largest member, on
/// 64-bit Linux).
const IFREQ_DATA: usize = 24;
const _: () = assert!(std::mem::size_of::<IfReq>() == std::mem::size_of::<libc::ifreq>());

impl IfReq {
    /// An `ifreq` naming `name`, all else zero.
    fn named(name: &str) -> io::Result<IfReq> {
        check_name(name)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; IFREQ_DATA],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(req)
    }

    /// The name, as the kernel left it.
    fn name(&self) -> String {
        let len = self
            .name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..len]).into_owned()
    }

    /// The union as a `struct sockaddr_in` holding `addr`.
    fn set_v4(&mut self, addr: Ipv4Addr) {
        self.data = [0; IFREQ_DATA];
        let family = libc::AF_INET as libc::sa_family_t;
        self.data[..2].copy_from_slice(&family.to_ne_bytes());
        // sin_port (2 octets, zero), then sin_addr in network order.
        self.data[4..8].copy_from_slice(&addr.octets());
    }

    /// The address of the union's `struct sockaddr_in`.
    fn v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.data[4], self.data[5], self.data[6], self.data[7])
    }

    /// The union as an `int`.
    fn set_int(&mut self, v: libc::c_int) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }

    fn int(&self) -> libc::c_int {
        libc::c_int::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    /// The union as a `short`.
    fn set_short(&mut self, v: libc::c_short) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    fn short(&self) -> libc::c_short {
        libc::c_short::from_ne_bytes([self.data[0], self.data[1]])
    }
}

/// The `ioctl(2)` requests this module makes with an [`IfReq`].
#[derive(Debug, Clone, Copy)]
enum IfIoctl {
    TunSetIff,
    SetAddr,
    GetAddr,
    SetNetmask,
    GetNetmask,
    SetMtu,
    GetMtu,
    SetFlags,
    GetFlags,
}

/// `ioctl(fd, request, &mut req)`, errno as `io::Error`.
fn ifreq_ioctl(fd: BorrowedFd<'_>, request: IfIoctl, req: &mut IfReq) -> io::Result<()> {
    let number = match request {
        IfIoctl::TunSetIff => libc::TUNSETIFF as libc::c_ulong,
        IfIoctl::SetAddr => libc::SIOCSIFADDR,
        IfIoctl::GetAddr => libc::SIOCGIFADDR,
        IfIoctl::SetNetmask => libc::SIOCSIFNETMASK,
        IfIoctl::GetNetmask => libc::SIOCGIFNETMASK,
        IfIoctl::SetMtu => libc::SIOCSIFMTU,
        IfIoctl::GetMtu => libc::SIOCGIFMTU,
        IfIoctl::SetFlags => libc::SIOCSIFFLAGS,
        IfIoctl::GetFlags => libc::SIOCGIFFLAGS,
    };
    // SAFETY: every `IfIoctl` request reads and writes at most one `struct
    // ifreq` through its pointer, and `req` is one (same size, checked at
    // compile time), borrowed mutably for the call. The request's C type
    // differs between libcs; `as _` fits either.
    if unsafe { libc::ioctl(fd.as_raw_fd(), number as _, req as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A datagram socket of `family`, only as a handle for interface ioctls.
fn ctl_socket(family: AddressFamily) -> io::Result<OwnedFd> {
    Ok(socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// The IPv4 netmask of a prefix length (0..=32).
fn netmask_v4(prefix: u8) -> Ipv4Addr {
    let bits = u32::from(prefix.min(32));
    Ipv4Addr::from(u32::MAX.checked_shl(32 - bits).unwrap_or(0))
}

/// Set the interface's IPv4 address and netmask (`SIOCSIFADDR`,
/// `SIOCSIFNETMASK`). The kernel then routes the subnet to the interface.
pub fn set_ipv4(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    if prefix > 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "IPv4 prefix over 32",
        ));
    }
    let sock = ctl_socket(AddressFamily::Inet)?;
    let mut req = IfReq::named(name)?;
    req.set_v4(addr);
    ifreq_ioctl(sock.as_fd(), IfIoctl::SetAddr, &mut req)?;
    req.set_v4(netmask_v4(prefix));
    ifreq_ioctl(sock.as_fd(), IfIoctl::SetNetmask, &mut req)
}

/// The interface's IPv4 address and prefix length (`SIOCGIFADDR`,
/// `SIOCGIFNETMASK`); `AddrNotAvailable`-style errors when it has none.
pub fn ipv4(name: &str) -> io::Result<(Ipv4Addr, u8)> {
    let sock = ctl_socket(AddressFamily::Inet)?;
    let mut req = IfReq::named(name)?;
    ifreq_ioctl(sock.as_fd(), IfIoctl::GetAddr, &mut req)?;
    let addr = req.v4();
    ifreq_ioctl(sock.as_fd(), IfIoctl::GetNetmask, &mut req)?;
    Ok((addr, u32::from(req.v4()).leading_ones() as u8))
}

/// The interface's index (`if_nametoindex(3)`).
pub fn index(name: &str) -> io::Result<libc::c_int> {
    check_name(name)?;
    let index = if_nametoindex(name)?;
    libc::c_int::try_from(index).map_err(io::Error::other)
}

/// Add an IPv6 address with its prefix length to the interface
/// (`SIOCSIFADDR` on an `AF_INET6` socket with an `in6_ifreq`).
/// `EEXIST` if it is already there.
pub fn add_ipv6(name: &str, addr: Ipv6Addr, prefix: u8) -> io::Result<()> {
    if prefix > 128 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "IPv6 prefix over 128",
        ));
    }
    let ifindex = index(name)?;
    let sock = ctl_socket(AddressFamily::Inet6)?;
    let mut req = libc::in6_ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        ifr6_prefixlen: u32::from(prefix),
        ifr6_ifindex: ifindex,
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads one `struct
    // in6_ifreq` through its pointer, which points at a local one.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFADDR as _,
            &mut req as *mut libc::in6_ifreq,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Set the interface's MTU (`SIOCSIFMTU`), at most [`MAX_MTU`].
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    if mtu > MAX_MTU {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("MTU over {MAX_MTU}"),
        ));
    }
    let sock = ctl_socket(AddressFamily::Inet)?;
    let mut req = IfReq::named(name)?;
    req.set_int(mtu as libc::c_int);
    ifreq_ioctl(sock.as_fd(), IfIoctl::SetMtu, &mut req)
}

/// The interface's MTU (`SIOCGIFMTU`).
pub fn mtu(name: &str) -> io::Result<u32> {
    let sock = ctl_socket(AddressFamily::Inet)?;
    let mut req = IfReq::named(name)?;
    ifreq_ioctl(sock.as_fd(), IfIoctl::GetMtu, &mut req)?;
    Ok(req.int().max(0) as u32)
}

/// The interface's flags (`SIOCGIFFLAGS`), e.g. `libc::IFF_UP`.
pub fn flags(name: &str) -> io::Result<libc::c_int> {
    let sock = ctl_socket(AddressFamily::Inet)?;
    let mut req = IfReq::named(name)?;
    ifreq_ioctl(sock.as_fd(), IfIoctl::GetFlags, &mut req)?;
    // A C `short` bit set: widen without sign extension.
    Ok(libc::c_int::from(req.short() as u16))
}

/// Bring the link up (`IFF_UP | IFF_RUNNING`, keeping the other flags).
pub fn set_up(name: &str) -> io::Result<()> {
    let sock = ctl_socket(AddressFamily::Inet)?;
    let mut req = IfReq::named(name)?;
    ifreq_ioctl(sock.as_fd(), IfIoctl::GetFlags, &mut req)?;
    req.set_short(req.short() | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short);
    ifreq_ioctl(sock.as_fd(), IfIoctl::SetFlags, &mut req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("tun0").is_ok());
        assert!(check_name("a-very-long-nam").is_ok()); // 15 bytes
        for bad in [
            "",
            "a-very-long-name",
            "tun/0",
            "tun 0",
            "tun:0",
            "tun%d",
            ".",
            "..",
        ] {
            let err = check_name(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert_eq!(
            Tun::open("bad/name").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask_v4(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask_v4(1), Ipv4Addr::new(128, 0, 0, 0));
        assert_eq!(netmask_v4(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask_v4(30), Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(netmask_v4(32), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn sockaddr_round_trip() {
        let a = Ipv4Addr::new(10, 7, 0, 1);
        let mut req = IfReq::named("tun0").unwrap();
        req.set_v4(a);
        assert_eq!(req.v4(), a);
        assert_eq!(req.name(), "tun0");
        // The layout of a `struct sockaddr_in`: family, port, address.
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(a).to_be(),
            },
            sin_zero: [0; 8],
        };
        let mut octets = [0u8; 16];
        octets[..2].copy_from_slice(&sin.sin_family.to_ne_bytes());
        octets[4..8].copy_from_slice(&sin.sin_addr.s_addr.to_ne_bytes());
        assert_eq!(req.data[..16], octets);
        req.set_int(9000);
        assert_eq!(req.int(), 9000);
    }

    #[test]
    fn out_of_range_arguments_fail_before_any_ioctl() {
        assert_eq!(
            set_mtu("tun0", 65536).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            set_ipv4("tun0", Ipv4Addr::LOCALHOST, 33)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            add_ipv6("tun0", Ipv6Addr::LOCALHOST, 129)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
