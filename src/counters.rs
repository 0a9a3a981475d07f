//! Counters: every packet the stack drops, and every connection event, is
//! counted here under a name (netstack3's habit), not only logged.

use crate::demux::DropReason;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Event and drop counters of a [`Stack`](crate::Stack). All start at
        /// zero and only grow.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Every counter with its name, in declaration order.
            pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($name), self.$name),)*].into_iter()
            }
        }
    };
}

counters! {
    /// IP packets handed to the stack.
    packets_in,
    /// IP packets the stack emitted.
    packets_out,
    /// Of those, TCP segments larger than the MTU, left to the device to
    /// cut (`StackConfig::tcp_segmentation_offload`).
    tso_packets_out,
    /// The segments the device cuts those into.
    tso_segments_out,
    /// Sent packets' buffers given back (`Stack::recycle`) and freed,
    /// because the stack kept `SPARE_TX_BUFFERS` already.
    tx_buffers_freed,
    /// TCP segments that passed the checks and were demultiplexed.
    tcp_segments_in,
    /// UDP datagrams that passed the checks and were demultiplexed.
    udp_datagrams_in,
    /// Dropped: truncated or lying header lengths.
    drop_malformed,
    /// Dropped: IPv4 header, TCP, UDP, ICMP or ICMPv6 checksum wrong.
    drop_bad_checksum,
    /// Dropped: IP fragment (no reassembly).
    drop_fragment,
    /// Dropped: IPv4 options present.
    drop_ip_options,
    /// Dropped: destination is not one of our addresses.
    drop_not_for_us,
    /// Dropped: source unspecified, multicast, broadcast, loopback or ours.
    drop_martian_source,
    /// Dropped: source equals destination.
    drop_land,
    /// Dropped: TCP or UDP port 0.
    drop_port_zero,
    /// RSTs outside the receive window of a synchronized connection
    /// (RFC 5961 §3.2).
    drop_rst_out_of_window,
    /// Segments for a 4-tuple in TIME-WAIT that were not a retransmitted FIN.
    drop_time_wait,
    /// ICMP hard errors about a connection in SYN-SENT that do not quote
    /// its SYN's sequence number (RFC 5927 §4.1): ignored.
    drop_icmp_out_of_window,
    /// SYNs dropped because the listener's half-open queue was full and
    /// held nothing to evict.
    drop_syn_queue_full,
    /// Half-open connections evicted, oldest first, to make room for a new
    /// SYN when the listener's half-open queue was full (SYN-flood defence).
    drop_half_open_evicted,
    /// Connections dropped because the listener's accept queue was full.
    drop_accept_queue_full,
    /// Connections not made because no buffer memory could be reserved.
    drop_no_buffers,
    /// SYNs dropped because `StackConfig::max_connections` connections
    /// were open.
    drop_syn_connection_limit,
    /// SYNs dropped because the memory budget had no room for another
    /// connection (its hard mark, `StackConfig::max_memory`).
    drop_syn_memory_limit,
    /// Segments whose payload was dropped because storing it would have
    /// grown the connection past its reserve under memory pressure (the
    /// peer sends it again; Linux's `TCPRcvQDrop`).
    drop_data_memory_pressure,
    /// `connect` calls refused (ENOBUFS) because `max_connections`
    /// connections were open.
    tcp_connect_connection_limit,
    /// `connect` calls refused (ENOBUFS) at the memory budget's hard mark.
    tcp_connect_memory_limit,
    /// `send` calls cut short, or refused (EAGAIN), because the connection
    /// could not grow under memory pressure.
    tcp_send_memory_pressure,
    /// Connections opened under memory pressure, with one-page buffers.
    tcp_opened_under_pressure,
    /// Connections given buffers a closed connection left warm (still
    /// backed: no `madvise` on close, no page faults on first use).
    tcp_buffers_warm_reused,
    /// Warm buffers handed back to the kernel because the stack came
    /// under memory pressure.
    tcp_buffers_warm_drained,
    /// TCP connections we opened (`connect`).
    tcp_active_opens,
    /// TCP connections a peer opened and that reached the accept queue.
    tcp_passive_opens,
    /// Connections handed to the application by `accept`.
    tcp_accepted,
    /// SYNs to a port with no listener, answered with RST.
    tcp_refused,
    /// Our connection attempts refused by the peer (RST or ICMP).
    tcp_connect_refused,
    /// Established connections reset by the peer.
    tcp_reset_by_peer,
    /// Connections aborted by the application (RST sent).
    tcp_aborted,
    /// Connections that timed out (retransmission or user timeout).
    tcp_timed_out,
    /// Connections that closed gracefully.
    tcp_closed,
    /// Closed connections freed (RST sent, port released) after
    /// `StackConfig::fin_timeout` in FIN-WAIT-2 without the peer's FIN.
    tcp_fin_wait2_timeouts,
    /// TIME-WAIT records ended early by a new SYN with a higher ISN
    /// (RFC 6191), which then opened a new connection.
    tcp_time_wait_reopened,
    /// SYNs, and RSTs in the window but not at RCV.NXT, on synchronized
    /// connections: answered by a challenge ACK (RFC 5961 §3.2, §4; at
    /// most one a second per connection, the rest dropped).
    tcp_challenge_acks,
    /// SYN-ACKs whose ISN is a SYN cookie: answered without keeping a
    /// half-open connection, or for one opened while the half-open queue
    /// was full (see `SynCookies`).
    tcp_syn_cookies_sent,
    /// ACKs that returned a valid SYN cookie and rebuilt their connection.
    tcp_syn_cookies_ok,
    /// ACKs to a listener using cookies whose cookie was forged or stale
    /// (older than 128 s): no connection is made, and they are answered
    /// with RST as any ACK for no connection is (RFC 9293 §3.10.7.2).
    tcp_syn_cookies_failed,
    /// FINs cleared because their segment ended beyond the receive window
    /// (the peer sends them again with the rest of its data).
    tcp_fin_beyond_window,
    /// Bare ACKs whose sequence number was behind RCV.NXT but that
    /// acknowledged our data, taken at RCV.NXT: a smoltcp peer sends them
    /// after a retransmission timeout has rewound its SND.NXT.
    tcp_rewound_acks,
    /// ACKs sent for a retransmitted FIN in TIME-WAIT.
    tcp_time_wait_acks,
    /// TIME-WAIT records whose 2·MSL started again because the peer sent
    /// the FIN that closed the connection again (RFC 9293 §3.10.7.4).
    tcp_time_wait_restarted,
    /// Connections that skipped TIME-WAIT, their 4-tuple released at once,
    /// because `PortTableConfig::max_time_wait` records were kept (Linux
    /// `TCPTimeWaitOverflow`).
    tcp_time_wait_overflow,
    /// FINs re-sent by the FIN watchdog (see `Stack` docs).
    tcp_fin_resent,
    /// RSTs sent for segments that matched nothing.
    tcp_rst_sent,
    /// UDP datagrams to a port with no socket (ICMP port unreachable sent).
    udp_no_port,
    /// UDP datagrams dropped because the socket's receive buffer was full.
    udp_rx_overflow,
    /// ICMP errors that named one of our flows.
    icmp_errors,
    /// Other ICMP messages passed to the ICMP layer (echo, …).
    icmp_other,
    /// Packets of another transport protocol (protocol unreachable).
    other_protocol,
}

