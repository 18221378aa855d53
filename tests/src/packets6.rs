//! Hand-built Ethernet/IPv6 frames for BPF_PROG_TEST_RUN, with correct
//! upper-layer checksums (IPv6 has no header checksum; ICMPv6's covers the
//! pseudo-header, as TCP's and UDP's do), and a parser that checks them
//! after a program rewrote the frame.

use crate::packets::{checksum, ETH_DST, ETH_SRC};

const ETH_LEN: usize = 14;
const IP6_LEN: usize = 40;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMPV6: u8 = 58;

fn pseudo_sum(src: &[u8; 16], dst: &[u8; 16], proto: u8, len: usize) -> u32 {
    let mut sum = 0u32;
    for c in src.chunks(2).chain(dst.chunks(2)) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    sum + len as u32 + u32::from(proto)
}

/// An IPv6 frame carrying `l4` (whose checksum field, at `csum_at` within
/// it, is filled in).
pub fn frame(src: [u8; 16], dst: [u8; 16], proto: u8, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
    l4[csum_at] = 0;
    l4[csum_at + 1] = 0;
    let c = checksum(&l4, pseudo_sum(&src, &dst, proto, l4.len()));
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&ETH_DST);
    f.extend_from_slice(&ETH_SRC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.push(proto);
    f.push(64);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&l4);
    f
}

/// A TCP segment (20-byte header, no options) with `flags`.
pub fn tcp(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&1000u32.to_be_bytes());
    if flags & 0x10 != 0 {
        h[8..12].copy_from_slice(&2000u32.to_be_bytes());
    }
    h[12] = 5 << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
    frame(src, dst, TCP, h, 16)
}

/// A UDP datagram with a 4-byte payload.
pub fn udp(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&12u16.to_be_bytes());
    h[8..12].copy_from_slice(b"ping");
    frame(src, dst, UDP, h, 6)
}

/// An ICMPv6 echo request (type 128) or reply (129) with identifier `id`.
pub fn echo(src: [u8; 16], dst: [u8; 16], icmp_type: u8, id: u16) -> Vec<u8> {
    let mut h = vec![icmp_type, 0, 0, 0, 0, 0, 0, 1];
    h[4..6].copy_from_slice(&id.to_be_bytes());
    frame(src, dst, ICMPV6, h, 2)
}

/// An ICMPv6 Packet Too Big (MTU 1280) quoting `quoted` (an IPv6 frame:
/// its Ethernet header is left out of the quote).
pub fn packet_too_big(src: [u8; 16], dst: [u8; 16], quoted: &[u8]) -> Vec<u8> {
    let mut h = vec![2, 0, 0, 0];
    h.extend_from_slice(&1280u32.to_be_bytes());
    h.extend_from_slice(&quoted[ETH_LEN..]);
    frame(src, dst, ICMPV6, h, 2)
}

/// An IPv6 frame under construction, with the knobs of
/// [`crate::packets::PacketBuilder`] that mean something for IPv6.
#[derive(Clone, Debug)]
pub struct Packet6Builder {
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    /// TCP/UDP ports, or the echo identifier and sequence; for an ICMPv6
    /// error, 0 and its MTU.
    a: u16,
    b: u16,
    payload: Vec<u8>,
    hop_limit: u8,
    icmp_type: u8,
    tcp_flags: u8,
    tcp_seq: u32,
    tcp_options: Vec<u8>,
    l4_csum_delta: u16,
    l4_len: Option<usize>,
}

impl Packet6Builder {
    fn new(proto: u8, src: [u8; 16], dst: [u8; 16], a: u16, b: u16) -> Packet6Builder {
        Packet6Builder {
            proto,
            src,
            dst,
            a,
            b,
            payload: Vec::new(),
            hop_limit: 64,
            icmp_type: 128,
            tcp_flags: 0x02,
            tcp_seq: 1,
            tcp_options: Vec::new(),
            l4_csum_delta: 0,
            l4_len: None,
        }
    }

