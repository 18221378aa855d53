//! Hand-built Ethernet/IPv4 frames for BPF_PROG_TEST_RUN, with correct
//! checksums unless a test breaks them on purpose, and knobs to make them
//! malformed (truncated headers, wrong IHL, wrong version, fragments).

const ETH_LEN: usize = 14;
/// Ethernet addresses of every built frame.
pub const ETH_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const ETH_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// RFC 1071 internet checksum of `data` (added to `initial`, folded).
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let mut sum = 0u32;
    for pair in [
        [src[0], src[1]],
        [src[2], src[3]],
        [dst[0], dst[1]],
        [dst[2], dst[3]],
    ] {
        sum += u32::from(u16::from_be_bytes(pair));
    }
    sum + u32::from(proto) + len as u32
}

/// An IPv4 frame under construction.
#[derive(Clone, Debug)]
pub struct PacketBuilder {
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    /// TCP/UDP ports, or ICMP echo identifier and sequence.
    a: u16,
    b: u16,
    payload: Vec<u8>,
    version: u8,
    options_len: usize,
    ihl_override: Option<u8>,
    frag_offset: u16,
    more_fragments: bool,
    ttl: u8,
    l4_len: Option<usize>,
    tcp_flags: u8,
    tcp_seq: u32,
    /// TCP options bytes (padded to a multiple of 4 with NOPs).
    tcp_options: Vec<u8>,
    ip_id: u16,
    /// Added to the correct L4 checksum (0: correct).
    l4_csum_delta: u16,
    /// ICMP type (default 8, echo request).
    icmp_type: u8,
}

impl PacketBuilder {
    fn new(proto: u8, src: [u8; 4], dst: [u8; 4], a: u16, b: u16) -> PacketBuilder {
        PacketBuilder {
            proto,
            src,
            dst,
            a,
            b,
            payload: Vec::new(),
            version: 4,
            options_len: 0,
            ihl_override: None,
            frag_offset: 0,
            more_fragments: false,
            ttl: 64,
            l4_len: None,
            tcp_flags: 0x02,
            tcp_seq: 1,
            tcp_options: Vec::new(),
            ip_id: 0x1234,
            l4_csum_delta: 0,
            icmp_type: 8,
        }
    }

    /// A TCP SYN.
    pub fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> PacketBuilder {
        PacketBuilder::new(6, src, dst, sport, dport)
    }

    pub fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> PacketBuilder {
        PacketBuilder::new(17, src, dst, sport, dport).payload(b"ping")
    }

    /// An ICMP echo request.
    pub fn icmp_echo(src: [u8; 4], dst: [u8; 4], id: u16, seq: u16) -> PacketBuilder {
        PacketBuilder::new(1, src, dst, id, seq).payload(b"abcdefgh")
    }

    /// An ICMP echo reply.
    pub fn icmp_echo_reply(src: [u8; 4], dst: [u8; 4], id: u16, seq: u16) -> PacketBuilder {
        let mut b = PacketBuilder::icmp_echo(src, dst, id, seq);
        b.icmp_type = 0;
        b
    }

    /// An ICMP "fragmentation needed" (type 3 code 4, next-hop MTU
    /// `mtu`) quoting `quoted` (an IPv4 frame: its IP header and the first
    /// 8 bytes after it, as RFC 792 asks).
    pub fn frag_needed(src: [u8; 4], dst: [u8; 4], mtu: u16, quoted: &[u8]) -> PacketBuilder {
        let ip = quoted.get(ETH_LEN..).unwrap_or_default();
        let ihl = usize::from(ip.first().copied().unwrap_or(0x45) & 0x0f) * 4;
        let quote = &ip[..ip.len().min(ihl + 8)];
        let mut b = PacketBuilder::new(1, src, dst, 0, mtu).payload(quote);
        b.icmp_type = 3;
        b
    }

