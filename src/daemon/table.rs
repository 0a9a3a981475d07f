//! The stack's port table and counters as the daemon shows them: rows of
//! the control protocol ([`PortEntry`]), the `ss -tuan`-like text that
//! `ephemera ports` prints, the few rows the HTTP service's `/` page
//! shows ([`PageRow`]), and `name value` counter lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use ephemera::{Protocol, SocketInfo, Stack};
use serde::{Deserialize, Serialize};

/// One row of the port table, as the control protocol carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortEntry {
    /// TCP or UDP; `tcp` or `udp` on the wire.
    #[serde(with = "proto_name")]
    pub proto: Protocol,
    /// RFC 9293 state name (`LISTEN`, `ESTABLISHED`, `TIME-WAIT`, ...), or
    /// `UNCONN` for a bound UDP socket, `ESTAB` for a connected one.
    pub state: String,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port; none for listeners and unconnected UDP,
    /// the peer for a connected UDP socket.
    pub remote: Option<SocketAddr>,
    /// Bytes received and not yet read by the application.
    pub recv_q: usize,
    /// Bytes queued to send and not yet acknowledged.
    pub send_q: usize,
    /// Milliseconds since the socket was created.
    pub age_ms: u64,
    /// The stack shard that holds the socket, when `ephemera up --queues`
    /// runs more than one; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u16>,
}

