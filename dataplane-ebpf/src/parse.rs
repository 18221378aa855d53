//! Packet parsing and the only place that does bounds checks.
//!
//! Rule (as in Cilium's `revalidate_data`): a pointer from [`ptr_at`] is valid
//! only until the next helper that can move packet data (`bpf_skb_store_bytes`,
//! the checksum helpers, `adjust_room`, `pull_data`). Callers copy the header
//! fields they need into [`Ipv4Packet`] (on the stack) and re-parse after such a
//! helper instead of keeping pointers.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_loop, programs::TcContext};
use dataplane_common::{
    drop::DropReason,
    net::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

/// Packet bounds as the program sees them.
pub trait PacketBounds {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

impl PacketBounds for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// Returns a pointer to a `T` at `offset`, or `Truncated` if it would run past
/// the end of the packet.
#[inline(always)]
pub fn ptr_at<T, C: PacketBounds>(ctx: &C, offset: usize) -> Result<*const T, DropReason> {
    let start = ctx.start();
    let end = ctx.end();
    if start + offset + size_of::<T>() > end {
        return Err(DropReason::Truncated);
    }
    Ok((start + offset) as *const T)
}

/// What the parser found at layer 3.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    /// The fields are in the `Ipv4Packet` passed to [`parse`].
    Ipv4,
    /// An IPv6 frame, left for the IPv6 programs ([`parse6`]).
    Ipv6,
    /// Any other ethertype, passed through untouched.
    Other,
}

/// The fields of an IPv4 packet the programs act on, copied out of the packet
/// (programs add the fields they need here, never keep packet pointers).
///
/// Filled in place from a zeroed value (`Ipv4Packet::default()`): returning
/// it inside an enum lets LLVM copy never-written registers on the other
/// paths, which the verifier refuses as uninitialised reads.
///
/// Generic over the address (`[u8; 4]`, `[u8; 16]`): conntrack and NAT serve
/// both families with one code, monomorphised per family.
#[derive(Clone, Copy, Default)]
pub struct Packet<A> {
    /// IANA protocol number (for IPv6, of the upper layer, after the
    /// extension headers).
    pub proto: u8,
    /// Offset of the L4 header (Ethernet + IHL, or IPv6 + extension headers).
    pub l4_off: usize,
    pub src: A,
    pub dst: A,
    /// TCP/UDP ports in network byte order. For ICMP echo the identifier
    /// stands in for a port (`sport` for requests, `dport` for replies), so
    /// conntrack and NAT treat echo like a flow. Zero otherwise, and for
    /// non-first fragments.
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10); 0 otherwise.
    pub tcp_flags: u8,
    /// TCP header length in bytes (data offset * 4); 0 when not TCP.
    pub tcp_hlen: u8,
    /// TCP sequence number and advertised window (host byte order).
    pub tcp_seq: u32,
    pub tcp_win: u16,
    /// ICMP type; 0xff when not ICMP.
    pub icmp_type: u8,
    /// Not the first fragment: no L4 header, nothing to translate by port.
    pub later_fragment: bool,
    /// More fragments follow (the MF flag): with `later_fragment`, whether
    /// the packet is a fragment at all.
    pub more_fragments: bool,
    /// Time to live (hop limit), type of service (traffic class) and the IP
    /// length, header included (for IPv6: 40 + payload length), as
    /// received (for forwarding decisions; NAT leaves them alone).
    pub ttl: u8,
    pub tos: u8,
    pub tot_len: u16,
    /// The identification that ties fragments to their first, as on the
    /// wire: IPv4's 16-bit field (the first two bytes), the IPv6 fragment
    /// header's 32 bits.
    pub frag_id: [u8; 4],
}

/// An IPv4 packet's fields.
pub type Ipv4Packet = Packet<[u8; 4]>;
/// An IPv6 packet's fields.
pub type Ipv6Packet = Packet<[u8; 16]>;

