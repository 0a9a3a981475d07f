//! RCV.NXT and SND.UNA as the stack tracks them beside smoltcp, and the
//! RFC 5961 checks that read them: a connection's sequence-number rules.

use super::*;

/// RCV.NXT and SND.UNA as the stack tracks them beside smoltcp, which
/// exposes neither, from what a forged segment cannot move.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SeqTrack {
    /// The peer's initial sequence number, once its SYN is seen.
    pub peer_isn: Option<u32>,
    /// The sequence number just past the peer's latest segment (our
    /// RCV.NXT when segments arrive in order).
    pub peer_next: u32,
    /// The peer's latest SEG.ACK (our SND.UNA).
    pub peer_ack: u32,
    /// Octets the application has read (wrapping), to tell whether the
    /// receive buffer may hold out-of-order data.
    pub rx_read: u32,
    /// SEG.ACK of the last segment this connection sent, if any: when it
    /// is behind RCV.NXT, an ACK is still owed to the peer.
    pub ack_sent: Option<u32>,
    /// When a challenge ACK was last sent (RFC 5961 §3.2, §4), to send at
    /// most one a second.
    pub challenged_at: Option<Instant>,
    /// Our sequence numbers inside smoltcp against those on the wire.
    pub offset: SeqOffset,
    /// The ISN chosen for this connection in advance (a SYN cookie);
    /// otherwise the RFC 6528 ISN is taken when the SYN leaves.
    pub chosen_iss: Option<u32>,
}

/// What RFC 5961 says about a SYN or RST for a connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Rfc5961 {
    /// Not for these checks (not synchronized yet, or a RST at exactly
    /// RCV.NXT): smoltcp processes it.
    Accept,
    /// A RST outside the receive window: dropped.
    DropOutOfWindow,
    /// Answered with this challenge ACK, or with none when one was sent
    /// less than a second ago; the segment itself is dropped.
    Challenge(Option<Segment>),
}

impl SeqTrack {
    /// A connection's tracking; `peer_isn` when the peer's SYN opened it.
    pub(crate) fn new(peer_isn: Option<u32>) -> SeqTrack {
        SeqTrack {
            peer_isn,
            peer_next: peer_isn.map_or(0, |isn| isn.wrapping_add(1)),
            ..SeqTrack::default()
        }
    }

    /// RCV.NXT, computed from what cannot be forged: the peer's ISN, the
    /// octets the application read, those waiting in order, and whether
    /// the peer's FIN was accepted. (smoltcp does not expose its own.)
    /// Before the peer's SYN is seen, the highest sequence number seen.
    #[inline]
    pub(crate) fn rcv_nxt(&self, v: &SocketView) -> u32 {
        let Some(isn) = self.peer_isn else {
            return self.peer_next;
        };
        let fin = matches!(
            v.state,
            TcpState::CloseWait | TcpState::LastAck | TcpState::Closing | TcpState::TimeWait
        ) as u32;
        isn.wrapping_add(1)
            .wrapping_add(self.rx_read)
            .wrapping_add(v.recv_queue as u32)
            .wrapping_add(fin)
    }

    /// Whether everything the peer sent up to the highest sequence number
    /// seen has been read by the application: then the receive buffer holds
    /// no out-of-order data either.
    pub(crate) fn rx_drained(&self, v: &SocketView) -> bool {
        self.peer_isn.is_none() || (v.recv_queue == 0 && self.peer_next == self.rcv_nxt(v))
    }

    /// Whether a segment `seq..seq+len` with FIN ends beyond the receive
    /// window, so its FIN cannot be accepted yet.
    #[inline]
    pub(crate) fn fin_beyond_window(&self, v: &SocketView, seq: u32, len: u32) -> bool {
        if self.peer_isn.is_none() {
            return false;
        }
        let end = seq.wrapping_add(len).wrapping_sub(self.rcv_nxt(v)) as i32;
        end > v.rx_free() as i32
    }

