//! Packet parsing and the only place that does bounds checks.
//!
//! Rule (as in Cilium's `revalidate_data`): a pointer from [`ptr_at`] is valid
//! only until the next helper that can move packet data (`bpf_skb_store_bytes`,
//! the checksum helpers, `adjust_room`, `pull_data`). Callers copy the header
//! fields they need into [`Ipv4Packet`] (on the stack) and re-parse after such a
//! helper instead of keeping pointers.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    drop::DropReason,
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
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
pub enum L3 {
    Ipv4(Ipv4Packet),
    /// Any other ethertype (network byte order), passed through untouched.
    Other,
}

/// The fields of an IPv4 packet the programs act on, copied out of the packet
/// (programs add the fields they need here, never keep packet pointers).
#[derive(Clone, Copy)]
pub struct Ipv4Packet {
    /// IANA protocol number.
    pub proto: u8,
}

/// Largest IPv4 header: IHL is 4 bits of 32-bit words.
const IPV4_MAX_HDR: usize = 60;

/// Parses Ethernet, IPv4 and the TCP/UDP ports. Malformed IPv4 (truncated
/// headers, IHL below 20 or past the packet end, version not 4) is an error
/// with its drop reason; non-IPv4 frames are `L3::Other`.
#[inline(always)]
pub fn parse<C: PacketBounds>(ctx: &C) -> Result<L3, DropReason> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that a whole EthHdr lies within the packet.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
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
    let pkt = Ipv4Packet { proto };
    // The L4 header must be whole; non-first fragments start mid-payload and
    // carry none.
    let first_fragment = u16::from_be_bytes(ip.frags) & 0x1fff == 0;
    if first_fragment {
        match proto {
            IPPROTO_TCP => {
                let _: *const TcpHdr = ptr_at(ctx, l4_off)?;
            }
            IPPROTO_UDP => {
                let _: *const UdpHdr = ptr_at(ctx, l4_off)?;
            }
            IPPROTO_ICMP => {
                // type, code, checksum, and the 4-byte rest-of-header.
                let _: *const [u8; 8] = ptr_at(ctx, l4_off)?;
            }
            _ => {}
        }
    }
    Ok(L3::Ipv4(pkt))
}