impl<A> Packet<A> {
    /// A fragment of a larger datagram (first or later).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.later_fragment || self.more_fragments
    }

    /// The TCP payload's length: what the segment adds to the sequence
    /// space besides SYN and FIN.
    #[inline(always)]
    pub fn tcp_payload_len(&self) -> u32 {
        let l3 = u32::from(self.tot_len);
        let headers = (self.l4_off - EthHdr::LEN) as u32 + u32::from(self.tcp_hlen);
        l3.saturating_sub(headers)
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// Byte offsets inside the headers, for the rewrite helpers.
pub const IP_TTL_OFF: usize = EthHdr::LEN + 8;
pub const IP_CSUM_OFF: usize = EthHdr::LEN + 10;
pub const IP_SRC_OFF: usize = EthHdr::LEN + 12;
pub const IP_DST_OFF: usize = EthHdr::LEN + 16;

/// The packet's IP length as the counters count it (`iptables -vL`'s
/// bytes): the frame without its Ethernet header.
#[inline(always)]
pub fn ip_len(ctx: &TcContext) -> u32 {
    ctx.len().saturating_sub(EthHdr::LEN as u32)
}

/// The frame's layer 3 by its ethertype alone (for the IPv6 programs, which
/// leave IPv4 to the others).
#[inline(always)]
pub fn l3(ctx: &TcContext) -> Result<L3, DropReason> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that a whole EthHdr lies within the packet.
    let ether_type = unsafe { (*eth).ether_type };
    Ok(if ether_type == EtherType::Ipv4 as u16 {
        L3::Ipv4
    } else if ether_type == EtherType::Ipv6 as u16 {
        L3::Ipv6
    } else {
        L3::Other
    })
}

/// Largest IPv4 header: IHL is 4 bits of 32-bit words.
const IPV4_MAX_HDR: usize = 60;

