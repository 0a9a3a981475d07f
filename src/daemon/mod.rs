//! The `ephemera up` daemon: sets up the OS edge (TUN, pcap, control
//! socket, signals, privilege drop) around the sans-IO stack and runs the
//! event loop.
//!
//! Setup order matters: the TUN is opened and configured first, while we
//! are still privileged; then the pcap file (created new, never opened if
//! something is there, handed to the user the daemon will run as); then
//! privileges are dropped; then the control socket is made by that user;
//! then signals. If any step fails, everything opened so far is
//! closed on return, and a non-persistent TUN disappears with its fd, so
//! nothing is left half-configured.

pub mod control;
pub mod credentials;
pub(crate) mod dns;
pub mod files;
pub mod host;
pub mod http;
pub mod policy;
pub mod poll;
pub mod privileges;
pub mod resolver;
pub mod services;
pub mod signals;
pub mod socks;
pub mod table;

use std::fs::File;
use std::io::{self, BufWriter};
use std::net::IpAddr;
use std::path::Path;

use crate::cli::{control_path, UpArgs};
use control::Request;
use credentials::Credentials;
use ephemera::device::tun::{Fill, RxChecksum};
use ephemera::device::{tun, PcapWriter, Tun};
use ephemera::Instant;
use ephemera::PortTableConfig;
use ephemera::{Stack, StackConfig};
use files::{DirRule, Owner};
use policy::{deny_list, Destinations, Net, NetList};
use services::{DaemonServices as Services, DnsForwardConfig, ServicesConfig};
use std::os::unix::io::AsFd;
use table::{counter_map, port_entries};

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
        Step::Pcap(path) => match err.kind() {
            io::ErrorKind::AlreadyExists => format!(
                "pcap file {} already exists: ephemera only creates a new capture file (it starts as root, and an existing name could be a link to any file); remove it or choose another name",
                path.display()
            ),
            _ => format!("cannot write pcap file {}: {err}", path.display()),
        },
        Step::Control(path) => match err.kind() {
            io::ErrorKind::AddrInUse => format!(
                "control socket {} is in use: is another `ephemera up --tun {tun_name}` running? Stop it or pass --control PATH",
                path.display()
            ),
            _ if denied => format!(
                "cannot create control socket {}: permission denied; pass --control PATH in a directory the daemon's user can write (with --user, one that belongs to that user)",
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

/// Open the TUN, with TCP segmentation offload towards the kernel and
/// whatever receive offload it grants when `offload` is asked for and
/// the kernel takes `IFF_VNET_HDR` (`EINVAL` otherwise: then without, as
/// `tun-tap` opens it).
fn open_tun(name: &str, offload: bool) -> io::Result<Tun> {
    if offload {
        match Tun::open_with_offload(name, true) {
            Ok(tun) => {
                log::info!("{name}: TCP segmentation offload towards the kernel");
                log::info!("{name}: receive offload: {}", tun.receive_offload());
                return Ok(tun);
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                log::warn!(
                    "{name}: no virtio-net header support ({e}); writing packets one by one"
                );
            }
            other => return other,
        }
    }
    Tun::open(name)
}

/// Validate `args`, then open and configure everything `up` needs, in
/// order, and drop privileges. Errors are one line naming cause and fix.
pub fn open_edge(args: &UpArgs) -> Result<Edge, String> {
    args.validate()?;
    let name = args.tun.as_str();
    let owner = match &args.user {
        Some(user) => {
            if !nix::unistd::geteuid().is_root() {
                return Err(format!("--user {user} needs the daemon to start as root"));
            }
            Some(
                privileges::lookup_user(user)
                    .map_err(|e| explain(Step::DropPrivileges(user), name, &e))?,
            )
        }
        None => None,
    };

    let tun = open_tun(name, !args.no_offload).map_err(|e| explain(Step::OpenTun, name, &e))?;
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

    // Files and the control socket belong to the user the daemon runs as.
    let runs_as = owner.map_or_else(
        || Owner {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        },
        |(uid, gid)| Owner { uid, gid },
    );
    let pcap = match &args.pcap {
        Some(path) => {
            let file = files::create_new_private(path, owner.map(|_| runs_as))
                .map_err(|e| explain(Step::Pcap(path), name, &e))?;
            Some(
                PcapWriter::new(BufWriter::new(file))
                    .map_err(|e| explain(Step::Pcap(path), name, &e))?,
            )
        }
        None => None,
    };

    // The control socket is made by the user the daemon runs as, after
    // the drop, so it is that user's and the daemon can remove it at
    // exit. Root's default directory, /run/ephemera/TUN, is prepared for
    // that user first; a non-root daemon's default directory must be
    // private ($XDG_RUNTIME_DIR, or /tmp/ephemera-UID made 0700); an
    // explicit --control's must be writable by no one else.
    let path = control_path(args.control.as_deref(), name);
    let rule = if args.control.is_some() {
        DirRule::NotShared { uid: runs_as.uid }
    } else {
        if nix::unistd::geteuid().is_root() {
            if let Some(dir) = path.parent() {
                files::ensure_owned_dir(dir, runs_as)
                    .map_err(|e| explain(Step::Control(&path), name, &e))?;
            }
        }
        DirRule::Private { uid: runs_as.uid }
    };

    if let Some(user) = &args.user {
        privileges::drop_privileges(user)
            .map_err(|e| explain(Step::DropPrivileges(user), name, &e))?;
        log::info!("dropped privileges to {user}");
    }
    let control = control::ControlServer::bind(&path, rule, runs_as.uid)
        .map_err(|e| explain(Step::Control(&path), name, &e))?;
    log::info!("control socket {}", path.display());
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

/// `ephemera up`: read the SOCKS users (while the file is still
/// readable: it is the starting user's, mode 0600), open the edge, then
/// serve until SIGINT/SIGTERM.
pub fn run(args: &UpArgs) -> Result<(), String> {
    let socks_auth = match &args.socks_auth {
        Some(path) => {
            let users = Credentials::load(path, nix::unistd::geteuid().as_raw())?;
            log::info!(
                "SOCKS: username/password required ({} users)",
                users.users()
            );
            Some(std::sync::Arc::new(users))
        }
        None => None,
    };
    let edge = open_edge(args)?;
    let mut addrs = vec![(args.addr.addr, args.addr.prefix)];
    if let Some(c) = args.addr6 {
        addrs.push((c.addr, c.prefix));
    }
    let max_memory = args.max_memory.unwrap_or_else(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        default_max_memory(&meminfo).unwrap_or_else(|| {
            log::warn!("cannot read MemTotal from /proc/meminfo; memory budget 1 GiB");
            StackConfig::default().max_memory
        })
    });
    let config = StackConfig {
        addrs,
        mtu: edge.mtu as usize,
        ports: PortTableConfig {
            ephemeral: args.ephemeral_range.into(),
            time_wait: std::time::Duration::from_secs(args.time_wait),
            ..PortTableConfig::default()
        },
        backlog: args.backlog.unwrap_or(StackConfig::default().backlog),
        // The half-open limit grows with the backlog, as Linux bounds its
        // SYN queue by listen()'s backlog: a burst of N clients then gets
        // N handshakes, not evictions (whose late RSTs reset real clients).
        syn_backlog: args
            .backlog
            .map_or(StackConfig::default().syn_backlog, |b| {
                b.max(StackConfig::default().syn_backlog)
            }),
        tcp_rx_buffer: TCP_BUFFER,
        tcp_tx_buffer: TCP_BUFFER,
        syn_cookies: args.syn_cookies.unwrap_or_default(),
        // Through a virtio-net header every TCP checksum is left to the
        // kernel (device::gso), so smoltcp need not sum payloads; a
        // capture shows them complete.
        tcp_checksum_offload: edge.tun.transmit_offload() && edge.pcap.is_none(),
        congestion_control: args.congestion,
        max_memory,
        max_connections: args
            .max_connections
            .unwrap_or_else(|| default_max_connections(max_memory)),
        ..StackConfig::default()
    };
    log::info!(
        "memory budget {} MiB, at most {} connections",
        config.max_memory >> 20,
        config.max_connections
    );
    // Who may use SOCKS: the interface's own subnets unless told.
    let socks_allow = if args.socks_allow.is_empty() {
        let mut nets = vec![Net::containing(args.addr.addr, args.addr.prefix)];
        nets.extend(args.addr6.map(|c| Net::containing(c.addr, c.prefix)));
        nets
    } else {
        args.socks_allow.clone()
    };
    let destinations = Destinations::new(deny_list(&args.socks_deny));
    if args.socks.is_some() {
        let list = |nets: &[Net]| {
            let v: Vec<String> = nets.iter().map(Net::to_string).collect();
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(" ")
            }
        };
        log::info!(
            "SOCKS: clients from {}; destinations denied: {}",
            list(&socks_allow),
            list(destinations.nets())
        );
    }
    let services = ServicesConfig {
        http: args.http,
        echo: args.echo,
        discard: args.discard,
        socks: args.socks,
        forwards: args.forward.clone(),
        dns: args
            .dns
            .first()
            .map(|d| DnsForwardConfig::new(d.port, args.dns.iter().map(|d| d.upstream).collect())),
        nameservers: args.nameserver.clone(),
        backlog: args.backlog,
        ipv6: args.addr6.is_some(),
        socks_allow: NetList::new(socks_allow),
        destinations,
        socks_auth,
        idle_timeout: (args.idle_timeout > 0)
            .then(|| ephemera::Duration::from_secs(args.idle_timeout)),
        head_timeout: Some(ephemera::Duration::from_secs(args.head_timeout)),
        ..ServicesConfig::default()
    };
    EventLoop::new(edge, config, services)?.run()
}

/// Each TCP connection's receive and send buffer, octets: the most it
/// may hold while busy (pages are backed on first write and handed back
/// once it is idle, `src/buffer_pool.rs`), and so its window. At the
/// library's 64 KiB a bulk transfer stops and waits for every ACK: the
/// loop sleeps in poll(2) until the kernel's reader has run, and the
/// rate follows the scheduler (docs/performance-notes.md). Linux lets a
/// socket's buffers grow to 4 MiB (send) and 6 MiB (receive).
const TCP_BUFFER: usize = 1 << 20;

/// Stack time: time since `start`.
fn since(start: std::time::Instant) -> Instant {
    Instant::from_micros(start.elapsed().as_micros().min(i64::MAX as u128) as i64)
}

/// Write `packet` to the pcap file, if capturing; stop capturing on error.
fn capture(pcap: &mut Option<PcapWriter<BufWriter<File>>>, packet: &[u8]) {
    if let Some(w) = pcap {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if let Err(e) = w.write_packet(wall, packet) {
            log::warn!("pcap: {e}; no longer capturing");
            *pcap = None;
        }
    }
}

/// The default memory budget: 3/32 of the machine's memory (`MemTotal`
/// in `meminfo`), Linux's default `tcp_mem` hard limit (a sixteenth of
/// memory for the pressure mark, and half again for the limit). At least
/// 64 MiB. Not the cgroup's limit: set `--max-memory` in a container.
fn default_max_memory(meminfo: &str) -> Option<usize> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    let bytes = kib.checked_mul(1024)? / 32 * 3;
    Some(usize::try_from(bytes).unwrap_or(usize::MAX).max(64 << 20))
}

