//! `dp_local_out`: tc egress on the host's `lo`, per-packet NAT of the
//! host-local TCP connections `dp_connect4` leaves untranslated (a socket
//! with its own port whose translated tuple is taken, see `sock`): the
//! kernel's OUTPUT DNAT plus Docker's masquerade of local traffic.
//!
//! - A SYN whose socket (by cookie) has a [`REVNAT_PER_PACKET`] entry for
//!   this destination starts a flow in the endpoint zone: destination the
//!   container, source its network's gateway with the client's port when
//!   that tuple is free (no conntrack entry, no socket of the host on it),
//!   another port otherwise (`nat::snat`). The reply entry redirects into
//!   `lo`'s ingress ([`FLAG_LOCAL`]): `dp_from_container` restores the
//!   published address as the source and the client's address as the
//!   destination there, and the stack delivers it to the client's socket.
//! - The flow's later packets follow its entry.
//!
//! Both go straight out of the container's host-side veth
//! (`fastpath::from_host`): routing a packet whose source is the gateway
//! from `lo` is not the stack's business. Everything else on `lo` goes on
//! unchanged; the common case costs one conntrack lookup per TCP packet.
//! IPv6 has its own program after this one (`local6`).

use aya_ebpf::{
    helpers::bpf_get_socket_cookie, macros::classifier, programs::TcContext, EbpfContext,
};
use dataplane_common::{
    ct::{CtEntry, FLAG_DNAT, FLAG_LOCAL, FLAG_REPLY, ZONE_ENDPOINT},
    drop::DropReason,
    net::IPPROTO_TCP,
    sock::REVNAT_PER_PACKET,
};

use crate::{
    conntrack,
    drop::drop_packet,
    fastpath,
    maps::DP_SOCK_REVNAT,
    nat,
    parse::{parse, Ipv4Packet, L3},
    tcp,
};

const TCX_NEXT: i32 = -1;
/// The zone of the hairpin flows, whose reply tuples (container to its
/// gateway) these flows share: one port allocator keeps them apart, and
/// `dp_from_container` finds the replies with its one lookup.
const ZONE: u8 = ZONE_ENDPOINT;

#[classifier]
pub fn dp_local_out(ctx: TcContext) -> i32 {
    match try_local_out(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => drop_packet(&ctx, reason),
    }
}

#[inline(always)]
fn try_local_out(ctx: &TcContext) -> Result<i32, DropReason> {
    let mut pkt = Ipv4Packet::default();
    if parse(ctx, &mut pkt)? != L3::Ipv4
        || pkt.proto != IPPROTO_TCP
        || pkt.later_fragment
        || pkt.more_fragments
    {
        return Ok(TCX_NEXT);
    }
    let key = conntrack::key_of(&pkt, ZONE);
    if let Some(entry) = conntrack::lookup_flow(&key, &pkt) {
        return tracked(ctx, &pkt, entry);
    }
    if !tcp::opens(pkt.tcp_flags) {
        return Ok(TCX_NEXT);
    }
    new_flow(ctx, &pkt)
}

/// A packet of a tracked flow: when the flow is ours, its entry's rewrite,
/// then into the container. A subprogram, as [`new_flow`] is: each frame
/// holds only its own part.
#[inline(always)]
fn tracked(ctx: &TcContext, pkt: &Ipv4Packet, entry: *mut CtEntry) -> Result<i32, DropReason> {
    // SAFETY: a map value pointer from this run; only these fields are read.
    let (flags, backend) = unsafe { ((*entry).flags, (*entry).new_daddr) };
    if flags & FLAG_LOCAL == 0 || flags & FLAG_REPLY != 0 {
        return Ok(TCX_NEXT);
    }
    // A container that is gone: the packet goes on to the published
    // address, where nothing listens (the client gets a reset).
    if fastpath::endpoint(backend).is_none() {
        return Ok(TCX_NEXT);
    }
    nat::apply_tracked(ctx, pkt, &conntrack::key_of(pkt, ZONE), entry)?;
    fastpath::from_host(ctx, &backend)
}

/// A SYN without a flow: translated when its socket asked for it. A
/// subprogram, as [`start`] is: each frame holds only its own part (the
/// socket lookup of `nat::snat` adds one more).
#[inline(always)]
fn new_flow(ctx: &TcContext, pkt: &Ipv4Packet) -> Result<i32, DropReason> {
    let Some((addr, port)) = per_packet_backend(ctx, pkt) else {
        return Ok(TCX_NEXT);
    };
    let Some((_, ep)) = fastpath::endpoint(addr) else {
        return Ok(TCX_NEXT);
    };
    start(ctx, pkt, addr, u16::from_ne_bytes(port), ep.gateway)?;
    fastpath::from_host(ctx, &addr)
}

/// Creates the flow's entries (destination `addr`:`port`, source the
/// gateway with a free port) and translates its first packet.
#[inline(always)]
fn start(
    ctx: &TcContext,
    pkt: &Ipv4Packet,
    addr: [u8; 4],
    port: u16,
    gateway: [u8; 4],
) -> Result<(), DropReason> {
    let mut orig =
        conntrack::entry(ctx, FLAG_DNAT | FLAG_LOCAL, pkt)?.with_dst(addr, port.to_ne_bytes());
    // Replies go into this device's ingress; `lo`'s Ethernet addresses
    // are zero, as the entry's are.
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    orig.redirect_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let orig = nat::snat::<_, true>(ctx, pkt, ZONE, orig, gateway)?;
    nat::apply(ctx, pkt, &orig)
}

/// The container a SYN's socket was meant to reach, when `dp_connect4`
/// left its translation to the packets (and it is addressed as the
/// application asked).
#[inline(always)]
fn per_packet_backend(ctx: &TcContext, pkt: &Ipv4Packet) -> Option<([u8; 4], [u8; 2])> {
    // SAFETY: the helper reads the skb's socket, if any (0 without one).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rev = DP_SOCK_REVNAT.get_ptr(cookie)?;
    // SAFETY: a map value pointer from this run; only these fields are
    // read (no room for a copy).
    let (flags, asked) = unsafe {
        (
            (*rev).flags,
            (*rev).orig_addr == pkt.dst && (*rev).orig_port == pkt.dport,
        )
    };
    if flags & REVNAT_PER_PACKET == 0 || !asked {
        return None;
    }
    // SAFETY: as above.
    Some(unsafe { ((*rev).backend_addr, (*rev).backend_port) })
}