/// Parses Ethernet, IPv4 and the TCP/UDP ports (or ICMP echo identifier). Malformed IPv4 (truncated
/// headers, IHL below 20 or past the packet end, version not 4) is an error
/// with its drop reason; non-IPv4 frames are `L3::Other`.
#[inline(always)]
pub fn parse<C: PacketBounds>(ctx: &C, pkt: &mut Ipv4Packet) -> Result<L3, DropReason> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that a whole EthHdr lies within the packet.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type != EtherType::Ipv4 as u16 {
        if ether_type == EtherType::Ipv6 as u16 {
            return Ok(L3::Ipv6);
        }
        return Ok(L3::Other);
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
    // SAFETY: as above, for the fixed 20-byte IPv4 header.
    let ip = unsafe { *ip };
    if ip.version() != 4 {
        return Err(DropReason::BadVersion);
    }
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if !(Ipv4Hdr::LEN..=IPV4_MAX_HDR).contains(&ihl) {
        return Err(DropReason::BadIhl);
    }
    let l4_off = EthHdr::LEN + ihl;
    if ctx.start() + l4_off > ctx.end() {
        return Err(DropReason::BadIhl);
    }
    let proto = ip.proto;
    pkt.proto = proto;
    pkt.l4_off = l4_off;
    pkt.src = ip.src_addr;
    pkt.dst = ip.dst_addr;
    pkt.icmp_type = 0xff;
    let frags = u16::from_be_bytes(ip.frags);
    pkt.later_fragment = frags & 0x1fff != 0;
    pkt.more_fragments = frags & 0x2000 != 0;
    pkt.ttl = ip.ttl;
    pkt.tos = ip.tos;
    pkt.tot_len = u16::from_be_bytes(ip.tot_len);
    pkt.frag_id = [ip.id[0], ip.id[1], 0, 0];
    // The L4 header must be whole; non-first fragments start mid-payload and
    // carry none.
    if !pkt.later_fragment {
        match proto {
            IPPROTO_TCP => {
                let tcp: *const TcpHdr = ptr_at(ctx, l4_off)?;
                // SAFETY: ptr_at checked the whole TCP header is in the packet.
                let hdr = unsafe { &*tcp };
                pkt.sport = hdr.source;
                pkt.dport = hdr.dest;
                // Byte 13 of the TCP header holds the flags. Read through the
                // pointer already checked: a second ptr_at would be folded
                // into the first by the compiler, and the verifier tracks the
                // two pointers separately.
                // SAFETY: 13 < size_of::<TcpHdr>(), within the checked range.
                pkt.tcp_flags = unsafe { *tcp.cast::<u8>().add(13) };
                // SAFETY: bytes 4..8 (sequence), 12 (data offset) and
                // 14..16 (window) lie within the checked header.
                unsafe {
                    let b = tcp.cast::<u8>();
                    pkt.tcp_seq = u32::from_be_bytes([*b.add(4), *b.add(5), *b.add(6), *b.add(7)]);
                    pkt.tcp_hlen = (*b.add(12) >> 4) * 4;
                    pkt.tcp_win = u16::from_be_bytes([*b.add(14), *b.add(15)]);
                }
            }
            IPPROTO_UDP => {
                let udp: *const UdpHdr = ptr_at(ctx, l4_off)?;
                // SAFETY: bounds checked by ptr_at.
                let udp = unsafe { &*udp };
                pkt.sport = udp.src;
                pkt.dport = udp.dst;
            }
            IPPROTO_ICMP => {
                // type, code, checksum, and the 4-byte rest-of-header whose
                // first two bytes are the echo identifier.
                let icmp: *const [u8; 8] = ptr_at(ctx, l4_off)?;
                // SAFETY: bounds checked by ptr_at.
                let icmp = unsafe { *icmp };
                pkt.icmp_type = icmp[0];
                let id = [icmp[4], icmp[5]];
                match icmp[0] {
                    ICMP_ECHO_REQUEST => pkt.sport = id,
                    ICMP_ECHO_REPLY => pkt.dport = id,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(L3::Ipv4)
}

/// The fields of the fixed IPv6 header the fast path decides by (hop
/// limit, traffic class, length, next header), read again by a step that
/// must not take the parsed packet in: the verifier would walk it once per
/// way the packet was parsed. An upper layer behind extension headers
/// leaves `l4_off` 0, which the fast path refuses.
#[inline(always)]
pub fn parse6_fixed(ctx: &TcContext, pkt: &mut Ipv6Packet) -> Result<(), DropReason> {
    let ip: [u8; 8] = ctx.load(EthHdr::LEN).map_err(|_| DropReason::Truncated)?;
    pkt.tos = (ip[0] << 4) | (ip[1] >> 4);
    pkt.tot_len = u16::from_be_bytes([ip[4], ip[5]]).saturating_add(40);
    pkt.proto = ip[6];
    pkt.ttl = ip[7];
    pkt.l4_off = if is_ext_hdr(ip[6]) {
        0
    } else {
        EthHdr::LEN + 40
    };
    Ok(())
}

/// IPv6 extension headers the parser walks past (RFC 8200 section 4).
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// How many extension headers the walk follows; a packet with more is
/// [`Ipv6Upper::Unknown`], never translated.
const MAX_EXT_HDRS: u32 = 4;

pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// What lies after an IPv6 header and its extension headers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Upper {
    /// The upper layer was found (`proto`, `l4_off` and the ports are set).
    Found,
    /// More extension headers than the walk follows: nothing can be said of
    /// the upper layer, so nothing is translated.
    Unknown,
}

#[inline(always)]
fn is_ext_hdr(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_AUTH | NEXTHDR_DEST
    )
}

/// The extension-header walk's state, on [`parse6`]'s frame.
#[repr(C)]
struct ExtWalk {
    skb: *mut __sk_buff,
    off: u32,
    next: u32,
    later_fragment: u32,
    more_fragments: u32,
    /// The fragment header's identification, in wire order.
    frag_id: u32,
    truncated: u32,
}

/// One extension header: past it, its next header noted; 1 ends the walk.
/// A `bpf_loop` step rather than an unrolled loop: each unrolled iteration
/// left the verifier one more distinct state to carry through the rest of
/// the program (NAT66's port probes passed its million instructions); the
/// callback leaves one.
#[inline(never)]
extern "C" fn ext_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `parse6` passes its `ExtWalk`.
    let w = unsafe { &mut *ctx.cast::<ExtWalk>() };
    let next = w.next as u8;
    if !is_ext_hdr(next) {
        return 1;
    }
    let tc = TcContext::new(w.skb);
    // Every extension header is at least 8 bytes long.
    let Ok(h) = tc.load::<[u8; 8]>(w.off as usize) else {
        w.truncated = 1;
        return 1;
    };
    let len = if next == NEXTHDR_FRAGMENT {
        // Offset in 8-byte units in the top 13 bits, M flag in bit 0.
        let fo = u16::from_be_bytes([h[2], h[3]]);
        w.later_fragment = u32::from(fo & 0xfff8 != 0);
        w.more_fragments = u32::from(fo & 1 != 0);
        w.frag_id = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
        8
    } else if next == NEXTHDR_AUTH {
        (u32::from(h[1]) + 2) * 4
    } else {
        (u32::from(h[1]) + 1) * 8
    };
    w.off += len;
    w.next = u32::from(h[0]);
    0
}

/// Parses an IPv6 frame (the caller has seen [`L3::Ipv6`]): the fixed
/// header, then a bounded walk over the extension headers (hop-by-hop,
/// routing, fragment, authentication, destination options), then the ports
/// of TCP and UDP or the identifier of an ICMPv6 echo. The extension headers
/// and the upper layer are read with `bpf_skb_load_bytes` (they may sit past
/// the linear data; their offsets depend on the packet). A non-first
/// fragment (`later_fragment`) has no upper-layer header to read.
#[inline(always)]
pub fn parse6(ctx: &TcContext, pkt: &mut Ipv6Packet) -> Result<Ipv6Upper, DropReason> {
    let ip: *const [u8; 40] = ptr_at(ctx, EthHdr::LEN)?;
    // SAFETY: ptr_at checked that the 40-byte fixed header is in the packet.
    let ip = unsafe { *ip };
    if ip[0] >> 4 != 6 {
        return Err(DropReason::BadVersion);
    }
    pkt.tos = (ip[0] << 4) | (ip[1] >> 4);
    pkt.tot_len = u16::from_be_bytes([ip[4], ip[5]]).saturating_add(40);
    pkt.ttl = ip[7];
    pkt.src.copy_from_slice(&ip[8..24]);
    pkt.dst.copy_from_slice(&ip[24..40]);
    pkt.icmp_type = 0xff;
    let mut walk = ExtWalk {
        skb: ctx.skb.skb,
        off: (EthHdr::LEN + 40) as u32,
        next: u32::from(ip[6]),
        later_fragment: 0,
        more_fragments: 0,
        frag_id: 0,
        truncated: 0,
    };
    if is_ext_hdr(ip[6]) {
        // SAFETY: `ext_step` is a BPF function taking this context, which
        // lives on this frame for the whole call.
        unsafe {
            bpf_loop(
                MAX_EXT_HDRS,
                ext_step as *mut c_void,
                (&raw mut walk).cast(),
                0,
            )
        };
    }
    if walk.truncated != 0 {
        return Err(DropReason::Truncated);
    }
    let next = walk.next as u8;
    let off = walk.off as usize;
    pkt.later_fragment = walk.later_fragment != 0;
    pkt.more_fragments = walk.more_fragments != 0;
    pkt.frag_id = walk.frag_id.to_ne_bytes();
    pkt.proto = next;
    pkt.l4_off = off;
    if is_ext_hdr(next) {
        return Ok(Ipv6Upper::Unknown);
    }
    if pkt.later_fragment {
        return Ok(Ipv6Upper::Found);
    }
    match next {
        IPPROTO_TCP => {
            let t: [u8; 20] = ctx.load(off).map_err(|_| DropReason::Truncated)?;
            pkt.sport = [t[0], t[1]];
            pkt.dport = [t[2], t[3]];
            pkt.tcp_seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            pkt.tcp_hlen = (t[12] >> 4) * 4;
            pkt.tcp_flags = t[13];
            pkt.tcp_win = u16::from_be_bytes([t[14], t[15]]);
        }
        IPPROTO_UDP => {
            // The whole 8-byte header: the NAT rewrites its checksum (a
            // shorter one once started a flow whose rewrite then failed).
            let u: [u8; 8] = ctx.load(off).map_err(|_| DropReason::Truncated)?;
            pkt.sport = [u[0], u[1]];
            pkt.dport = [u[2], u[3]];
        }
        IPPROTO_ICMPV6 => {
            let c: [u8; 8] = ctx.load(off).map_err(|_| DropReason::Truncated)?;
            pkt.icmp_type = c[0];
            match c[0] {
                ICMPV6_ECHO_REQUEST => pkt.sport = [c[4], c[5]],
                ICMPV6_ECHO_REPLY => pkt.dport = [c[4], c[5]],
                _ => {}
            }
        }
        _ => {}
    }
    Ok(Ipv6Upper::Found)
}
