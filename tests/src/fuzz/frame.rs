//! Frames of either IP family: a builder for the generator (VLAN tags, IPv4
//! options, IPv6 extension headers, fragments, any L4 bytes) and a parser
//! that sees a frame as the programs' parsers do (malformed, not IP, or the
//! offsets of every field a NAT may touch), with checksum verification and
//! the patching a model's predicted rewrite needs.

use std::net::IpAddr;

use crate::packets::checksum;

pub const ETH_LEN: usize = 14;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
/// IPv6 extension headers the programs walk (RFC 8200 section 4).
pub const EXT_HEADERS: [u8; 5] = [0, 43, 44, 51, 60];
/// How many of them the programs' parser follows (`MAX_EXT_HDRS`).
pub const MAX_EXT: usize = 4;

/// The layers of a frame to build.
#[derive(Clone, Debug)]
pub struct Spec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// The whole L4 header and payload, checksum field included (filled in
    /// by [`Spec::build`] when `csum_at` is set).
    pub l4: Vec<u8>,
    pub csum_at: Option<usize>,
    pub ttl: u8,
    /// IPv4: bytes of NOP options (a multiple of 4, at most 40).
    pub ip_options: usize,
    /// IPv6: the next-header values of extension headers, in order.
    pub ext: Vec<u8>,
    /// Fragment offset (8-byte units) and the more-fragments flag.
    pub frag: Option<(u16, bool)>,
    pub vlan: Option<u16>,
}

fn pseudo_sum(src: &IpAddr, dst: &IpAddr, proto: u8, len: usize) -> u32 {
    let mut sum = u32::from(proto) + len as u32;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            add(&s.octets());
            add(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            add(&s.octets());
            add(&d.octets());
        }
        _ => {}
    }
    sum
}

/// Whether the L4 checksum of `proto` covers the pseudo-header.
fn pseudo(proto: u8) -> bool {
    proto != ICMP
}

impl Spec {
    pub fn build(&self) -> Vec<u8> {
        let mut l4 = self.l4.clone();
        if let Some(at) = self.csum_at.filter(|at| at + 2 <= l4.len()) {
            l4[at] = 0;
            l4[at + 1] = 0;
            let init = if pseudo(self.proto) {
                pseudo_sum(&self.src, &self.dst, self.proto, l4.len())
            } else {
                0
            };
            let mut c = checksum(&l4, init);
            if self.proto == UDP && c == 0 {
                c = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        let mut f = Vec::with_capacity(ETH_LEN + 80 + l4.len());
        f.extend_from_slice(&crate::packets::ETH_DST);
        f.extend_from_slice(&crate::packets::ETH_SRC);
        if let Some(tag) = self.vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&tag.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&[0x08, 0x00]);
                let hl = 20 + self.ip_options;
                let start = f.len();
                f.push(0x40 | (hl / 4) as u8);
                f.push(0);
                f.extend_from_slice(&((hl + l4.len()) as u16).to_be_bytes());
                f.extend_from_slice(&0x1234u16.to_be_bytes());
                let (off, mf) = self.frag.unwrap_or((0, false));
                let frag = (off & 0x1fff) | if mf { 0x2000 } else { 0 };
                f.extend_from_slice(&frag.to_be_bytes());
                f.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.resize(start + hl, 1);
                let c = checksum(&f[start..], 0);
                f[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
            }
            (s, d) => {
                let (s, d) = (v6(s), v6(d));
                f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
                let mut exts = self.ext.clone();
                if let Some((off, mf)) = self.frag {
                    if !exts.contains(&44) {
                        exts.push(44);
                    }
                    let _ = (off, mf);
                }
                let payload = exts.len() * 8 + l4.len();
                f.extend_from_slice(&(payload as u16).to_be_bytes());
                f.push(exts.first().copied().unwrap_or(self.proto));
                f.push(self.ttl);
                f.extend_from_slice(&s);
                f.extend_from_slice(&d);
                for (i, &h) in exts.iter().enumerate() {
                    let next = exts.get(i + 1).copied().unwrap_or(self.proto);
                    if h == 44 {
                        let (off, mf) = self.frag.unwrap_or((0, false));
                        let fo = (off << 3) | u16::from(mf);
                        f.extend_from_slice(&[next, 0]);
                        f.extend_from_slice(&fo.to_be_bytes());
                        f.extend_from_slice(&[0, 0, 0x12, 0x34]);
                    } else if h == 51 {
                        // AH length is in 4-byte units minus 2: 8 bytes.
                        f.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 1]);
                    } else {
                        f.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                    }
                }
            }
        }
        f.extend_from_slice(&l4);
        f
    }
}

fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// A frame as the programs see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 or IPv6 by its (outer) ethertype: never touched.
    NotIp,
    /// The programs' parser refuses it (a drop, or passed untouched).
    Malformed,
    Ip(View),
}

/// Offsets and fields of a well-formed IP frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub v6: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub l4_off: usize,
    /// IPv4 header length (0 for IPv6).
    pub ihl: usize,
    pub later_fragment: bool,
    pub more_fragments: bool,
    /// Ports as conntrack keys them (echo identifier: `sport` for requests,
    /// `dport` for replies; zero otherwise).
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: Option<u8>,
    pub tcp_flags: u8,
    /// More IPv6 extension headers than the programs walk.
    pub ext_unknown: bool,
    /// Where the IP datagram ends by its length field (may exceed the frame).
    pub ip_end: usize,
    /// UDP over IPv6 with a 4- to 7-byte header: the programs' IPv6 parser
    /// reads only the ports, so it takes the packet for a datagram.
    pub l4_short: bool,
}

impl View {
    pub fn is_fragment(&self) -> bool {
        self.later_fragment || self.more_fragments
    }

    /// An ICMP(v6) error (it quotes another packet).
    pub fn is_icmp_error(&self) -> bool {
        match self.icmp_type {
            Some(t) if self.v6 => t < 128,
            Some(t) => matches!(t, 3 | 4 | 5 | 11 | 12),
            None => false,
        }
    }

    /// The echo request type of the family (what masquerade translates).
    pub fn is_echo_request(&self) -> bool {
        self.icmp_type == Some(if self.v6 { 128 } else { 8 })
    }

    fn csum_off(&self) -> Option<usize> {
        if self.later_fragment {
            return None;
        }
        match self.proto {
            TCP => Some(self.l4_off + 16),
            UDP => Some(self.l4_off + 6),
            ICMP | ICMPV6 => Some(self.l4_off + 2),
            _ => None,
        }
    }

    /// Where a side's "port" lives (the echo identifier for either side).
    fn port_off(&self, src: bool) -> Option<usize> {
        if self.later_fragment {
            return None;
        }
        match self.proto {
            TCP | UDP => Some(self.l4_off + if src { 0 } else { 2 }),
            ICMP | ICMPV6 if self.is_echo() => Some(self.l4_off + 4),
            _ => None,
        }
    }