    /// An ARP request (a non-IP frame).
    pub fn arp() -> Vec<u8> {
        let mut f = Vec::with_capacity(42);
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&ETH_SRC);
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&ETH_SRC);
        f.extend_from_slice(&[10, 0, 0, 1]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 0, 2]);
        f
    }

    #[must_use]
    pub fn payload(mut self, payload: &[u8]) -> PacketBuilder {
        self.payload = payload.to_vec();
        self
    }

    /// Adds `len` bytes (a multiple of 4) of NOP IP options.
    #[must_use]
    pub fn ip_options(mut self, len: usize) -> PacketBuilder {
        assert!(
            len.is_multiple_of(4) && len <= 40,
            "IP options come in words, at most 40 bytes"
        );
        self.options_len = len;
        self
    }

    /// Writes `words` into the IHL field without changing the layout.
    #[must_use]
    pub fn ihl(mut self, words: u8) -> PacketBuilder {
        self.ihl_override = Some(words);
        self
    }

    #[must_use]
    pub fn version(mut self, version: u8) -> PacketBuilder {
        self.version = version;
        self
    }

    /// Fragment offset in 8-byte units (non-zero: a non-first fragment).
    #[must_use]
    pub fn fragment_offset(mut self, units: u16) -> PacketBuilder {
        self.frag_offset = units;
        self
    }

    /// Sets the MF flag (with offset 0: a first fragment, whole L4 header).
    #[must_use]
    pub fn more_fragments(mut self) -> PacketBuilder {
        self.more_fragments = true;
        self
    }

    /// Time to live (default 64).
    #[must_use]
    pub fn ttl(mut self, ttl: u8) -> PacketBuilder {
        self.ttl = ttl;
        self
    }

    /// TCP flags byte (default SYN).
    #[must_use]
    pub fn tcp_flags(mut self, flags: u8) -> PacketBuilder {
        self.tcp_flags = flags;
        self
    }

    /// The TCP sequence number (default 1).
    #[must_use]
    pub fn seq(mut self, seq: u32) -> PacketBuilder {
        self.tcp_seq = seq;
        self
    }

    /// TCP options, e.g. `[3, 3, 7]` for window scale 7 (NOP-padded).
    #[must_use]
    pub fn tcp_options(mut self, options: &[u8]) -> PacketBuilder {
        self.tcp_options = options.to_vec();
        while !self.tcp_options.len().is_multiple_of(4) {
            self.tcp_options.push(1);
        }
        self
    }

    /// The IP identification field (default 0x1234): what ties fragments.
    #[must_use]
    pub fn ip_id(mut self, id: u16) -> PacketBuilder {
        self.ip_id = id;
        self
    }

    /// A wrong TCP/UDP checksum (the correct one plus 1).
    #[must_use]
    pub fn bad_l4_checksum(mut self) -> PacketBuilder {
        self.l4_csum_delta = 1;
        self
    }

    /// Keeps only the first `len` bytes after the IP header.
    #[must_use]
    pub fn truncate_l4(mut self, len: usize) -> PacketBuilder {
        self.l4_len = Some(len);
        self
    }

    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.proto {
            6 => {
                l4.extend_from_slice(&self.a.to_be_bytes());
                l4.extend_from_slice(&self.b.to_be_bytes());
                l4.extend_from_slice(&self.tcp_seq.to_be_bytes());
                l4.extend_from_slice(&0u32.to_be_bytes()); // ack
                let doff = (20 + self.tcp_options.len()) / 4;
                l4.extend_from_slice(&[(doff as u8) << 4, self.tcp_flags]);
                l4.extend_from_slice(&64240u16.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                l4.extend_from_slice(&self.tcp_options);
                l4.extend_from_slice(&self.payload);
                let c = checksum(&l4, pseudo_header_sum(self.src, self.dst, 6, l4.len()));
                let c = c.wrapping_add(self.l4_csum_delta);
                l4[16..18].copy_from_slice(&c.to_be_bytes());
            }
            17 => {
                let len = 8 + self.payload.len();
                l4.extend_from_slice(&self.a.to_be_bytes());
                l4.extend_from_slice(&self.b.to_be_bytes());
                l4.extend_from_slice(&(len as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                l4.extend_from_slice(&self.payload);
                let c = checksum(&l4, pseudo_header_sum(self.src, self.dst, 17, len));
                let c = if c == 0 { 0xffff } else { c };
                let c = c.wrapping_add(self.l4_csum_delta);
                l4[6..8].copy_from_slice(&c.to_be_bytes());
            }
            1 => {
                let code = if self.icmp_type == 3 { 4 } else { 0 };
                l4.extend_from_slice(&[self.icmp_type, code, 0, 0]);
                l4.extend_from_slice(&self.a.to_be_bytes());
                l4.extend_from_slice(&self.b.to_be_bytes());
                l4.extend_from_slice(&self.payload);
                let c = checksum(&l4, 0);
                l4[2..4].copy_from_slice(&c.to_be_bytes());
            }
            _ => l4.extend_from_slice(&self.payload),
        }
        if let Some(len) = self.l4_len {
            l4.truncate(len);
        }
        l4
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4();
        let ihl_bytes = 20 + self.options_len;
        let mut ip = Vec::with_capacity(ihl_bytes);
        let ihl_field = self.ihl_override.unwrap_or((ihl_bytes / 4) as u8);
        ip.push((self.version << 4) | (ihl_field & 0x0f));
        ip.push(0);
        ip.extend_from_slice(&((ihl_bytes + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&self.ip_id.to_be_bytes());
        let mf = if self.more_fragments { 0x2000 } else { 0 };
        ip.extend_from_slice(&((self.frag_offset & 0x1fff) | mf).to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src);
        ip.extend_from_slice(&self.dst);
        ip.resize(ihl_bytes, 1); // NOP options
        let c = checksum(&ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut frame = Vec::with_capacity(ETH_LEN + ip.len() + l4.len());
        frame.extend_from_slice(&ETH_DST);
        frame.extend_from_slice(&ETH_SRC);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }

    /// The whole frame cut to `len` bytes.
    pub fn build_truncated(&self, len: usize) -> Vec<u8> {
        let mut f = self.build();
        f.truncate(len);
        f
    }
}

/// What a test reads back from a frame the program returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// TCP/UDP ports, or the ICMP echo identifier in both.
    pub sport: u16,
    pub dport: u16,
    /// The IP header checksum verifies.
    pub ip_ok: bool,
    /// The L4 checksum verifies (a zero UDP checksum counts as valid).
    pub l4_ok: bool,
    pub ttl: u8,
    /// Ethernet destination and source.
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    /// For an ICMP error: the quoted packet's addresses and ports (the
    /// echo identifier in both for a quoted echo).
    pub quoted: Option<([u8; 4], [u8; 4], u16, u16)>,
}

/// Parses an Ethernet/IPv4 frame with a whole L4 header.
pub fn parse(frame: &[u8]) -> Option<Parsed> {
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let proto = *ip.get(9)?;
    let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
    let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
    let l4 = ip.get(ihl..total)?;
    let word =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*l4.get(i)?, *l4.get(i + 1)?])) };
    let (sport, dport, l4_ok) = match proto {
        6 => (
            word(0)?,
            word(2)?,
            checksum(l4, pseudo_header_sum(src, dst, 6, l4.len())) == 0,
        ),
        17 => (
            word(0)?,
            word(2)?,
            word(6)? == 0 || checksum(l4, pseudo_header_sum(src, dst, 17, l4.len())) == 0,
        ),
        1 => (word(4)?, word(4)?, checksum(l4, 0) == 0),
        _ => return None,
    };
    Some(Parsed {
        src,
        dst,
        sport,
        dport,
        ip_ok: checksum(ip.get(..ihl)?, 0) == 0,
        l4_ok,
        ttl: *ip.get(8)?,
        eth_dst: frame.get(..6)?.try_into().ok()?,
        eth_src: frame.get(6..12)?.try_into().ok()?,
        quoted: if proto == 1 && matches!(l4.first(), Some(3 | 11 | 12)) {
            quoted(l4.get(8..)?)
        } else {
            None
        },
    })
}

