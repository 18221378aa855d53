//! `dp_local_out6`: tc egress on the host's `lo`, the IPv6 twin of
//! `dp_local_out` (tcx runs it after that program, which leaves IPv6
//! alone): per-packet NAT of the host-local TCP connections `dp_connect6`
//! leaves untranslated (a socket bound to `::1`, or with its own port
//! whose translated tuple is taken, see `sock6`).
//!
//! - A SYN whose socket (by cookie) has a [`REVNAT_PER_PACKET`] entry in
//!   `DP_SOCK_REVNAT6` for this destination starts a flow in the endpoint
//!   zone: destination the container, source its network's IPv6 gateway
//!   with the client's port when that tuple is free, another port
//!   otherwise (`nat6::local`). The reply entry redirects into `lo`'s
//!   ingress (`FLAG_LOCAL`): `dp_from_container6` restores the published
//!   address as the source and the client's address as the destination
//!   there (`nat6::redirect`), and the stack delivers it to the client's
//!   socket (IPv6 accepts `::1` and the host's addresses arriving on `lo`
//!   without IPv4's `accept_local`/`route_localnet`).
//! - The flow's later packets follow its entry.
//!
//! Both go straight out of the container's host-side veth
//! (`fastpath::from_host`). Everything else on `lo` goes on unchanged; the
//! common case costs one conntrack lookup per TCP packet.
//!
//! A program of its own rather than a branch of `dp_local_out`: IPv6 runs
//! in two global-function stages (`stage`) with its entries in the
//! scratch map (`nat6`), which the IPv4 program does not need, and each
//! program's frame and verifier walk stay those of one family.

use aya_ebpf::{helpers::bpf_get_socket_cookie, programs::TcContext, EbpfContext};
use dataplane_common::{
    ct::ZONE_ENDPOINT, drop::DropReason, nat::PortTarget6, net::IPPROTO_TCP,
    sock::REVNAT_PER_PACKET,
};

use crate::{
    fastpath,
    maps::DP_SOCK_REVNAT6,
    nat6,
    parse::{l3, parse6, Ipv6Packet, Ipv6Upper, L3},
    stage::{two_stage, CONTINUE},
    tcp,
};

const TCX_NEXT: i32 = -1;
/// The zone of the hairpin flows, whose reply tuples (container to its
/// gateway) these flows share, as on IPv4 (`local`).
const ZONE: u8 = ZONE_ENDPOINT;

// The program runs in two stages, BPF global functions (see `stage`).
two_stage!(dp_local_out6: dp6_local_out_parse => parse, dp6_local_out_flow => flow);

/// Only whole TCP segments whose header the parser found can be ours.
#[inline(always)]
fn parse(ctx: &TcContext, pkt: &mut Ipv6Packet) -> Result<i32, DropReason> {
    if l3(ctx)? != L3::Ipv6 {
        return Ok(TCX_NEXT);
    }
    let upper = parse6(ctx, pkt)?;
    if upper == Ipv6Upper::Unknown
        || pkt.proto != IPPROTO_TCP
        || pkt.later_fragment
        || pkt.more_fragments
    {
        return Ok(TCX_NEXT);
    }
    Ok(CONTINUE)
}

/// A tracked flow of ours, or a SYN that starts one.
#[inline(always)]
fn flow(ctx: &TcContext, pkt: &Ipv6Packet) -> Result<i32, DropReason> {
    if nat6::tracked_local(ctx, pkt, ZONE)? {
        return tracked(ctx, pkt);
    }
    if !tcp::opens(pkt.tcp_flags) {
        return Ok(TCX_NEXT);
    }
    new_flow(ctx, pkt)
}

/// A packet of a flow of ours (its entry in the scratch): its rewrite,
/// then into the container. A container that is gone: the packet goes on
/// to the published address, where nothing listens (the client gets a
/// reset).
#[inline(never)]
fn tracked(ctx: &TcContext, pkt: &Ipv6Packet) -> Result<i32, DropReason> {
    let backend = nat6::scratch()?.orig.new_daddr;
    if !fastpath::has_endpoint(&backend) {
        return Ok(TCX_NEXT);
    }
    nat6::apply(ctx, pkt)?;
    fastpath::from_host(ctx, &backend)
}

/// A SYN without a flow: translated when its socket asked for it.
#[inline(never)]
fn new_flow(ctx: &TcContext, pkt: &Ipv6Packet) -> Result<i32, DropReason> {
    let mut target = PortTarget6::default();
    if !per_packet_backend(ctx, pkt, &mut target) {
        return Ok(TCX_NEXT);
    }
    let gateway = fastpath::gateway6(&target.addr);
    if gateway == [0; 16] {
        return Ok(TCX_NEXT);
    }
    nat6::local(ctx, pkt, ZONE, &target, &gateway)?;
    nat6::apply(ctx, pkt)?;
    fastpath::from_host(ctx, &target.addr)
}

/// The container a SYN's socket was meant to reach, into `target`, when
/// `dp_connect6` left its translation to the packets (and it is addressed
/// as the application asked). Read in place: no copy of the entry.
#[inline(always)]
fn per_packet_backend(ctx: &TcContext, pkt: &Ipv6Packet, target: &mut PortTarget6) -> bool {
    // SAFETY: the helper reads the skb's socket, if any (0 without one).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(rev) = DP_SOCK_REVNAT6.get_ptr(cookie) else {
        return false;
    };
    // SAFETY: a map value pointer from this run; fields read in place.
    let rev = unsafe { &*rev };
    if rev.flags & REVNAT_PER_PACKET == 0 || rev.orig_addr != pkt.dst || rev.orig_port != pkt.dport
    {
        return false;
    }
    target.addr = rev.backend_addr;
    target.port = rev.backend_port;
    true
}
