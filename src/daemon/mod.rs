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
pub mod shard;
pub mod signals;
pub mod socks;
pub mod table;

use std::fs::File;
use std::io::{self, BufWriter};
use std::net::IpAddr;
use std::path::Path;

use std::sync::{Arc, Mutex};

use crate::cli::{control_path, Steering, UpArgs};
use credentials::Credentials;
use ephemera::device::steering::{Attached, SteeringProgram};
use ephemera::device::tun::Fill;
use ephemera::device::{tun, PcapWriter, Tun};
use ephemera::port_table::Shards;
use ephemera::{Instant, PortTableConfig, SeededRng};
use ephemera::{Stack, StackConfig};
use files::{DirRule, Owner};
use policy::{deny_list, Destinations, Net, NetList};
use services::{DaemonServices as Services, DnsForwardConfig, ServicesConfig};
use shard::{Inbox, Lead, Shard, Shared};
use std::os::unix::io::AsFd;

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
                "interface {tun_name} exists but is not a TUN device without packet info (a TAP, made with `pi`, or with --queues: not made with `multi_queue`, or with it and --queues 1?); choose another --tun or remove it with `ip link del {tun_name}`"
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
    /// The TUN device's queues, one per shard: queue *i* feeds shard *i*.
    pub queues: Vec<Tun>,
    /// How flows are split among the shards, with more than one queue.
    pub split: Option<Shards>,
    /// The steering program, attached to the device; `None` with one
    /// queue, and where the kernel's flow learning steers instead.
    pub steering: Option<Attached>,
    /// The MTU the stack must use (the interface's, with --no-configure).
    pub mtu: u32,
    /// The pcap writer, with `--pcap`.
    pub pcap: Option<PcapWriter<BufWriter<File>>>,
    /// The control socket.
    pub control: control::ControlServer,
    /// SIGINT/SIGTERM, as a pollable fd.
    pub signals: signals::SignalPipe,
}

/// Open the TUN's `queues` queues, with TCP segmentation offload towards
/// the kernel and whatever receive offload it grants when `offload` is
/// asked for and the kernel takes `IFF_VNET_HDR` (`EINVAL` otherwise:
/// then without).
fn open_tun(name: &str, offload: bool, queues: u16) -> io::Result<Vec<Tun>> {
    if offload {
        match Tun::open_queues(name, queues, Some(true)) {
            Ok(tuns) => {
                log::info!("{name}: TCP segmentation offload towards the kernel");
                log::info!("{name}: receive offload: {}", tuns[0].receive_offload());
                return Ok(tuns);
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                log::warn!(
                    "{name}: no virtio-net header support ({e}); writing packets one by one"
                );
            }
            Err(e) => return Err(e),
        }
    }
    Tun::open_queues(name, queues, None)
}

/// The split among `queues` shards of `args`' ephemeral range, with a
/// fresh secret key; `None` for one queue.
fn split(args: &UpArgs, queues: u16) -> Result<Option<Shards>, String> {
    if queues == 1 {
        return Ok(None);
    }
    let mut rng = SeededRng::from_entropy();
    Shards::new(queues, args.ephemeral_range.into(), &mut rng)
        .map(Some)
        .map_err(|e| {
            format!(
                "--queues {queues}, --ephemeral-range {}: {e}",
                args.ephemeral_range
            )
        })
}

/// Load the steering program for `split` and attach it to the device
/// `queue` belongs to; on failure, a warning naming why, and `None`: the
/// kernel's flow learning then picks queues and shards hand packets on.
fn steer(name: &str, split: &Shards, how: Steering, queue: &Tun) -> Option<Attached> {
    if how == Steering::FlowLearning {
        log::info!("{name}: steering by the kernel's flow learning (--steering flow-learning)");
        return None;
    }
    let attached = SteeringProgram::load(split).and_then(|program| {
        let attached = program.attach(queue.as_fd())?;
        log::info!(
            "{name}: {} queues steered by an eBPF program of {} instructions",
            split.count(),
            program.instructions()
        );
        Ok(attached)
    });
    match attached {
        Ok(a) => Some(a),
        Err(e) => {
            log::warn!(
                "{name}: cannot steer packets to their shard's queue ({e}); the kernel's flow learning picks queues, and shards hand packets on to their owner"
            );
            None
        }
    }
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

    let queues = args
        .queues
        .resolve(std::thread::available_parallelism().ok().map(usize::from));
    let split = split(args, queues)?;
    let queues =
        open_tun(name, !args.no_offload, queues).map_err(|e| explain(Step::OpenTun, name, &e))?;
    // Loading needs privilege (CAP_BPF), so before the drop; and before
    // the link is up, so that no packet is steered by the kernel's guess.
    let steering = split
        .as_ref()
        .and_then(|split| steer(name, split, args.steering, &queues[0]));
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
        queues,
        split,
        steering,
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
            max_time_wait: args.max_time_wait,
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
        tcp_checksum_offload: edge.queues[0].transmit_offload() && edge.pcap.is_none(),
        tcp_segmentation_offload: edge.queues[0].transmit_offload() && edge.pcap.is_none(),
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
    serve(edge, config, services)
}

