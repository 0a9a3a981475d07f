//! The TIME-WAIT responder. smoltcp keeps a TIME-WAIT socket for 10 s;
//! ephemera frees the socket at once and keeps a compact record in the
//! port table for the configured 2·MSL (RFC 9293 §3.6.1), remembering
//! RCV.NXT. For a 4-tuple in TIME-WAIT the stack then answers as the
//! socket would have: an ACK for a retransmitted FIN (and 2·MSL from
//! then), nothing for a RST
//! (RFC 1337), and a new connection for a SYN beyond the old sequence
//! space (RFC 6191).

use smoltcp::wire::TcpControl;

use super::segment::Segment;
use super::socket_set::SocketId;
use super::{since_epoch, Stack};
use crate::demux::TcpSeg;
use crate::port_table::{FlowKey, TimeWaitEntry};

impl Stack {
    /// A connection our side closed first reached TIME-WAIT: send the ACK
    /// it still owes (if any), keep a record with RCV.NXT (`record`, if
    /// its 4-tuple is registered), and free its socket if `free` (else
    /// the application still holds it, detached). `unrecorded` is the
    /// ACK to send if no record is kept (TIME-WAIT off, or the records at
    /// their cap), when the record would have sent it.
    pub(super) fn enter_time_wait(
        &mut self,
        id: SocketId,
        key: &FlowKey,
        owed_ack: Option<Segment>,
        record: Option<u32>,
        unrecorded: Option<Segment>,
        free: bool,
    ) {
        if let Some(ack) = owed_ack {
            self.link.emit(key, &ack);
        }
        if let Some(rcv_nxt) = record {
            let entry = self
                .table
                .enter_time_wait(key, since_epoch(self.now), rcv_nxt);
            if let TimeWaitEntry::Overflow(_) = entry {
                self.counters.tcp_time_wait_overflow += 1;
            }
            if let (TimeWaitEntry::Overflow(_) | TimeWaitEntry::Skipped(_), Some(ack)) =
                (entry, unrecorded)
            {
                self.link.emit(key, &ack);
            }
        }
        self.counters.tcp_closed += 1;
        if free {
            self.free_tcp(id);
        }
    }

    /// A segment for a 4-tuple in TIME-WAIT. A retransmitted FIN means our
    /// last ACK was lost: ACK it again, and, if it is the FIN that closed
    /// the connection (it ends at the recorded RCV.NXT), restart 2·MSL
    /// (RFC 9293 §3.10.7.4). RSTs are ignored (RFC 1337); anything else is
    /// dropped.
    pub(super) fn time_wait_segment(&mut self, key: &FlowKey, seg: &TcpSeg, packet: &[u8]) {
        // A new connection from a client that reuses its port while our
        // side still holds TIME-WAIT (we closed first): allowed when its
        // ISN lies beyond the old connection, as Linux does (RFC 6191).
        if seg.is_initial_syn() && self.table.reopen_time_wait(key, seg.seq) {
            self.counters.tcp_time_wait_reopened += 1;
            let no_flow = self.table.lookup(key);
            self.tcp_without_flow(no_flow, key, seg, packet);
            return;
        }
        let retransmitted_fin = seg.fin && seg.ack && !seg.rst && !seg.syn;
        if !retransmitted_fin {
            self.counters.drop_time_wait += 1;
            return;
        }
        let fin_end = seg.seq.wrapping_add(seg.len + 1);
        if self
            .table
            .restart_time_wait(key, since_epoch(self.now), fin_end)
        {
            self.counters.tcp_time_wait_restarted += 1;
        }
        self.time_wait_ack(key, seg);
    }

    /// ACK `seg` on behalf of a TIME-WAIT record: SEQ is what the peer
    /// acknowledged (our FIN is acked), ACK the end of `seg`, FIN included.
    pub(super) fn time_wait_ack(&mut self, key: &FlowKey, seg: &TcpSeg) {
        let ack = Segment {
            seq: seg.ack_number,
            ack: seg.seq.wrapping_add(seg.len + seg.fin as u32),
            control: TcpControl::None,
            window: 0,
        };
        self.link.emit(key, &ack);
        self.counters.tcp_time_wait_acks += 1;
    }
}
