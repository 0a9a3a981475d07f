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
use super::split;
pub use super::split::{Cut, Fill, RxChecksum, RxDrop};
use crate::Transmit;

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
    /// One bare IP packet per read or write.
    Plain { dev: Plain, name: String },
    /// Opened with `IFF_VNET_HDR`: every packet behind a virtio-net header,
    /// so writes may carry TCP segmentation offload ([`gso`]) and reads
    /// super-packets and partial checksums ([`split`]) if `rx` says so.
    /// The device as a `File`: its vectored reads and writes are
    /// `readv(2)`/`writev(2)`, header and packet in one call.
    Offload {
        file: File,
        name: String,
        rx: RxOffload,
        cut: Cut,
        fill: Fill,
        counters: RxCounters,
    },
}

/// A TUN descriptor without a virtio-net header: opened by `tun-tap` for a
/// single-queue device, or by our own `TUNSETIFF` for one queue of a
/// multi-queue device (which `tun-tap` cannot ask for).
#[derive(Debug)]
enum Plain {
    Iface(Iface),
    Queue(File),
}

impl Plain {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Plain::Iface(iface) => iface.recv(buf),
            Plain::Queue(file) => (&*file).read(buf),
        }
    }

    fn write(&self, packet: &[u8]) -> io::Result<usize> {
        match self {
            Plain::Iface(iface) => iface.send(packet),
            Plain::Queue(file) => (&*file).write(packet),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            // SAFETY: `iface` owns this descriptor and keeps it open for
            // as long as `self`, and so the borrow, lives.
            Plain::Iface(iface) => unsafe { BorrowedFd::borrow_raw(iface.as_raw_fd()) },
            Plain::Queue(file) => file.as_fd(),
        }
    }
}

/// The offloads the kernel agreed to use towards a TUN
/// (`TUNSETOFFLOAD`): what [`Tun::recv_segments`] may be handed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxOffload(libc::c_uint);

impl RxOffload {
    /// No offload: whole packets with complete checksums.
    pub const NONE: RxOffload = RxOffload(0);
    /// Everything ephemera asks for: partial checksums (`TUN_F_CSUM`),
    /// TCP super-packets over IPv4 and IPv6 (`TUN_F_TSO4`, `TUN_F_TSO6`),
    /// also with CWR set (`TUN_F_TSO_ECN`).
    pub const ALL: RxOffload =
        RxOffload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN);

    /// What to ask for, best first: Linux refuses a set with a flag it
    /// does not know (`EINVAL`), and TSO without checksum offload.
    const PROBE: [RxOffload; 5] = [
        RxOffload::ALL,
        RxOffload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6),
        RxOffload(libc::TUN_F_CSUM | libc::TUN_F_TSO4),
        RxOffload(libc::TUN_F_CSUM),
        RxOffload::NONE,
    ];

    /// The `TUN_F_*` bits.
    pub fn bits(self) -> libc::c_uint {
        self.0
    }

    /// Whether the kernel may send TCP super-packets.
    pub fn tso(self) -> bool {
        self.0 & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0
    }
}

impl std::fmt::Display for RxOffload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (libc::TUN_F_CSUM, "checksum"),
            (libc::TUN_F_TSO4, "TSO4"),
            (libc::TUN_F_TSO6, "TSO6"),
            (libc::TUN_F_TSO_ECN, "TSO-ECN"),
        ];
        let on: Vec<&str> = names
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        if on.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&on.join(", "))
        }
    }
}