/// `config` for shard `index` of `split`: its share of the ephemeral
/// ports, and of the memory budget, the connection limit and the
/// TIME-WAIT cap (each shard enforces its share alone, with no lock
/// between them).
fn shard_config(config: &StackConfig, split: Option<&Shards>, index: u16) -> StackConfig {
    let Some(split) = split else {
        return config.clone();
    };
    let n = usize::from(split.count());
    let mut c = config.clone();
    c.ports.shard = split.id(index).unwrap_or_default();
    c.max_memory = (config.max_memory / n).max(1);
    c.max_connections = (config.max_connections / n).max(1);
    c.ports.max_time_wait = (config.ports.max_time_wait / n).max(1);
    c
}

/// Stops every other shard when a shard ends by an error or a panic.
struct StopOthers<'a> {
    shared: &'a Shared,
    index: u16,
    armed: bool,
}

impl Drop for StopOthers<'_> {
    fn drop(&mut self) {
        self.shared
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if self.armed {
            self.shared.stop_all(self.index);
        }
    }
}

/// Build shard `index`'s stack and services and serve until told to stop;
/// on failure, tell the other shards to stop.
fn run_shard(
    index: u16,
    tun: Tun,
    config: StackConfig,
    services: ServicesConfig,
    shared: Shared,
    lead: Option<Lead>,
) -> Result<(), String> {
    let mut guard = StopOthers {
        shared: &shared,
        index,
        armed: true,
    };
    let r = (|| {
        let mut stack = Stack::new(config, Instant::from_micros(0))
            .map_err(|e| format!("stack configuration: {e}"))?;
        let services = Services::start(&mut stack, services).map_err(|e| e.to_string())?;
        Shard::new(index, tun, stack, services, shared.clone(), lead).run()
    })();
    guard.armed = r.is_err();
    r
}

/// Run one shard per queue, shard 0 on this thread, the others on their
/// own; return once all have stopped, with the first error.
fn serve(mut edge: Edge, config: StackConfig, services: ServicesConfig) -> Result<(), String> {
    // The packets each turn sends are allocated and freed in that turn;
    // without this the heap shrank and grew again every turn.
    if !ephemera::device::keep_heap_top(HEAP_TOP_KEPT) {
        log::debug!("the allocator keeps its default heap trimming");
    }
    // What the kernel vouches for goes to the stack unchecked, so its
    // checksums need not be summed, unless a capture is to show them
    // (docs/architecture.md).
    let fill = if edge.pcap.is_some() {
        Fill::Complete
    } else {
        Fill::Partial
    };
    for q in &mut edge.queues {
        q.set_fill_checksums(fill);
    }
    let n = edge.queues.len();
    let inboxes = (0..n)
        .map(|_| Inbox::new())
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| format!("cannot create the shards' inboxes: {e}"))?;
    let shared = Shared {
        start: std::time::Instant::now(),
        split: edge.split,
        inboxes: Arc::new(inboxes),
        pcap: edge.pcap.take().map(|w| Arc::new(Mutex::new(Some(w)))),
        ebpf: edge.steering.is_some(),
        running: Arc::new(std::sync::atomic::AtomicUsize::new(n)),
    };
    if n > 1 {
        let per = shard_config(&config, edge.split.as_ref(), 0);
        log::info!(
            "{n} shards, each with memory budget {} MiB, at most {} connections, {} TIME-WAIT records; steering: {}",
            per.max_memory >> 20,
            per.max_connections,
            per.ports.max_time_wait,
            if shared.ebpf { "ebpf" } else { "flow learning" }
        );
    }
    let mut queues = std::mem::take(&mut edge.queues).into_iter();
    let first = queues.next().ok_or("no TUN queue")?;
    let mut threads = Vec::new();
    for (i, tun) in (1u16..).zip(queues) {
        let (config, services, mine) = (
            shard_config(&config, edge.split.as_ref(), i),
            services.clone(),
            shared.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || run_shard(i, tun, config, services, mine, None));
        match spawned {
            Ok(t) => threads.push((i, t)),
            Err(e) => {
                shared.stop_all(u16::MAX);
                for (_, t) in threads {
                    let _ = t.join();
                }
                return Err(format!("cannot start shard {i}: {e}"));
            }
        }
    }
    let lead = Lead::new(edge.control, edge.signals);
    let config0 = shard_config(&config, edge.split.as_ref(), 0);
    let mut result = run_shard(0, first, config0, services, shared, Some(lead)).map_err(|e| {
        if n > 1 {
            format!("shard 0: {e}")
        } else {
            e
        }
    });
    for (i, t) in threads {
        let r = match t.join() {
            Ok(r) => r.map_err(|e| format!("shard {i}: {e}")),
            Err(_) => Err(format!("shard {i}: panicked")),
        };
        if result.is_ok() {
            result = r;
        }
    }
    // Detach the program last: it holds a queue of the device open.
    drop(edge.steering.take());
    result
}