    /// Where the highest sequence number seen moves to with a segment
    /// `seq..seq+len` (SYN and FIN counted), if it moves: the end of what
    /// smoltcp may store of it ([`store_end`](Self::store_end)), when that
    /// lies beyond what earlier segments reached.
    #[inline]
    pub(crate) fn stored_end(
        &self,
        v: &SocketView,
        seq: u32,
        len: u32,
        syn: bool,
        fin: bool,
    ) -> Option<u32> {
        let end = self.store_end(v, seq, len, syn, fin)?;
        (end.wrapping_sub(self.peer_next) as i32 > 0).then_some(end)
    }

    /// The end of what smoltcp may store of a segment `seq..seq+len` (SYN
    /// and FIN counted), whatever came before it; `None` if it stores
    /// nothing. smoltcp keeps the part of a segment that lies in the
    /// receive window, so a segment that starts in the window and ends
    /// beyond it counts up to the window's end (never beyond RCV.NXT + the
    /// free space, which the advertised window never exceeds); one that
    /// does not reach into the window stores nothing, and neither does a
    /// segment without data unless it is a FIN at RCV.NXT (a bare ACK or a
    /// FIN ahead of RCV.NXT, after a loss, is not kept).
    #[inline]
    pub(crate) fn store_end(
        &self,
        v: &SocketView,
        seq: u32,
        len: u32,
        syn: bool,
        fin: bool,
    ) -> Option<u32> {
        let rcv_nxt = self.rcv_nxt(v);
        let next = seq.wrapping_add(len + syn as u32 + fin as u32);
        let ahead = next.wrapping_sub(rcv_nxt) as i32;
        if ahead <= 0 || (len == 0 && !(fin && ahead == 1)) {
            return None;
        }
        let free = v.rx_free();
        if ahead as usize <= free + fin as usize {
            return Some(next);
        }
        // Only data octets in the window are stored: the first must lie
        // before the window's end.
        let start = seq.wrapping_add(syn as u32).wrapping_sub(rcv_nxt) as i32;
        (start < free as i32).then(|| rcv_nxt.wrapping_add(free as u32))
    }

    /// Take note of a segment from the peer before smoltcp sees it: its
    /// ISN, and (if plausible — inside the windows, so forged segments
    /// cannot move them) the highest sequence number
    /// ([`stored_end`](Self::stored_end)) and SND.UNA.
    ///
    /// In the handshake, what smoltcp is about to check is checked here
    /// first: a SYN-ACK, or the ACK of our SYN-ACK, counts only if it
    /// acknowledges exactly our SYN (SEG.ACK = ISS + 1, RFC 9293
    /// §3.10.7.3), so a blind SYN-ACK cannot set the peer's ISN (and with
    /// it RCV.NXT) for the connection's life. A SYN without ACK in
    /// SYN-SENT is a simultaneous open, which smoltcp accepts as it is.
    #[inline]
    pub(crate) fn note_segment(
        &mut self,
        v: &SocketView,
        seq: u32,
        len: u32,
        syn: bool,
        fin: bool,
        ack: Option<u32>,
    ) {
        let handshake = matches!(v.state, TcpState::SynSent | TcpState::SynReceived);
        let acks_our_syn = ack.is_some() && ack == self.offset.iss().map(|i| i.wrapping_add(1));
        if syn && self.peer_isn.is_none() && (acks_our_syn || ack.is_none() && !fin) {
            self.peer_isn = Some(seq);
            self.peer_next = seq.wrapping_add(1);
        }
        if let Some(end) = self.stored_end(v, seq, len, syn, fin) {
            self.peer_next = end;
        }
        if let Some(ack) = ack {
            let advance = ack.wrapping_sub(self.peer_ack) as i32;
            let plausible = if handshake {
                acks_our_syn
            } else {
                advance >= 0 && advance as usize <= v.send_queue + 1
            };
            if plausible {
                self.peer_ack = ack;
            }
        }
    }