/// The default connection limit: one per 16 KiB of budget (each holds at
/// least 8 KiB of it, and about 1.5 KiB of memory outside it), from 1024
/// to 1,048,576.
fn default_max_connections(max_memory: usize) -> usize {
    (max_memory / (16 << 10)).clamp(1024, 1 << 20)
}

/// How long a graceful shutdown waits for connections to close.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// Packets read from the TUN per loop turn, so timers and the control
/// socket are served under a flood too.
const READ_BATCH: usize = 256;

/// The daemon's event loop: TUN, stack, services, control socket, signals.
struct EventLoop {
    edge: Edge,
    stack: Stack,
    services: Services,
    /// The clock's origin: stack time is time since this.
    start: std::time::Instant,
    buf: Vec<u8>,
}

impl EventLoop {
    fn new(
        mut edge: Edge,
        config: StackConfig,
        services: ServicesConfig,
    ) -> Result<EventLoop, String> {
        // What the kernel vouches for goes to the stack unchecked, so its
        // checksums need not be summed, unless a capture is to show them
        // (docs/architecture.md).
        edge.tun.set_fill_checksums(if edge.pcap.is_some() {
            Fill::Complete
        } else {
            Fill::Partial
        });
        let start = std::time::Instant::now();
        let mut stack = Stack::new(config, Instant::from_micros(0))
            .map_err(|e| format!("stack configuration: {e}"))?;
        let services = Services::start(&mut stack, services).map_err(|e| e.to_string())?;
        Ok(EventLoop {
            edge,
            stack,
            services,
            start,
            buf: vec![0u8; tun::MAX_PACKET],
        })
    }