impl Counters {
    /// Count a drop by its reason.
    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::Malformed => &mut self.drop_malformed,
            DropReason::BadChecksum => &mut self.drop_bad_checksum,
            DropReason::Fragment => &mut self.drop_fragment,
            DropReason::IpOptions => &mut self.drop_ip_options,
            DropReason::NotForUs => &mut self.drop_not_for_us,
            DropReason::MartianSource => &mut self.drop_martian_source,
            DropReason::Land => &mut self.drop_land,
            DropReason::PortZero => &mut self.drop_port_zero,
        };
        *c += 1;
    }

    /// Packets demultiplexing rejected before any lookup: the `drop_*`
    /// counters from `drop_malformed` to `drop_port_zero` (the others count
    /// drops later on the path).
    fn classify_drops(&self) -> u64 {
        self.drop_malformed
            + self.drop_bad_checksum
            + self.drop_fragment
            + self.drop_ip_options
            + self.drop_not_for_us
            + self.drop_martian_source
            + self.drop_land
            + self.drop_port_zero
    }

    /// Every packet in is counted exactly once: dropped by `classify`, or
    /// demultiplexed as TCP, UDP, ICMP error, other ICMP or other protocol.
    /// `Err` says how the books disagree.
    pub fn check_accounting(&self) -> Result<(), String> {
        let classified = self.tcp_segments_in
            + self.udp_datagrams_in
            + self.icmp_errors
            + self.icmp_other
            + self.other_protocol;
        let drops = self.classify_drops();
        if self.packets_in != classified + drops {
            return Err(format!(
                "{} packets in, but {classified} classified and {drops} dropped",
                self.packets_in
            ));
        }
        Ok(())
    }

    /// Sum of every `drop_*` counter.
    pub fn drops(&self) -> u64 {
        self.iter()
            .filter(|(name, _)| name.starts_with("drop_"))
            .map(|(_, v)| v)
            .sum()
    }
}
