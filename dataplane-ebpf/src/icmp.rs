//! ICMP errors (destination unreachable, including "fragmentation needed",
//! and time exceeded) about translated flows: the error quotes the packet it
//! is about, and that quote must be translated like the flow, or PMTU
//! discovery and traceroute break behind the NAT.
//!
//! The quoted packet travelled the other way from the error, so its flow's
//! entry is found under the reverse of the quoted tuple. That entry rewrites
//! the error's outer destination (or source) the way it rewrites the flow's
//! packets, and the quote's source (or destination) back to what the
//! endpoint on this side sent. The ICMP checksum covers the quote, so every
//! changed quoted field is folded into it; the quote's own IP checksum is
//! fixed too. The quoted L4 checksum is left alone: receivers do not check it.

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    ct::{CtEntry, CtKey, REWRITE_DST, REWRITE_SRC},
    drop::DropReason,
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    conntrack,
    parse::{Ipv4Packet, ICMP_ECHO_REQUEST, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// The quoted packet inside an ICMP error.
struct Quote {
    /// Offset of the quoted IP header.
    ip_off: usize,
    /// Offset of the quoted L4 header.
    l4_off: usize,
    key: CtKey,
    /// The quoted IP header's checksum.
    ip_csum: [u8; 2],
}

#[inline(always)]
fn quote(ctx: &TcContext, pkt: &Ipv4Packet, zone: u8) -> Result<Option<Quote>, DropReason> {
    let ip_off = pkt.l4_off + 8;
    // The quoted IP header, read with a fixed-size load (the quote may sit
    // beyond the linear data).
    let ip: [u8; 20] = ctx.load(ip_off).map_err(|_| DropReason::Truncated)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || !(20..=60).contains(&ihl) {
        return Err(DropReason::BadIhl);
    }
    let proto = ip[9];
    let l4_off = ip_off + ihl;
    let l4: [u8; 8] = ctx.load(l4_off).map_err(|_| DropReason::Truncated)?;
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => ([l4[0], l4[1]], [l4[2], l4[3]]),
        // Only echo requests are tracked (their identifier as the port).
        IPPROTO_ICMP if l4[0] == ICMP_ECHO_REQUEST => ([l4[4], l4[5]], [0, 0]),
        _ => return Ok(None),
    };
    Ok(Some(Quote {
        ip_off,
        l4_off,
        key: CtKey {
            saddr: [ip[12], ip[13], ip[14], ip[15]],
            daddr: [ip[16], ip[17], ip[18], ip[19]],
            sport,
            dport,
            proto,
            zone,
            _pad: [0; 2],
        },
        ip_csum: [ip[10], ip[11]],
    }))
}

/// RFC 1624 incremental update of a ones-complement checksum for one
/// changed 32-bit value (as 16-bit words).
#[inline(always)]
fn csum_update(csum: [u8; 2], old: [u8; 4], new: [u8; 4]) -> [u8; 2] {
    let mut sum = u32::from(!u16::from_be_bytes(csum));
    sum += u32::from(!u16::from_be_bytes([old[0], old[1]]));
    sum += u32::from(!u16::from_be_bytes([old[2], old[3]]));
    sum += u32::from(u16::from_be_bytes([new[0], new[1]]));
    sum += u32::from(u16::from_be_bytes([new[2], new[3]]));
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Translates an ICMP error about a tracked flow of `zone`; false when `pkt`
/// is not such an error.
#[inline(always)]
pub fn translate_error(ctx: &TcContext, pkt: &Ipv4Packet, zone: u8) -> Result<bool, DropReason> {
    if pkt.proto != IPPROTO_ICMP
        || (pkt.icmp_type != ICMP_DEST_UNREACH && pkt.icmp_type != ICMP_TIME_EXCEEDED)
    {
        return Ok(false);
    }
    let Some(q) = quote(ctx, pkt, zone)? else {
        return Ok(false);
    };
    let Some(entry) = conntrack::lookup(&q.key.reversed()) else {
        return Ok(false);
    };
    // SAFETY: copied out at once, before any helper runs.
    let e: CtEntry = unsafe { *entry };
    let err = |_| DropReason::Rewrite;
    let icmp_csum = pkt.l4_off + 2;
    let mut inner_csum = q.ip_csum;
    // Outer side and quoted side, per rewritten side of the flow's entry:
    // (rewrite bit, outer addr offset, old outer addr, quoted addr offset,
    //  quoted port offset, old quoted addr, old quoted port, new addr, new port)
    let sides = [
        (
            REWRITE_DST,
            IP_DST_OFF,
            pkt.dst,
            q.ip_off + 12,
            q.l4_off,
            q.key.saddr,
            q.key.sport,
            e.new_daddr,
            e.new_dport,
        ),
        (
            REWRITE_SRC,
            IP_SRC_OFF,
            pkt.src,
            q.ip_off + 16,
            q.l4_off + 2,
            q.key.daddr,
            q.key.dport,
            e.new_saddr,
            e.new_sport,
        ),
    ];
    for (
        bit,
        outer_off,
        outer_old,
        q_addr_off,
        q_port_off,
        q_old_addr,
        q_old_port,
        new_addr,
        new_port,
    ) in sides
    {
        if e.rewrite & bit == 0 {
            continue;
        }
        // The outer header: only the IP checksum covers it (ICMP has no
        // pseudo-header).
        ctx.l3_csum_replace(
            IP_CSUM_OFF,
            u64::from(u32::from_ne_bytes(outer_old)),
            u64::from(u32::from_ne_bytes(new_addr)),
            4,
        )
        .map_err(err)?;
        ctx.store(outer_off, &new_addr, 0).map_err(err)?;
        // The quote: its address, its IP checksum, its port (the identifier
        // for a quoted echo request), all inside the ICMP checksum.
        let new_inner = csum_update(inner_csum, q_old_addr, new_addr);
        ctx.l4_csum_replace(
            icmp_csum,
            u64::from(u32::from_ne_bytes(q_old_addr)),
            u64::from(u32::from_ne_bytes(new_addr)),
            4,
        )
        .map_err(err)?;
        ctx.l4_csum_replace(
            icmp_csum,
            u64::from(u16::from_ne_bytes(inner_csum)),
            u64::from(u16::from_ne_bytes(new_inner)),
            2,
        )
        .map_err(err)?;
        ctx.store(q_addr_off, &new_addr, 0).map_err(err)?;
        ctx.store(q.ip_off + 10, &new_inner, 0).map_err(err)?;
        inner_csum = new_inner;
        if q_old_port != new_port {
            let port_off = if q.key.proto == IPPROTO_ICMP {
                q.l4_off + 4
            } else {
                q_port_off
            };
            ctx.l4_csum_replace(
                icmp_csum,
                u64::from(u16::from_ne_bytes(q_old_port)),
                u64::from(u16::from_ne_bytes(new_port)),
                2,
            )
            .map_err(err)?;
            ctx.store(port_off, &new_port, 0).map_err(err)?;
        }
    }
    Ok(true)
}
