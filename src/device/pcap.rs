//! A classic pcap writer for raw IP packets (`LINKTYPE_RAW`), readable by
//! tcpdump and Wireshark.
//!
//! Time is a parameter: the caller passes each packet's timestamp as the
//! time since the Unix epoch; nothing here reads a clock. Packets longer
//! than the snap length are cut, with their original length recorded.

use std::io::{self, Write};
use std::time::Duration;

/// `LINKTYPE_RAW`: each record is a bare IPv4 or IPv6 packet.
pub const LINKTYPE_RAW: u32 = 101;

/// The snap length written in the header: the largest IP packet we handle.
pub const SNAPLEN: u32 = 65535;

/// Magic number of a microsecond-resolution classic pcap file.
const MAGIC_MICROS: u32 = 0xa1b2_c3d4;

/// Writes a pcap stream to `W` (a file, or a `Vec<u8>` in tests).
/// Wrap a file in a `BufWriter`; call [`PcapWriter::flush`] now and then.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Write the global header (pcap 2.4, little-endian, microseconds,
    /// snaplen 65535, `LINKTYPE_RAW`) and return the writer.
    pub fn new(mut out: W) -> io::Result<PcapWriter<W>> {
        let mut header = [0u8; 24];
        header[0..4].copy_from_slice(&MAGIC_MICROS.to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes());
        header[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone (8..12) and sigfigs (12..16) stay zero.
        header[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
        header[20..24].copy_from_slice(&LINKTYPE_RAW.to_le_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter { out })
    }

    /// Append one packet, stamped `since_epoch` (time since 1970-01-01 UTC).
    /// Seconds past 2106 wrap, as the classic format's 32 bits do.
    pub fn write_packet(&mut self, since_epoch: Duration, packet: &[u8]) -> io::Result<()> {
        let orig_len = u32::try_from(packet.len()).unwrap_or(u32::MAX);
        let incl_len = orig_len.min(SNAPLEN);
        let mut record = [0u8; 16];
        record[0..4].copy_from_slice(&(since_epoch.as_secs() as u32).to_le_bytes());
        record[4..8].copy_from_slice(&since_epoch.subsec_micros().to_le_bytes());
        record[8..12].copy_from_slice(&incl_len.to_le_bytes());
        record[12..16].copy_from_slice(&orig_len.to_le_bytes());
        self.out.write_all(&record)?;
        self.out.write_all(&packet[..incl_len as usize])
    }

    /// Flush buffered records to the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }

    #[test]
    fn two_packets_parse_back() {
        let first = [0x45u8, 0, 0, 20, 1, 2, 3, 4];
        let second = vec![0x60u8; 300];
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_packet(Duration::new(1_700_000_000, 123_456_789), &first)
            .unwrap();
        w.write_packet(Duration::new(1_700_000_001, 5_000), &second)
            .unwrap();
        w.flush().unwrap();
        let b = w.into_inner();

        assert_eq!(u32_at(&b, 0), 0xa1b2_c3d4);
        assert_eq!((u16_at(&b, 4), u16_at(&b, 6)), (2, 4));
        assert_eq!((u32_at(&b, 8), u32_at(&b, 12)), (0, 0));
        assert_eq!(u32_at(&b, 16), 65535);
        assert_eq!(u32_at(&b, 20), 101);

        let r = 24;
        assert_eq!(u32_at(&b, r), 1_700_000_000);
        assert_eq!(u32_at(&b, r + 4), 123_456);
        assert_eq!((u32_at(&b, r + 8), u32_at(&b, r + 12)), (8, 8));
        assert_eq!(&b[r + 16..r + 24], &first);

        let r = r + 16 + first.len();
        assert_eq!(u32_at(&b, r), 1_700_000_001);
        assert_eq!(u32_at(&b, r + 4), 5);
        assert_eq!((u32_at(&b, r + 8), u32_at(&b, r + 12)), (300, 300));
        assert_eq!(&b[r + 16..], &second[..]);
    }

    #[test]
    fn oversized_packet_is_cut_to_snaplen() {
        let big = vec![7u8; 70_000];
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_packet(Duration::ZERO, &big).unwrap();
        let b = w.into_inner();
        assert_eq!(u32_at(&b, 24 + 8), SNAPLEN);
        assert_eq!(u32_at(&b, 24 + 12), 70_000);
        assert_eq!(b.len(), 24 + 16 + SNAPLEN as usize);
    }
}