/// Addresses and ports of the IPv4 packet an ICMP error quotes.
fn quoted(q: &[u8]) -> Option<([u8; 4], [u8; 4], u16, u16)> {
    let ihl = usize::from(q.first()? & 0x0f) * 4;
    let l4 = q.get(ihl..)?;
    let word =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*l4.get(i)?, *l4.get(i + 1)?])) };
    let (a, b) = if *q.get(9)? == 1 {
        (word(4)?, word(4)?)
    } else {
        (word(0)?, word(2)?)
    };
    Some((
        q.get(12..16)?.try_into().ok()?,
        q.get(16..20)?.try_into().ok()?,
        a,
        b,
    ))
}

/// An IPv6 frame: Ethernet, the fixed header, `ext` extension headers of
/// 8 bytes each (their next-header values, in order; e.g. 60 for
/// destination options), then `l4` under protocol `proto`. Checksums are
/// not filled in (for programs that only classify).
pub fn ipv6_frame(src: [u8; 16], dst: [u8; 16], ext: &[u8], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&ETH_DST);
    f.extend_from_slice(&ETH_SRC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    let payload = ext.len() * 8 + l4.len();
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload as u16).to_be_bytes());
    f.push(ext.first().copied().unwrap_or(proto));
    f.push(64);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    for (i, _) in ext.iter().enumerate() {
        let next = ext.get(i + 1).copied().unwrap_or(proto);
        f.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    f.extend_from_slice(l4);
    f
}

/// A UDP header (no payload, checksum zero) for [`ipv6_frame`].
pub fn udp_header(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&8u16.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let f = PacketBuilder::tcp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2).build();
        assert_eq!(checksum(&f[14..34], 0), 0, "ip header checksum");
        let l4 = &f[34..];
        assert_eq!(
            checksum(
                l4,
                pseudo_header_sum([10, 0, 0, 1], [10, 0, 0, 2], 6, l4.len())
            ),
            0
        );
        let f = PacketBuilder::udp([1, 2, 3, 4], [5, 6, 7, 8], 9, 10).build();
        let l4 = &f[34..];
        assert_eq!(
            checksum(
                l4,
                pseudo_header_sum([1, 2, 3, 4], [5, 6, 7, 8], 17, l4.len())
            ),
            0
        );
    }

    #[test]
    fn options_and_truncation_shape_the_frame() {
        let b = PacketBuilder::tcp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        assert_eq!(b.build().len(), 14 + 20 + 20);
        assert_eq!(b.clone().ip_options(8).build().len(), 14 + 28 + 20);
        assert_eq!(b.clone().ip_options(8).build()[14] & 0x0f, 7);
        assert_eq!(b.clone().truncate_l4(10).build().len(), 14 + 20 + 10);
        assert_eq!(b.clone().ihl(3).build()[14], 0x43);
        assert_eq!(b.build_truncated(24).len(), 24);
        let f = b.clone().more_fragments().ttl(1).build();
        assert_eq!(&f[20..23], &[0x20, 0x00, 1], "MF, offset 0, TTL 1");
        let p = parse(&f).unwrap();
        assert!(p.ip_ok);
        assert_eq!((p.ttl, p.eth_dst, p.eth_src), (1, ETH_DST, ETH_SRC));
    }
}
