//! A TUN device: raw IP packets in and out of the kernel, without packet
//! info, non-blocking, plus the ioctls that configure the kernel's side of
//! it (address, netmask, MTU, link up).
//!
//! Opening needs `CAP_NET_ADMIN`, unless the interface was created
//! beforehand for this user (`ip tuntap add dev tun0 mode tun user $USER`);
//! configuring always needs it. Errors are the OS's, untouched: the daemon
//! names the cause and the fix.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::io::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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
        set_nonblocking(iface.as_raw_fd())?;
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
        let mut req = ifreq(name)?;
        // SAFETY: open(2) of a constant path; the result is checked.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;
        let mut hdr_len = gso::VNET_HDR_LEN as libc::c_int;
        let offload: libc::c_ulong = 0;
        // SAFETY: each request gets the argument type it is defined with.
        unsafe {
            ioctl(&fd, libc::TUNSETIFF as _, &mut req)?;
            ioctl(&fd, libc::TUNSETVNETHDRSZ as _, &mut hdr_len)?;
            // TUNSETOFFLOAD takes its argument by value.
            if libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD as _, offload) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let name = req
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        Ok(Tun {
            kind: Kind::Offload {
                file: File::from(fd),
                name,
            },
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

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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

/// An `ifreq` naming `name`, all else zero.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    check_name(name)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// A datagram socket of `family`, only as a handle for interface ioctls.
fn ctl_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ioctl(sock, request, arg)`, errno as `io::Error`.
///
/// # Safety
/// `arg` must point to the structure `request` expects.
unsafe fn ioctl<T>(sock: &OwnedFd, request: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    // The request's C type differs between libcs; `as _` fits either.
    if libc::ioctl(sock.as_raw_fd(), request as _, arg) < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; the
    // kernel reads the family and interprets the rest as sockaddr_in.
    unsafe { mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn sockaddr_to_v4(sa: &libc::sockaddr) -> Ipv4Addr {
    // SAFETY: same size, and the kernel filled in an AF_INET address.
    let sin: libc::sockaddr_in =
        unsafe { mem::transmute::<libc::sockaddr, libc::sockaddr_in>(*sa) };
    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
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
    let sock = ctl_socket(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_v4(addr);
    // SAFETY: SIOCSIFADDR takes an ifreq with an address.
    unsafe { ioctl(&sock, libc::SIOCSIFADDR as libc::c_ulong, &mut req)? };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_v4(netmask_v4(prefix));
    // SAFETY: SIOCSIFNETMASK takes an ifreq with a netmask.
    unsafe { ioctl(&sock, libc::SIOCSIFNETMASK as libc::c_ulong, &mut req) }
}

/// The interface's IPv4 address and prefix length (`SIOCGIFADDR`,
/// `SIOCGIFNETMASK`); `AddrNotAvailable`-style errors when it has none.
pub fn ipv4(name: &str) -> io::Result<(Ipv4Addr, u8)> {
    let sock = ctl_socket(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFADDR fills in the ifreq's address.
    unsafe { ioctl(&sock, libc::SIOCGIFADDR as libc::c_ulong, &mut req)? };
    // SAFETY: the kernel wrote an address into the union.
    let addr = sockaddr_to_v4(unsafe { &req.ifr_ifru.ifru_addr });
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFNETMASK fills in the ifreq's netmask.
    unsafe { ioctl(&sock, libc::SIOCGIFNETMASK as libc::c_ulong, &mut req)? };
    // SAFETY: the kernel wrote a netmask into the union.
    let mask = sockaddr_to_v4(unsafe { &req.ifr_ifru.ifru_netmask });
    Ok((addr, u32::from(mask).leading_ones() as u8))
}

/// The interface's index (`SIOCGIFINDEX`).
pub fn index(name: &str) -> io::Result<libc::c_int> {
    let sock = ctl_socket(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFINDEX fills in the ifreq's index.
    unsafe { ioctl(&sock, libc::SIOCGIFINDEX as libc::c_ulong, &mut req)? };
    // SAFETY: the kernel wrote the index into the union.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
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
    let sock = ctl_socket(libc::AF_INET6)?;
    let mut req = libc::in6_ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        ifr6_prefixlen: u32::from(prefix),
        ifr6_ifindex: ifindex,
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket takes an in6_ifreq.
    unsafe { ioctl(&sock, libc::SIOCSIFADDR as libc::c_ulong, &mut req) }
}

/// Set the interface's MTU (`SIOCSIFMTU`), at most [`MAX_MTU`].
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    if mtu > MAX_MTU {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("MTU over {MAX_MTU}"),
        ));
    }
    let sock = ctl_socket(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    // SAFETY: SIOCSIFMTU takes an ifreq with an MTU.
    unsafe { ioctl(&sock, libc::SIOCSIFMTU as libc::c_ulong, &mut req) }
}

/// The interface's MTU (`SIOCGIFMTU`).
pub fn mtu(name: &str) -> io::Result<u32> {
    let sock = ctl_socket(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFMTU fills in the ifreq's MTU.
    unsafe { ioctl(&sock, libc::SIOCGIFMTU as libc::c_ulong, &mut req)? };
    // SAFETY: the kernel wrote the MTU into the union.
    Ok(unsafe { req.ifr_ifru.ifru_mtu }.max(0) as u32)
}

/// The interface's flags (`SIOCGIFFLAGS`), e.g. `libc::IFF_UP`.
pub fn flags(name: &str) -> io::Result<libc::c_int> {
    let sock = ctl_socket(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS fills in the ifreq's flags.
    unsafe { ioctl(&sock, libc::SIOCGIFFLAGS as libc::c_ulong, &mut req)? };
    // SAFETY: the kernel wrote the flags into the union. They are a C
    // `short` bit set, so widen without sign extension.
    Ok(libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags } as u16))
}

/// Bring the link up (`IFF_UP | IFF_RUNNING`, keeping the other flags).
pub fn set_up(name: &str) -> io::Result<()> {
    let sock = ctl_socket(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS fills in the ifreq's flags.
    unsafe { ioctl(&sock, libc::SIOCGIFFLAGS as libc::c_ulong, &mut req)? };
    // SAFETY: reading the flags the kernel just wrote, then setting them.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        ioctl(&sock, libc::SIOCSIFFLAGS as libc::c_ulong, &mut req)
    }
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
        assert_eq!(sockaddr_to_v4(&sockaddr_v4(a)), a);
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