/// What the receive path did with what it read
/// ([`Tun::rx_counters`]). All start at zero and only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RxCounters {
    /// Packets read from the kernel.
    pub reads: u64,
    /// Of those, TCP super-packets that were cut.
    pub super_packets: u64,
    /// IP packets handed on (segments of super-packets included).
    pub packets: u64,
    /// Partial checksums completed.
    pub checksums_completed: u64,
    /// IP packets handed on as vouched for by the kernel
    /// ([`RxChecksum::Vouched`]).
    pub vouched: u64,
    /// Dropped: shorter than a virtio-net header or longer than the buffer.
    pub drop_truncated: u64,
    /// Dropped: a GSO type not asked for or not matching the IP version.
    pub drop_gso_type: u64,
    /// Dropped: a super-packet that is not a TCP segment of the length read.
    pub drop_malformed: u64,
    /// Dropped: checksum offsets outside the packet or off the TCP checksum.
    pub drop_checksum_offsets: u64,
}

impl RxCounters {
    /// Every counter with its name (prefixed `tun_rx_`), in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("tun_rx_reads", self.reads),
            ("tun_rx_super_packets", self.super_packets),
            ("tun_rx_packets", self.packets),
            ("tun_rx_checksums_completed", self.checksums_completed),
            ("tun_rx_vouched", self.vouched),
            ("tun_rx_drop_truncated", self.drop_truncated),
            ("tun_rx_drop_gso_type", self.drop_gso_type),
            ("tun_rx_drop_malformed", self.drop_malformed),
            ("tun_rx_drop_checksum_offsets", self.drop_checksum_offsets),
        ]
        .into_iter()
    }

    fn count_drop(&mut self, why: RxDrop) {
        match why {
            RxDrop::Truncated => self.drop_truncated += 1,
            RxDrop::GsoType => self.drop_gso_type += 1,
            RxDrop::Malformed => self.drop_malformed += 1,
            RxDrop::ChecksumOffsets => self.drop_checksum_offsets += 1,
        }
    }
}