    fn now(&self) -> Instant {
        since(self.start)
    }

    /// Read every queued packet (up to a batch) into the stack; a
    /// super-packet from the kernel arrives as the segments it carries.
    fn read_tun(&mut self) -> Result<(), String> {
        let EventLoop {
            edge,
            stack,
            start,
            buf,
            ..
        } = self;
        for _ in 0..READ_BATCH {
            let now = since(*start);
            let pcap = &mut edge.pcap;
            let r = edge.tun.recv_segments(buf, |packet, checksum| {
                capture(pcap, packet);
                match checksum {
                    RxChecksum::Vouched => stack.handle_vouched_packet_mut(now, packet),
                    RxChecksum::Unchecked => stack.handle_packet_mut(now, packet),
                }
            });
            match r {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading {}: {e}", edge.tun.name())),
            }
        }
        Ok(())
    }

    /// Hand application events to the services; true if there were any.
    fn dispatch_events(&mut self) -> bool {
        let mut any = false;
        while let Some(ev) = self.stack.poll_event() {
            any = true;
            self.services
                .handle_event(&mut self.stack, ev, &mut self.edge.control);
        }
        any
    }

    fn serve_control(&mut self) {
        self.edge.control.handle_io();
        while let Some((id, req)) = self.edge.control.poll_request() {
            match req {
                Request::Ports => {
                    let ports = port_entries(&self.stack);
                    self.edge
                        .control
                        .reply(id, &control::Response::Ports { ports });
                }
                Request::Stats => {
                    let mut counters = counter_map(&self.stack);
                    let lookups = self.services.lookup_counters();
                    counters.extend(lookups.iter().map(|(k, v)| (k.to_string(), v)));
                    let refused = self.services.counters();
                    counters.extend(refused.iter().map(|(k, v)| (k.to_string(), v)));
                    let rx = self.edge.tun.rx_counters();
                    counters.extend(rx.iter().map(|(k, v)| (k.to_string(), v)));
                    counters.extend(self.services.dns_counters());
                    self.edge
                        .control
                        .reply(id, &control::Response::Stats { counters });
                }
                Request::Fetch { url } => {
                    self.services
                        .start_fetch(&mut self.stack, id, &url, &mut self.edge.control);
                }
            }
        }
        // Also takes the answers of name lookups, which the resolver's
        // wake-up descriptor in the poll set woke us for.
        self.services
            .resume(&mut self.stack, &mut self.edge.control);
    }