/// Each TCP connection's receive and send buffer, octets: the most it
/// may hold while busy (pages are backed on first write and handed back
/// once it is idle, `src/buffer_pool.rs`), and so its window. At the
/// library's 64 KiB a bulk transfer stops and waits for every ACK: the
/// loop sleeps in poll(2) until the kernel's reader has run, and the
/// rate follows the scheduler (docs/performance-notes.md). Linux lets a
/// socket's buffers grow to 4 MiB (send) and 6 MiB (receive).
const TCP_BUFFER: usize = 1 << 20;

/// Free memory the allocator may keep at the top of its heap
/// ([`ephemera::device::keep_heap_top`]): several windows' worth of
/// 64 KiB packets.
const HEAP_TOP_KEPT: usize = 16 << 20;

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
    fn each_shard_gets_its_share_of_ports_budget_and_limits() {
        let config = StackConfig {
            addrs: vec![("10.7.0.2".parse().unwrap(), 24)],
            max_memory: 1 << 30,
            max_connections: 1000,
            ..StackConfig::default()
        };
        let one = shard_config(&config, None, 0);
        assert_eq!(one.max_memory, 1 << 30);
        assert_eq!(one.ports.shard, ephemera::port_table::ShardId::SOLE);
        let split = Shards::with_key(3, 40000..=40999, (1, 2)).unwrap();
        for i in 0..3 {
            let c = shard_config(&config, Some(&split), i);
            assert_eq!(c.ports.shard, split.id(i).unwrap());
            assert_eq!(c.max_memory, (1 << 30) / 3);
            assert_eq!(c.max_connections, 333);
            assert_eq!(
                c.ports.max_time_wait,
                config.ports.max_time_wait / 3,
                "TIME-WAIT cap"
            );
            if let Err(e) = Stack::new(c, Instant::from_micros(0)) {
                panic!("shard {i}: {e}");
            }
        }
    }

    #[test]
    fn a_shard_that_fails_tells_every_other_shard_to_stop() {
        let shared = Shared {
            start: std::time::Instant::now(),
            split: None,
            inboxes: Arc::new((0..3).map(|_| Inbox::new().unwrap()).collect()),
            pcap: None,
            ebpf: false,
            running: Arc::new(std::sync::atomic::AtomicUsize::new(3)),
        };
        let stops = |shared: &Shared| -> Vec<usize> {
            shared
                .inboxes
                .iter()
                .map(|i| {
                    i.take()
                        .messages
                        .iter()
                        .filter(|m| matches!(m, shard::Message::Stop))
                        .count()
                })
                .collect()
        };
        // A shard that returns an error: the others are told.
        drop(StopOthers {
            shared: &shared,
            index: 1,
            armed: true,
        });
        assert_eq!(stops(&shared), [1, 0, 1]);
        // One that ends well tells no one.
        drop(StopOthers {
            shared: &shared,
            index: 0,
            armed: false,
        });
        assert_eq!(stops(&shared), [0, 0, 0]);
        // A panic unwinds through the guard.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = StopOthers {
                shared: &shared,
                index: 2,
                armed: true,
            };
            panic!("shard 2 failed");
        }));
        assert!(r.is_err());
        assert_eq!(stops(&shared), [1, 1, 0]);
        // Each counted itself out.
        assert_eq!(shared.running.load(std::sync::atomic::Ordering::Relaxed), 0);
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