    /// Where a bare ACK (no data, SYN, FIN or RST) from the peer should be
    /// taken instead of its SEG.SEQ: at RCV.NXT, when its SEQ is behind
    /// RCV.NXT by no more than the receive buffer while its SEG.ACK is
    /// the latest or newer and acknowledges no more than we sent
    /// (SND.UNA <= SEG.ACK <= SND.UNA + send queue), with data of ours
    /// unacknowledged. That is what a smoltcp 0.14 peer sends after a
    /// retransmission timeout: it rewinds SND.NXT to SND.UNA (go-back-N)
    /// and sends its bare ACKs from there, and smoltcp, as RFC 9293
    /// §3.10.7.4 says, drops a segment behind the window without reading
    /// its ACK. When both ends have rewound, neither reads the other's
    /// ACKs again. (4.4BSD sends bare ACKs from SND.MAX for this reason.)
    /// Call before [`note_segment`](Self::note_segment) takes its ACK.
    pub(crate) fn rewound_ack_at(&self, v: &SocketView, seq: u32, ack: u32) -> Option<u32> {
        let synchronized = !matches!(
            v.state,
            TcpState::Closed
                | TcpState::Listen
                | TcpState::SynSent
                | TcpState::SynReceived
                | TcpState::TimeWait
        );
        if !synchronized || self.peer_isn.is_none() || v.send_queue == 0 {
            return None;
        }
        let rcv_nxt = self.rcv_nxt(v);
        let behind = rcv_nxt.wrapping_sub(seq);
        let acked = ack.wrapping_sub(self.peer_ack) as i32;
        // One behind is a keep-alive probe, which wants an ACK back.
        let rewound = behind > 1 && behind as usize <= v.recv_capacity;
        (rewound && acked >= 0 && acked as usize <= v.send_queue).then_some(rcv_nxt)
    }

    /// A bare segment <SEQ=SND.UNA><ACK=RCV.NXT> with our window.
    pub(crate) fn segment(&self, v: &SocketView, control: TcpControl) -> Segment {
        Segment {
            seq: self.peer_ack,
            ack: self.rcv_nxt(v),
            control,
            window: v.window_field(),
        }
    }

    /// Blind-attack checks of RFC 5961 that smoltcp 0.14 lacks, for a SYN
    /// or RST on a synchronized connection:
    /// - a SYN, whatever its sequence number, never resets (§4): answer
    ///   with a challenge ACK;
    /// - a RST resets only if its sequence number is exactly RCV.NXT
    ///   (§3.2); in the window but not exact, a challenge ACK; outside it,
    ///   dropped.
    ///
    /// A challenge ACK is <SEQ=SND.UNA><ACK=RCV.NXT>, at most one a second
    /// per connection, so that a peer that really restarted answers with an
    /// acceptable RST.
    pub(crate) fn challenge(&mut self, now: Instant, v: &SocketView, seg: &TcpSeg) -> Rfc5961 {
        if matches!(
            v.state,
            TcpState::Closed | TcpState::Listen | TcpState::SynSent | TcpState::SynReceived
        ) || self.peer_isn.is_none()
        {
            return Rfc5961::Accept;
        }
        let rcv_nxt = self.rcv_nxt(v);
        let window = v.rx_free() as u32;
        if seg.rst && !seg.syn {
            let offset = seg.seq.wrapping_sub(rcv_nxt);
            if offset == 0 {
                return Rfc5961::Accept;
            }
            if offset >= window.max(1) {
                return Rfc5961::DropOutOfWindow;
            }
        }
        if self
            .challenged_at
            .is_some_and(|t| now < t + Duration::from_secs(1))
        {
            return Rfc5961::Challenge(None);
        }
        self.challenged_at = Some(now);
        Rfc5961::Challenge(Some(Segment {
            seq: self.peer_ack,
            ack: rcv_nxt,
            control: TcpControl::None,
            window: window.min(0xffff) as u16,
        }))
    }
}