    fn transmit(&mut self) {
        let now = self.now();
        let mut batch = Vec::new();
        while let Some(p) = self.stack.poll_transmit(now) {
            capture(&mut self.edge.pcap, &p);
            batch.push(p);
        }
        // The kernel queue is full or a packet was refused: dropped, as a
        // link would; TCP retransmits.
        self.edge.tun.send_all(batch, |len, e| {
            log::debug!("tun write of {len} bytes failed: {e}");
        });
    }

    fn run(mut self) -> Result<(), String> {
        let mut deadline: Option<std::time::Instant> = None;
        log::info!("serving on {}", self.edge.tun.name());
        loop {
            self.services.begin_turn();
            // Run due timers first: this also brings the stack's clock to
            // now, which the services read for their idle timeouts.
            self.transmit();
            self.read_tun()?;
            self.dispatch_events();
            self.serve_control();
            self.transmit();
            // Sending may have produced events (timers, state changes).
            if self.dispatch_events() {
                self.transmit();
            }

            if let Some(sig) = self.edge.signals.take() {
                if deadline.is_some() {
                    log::info!("{sig:?} again: exiting now");
                    break;
                }
                log::info!("{sig:?}: closing connections");
                self.services
                    .shutdown(&mut self.stack, &mut self.edge.control);
                deadline = Some(std::time::Instant::now() + SHUTDOWN_GRACE);
                self.transmit();
            }
            if let Some(d) = deadline {
                if self.stack.socket_count() == 0 {
                    break;
                }
                if std::time::Instant::now() >= d {
                    // Reset what is left, so no peer waits on a stack
                    // that is gone.
                    let reset = self.stack.abort_released();
                    self.transmit();
                    log::warn!(
                        "{reset} connections still open after {SHUTDOWN_GRACE:?}; reset them and exiting"
                    );
                    break;
                }
            }

            let now = self.now();
            let wake = match (self.stack.poll_at(), self.services.poll_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut timeout = wake.map(|at| {
                let micros = (at - now).total_micros();
                std::time::Duration::from_micros(if at > now { micros } else { 0 })
            });
            if let Some(d) = deadline {
                let left = d
                    .saturating_duration_since(std::time::Instant::now())
                    .max(std::time::Duration::from_millis(10));
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            let mut fds = vec![
                poll::interest(self.edge.tun.as_fd(), false),
                poll::interest(self.edge.signals.fd(), false),
            ];
            if let Some(fd) = self.services.wake_fd() {
                fds.push(poll::interest(fd, false));
            }
            self.edge.control.poll_fds(&mut fds);
            poll::poll(&mut fds, timeout).map_err(|e| format!("poll: {e}"))?;
        }
        if let Some(pcap) = &mut self.edge.pcap {
            if let Err(e) = pcap.flush() {
                log::warn!("pcap: {e}");
            }
        }
        log::info!("stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn the_default_budget_follows_the_machines_memory_like_tcp_mem() {
        // A 24 GiB machine, where Linux's own tcp_mem[2] is 575,778 pages
        // (2.2 GiB): 3/32 of its memory is 2.2 GiB too.
        let meminfo = "MemTotal:       24684496 kB\nMemFree:         1 kB\n";
        let b = default_max_memory(meminfo).unwrap();
        assert_eq!(b, 24_684_496 * 1024 / 32 * 3);
        assert_eq!(b >> 20, 2259);
        assert_eq!(default_max_connections(b), 144_635);
        // Small machines get at least 64 MiB; unreadable meminfo, none.
        assert_eq!(default_max_memory("MemTotal: 262144 kB"), Some(64 << 20));
        assert_eq!(default_max_connections(64 << 20), 4096);
        assert_eq!(default_max_connections(1 << 20), 1024);
        assert_eq!(default_max_memory(""), None);
        assert_eq!(default_max_memory("MemTotal: lots"), None);
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
        let p = Path::new("/run/ephemera/tun0/control.sock");
        let m = explain(
            Step::Control(p),
            "tun0",
            &io::Error::new(io::ErrorKind::AddrInUse, "x"),
        );
        assert!(
            m.contains("/run/ephemera/tun0/control.sock") && m.contains("--control"),
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
