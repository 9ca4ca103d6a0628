//! Just enough pcap to read what tcpdump wrote: the IPv4 TCP segments of a capture, and their payloads put back
//! into byte streams (a marker can straddle two segments, so searching packets one by one could miss it).

use anyhow::{bail, Result};
use std::net::{Ipv4Addr, SocketAddrV4};

/// One TCP segment seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSegment {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    /// TCP flag bits (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub flags: u8,
    pub payload: Vec<u8>,
}

pub const SYN: u8 = 0x02;

impl TcpSegment {
    pub fn is_syn(&self) -> bool {
        self.flags & SYN != 0
    }
}

/// The bytes one side of one TCP connection sent, in sequence order (gaps from missed segments are zeros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpStream {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub data: Vec<u8>,
}

/// A parsed capture file.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    /// Every frame, TCP or not.
    pub frames: usize,
    pub tcp: Vec<TcpSegment>,
}

// Link types tcpdump may write: Ethernet (a bridge or veth), Linux cooked v1/v2 (`-i any`), raw IP.
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_LINUX_SLL2: u32 = 276;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;

/// Parses a classic pcap file (either byte order, µs or ns timestamps). A record cut short at the end (the file
/// read while the writer was still going) ends the capture rather than failing it.
pub fn parse(file: &[u8]) -> Result<Capture> {
    if file.len() < 24 {
        bail!("not a pcap file: {} bytes, shorter than the 24-byte header", file.len());
    }
    let magic = [file[0], file[1], file[2], file[3]];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => bail!("not a pcap file (magic {magic:02x?}; pcapng is not supported)"),
    };
    let u32_at = |b: &[u8], at: usize| {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if little {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        }
    };
    // The upper bits of the link-type field may carry FCS information.
    let linktype = u32_at(file, 20) & 0x0fff_ffff;
    let mut capture = Capture::default();
    let mut at = 24;
    while at + 16 <= file.len() {
        let len = u32_at(file, at + 8) as usize;
        let start = at + 16;
        let Some(frame) = file.get(start..start + len) else { break };
        capture.frames += 1;
        if let Some(ip) = ipv4_of(linktype, frame)? {
            capture.tcp.extend(tcp_of(ip));
        }
        at = start + len;
    }
    Ok(capture)
}

/// The IPv4 packet in a frame, if it carries one.
fn ipv4_of(linktype: u32, frame: &[u8]) -> Result<Option<&[u8]>> {
    let ethertype_at = |at: usize| frame.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (ethertype, header) = match linktype {
        LINKTYPE_ETHERNET => match ethertype_at(12) {
            Some(ETHERTYPE_VLAN) => (ethertype_at(16), 18),
            t => (t, 14),
        },
        LINKTYPE_LINUX_SLL => (ethertype_at(14), 16),
        LINKTYPE_LINUX_SLL2 => (ethertype_at(0), 20),
        LINKTYPE_RAW => (Some(ETHERTYPE_IPV4), 0),
        other => bail!("unsupported pcap link type {other}"),
    };
    Ok((ethertype == Some(ETHERTYPE_IPV4)).then(|| frame.get(header..)).flatten())
}

/// The TCP segment in an IPv4 packet, if it is one (first fragments only; nothing here fragments TCP).
fn tcp_of(ip: &[u8]) -> Option<TcpSegment> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let fragment_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    if fragment_offset != 0 || total < ihl + 20 {
        return None;
    }
    let tcp = &ip[ihl..total];
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    if data_offset < 20 || data_offset > tcp.len() {
        return None;
    }
    let addr = |ip_at: usize, port_at: usize| {
        SocketAddrV4::new(Ipv4Addr::new(ip[ip_at], ip[ip_at + 1], ip[ip_at + 2], ip[ip_at + 3]), u16::from_be_bytes([tcp[port_at], tcp[port_at + 1]]))
    };
    Some(TcpSegment {
        src: addr(12, 0),
        dst: addr(16, 2),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        flags: tcp[13],
        payload: tcp[data_offset..].to_vec(),
    })
}

/// Largest stream rebuilt; bytes beyond it are ignored (a lab transfer is tens of MiB at most).
const MAX_STREAM: usize = 1 << 30;