    /// A TCP SYN.
    pub fn tcp(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Packet6Builder {
        Packet6Builder::new(TCP, src, dst, sport, dport)
    }

    /// A UDP datagram carrying `ping`.
    pub fn udp(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Packet6Builder {
        Packet6Builder::new(UDP, src, dst, sport, dport).payload(b"ping")
    }

    /// An ICMPv6 echo request (`reply`: an echo reply).
    pub fn echo(src: [u8; 16], dst: [u8; 16], id: u16, seq: u16, reply: bool) -> Packet6Builder {
        let mut b = Packet6Builder::new(ICMPV6, src, dst, id, seq).payload(b"abcdefgh");
        b.icmp_type = if reply { 129 } else { 128 };
        b
    }

    /// A Packet Too Big with `mtu` quoting `quoted` (an IPv6 frame, its
    /// Ethernet header left out).
    pub fn packet_too_big(src: [u8; 16], dst: [u8; 16], mtu: u16, quoted: &[u8]) -> Packet6Builder {
        let q = quoted.get(ETH_LEN..).unwrap_or_default();
        let mut b = Packet6Builder::new(ICMPV6, src, dst, 0, mtu).payload(q);
        b.icmp_type = 2;
        b
    }

    #[must_use]
    pub fn payload(mut self, payload: &[u8]) -> Packet6Builder {
        self.payload = payload.to_vec();
        self
    }

    #[must_use]
    pub fn hop_limit(mut self, hops: u8) -> Packet6Builder {
        self.hop_limit = hops;
        self
    }

    #[must_use]
    pub fn tcp_flags(mut self, flags: u8) -> Packet6Builder {
        self.tcp_flags = flags;
        self
    }

    #[must_use]
    pub fn seq(mut self, seq: u32) -> Packet6Builder {
        self.tcp_seq = seq;
        self
    }

    /// TCP options (NOP-padded to a multiple of 4).
    #[must_use]
    pub fn tcp_options(mut self, options: &[u8]) -> Packet6Builder {
        self.tcp_options = options.to_vec();
        while !self.tcp_options.len().is_multiple_of(4) {
            self.tcp_options.push(1);
        }
        self
    }

    /// A wrong upper-layer checksum (the correct one plus 1).
    #[must_use]
    pub fn bad_l4_checksum(mut self) -> Packet6Builder {
        self.l4_csum_delta = 1;
        self
    }

    /// Keeps only the first `len` bytes after the IPv6 header.
    #[must_use]
    pub fn truncate_l4(mut self, len: usize) -> Packet6Builder {
        self.l4_len = Some(len);
        self
    }

    fn l4(&self) -> (Vec<u8>, usize) {
        let mut l4 = Vec::new();
        let csum_at = match self.proto {
            TCP => {
                l4.extend_from_slice(&self.a.to_be_bytes());
                l4.extend_from_slice(&self.b.to_be_bytes());
                l4.extend_from_slice(&self.tcp_seq.to_be_bytes());
                l4.extend_from_slice(&0u32.to_be_bytes());
                let doff = (20 + self.tcp_options.len()) / 4;
                l4.extend_from_slice(&[(doff as u8) << 4, self.tcp_flags]);
                l4.extend_from_slice(&64240u16.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 0]);
                l4.extend_from_slice(&self.tcp_options);
                16
            }
            UDP => {
                l4.extend_from_slice(&self.a.to_be_bytes());
                l4.extend_from_slice(&self.b.to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                6
            }
            _ => {
                l4.extend_from_slice(&[self.icmp_type, 0, 0, 0]);
                l4.extend_from_slice(&self.a.to_be_bytes());
                l4.extend_from_slice(&self.b.to_be_bytes());
                2
            }
        };
        l4.extend_from_slice(&self.payload);
        (l4, csum_at)
    }

    pub fn build(&self) -> Vec<u8> {
        let (l4, csum_at) = self.l4();
        let mut f = frame(self.src, self.dst, self.proto, l4, csum_at);
        f[ETH_LEN + 7] = self.hop_limit;
        let at = ETH_LEN + IP6_LEN + csum_at;
        let c = u16::from_be_bytes([f[at], f[at + 1]]).wrapping_add(self.l4_csum_delta);
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        if let Some(len) = self.l4_len {
            f.truncate(ETH_LEN + IP6_LEN + len);
            f[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&(len as u16).to_be_bytes());
        }
        f
    }
}

/// The fields a test checks in a (rewritten) IPv6 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    /// Ports (or the echo identifier as `sport` for requests, `dport` for
    /// replies).
    pub sport: u16,
    pub dport: u16,
    /// The upper-layer checksum verifies.
    pub l4_ok: bool,
    /// The hop limit.
    pub hop_limit: u8,
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    /// For an ICMPv6 error: the quoted packet's addresses and ports.
    pub quoted: Option<([u8; 16], [u8; 16], u16, u16)>,
}

/// Parses an IPv6 frame without extension headers.
pub fn parse(f: &[u8]) -> Option<Parsed6> {
    if f.len() < ETH_LEN + IP6_LEN || f[12..14] != [0x86, 0xdd] {
        return None;
    }
    let ip = &f[ETH_LEN..];
    let proto = ip[6];
    let src: [u8; 16] = ip[8..24].try_into().ok()?;
    let dst: [u8; 16] = ip[24..40].try_into().ok()?;
    let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let l4 = ip.get(IP6_LEN..IP6_LEN + len)?;
    let l4_ok = checksum(l4, pseudo_sum(&src, &dst, proto, l4.len())) == 0;
    let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    let (sport, dport) = match proto {
        TCP | UDP => (port(0), port(2)),
        ICMPV6 if l4[0] == 128 => (port(4), 0),
        ICMPV6 if l4[0] == 129 => (0, port(4)),
        _ => (0, 0),
    };
    let quoted = (proto == ICMPV6 && l4[0] < 128 && l4.len() >= 8 + IP6_LEN + 4).then(|| {
        let q = &l4[8..];
        let qs: [u8; 16] = q[8..24].try_into().unwrap_or_default();
        let qd: [u8; 16] = q[24..40].try_into().unwrap_or_default();
        let ql4 = &q[IP6_LEN..];
        let (a, b) = if q[6] == ICMPV6 {
            (u16::from_be_bytes([ql4[4], ql4[5]]), 0)
        } else {
            (
                u16::from_be_bytes([ql4[0], ql4[1]]),
                u16::from_be_bytes([ql4[2], ql4[3]]),
            )
        };
        (qs, qd, a, b)
    });
    Some(Parsed6 {
        src,
        dst,
        proto,
        sport,
        dport,
        l4_ok,
        hop_limit: ip[7],
        eth_dst: f[..6].try_into().ok()?,
        eth_src: f[6..12].try_into().ok()?,
        quoted,
    })
}