/// A buffer for [`Tun::recv_segments`] holds the largest packet a TUN
/// carries: an IPv6 header and a 64 KiB payload.
pub const MAX_PACKET: usize = 40 + 65535;

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
        let name = iface.name().to_string();
        Ok(Tun {
            kind: Kind::Plain {
                dev: Plain::Iface(iface),
                name,
            },
        })
    }

    /// [`open`](Self::open), but with a virtio-net header on every packet
    /// (`IFF_VNET_HDR`), so that [`send_all`](Self::send_all) can hand the
    /// kernel runs of TCP segments as one offloaded packet.
    ///
    /// With `receive`, the kernel is asked to offload towards us too
    /// (`TUNSETOFFLOAD` with [`RxOffload::ALL`], then smaller sets where
    /// it refuses; [`receive_offload`](Self::receive_offload) says what it
    /// took): it then sends TCP super-packets and partial checksums,
    /// which [`recv_segments`](Self::recv_segments) turns back into
    /// whole segments. Without, `TUNSETOFFLOAD` is 0: the kernel
    /// segments and checksums what it sends. Same errors as `open`.
    pub fn open_with_offload(name: &str, receive: bool) -> io::Result<Tun> {
        Tun::open_one(name, false, Some(receive))
    }

    /// Open `queues` queues of the multi-queue TUN interface `name`
    /// (`IFF_MULTI_QUEUE`; created with its first queue), each as
    /// [`open`](Self::open) (`offload` `None`) or
    /// [`open_with_offload`](Self::open_with_offload) (`Some(receive)`)
    /// would open it. With `queues` 1 this is exactly `open` or
    /// `open_with_offload`: a single-queue device.
    ///
    /// `drivers/net/tun.c` (`tun_set_iff`) attaches each further
    /// `TUNSETIFF` with `IFF_MULTI_QUEUE` on the same name as a new queue;
    /// the flags must agree with the device's (`EINVAL` for a device made
    /// without `multi_queue`), and the virtio-net header size and the
    /// offloads are the device's, so every queue is given the same. At
    /// most 256 queues (`MAX_TAP_QUEUES`, else `E2BIG`). Dropping every
    /// queue removes a non-persistent interface.
    pub fn open_queues(name: &str, queues: u16, offload: Option<bool>) -> io::Result<Vec<Tun>> {
        if queues == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a TUN device needs at least one queue",
            ));
        }
        (0..queues)
            .map(|_| match (queues, offload) {
                (1, None) => Tun::open(name),
                _ => Tun::open_one(name, queues > 1, offload),
            })
            .collect()
    }

    /// Open `/dev/net/tun` non-blocking and attach it to `name` as a TUN
    /// without packet info; with `offload` `Some(receive)`, with a
    /// virtio-net header and the receive offload asked for.
    fn open_one(name: &str, multi_queue: bool, offload: Option<bool>) -> io::Result<Tun> {
        let mut req = IfReq::named(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        if offload.is_some() {
            flags |= libc::IFF_VNET_HDR;
        }
        req.set_short(flags as libc::c_short);
        ifreq_ioctl(file.as_fd(), IfIoctl::TunSetIff, &mut req)?;
        let name = req.name();
        let Some(receive) = offload else {
            return Ok(Tun {
                kind: Kind::Plain {
                    dev: Plain::Queue(file),
                    name,
                },
            });
        };
        let hdr_len = gso::VNET_HDR_LEN as libc::c_int;
        let fd = file.as_raw_fd();
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through its pointer, which
        // points at a local, on `fd`, which `file` holds open.
        let rc = unsafe {
            libc::ioctl(
                fd,
                libc::TUNSETVNETHDRSZ as _,
                &hdr_len as *const libc::c_int,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let probe: &[RxOffload] = if receive {
            &RxOffload::PROBE
        } else {
            &[RxOffload::NONE]
        };
        let mut rx = None;
        for &want in probe {
            // SAFETY: TUNSETOFFLOAD takes its argument (the TUN_F_* bits)
            // by value, on `fd`, which `file` holds open.
            let rc = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD as _, want.0 as libc::c_ulong) };
            if rc == 0 {
                rx = Some(want);
                break;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINVAL) || want == RxOffload::NONE {
                return Err(err);
            }
        }
        Ok(Tun {
            kind: Kind::Offload {
                file,
                name,
                rx: rx.unwrap_or_default(),
                cut: Cut::default(),
                fill: Fill::default(),
                counters: RxCounters::default(),
            },
        })
    }

    /// The offloads the kernel uses towards us: [`RxOffload::NONE`] unless
    /// opened with [`open_with_offload`](Self::open_with_offload) and
    /// `receive`.
    pub fn receive_offload(&self) -> RxOffload {
        match &self.kind {
            Kind::Plain { .. } => RxOffload::NONE,
            Kind::Offload { rx, .. } => *rx,
        }
    }

    /// Whether writes carry a virtio-net header, and so TCP segmentation
    /// and checksum offload ([`send_all`](Self::send_all)): a stack
    /// writing through this TUN may leave TCP checksums out
    /// ([`StackConfig::tcp_checksum_offload`](crate::StackConfig::tcp_checksum_offload)).
    pub fn transmit_offload(&self) -> bool {
        matches!(self.kind, Kind::Offload { .. })
    }

    /// How [`recv_segments`](Self::recv_segments) cuts super-packets
    /// ([`Cut::Coalesced`] unless set).
    pub fn set_receive_cut(&mut self, to: Cut) {
        if let Kind::Offload { cut, .. } = &mut self.kind {
            *cut = to;
        }
    }

    /// Whether [`recv_segments`](Self::recv_segments) completes the
    /// checksums the kernel leaves to the device ([`Fill::Complete`]
    /// unless set). [`Fill::Partial`] saves summing every payload, for a
    /// receiver that takes [`RxChecksum::Vouched`] packets as checked
    /// ([`Stack::handle_vouched_packet`](crate::Stack::handle_vouched_packet)).
    pub fn set_fill_checksums(&mut self, to: Fill) {
        if let Kind::Offload { fill, .. } = &mut self.kind {
            *fill = to;
        }
    }

    /// What the receive path has read, cut and dropped so far.
    pub fn rx_counters(&self) -> RxCounters {
        match &self.kind {
            Kind::Plain { .. } => RxCounters::default(),
            Kind::Offload { counters, .. } => counters.clone(),
        }
    }

    /// The interface's name, as the kernel reports it.
    pub fn name(&self) -> &str {
        match &self.kind {
            Kind::Plain { name, .. } => name,
            Kind::Offload { name, .. } => name,
        }
    }

    /// Read one packet into `buf`, as the kernel wrote it, without its
    /// virtio-net header; `WouldBlock` when none is queued. A packet
    /// longer than `buf` is truncated, so size `buf` to the MTU. With
    /// receive offload on, the packet may be a super-packet or carry a
    /// partial checksum: read with [`recv_segments`](Self::recv_segments)
    /// instead.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.kind {
            Kind::Plain { dev, .. } => dev.read(buf),
            Kind::Offload { file, .. } => {
                let mut hdr = [0u8; gso::VNET_HDR_LEN];
                let n = (&*file)
                    .read_vectored(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)])?;
                Ok(n.saturating_sub(gso::VNET_HDR_LEN))
            }
        }
    }

    /// Read one packet and hand `each` the IP packets it carries, whole,
    /// with what their checksum is worth: the packet itself, or with
    /// receive offload the segments of a super-packet
    /// ([`set_receive_cut`](Self::set_receive_cut)) and packets whose
    /// partial checksum was completed ([`set_fill_checksums`](Self::set_fill_checksums)).
    /// Returns how many were handed on: 0 if the packet was dropped (cut
    /// short by a `buf` smaller than [`MAX_PACKET`], or a virtio-net
    /// header that does not fit it; [`rx_counters`](Self::rx_counters)
    /// counts why). `WouldBlock` when nothing is queued. `buf` is scratch
    /// space, overwritten in place; `each` may change the packet it is
    /// handed (`Stack::handle_packet_mut`).
    pub fn recv_segments(
        &mut self,
        buf: &mut [u8],
        mut each: impl FnMut(&mut [u8], RxChecksum),
    ) -> io::Result<usize> {
        match &mut self.kind {
            Kind::Plain { dev, .. } => {
                let n = dev.read(buf)?;
                match buf.get_mut(..n) {
                    Some(p) => {
                        each(p, RxChecksum::Unchecked);
                        Ok(1)
                    }
                    None => Ok(0),
                }
            }
            Kind::Offload {
                file,
                cut,
                fill,
                counters,
                ..
            } => {
                let mut hdr = [0u8; gso::VNET_HDR_LEN];
                let n = (&*file)
                    .read_vectored(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)])?;
                counters.reads += 1;
                // The kernel reports a packet's full length even when it
                // copied only what fit.
                let mut vouched = 0;
                let result = match n.checked_sub(gso::VNET_HDR_LEN) {
                    Some(len) if len <= buf.len() => split::deliver(
                        gso::VnetHdr::from_bytes(hdr),
                        &mut buf[..len],
                        *cut,
                        *fill,
                        &mut |p, checksum| {
                            vouched += u64::from(checksum == RxChecksum::Vouched);
                            each(p, checksum);
                        },
                    ),
                    _ => Err(RxDrop::Truncated),
                };
                counters.vouched += vouched;
                match result {
                    Ok(d) => {
                        counters.packets += d.packets as u64;
                        counters.super_packets += u64::from(d.super_packet);
                        counters.checksums_completed += u64::from(d.completed_checksum);
                        Ok(d.packets)
                    }
                    Err(why) => {
                        counters.count_drop(why);
                        Ok(0)
                    }
                }
            }
        }
    }

    /// Write one IP packet to the kernel.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        match &self.kind {
            Kind::Plain { dev, .. } => dev.write(packet),
            Kind::Offload { file, .. } => write_with(file, gso::VnetHdr::default(), packet),
        }
    }

    /// Write a batch of IP packets, in order; with offload, runs of one TCP
    /// flow's segments go as one packet whose virtio-net header asks the
    /// kernel to cut it back into them (TCP segmentation offload), a
    /// segment the stack left to the device to cut
    /// ([`Transmit::gso_size`]) goes as it is behind such a header, and
    /// every TCP checksum is left to the kernel. Each failed write is
    /// reported to `failed` with the octets it carried; the rest go on (a
    /// full kernel queue drops packets, as a link would). Without
    /// offload, a segment left to the device to cut cannot be written
    /// and fails with `EMSGSIZE`. Every packet's buffer, written or not,
    /// is handed to `spent` afterwards, to be reused
    /// ([`Stack::recycle`](crate::Stack::recycle)) or dropped.
    pub fn send_all(
        &self,
        batch: Vec<Transmit>,
        mut failed: impl FnMut(usize, io::Error),
        mut spent: impl FnMut(Vec<u8>),
    ) {
        match &self.kind {
            Kind::Plain { dev, .. } => {
                for t in batch {
                    let sent = match t.gso_size {
                        Some(_) => Err(io::Error::from_raw_os_error(libc::EMSGSIZE)),
                        None => dev.write(&t.packet),
                    };
                    if let Err(e) = sent {
                        failed(t.packet.len(), e);
                    }
                    spent(t.packet);
                }
            }
            Kind::Offload { file, .. } => {
                let mut run = Vec::with_capacity(batch.len());
                for t in batch {
                    let mut packet = t.packet;
                    let hdr = t
                        .gso_size
                        .and_then(|size| gso::segmentation_header(&mut packet, size));
                    match hdr {
                        Some(hdr) => {
                            write_coalesced(file, &mut run, &mut failed, &mut spent);
                            if let Err(e) = write_with(file, hdr, &packet) {
                                failed(packet.len(), e);
                            }
                            spent(packet);
                        }
                        None => run.push(packet),
                    }
                }
                write_coalesced(file, &mut run, &mut failed, &mut spent);
            }
        }
    }
}