/// [`Protocol`] as `tcp` / `udp`, the names `ss` uses.
mod proto_name {
    use ephemera::Protocol;
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub(super) fn name(p: Protocol) -> &'static str {
        match p {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    pub fn serialize<S: Serializer>(p: &Protocol, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(name(*p))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
        match <&str>::deserialize(d)? {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(de::Error::unknown_variant(other, &["tcp", "udp"])),
        }
    }
}

/// One socket of the stack as a row.
pub fn port_entry(info: &SocketInfo) -> PortEntry {
    PortEntry {
        proto: info.proto,
        state: info.state.to_string(),
        local: info.local,
        remote: info.remote,
        recv_q: info.recv_queue,
        send_q: info.send_queue,
        age_ms: u64::try_from(info.age.as_millis()).unwrap_or(u64::MAX),
        shard: None,
    }
}

/// Every socket of the stack as rows.
pub fn port_entries(stack: &Stack) -> Vec<PortEntry> {
    stack.snapshot().iter().map(port_entry).collect()
}

/// The stack's counters by name, and the gauges of its limits: the
/// memory budget and its use ([`BUDGET_KEYS`]).
pub fn counter_map(stack: &Stack) -> BTreeMap<String, u64> {
    let mut map: BTreeMap<String, u64> = stack
        .counters()
        .iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let b = stack.budget();
    let table = stack.port_table();
    let gauges = [
        b.limit,
        b.pressure,
        b.committed,
        b.charged,
        b.connections,
        b.max_connections,
        table.time_wait_flows(),
        table.config().max_time_wait,
        b.warm,
    ];
    for (key, v) in BUDGET_KEYS.iter().zip(gauges) {
        map.insert(key.to_string(), u64::try_from(v).unwrap_or(u64::MAX));
    }
    map
}

/// The names of the limit gauges in the stats map: the memory budget's
/// hard and soft marks, committed and charged memory (octets), open TCP
/// connections and their limit, TIME-WAIT records and their cap, and the
/// part of committed memory kept warm for the next connections.
pub const BUDGET_KEYS: [&str; 9] = [
    "budget_memory_limit",
    "budget_memory_pressure",
    "budget_memory_committed",
    "budget_memory_charged",
    "budget_connections",
    "budget_max_connections",
    "budget_time_wait",
    "budget_max_time_wait",
    "budget_memory_warm",
];

/// The limits and their use, as `ephemera ports --stats` heads its
/// counters with them; `None` if the stats carry no budget (an older
/// daemon).
pub fn format_budget(stats: &BTreeMap<String, u64>) -> Option<String> {
    let get = |i: usize| stats.get(BUDGET_KEYS[i]).copied();
    let [limit, pressure, committed, charged, conns, max_conns, tw, max_tw, warm] =
        std::array::from_fn(get);
    let mut out = format!(
        "memory: {} committed of {} ({}%), {} buffers charged{}; pressure above {}{}\n",
        size(committed?),
        size(limit?),
        committed? * 100 / limit?.max(1),
        size(charged?),
        // An older daemon keeps nothing warm.
        match warm {
            Some(w) if w > 0 => format!(" ({} warm)", size(w)),
            _ => String::new(),
        },
        size(pressure?),
        if committed? >= pressure? {
            " (under pressure)"
        } else {
            ""
        },
    );
    let _ = writeln!(
        out,
        "connections: {} of {}; TIME-WAIT: {} of {}",
        conns?, max_conns?, tw?, max_tw?
    );
    Some(out)
}

/// The shards' line of `ephemera ports --stats`, when `up --queues` runs
/// more than one: `queues: 2, steering: ebpf; misdirected 0, handed off
/// 0, dropped 0`; `None` for a single stack (no `queues` key).
pub fn format_shards(stats: &BTreeMap<String, u64>) -> Option<String> {
    let get = |k: &str| stats.get(k).copied().unwrap_or(0);
    let queues = stats.get("queues")?;
    let steering = if get("steering_ebpf") == 1 {
        "ebpf"
    } else {
        "flow-learning"
    };
    Some(format!(
        "queues: {queues}, steering: {steering}; misdirected {}, handed off {}, dropped {}\n",
        get("misdirected"),
        get("handoffs"),
        get("handoff_drops")
    ))
}

/// Octets in the largest binary unit that keeps a digit before the point.
fn size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// "850ms", "12.3s", "5m02s", "3h07m".
pub fn format_age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{}.{}s", ms / 1000, ms % 1000 / 100),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// The port table as `ss -tuan` would print it, one socket per line, TCP
/// before UDP, then by local port.
pub fn format_ports_table(ports: &[PortEntry]) -> String {
    let mut rows: Vec<&PortEntry> = ports.iter().collect();
    rows.sort_by_key(|p| (p.proto, p.local.port(), p.local.ip(), p.remote));
    let header = [
        "Netid",
        "State",
        "Recv-Q",
        "Send-Q",
        "Local Address:Port",
        "Peer Address:Port",
        "Age",
    ];
    let mut table: Vec<[String; 7]> = vec![header.map(String::from)];
    for p in &rows {
        table.push([
            proto_name::name(p.proto).to_string(),
            p.state.clone(),
            p.recv_q.to_string(),
            p.send_q.to_string(),
            p.local.to_string(),
            peer(p.local, p.remote),
            format_age(p.age_ms),
        ]);
    }
    // With several stack shards (`up --queues`), which one holds each
    // socket: a listener appears once per shard.
    if !rows.iter().any(|p| p.shard.is_some()) {
        return columns(&table);
    }
    let shards = std::iter::once("Shard".to_string()).chain(
        rows.iter()
            .map(|p| p.shard.map_or_else(String::new, |s| s.to_string())),
    );
    let table: Vec<[String; 8]> = table
        .into_iter()
        .zip(shards)
        .map(|([a, b, c, d, e, f, g], shard)| [a, b, c, d, e, f, g, shard])
        .collect();
    columns(&table)
}

/// One row of the HTTP service's `/` page: what a client may see of a
/// socket (no queues: the page is built without inspecting sockets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRow {
    /// TCP or UDP.
    pub proto: Protocol,
    /// RFC 9293 state name, or `UNCONN`.
    pub state: String,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port; none for listeners and UDP.
    pub remote: Option<SocketAddr>,
    /// Milliseconds since the socket was created.
    pub age_ms: u64,
}

/// Page rows as a table like [`format_ports_table`]'s, in the order
/// given.
pub fn format_page_rows(rows: &[PageRow]) -> String {
    let header = [
        "Netid",
        "State",
        "Local Address:Port",
        "Peer Address:Port",
        "Age",
    ];
    let mut table: Vec<[String; 5]> = vec![header.map(String::from)];
    for r in rows {
        table.push([
            proto_name::name(r.proto).to_string(),
            r.state.clone(),
            r.local.to_string(),
            peer(r.local, r.remote),
            format_age(r.age_ms),
        ]);
    }
    columns(&table)
}

/// The peer column: the address, or a wildcard of the local family.
fn peer(local: SocketAddr, remote: Option<SocketAddr>) -> String {
    match remote {
        Some(r) => r.to_string(),
        None if local.is_ipv6() => "[::]:*".to_string(),
        None => "*:*".to_string(),
    }
}