    /// An echo request or reply (whose identifier stands in for a port).
    pub fn is_echo(&self) -> bool {
        let (req, rep) = if self.v6 { (128, 129) } else { (8, 0) };
        self.icmp_type == Some(req) || self.icmp_type == Some(rep)
    }
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

/// Parses `f` as the programs do (lengths by the frame's end, not by the IP
/// length field; no VLAN support: a tagged frame is not IP to them).
pub fn parse(f: &[u8]) -> Parsed {
    match be16(f, 12) {
        Some(0x0800) => parse4(f).map_or(Parsed::Malformed, Parsed::Ip),
        Some(0x86dd) => parse6(f).map_or(Parsed::Malformed, Parsed::Ip),
        Some(_) => Parsed::NotIp,
        // Shorter than an Ethernet header: the programs drop it.
        None => Parsed::Malformed,
    }
}

fn l4_fields(f: &[u8], v: &mut View) -> Option<()> {
    let o = v.l4_off;
    if v.later_fragment {
        return Some(());
    }
    match v.proto {
        TCP => {
            f.get(o..o + 20)?;
            v.sport = be16(f, o)?;
            v.dport = be16(f, o + 2)?;
            v.tcp_flags = f[o + 13];
        }
        UDP => {
            let need = if v.v6 { 4 } else { 8 };
            f.get(o..o + need)?;
            v.l4_short = f.len() < o + 8;
            v.sport = be16(f, o)?;
            v.dport = be16(f, o + 2)?;
        }
        ICMP | ICMPV6 if v.v6 == (v.proto == ICMPV6) => {
            f.get(o..o + 8)?;
            let t = f[o];
            v.icmp_type = Some(t);
            let id = be16(f, o + 4)?;
            let (req, rep) = if v.v6 { (128, 129) } else { (8, 0) };
            if t == req {
                v.sport = id;
            } else if t == rep {
                v.dport = id;
            }
        }
        _ => {}
    }
    Some(())
}

fn parse4(f: &[u8]) -> Option<View> {
    let ip = f.get(ETH_LEN..ETH_LEN + 20)?;
    if ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 || ETH_LEN + ihl > f.len() {
        return None;
    }
    let frags = u16::from_be_bytes([ip[6], ip[7]]);
    let mut v = View {
        v6: false,
        src: IpAddr::from(<[u8; 4]>::try_from(&ip[12..16]).ok()?),
        dst: IpAddr::from(<[u8; 4]>::try_from(&ip[16..20]).ok()?),
        proto: ip[9],
        l4_off: ETH_LEN + ihl,
        ihl,
        later_fragment: frags & 0x1fff != 0,
        more_fragments: frags & 0x2000 != 0,
        sport: 0,
        dport: 0,
        icmp_type: None,
        tcp_flags: 0,
        ext_unknown: false,
        ip_end: ETH_LEN + usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        l4_short: false,
    };
    l4_fields(f, &mut v)?;
    Some(v)
}

fn parse6(f: &[u8]) -> Option<View> {
    let ip = f.get(ETH_LEN..ETH_LEN + 40)?;
    if ip[0] >> 4 != 6 {
        return None;
    }
    let mut next = ip[6];
    let mut off = ETH_LEN + 40;
    let (mut later, mut more) = (false, false);
    let mut walked = 0;
    while EXT_HEADERS.contains(&next) && walked < MAX_EXT {
        let h = f.get(off..off + 4)?;
        let len = match next {
            44 => {
                let fo = u16::from_be_bytes([h[2], h[3]]);
                later = fo & 0xfff8 != 0;
                more = fo & 1 != 0;
                8
            }
            51 => (usize::from(h[1]) + 2) * 4,
            _ => (usize::from(h[1]) + 1) * 8,
        };
        off += len;
        next = h[0];
        walked += 1;
    }
    let mut v = View {
        v6: true,
        src: IpAddr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?),
        dst: IpAddr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?),
        proto: next,
        l4_off: off,
        ihl: 0,
        later_fragment: later,
        more_fragments: more,
        sport: 0,
        dport: 0,
        icmp_type: None,
        tcp_flags: 0,
        ext_unknown: EXT_HEADERS.contains(&next),
        ip_end: ETH_LEN + 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])),
        l4_short: false,
    };
    if !v.ext_unknown {
        l4_fields(f, &mut v)?;
    }
    Some(v)
}

/// Whether the IPv4 header checksum verifies (None for IPv6).
pub fn ip_csum_ok(f: &[u8], v: &View) -> Option<bool> {
    if v.v6 {
        return None;
    }
    Some(checksum(f.get(ETH_LEN..ETH_LEN + v.ihl)?, 0) == 0)
}

/// Whether the L4 checksum verifies; None when it cannot be checked (a
/// fragment, a datagram longer than the frame, a protocol without one, a
/// zero "no checksum" UDP checksum over IPv4).
pub fn l4_csum_ok(f: &[u8], v: &View) -> Option<bool> {
    if v.is_fragment() || v.ext_unknown || v.ip_end != f.len() {
        return None;
    }
    let l4 = f.get(v.l4_off..v.ip_end)?;
    let min = match v.proto {
        TCP => 20,
        UDP | ICMP | ICMPV6 => 8,
        _ => return None,
    };
    if l4.len() < min || (v.proto == ICMP && v.v6) || (v.proto == ICMPV6 && !v.v6) {
        return None;
    }
    if v.proto == UDP && !v.v6 && be16(l4, 6) == Some(0) {
        return None;
    }
    let init = if pseudo(v.proto) {
        pseudo_sum(&v.src, &v.dst, v.proto, l4.len())
    } else {
        0
    };
    Some(checksum(l4, init) == 0)
}