/// Puts the segments of each direction of each connection back in sequence order. A SYN starts a new stream
/// (the same addresses and ports can be reused by a later connection); retransmissions overwrite themselves.
pub fn streams(segments: &[TcpSegment]) -> Vec<TcpStream> {
    struct Building {
        src: SocketAddrV4,
        dst: SocketAddrV4,
        /// Sequence number of the first data byte.
        base: u32,
        data: Vec<u8>,
    }
    let mut out: Vec<Building> = Vec::new();
    for seg in segments {
        let current = out.iter().rposition(|s| s.src == seg.src && s.dst == seg.dst);
        let index = match current {
            Some(i) if !seg.is_syn() => i,
            _ => {
                // The SYN occupies one sequence number; without one (capture started mid-connection) the first
                // segment seen is the origin.
                let base = if seg.is_syn() { seg.seq.wrapping_add(1) } else { seg.seq };
                out.push(Building { src: seg.src, dst: seg.dst, base, data: Vec::new() });
                out.len() - 1
            }
        };
        let stream = &mut out[index];
        if seg.payload.is_empty() {
            continue;
        }
        // Signed distance, so a retransmission of bytes from before the origin is skipped, not placed 4 GiB on.
        let offset = seg.seq.wrapping_sub(stream.base) as i32;
        let Ok(offset) = usize::try_from(offset) else { continue };
        let end = offset + seg.payload.len();
        if end > MAX_STREAM {
            continue;
        }
        if stream.data.len() < end {
            stream.data.resize(end, 0);
        }
        stream.data[offset..end].copy_from_slice(&seg.payload);
    }
    out.into_iter().map(|b| TcpStream { src: b.src, dst: b.dst, data: b.data }).collect()
}

/// Whether `needle` occurs in `haystack` (an empty needle occurs everywhere).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else { return true };
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if haystack.len() - at < needle.len() {
            return false;
        }
        if &haystack[at + 1..at + needle.len()] == rest {
            return true;
        }
        from = at + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    /// An Ethernet frame carrying an IPv4 TCP segment.
    fn frame(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = (20 + 20 + payload.len()) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&src.ip().octets());
        ip.extend_from_slice(&dst.ip().octets());
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&src.port().to_be_bytes());
        tcp.extend_from_slice(&dst.port().to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend(ip);
        f.extend(tcp);
        f.extend_from_slice(payload);
        // Ethernet pads short frames: the IP total length, not the frame length, bounds the payload.
        f.resize(f.len().max(60), 0);
        f
    }

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0, 0];
        for f in frames {
            p.extend_from_slice(&[0; 8]);
            p.extend_from_slice(&(f.len() as u32).to_le_bytes());
            p.extend_from_slice(&(f.len() as u32).to_le_bytes());
            p.extend_from_slice(f);
        }
        p
    }

    #[test]
    fn rebuilds_streams_across_segments_out_of_order_and_retransmitted() {
        let (c, s) = (addr("10.244.0.11:40000"), addr("10.244.1.11:8080"));
        let file = pcap(&[
            frame(c, s, 99, SYN, b""),
            frame(s, c, 499, SYN | 0x10, b""),
            frame(c, s, 106, 0x10, b"-MARK"),
            frame(c, s, 100, 0x10, b"hello "),
            frame(c, s, 100, 0x10, b"hello "),
            frame(s, c, 500, 0x10, b"hi"),
            vec![0u8; 20], // not IPv4: counted, skipped
        ]);
        let cap = parse(&file).unwrap();
        assert_eq!(cap.frames, 7);
        assert_eq!(cap.tcp.len(), 6);
        assert_eq!(cap.tcp[0].dst, s);
        let streams = streams(&cap.tcp);
        assert_eq!(streams.len(), 2);
        assert_eq!(streams[0].data, b"hello -MARK");
        assert_eq!(streams[1].data, b"hi");
        assert!(contains(&streams[0].data, b"o -MA"));
        // Split across segments: not in the raw file as one run of bytes.
        assert!(!contains(&file, b"o -MA"));
    }

    #[test]
    fn a_new_syn_starts_a_new_stream_and_truncated_files_end_cleanly() {
        let (c, s) = (addr("10.244.0.11:40000"), addr("10.244.1.11:8080"));
        let mut file = pcap(&[frame(c, s, 0, SYN, b""), frame(c, s, 1, 0, b"one"), frame(c, s, 7, SYN, b""), frame(c, s, 8, 0, b"two")]);
        file.extend_from_slice(&[1, 2, 3]);
        let cap = parse(&file).unwrap();
        let streams = streams(&cap.tcp);
        assert_eq!(streams.iter().map(|s| s.data.as_slice()).collect::<Vec<_>>(), [b"one", b"two"]);
        assert!(parse(b"garbage, not a capture file").is_err());
    }

    #[test]
    fn byte_search() {
        assert!(contains(b"abcabd", b"abd"));
        assert!(!contains(b"abcab", b"abd"));
        assert!(contains(b"x", b""));
        assert!(!contains(b"", b"x"));
    }
}