/// Cells in left-aligned columns two spaces apart, one line per row.
fn columns<const N: usize>(table: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in table {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Counters as `name value` lines, names aligned; with each shard's own
/// (`shards`, in shard order, none for a single stack), a table: the sum,
/// then a column per shard, `-` where a shard has no such counter.
pub fn format_counters(
    counters: &BTreeMap<String, u64>,
    shards: &[BTreeMap<String, u64>],
) -> String {
    let w = counters.keys().map(|k| k.len()).max().unwrap_or(0);
    if shards.is_empty() {
        return counters
            .iter()
            .map(|(k, v)| format!("{k:<w$}  {v}\n"))
            .collect();
    }
    let mut header = vec!["total".to_string()];
    header.extend((0..shards.len()).map(|i| format!("shard {i}")));
    let rows: Vec<(&str, Vec<String>)> = counters
        .iter()
        .map(|(k, v)| {
            let mut cells = vec![v.to_string()];
            cells.extend(
                shards
                    .iter()
                    .map(|s| s.get(k).map_or_else(|| "-".to_string(), u64::to_string)),
            );
            (k.as_str(), cells)
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|(_, cells)| cells[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |name: &str, cells: &[String]| {
        let mut out = format!("{name:<w$}");
        for (cell, cw) in cells.iter().zip(&widths) {
            let _ = write!(out, "  {cell:>cw$}");
        }
        out.push('\n');
        out
    };
    let mut out = line("", &header);
    for (name, cells) in &rows {
        out.push_str(&line(name, cells));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ephemera::{SocketState, TcpState};

    /// A row for tests.
    pub(crate) fn entry(
        proto: Protocol,
        state: &str,
        local: &str,
        remote: Option<&str>,
        age_ms: u64,
    ) -> PortEntry {
        PortEntry {
            proto,
            state: state.into(),
            local: local.parse().unwrap(),
            remote: remote.map(|r| r.parse().unwrap()),
            recv_q: 0,
            send_q: 12,
            age_ms,
            shard: None,
        }
    }

    #[test]
    fn rows_carry_tcp_and_udp_by_name() {
        let row = entry(Protocol::Udp, "UNCONN", "10.7.0.2:7", None, 5);
        let s = serde_json::to_string(&row).unwrap();
        assert!(s.contains(r#""proto":"udp""#), "{s}");
        assert_eq!(serde_json::from_str::<PortEntry>(&s).unwrap(), row);
        let bad = s.replace(r#""udp""#, r#""sctp""#);
        assert!(serde_json::from_str::<PortEntry>(&bad).is_err());
        // One queue: no shard field at all, as before there were shards.
        assert!(!s.contains("shard"), "{s}");
        let sharded = PortEntry {
            shard: Some(3),
            ..row
        };
        let s = serde_json::to_string(&sharded).unwrap();
        assert!(s.contains(r#""shard":3"#), "{s}");
        assert_eq!(serde_json::from_str::<PortEntry>(&s).unwrap(), sharded);
    }

    #[test]
    fn table_and_counters_format() {
        let t = format_ports_table(&[
            entry(Protocol::Udp, "UNCONN", "10.7.0.2:7", None, 61_000),
            entry(
                Protocol::Tcp,
                "ESTABLISHED",
                "10.7.0.2:80",
                Some("10.7.0.1:51234"),
                12_345,
            ),
            entry(Protocol::Tcp, "LISTEN", "[fd00:7::2]:80", None, 800),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("Netid  State"));
        assert!(
            lines[1].starts_with("tcp")
                && lines[1].contains("10.7.0.1:51234")
                && lines[1].ends_with("12.3s")
        );
        assert!(lines[2].contains("[::]:*") && lines[2].ends_with("800ms"));
        assert!(
            lines[3].starts_with("udp") && lines[3].contains("*:*") && lines[3].ends_with("1m01s")
        );
        // Columns line up: every "Local" cell starts at the same offset.
        let col = lines[0].find("Local").unwrap();
        assert_eq!(&lines[1][col..col + 8], "10.7.0.2");
        assert_eq!(format_age(3 * 3_600_000 + 7 * 60_000), "3h07m");
        let mut c = BTreeMap::new();
        c.insert("rx_packets".to_string(), 10);
        c.insert("drops".to_string(), 1);
        assert_eq!(format_counters(&c, &[]), "drops       1\nrx_packets  10\n");
        assert_eq!(format_budget(&c), None, "an older daemon");
        let gauges = [
            3 << 30,
            2 << 30,
            1536 << 20,
            1 << 20,
            12,
            147_456,
            3,
            65_536,
            0,
        ];
        for (k, v) in BUDGET_KEYS.iter().zip(gauges) {
            c.insert(k.to_string(), v);
        }
        assert_eq!(
            format_budget(&c).unwrap(),
            "memory: 1.5 GiB committed of 3.0 GiB (50%), 1.0 MiB buffers charged; pressure above 2.0 GiB\n\
             connections: 12 of 147456; TIME-WAIT: 3 of 65536\n"
        );
        c.insert(BUDGET_KEYS[8].to_string(), 24 << 10);
        assert!(format_budget(&c)
            .unwrap()
            .contains("1.0 MiB buffers charged (24.0 KiB warm); pressure"));
        c.remove(BUDGET_KEYS[8]);
        assert!(
            format_budget(&c).is_some(),
            "an older daemon keeps none warm"
        );
        c.insert(BUDGET_KEYS[2].to_string(), 2 << 30);
        assert!(format_budget(&c).unwrap().contains("(under pressure)"));
        assert_eq!(size(1000), "1000 B");
        assert_eq!(format_shards(&c), None, "one queue");
        for (k, v) in [("queues", 4), ("steering_ebpf", 0), ("handoffs", 7)] {
            c.insert(k.to_string(), v);
        }
        assert_eq!(
            format_shards(&c).unwrap(),
            "queues: 4, steering: flow-learning; misdirected 0, handed off 7, dropped 0\n"
        );
        c.insert("steering_ebpf".to_string(), 1);
        assert!(format_shards(&c).unwrap().contains("steering: ebpf;"));
    }

    #[test]
    fn counters_of_several_shards_get_a_column_each_beside_the_sum() {
        let map = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let sum = map(&[("queues", 2), ("tcp_accepted", 1003)]);
        let shards = [map(&[("tcp_accepted", 3)]), map(&[("tcp_accepted", 1000)])];
        assert_eq!(
            format_counters(&sum, &shards),
            "              total  shard 0  shard 1\n\
             queues            2        -        -\n\
             tcp_accepted   1003        3     1000\n"
        );
    }

    #[test]
    fn port_table_renders_like_ss() {
        let rows = [
            SocketInfo {
                proto: Protocol::Tcp,
                state: SocketState::Tcp(TcpState::Established),
                local: "10.0.0.2:80".parse().unwrap(),
                remote: Some("10.0.0.1:50000".parse().unwrap()),
                recv_queue: 3,
                send_queue: 1000,
                age: std::time::Duration::from_millis(12_345),
            },
            SocketInfo {
                proto: Protocol::Udp,
                state: SocketState::Unconnected,
                local: "0.0.0.0:7".parse().unwrap(),
                remote: None,
                recv_queue: 0,
                send_queue: 0,
                age: std::time::Duration::from_millis(5),
            },
            SocketInfo {
                proto: Protocol::Udp,
                state: SocketState::Connected,
                local: "10.0.0.2:40123".parse().unwrap(),
                remote: Some("10.0.0.1:53".parse().unwrap()),
                recv_queue: 0,
                send_queue: 0,
                age: std::time::Duration::from_millis(7),
            },
        ];
        let t = format_ports_table(&rows.iter().map(port_entry).collect::<Vec<_>>());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].contains("State") && lines[0].contains("Recv-Q"));
        let est = lines.iter().find(|l| l.contains("ESTABLISHED")).unwrap();
        for cell in ["tcp", "3", "1000", "10.0.0.2:80", "10.0.0.1:50000", "12.3s"] {
            assert!(est.contains(cell), "{est:?} lacks {cell}");
        }
        let udp = lines.iter().find(|l| l.contains("UNCONN")).unwrap();
        assert!(udp.contains("0.0.0.0:7") && udp.contains("*:*") && udp.ends_with("5ms"));
        // A connected UDP socket shows its peer.
        let conn = lines.iter().find(|l| l.contains("ESTAB ")).unwrap();
        for cell in ["udp", "10.0.0.2:40123", "10.0.0.1:53", "7ms"] {
            assert!(conn.contains(cell), "{conn:?} lacks {cell}");
        }
        assert!(!t.contains("Shard"), "one stack: no shard column\n{t}");
        // Several shards: a last column names each row's.
        let mut entries: Vec<PortEntry> = rows.iter().map(port_entry).collect();
        for (i, e) in entries.iter_mut().enumerate() {
            e.shard = Some(i as u16);
        }
        let t = format_ports_table(&entries);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("Age    Shard"), "{t}");
        let est = lines.iter().find(|l| l.contains("ESTABLISHED")).unwrap();
        assert!(est.ends_with("12.3s  0"), "{est:?}");
    }
}