/// Write `run`, packets the stack sent MTU-sized, in order, merging
/// runs of one TCP flow's segments ([`gso::coalesce`]); empty it into
/// `spent`.
fn write_coalesced(
    file: &File,
    run: &mut Vec<Vec<u8>>,
    failed: &mut impl FnMut(usize, io::Error),
    spent: &mut impl FnMut(Vec<u8>),
) {
    for frame in gso::coalesce(run) {
        let hdr = frame.hdr.to_bytes();
        let mut iov = Vec::with_capacity(2 + frame.packets.len());
        iov.push(IoSlice::new(&hdr));
        iov.extend(frame.parts(run).map(IoSlice::new));
        // A TUN takes one packet per write, whole, from all the pieces: no
        // partial writes.
        if let Err(e) = (&*file).write_vectored(&iov) {
            failed(frame.len(run), e);
        }
    }
    run.drain(..).for_each(spent);
}

/// The device's descriptor, to wait on with `poll(2)`.
impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        match &self.kind {
            Kind::Plain { dev, .. } => dev.fd().as_raw_fd(),
            Kind::Offload { file, .. } => file.as_raw_fd(),
        }
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.kind {
            Kind::Plain { dev, .. } => dev.fd(),
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

/// One queue of the multi-queue TUN `name` (`IFF_MULTI_QUEUE`, created with
/// its first queue), non-blocking: for the steering tests, which attach a
/// program to such a device.
#[cfg(test)]
pub(super) fn open_queue(name: &str) -> io::Result<File> {
    match Tun::open_one(name, true, None)?.kind {
        Kind::Plain {
            dev: Plain::Queue(file),
            ..
        }
        | Kind::Offload { file, .. } => Ok(file),
        Kind::Plain { .. } => Err(io::Error::other("not a multi-queue descriptor")),
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
        // Zero queues, or a bad name: refused before any device is opened.
        for (name, queues) in [("tun0", 0), ("bad/name", 2)] {
            let err = Tun::open_queues(name, queues, None).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name} {queues}");
        }
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
