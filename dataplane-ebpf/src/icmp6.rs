//! ICMPv6 errors (destination unreachable, packet too big, time exceeded,
//! parameter problem) about translated IPv6 flows, as `icmp` does for IPv4.
//! Packet Too Big is what makes IPv6 path MTU discovery work at all (routers
//! never fragment), so behind NAT66 it must reach the container translated.
//!
//! Unlike ICMP, the ICMPv6 checksum covers the pseudo-header, so the outer
//! address change is folded in as a pseudo-header change; the quoted packet
//! is part of the message and its changes are folded in plainly. The quote
//! has no IP checksum. A quote with extension headers is left alone (never
//! mistranslated): the stack delivers the error untranslated.

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    ct::{REWRITE_DST, REWRITE_SRC},
    drop::DropReason,
    net::{IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    conntrack,
    family::Family,
    nat::l4_csum_addr,
    nat6,
    parse::{Ipv6Packet, ICMPV6_ECHO_REQUEST},
};

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_PARAM_PROBLEM: u8 = 4;

/// Whether an ICMPv6 type is an error message (types below 128).
#[inline(always)]
pub fn is_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        ICMPV6_DEST_UNREACH | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED | ICMPV6_PARAM_PROBLEM
    )
}

/// Whether `pkt` is an ICMPv6 error about a tracked flow of `zone`; if so,
/// the flow's entry and the quoted tuple are left in the scratch for
/// [`translate_error`] (two steps, each a BPF subprogram of its own: the
/// quote and the rewrite do not fit one frame together).
#[inline(never)]
pub fn find_error(ctx: &TcContext, pkt: &Ipv6Packet, zone: u8) -> Result<bool, DropReason> {
    if pkt.proto != IPPROTO_ICMPV6 || !is_error(pkt.icmp_type) {
        return Ok(false);
    }
    let ip_off = pkt.l4_off + 8;
    let hdr: [u8; 8] = ctx.load(ip_off).map_err(|_| DropReason::Truncated)?;
    if hdr[0] >> 4 != 6 {
        return Ok(false);
    }
    let proto = hdr[6];
    let l4: [u8; 8] = ctx.load(ip_off + 40).map_err(|_| DropReason::Truncated)?;
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => ([l4[0], l4[1]], [l4[2], l4[3]]),
        IPPROTO_ICMPV6 if l4[0] == ICMPV6_ECHO_REQUEST => ([l4[4], l4[5]], [0, 0]),
        _ => return Ok(false),
    };
    let s = nat6::scratch()?;
    let q = &mut s.quote;
    q.saddr = ctx.load(ip_off + 8).map_err(|_| DropReason::Truncated)?;
    q.daddr = ctx.load(ip_off + 24).map_err(|_| DropReason::Truncated)?;
    q.sport = sport;
    q.dport = dport;
    q.proto = proto;
    q.zone = zone;
    q._pad = [0; 2];
    // The flow's entry for packets travelling like the error (the reverse
    // of the quoted packet's tuple).
    let Some(entry) = conntrack::lookup(&q.reversed()) else {
        return Ok(false);
    };
    // SAFETY: a map value from the lookup above, copied map to map.
    unsafe { core::ptr::copy_nonoverlapping(entry, &raw mut s.orig, 1) };
    Ok(true)
}

/// Translates the error [`find_error`] found, with the entry and quote it
/// left in the scratch.
#[inline(never)]
pub fn translate_error(ctx: &TcContext, pkt: &Ipv6Packet) -> Result<(), DropReason> {
    let s = nat6::scratch()?;
    let (e, key) = (&s.orig, &s.quote);
    let ip_off = pkt.l4_off + 8;
    let l4_off = ip_off + 40;
    let quote = Quote {
        csum: pkt.l4_off + 2,
        proto: key.proto,
        l4_off,
    };
    if e.rewrite & REWRITE_DST != 0 {
        // The error travels like the flow's replies: its destination (the
        // quote's source) goes back to what the endpoint here sent.
        quote.fix(
            ctx,
            (<[u8; 16]>::DST_OFF, &pkt.dst),
            (ip_off + 8, l4_off, &key.saddr, key.sport),
            (&e.new_daddr, e.new_dport),
        )?;
    }
    if e.rewrite & REWRITE_SRC != 0 {
        quote.fix(
            ctx,
            (<[u8; 16]>::SRC_OFF, &pkt.src),
            (ip_off + 24, l4_off + 2, &key.daddr, key.dport),
            (&e.new_saddr, e.new_sport),
        )?;
    }
    Ok(())
}

/// Where an error's checksum and its quote's L4 header are.
struct Quote {
    csum: usize,
    proto: u8,
    l4_off: usize,
}

impl Quote {
    /// Rewrites one side: the outer address at `outer.0` (old `outer.1`),
    /// the quoted address and port at `quoted.0`/`quoted.1` (old
    /// `quoted.2`/`quoted.3`), to `new`.
    #[inline(always)]
    fn fix(
        &self,
        ctx: &TcContext,
        outer: (usize, &[u8; 16]),
        quoted: (usize, usize, &[u8; 16], [u8; 2]),
        new: (&[u8; 16], [u8; 2]),
    ) -> Result<(), DropReason> {
        let err = |_| DropReason::Rewrite;
        let (addr, port) = new;
        l4_csum_addr(ctx, self.csum, outer.1, addr, 0)?;
        ctx.store(outer.0, addr, 0).map_err(err)?;
        fold_plain(ctx, self.csum, quoted.2, addr)?;
        ctx.store(quoted.0, addr, 0).map_err(err)?;
        if quoted.3 != port {
            let port_off = if self.proto == IPPROTO_ICMPV6 {
                self.l4_off + 4
            } else {
                quoted.1
            };
            ctx.l4_csum_replace(
                self.csum,
                u64::from(u16::from_ne_bytes(quoted.3)),
                u64::from(u16::from_ne_bytes(port)),
                2,
            )
            .map_err(err)?;
            ctx.store(port_off, &port, 0).map_err(err)?;
        }
        Ok(())
    }
}

/// Folds a change of 16 bytes inside the message (not the pseudo-header)
/// into the ICMPv6 checksum.
#[inline(always)]
fn fold_plain(
    ctx: &TcContext,
    csum: usize,
    old: &[u8; 16],
    new: &[u8; 16],
) -> Result<(), DropReason> {
    let (o, n) = (old.words(), new.words());
    let mut i = 0;
    while i < 4 {
        if o[i] != n[i] {
            ctx.l4_csum_replace(csum, u64::from(o[i]), u64::from(n[i]), 4)
                .map_err(|_| DropReason::Rewrite)?;
        }
        i += 1;
    }
    Ok(())
}