/// Writes `addr` and `port` into one side of `f` (as `v` locates them).
pub fn patch(f: &mut [u8], v: &View, src: bool, addr: IpAddr, port: Option<u16>) {
    let at = ETH_LEN
        + if v.v6 {
            if src {
                8
            } else {
                24
            }
        } else if src {
            12
        } else {
            16
        };
    match addr {
        IpAddr::V4(a) if !v.v6 => f[at..at + 4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) if v.v6 => f[at..at + 16].copy_from_slice(&a.octets()),
        _ => {}
    }
    if let (Some(p), Some(off)) = (port, v.port_off(src)) {
        if off + 2 <= f.len() {
            f[off..off + 2].copy_from_slice(&p.to_be_bytes());
        }
    }
}

/// Byte positions a correct rewrite may change besides addresses and
/// ports: the IPv4 header checksum and the L4 checksum.
pub fn checksum_positions(v: &View) -> Vec<usize> {
    let mut out = Vec::new();
    if !v.v6 {
        out.extend([ETH_LEN + 10, ETH_LEN + 11]);
    }
    if let Some(c) = v.csum_off() {
        out.extend([c, c + 1]);
    }
    out
}

/// Byte positions a forwarding redirect may change: the Ethernet
/// addresses and the TTL / hop limit (and the IPv4 checksum with it).
pub fn forward_positions(v: &View) -> Vec<usize> {
    let mut out: Vec<usize> = (0..12).collect();
    out.push(ETH_LEN + if v.v6 { 7 } else { 8 });
    out
}

/// The first position where `got` differs from `want` outside `masked`.
pub fn first_difference(want: &[u8], got: &[u8], masked: &[usize]) -> Option<usize> {
    if want.len() != got.len() {
        return Some(want.len().min(got.len()));
    }
    (0..want.len()).find(|i| want[*i] != got[*i] && !masked.contains(i))
}

pub fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn spec(src: IpAddr, dst: IpAddr, proto: u8, l4: Vec<u8>, csum_at: usize) -> Spec {
        Spec {
            src,
            dst,
            proto,
            l4,
            csum_at: Some(csum_at),
            ttl: 64,
            ip_options: 0,
            ext: Vec::new(),
            frag: None,
            vlan: None,
        }
    }

    #[test]
    fn built_frames_parse_with_valid_checksums() {
        let udp = vec![0x9c, 0x40, 0x00, 0x35, 0, 12, 0, 0, 1, 2, 3, 4];
        let v4 = spec(
            Ipv4Addr::new(10, 0, 0, 1).into(),
            Ipv4Addr::new(10, 0, 0, 2).into(),
            UDP,
            udp.clone(),
            6,
        );
        let mut s = v4.clone();
        s.ip_options = 8;
        for f in [v4.build(), s.build()] {
            let Parsed::Ip(v) = parse(&f) else {
                panic!("not parsed: {}", hex(&f))
            };
            assert_eq!((v.sport, v.dport, v.proto), (40000, 53, UDP));
            assert_eq!(ip_csum_ok(&f, &v), Some(true));
            assert_eq!(l4_csum_ok(&f, &v), Some(true));
        }
        let mut v6 = spec(
            Ipv6Addr::LOCALHOST.into(),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).into(),
            UDP,
            udp,
            6,
        );
        v6.ext = vec![0, 60, 51];
        let f = v6.build();
        let Parsed::Ip(v) = parse(&f) else {
            panic!("not parsed: {}", hex(&f))
        };
        assert_eq!((v.sport, v.l4_off), (40000, ETH_LEN + 40 + 24));
        assert_eq!(l4_csum_ok(&f, &v), Some(true));
        v6.ext = vec![0; MAX_EXT + 1];
        let Parsed::Ip(v) = parse(&v6.build()) else {
            panic!("not parsed")
        };
        assert!(
            v.ext_unknown,
            "more extension headers than the programs walk"
        );
    }

    #[test]
    fn malformed_and_foreign_frames_are_told_apart() {
        let f = spec(
            Ipv4Addr::new(10, 0, 0, 1).into(),
            Ipv4Addr::new(10, 0, 0, 2).into(),
            TCP,
            vec![0; 20],
            16,
        )
        .build();
        let mut bad_ihl = f.clone();
        bad_ihl[ETH_LEN] = 0x43;
        assert_eq!(parse(&bad_ihl), Parsed::Malformed);
        assert_eq!(parse(&f[..ETH_LEN + 30]), Parsed::Malformed, "TCP cut");
        let mut vlan = f.clone();
        vlan[12] = 0x81;
        assert_eq!(parse(&vlan), Parsed::NotIp);
        assert_eq!(unhex(&hex(&f)), Some(f));
    }
}
