//! `dp_from_container6`: tc ingress on an endpoint's host-side veth, for the
//! IPv6 packets a container sends (tcx runs it after `dp_from_container`,
//! which leaves IPv6 alone). The same duties as its IPv4 twin, with IPv6's
//! own rules:
//! - anti-spoofing: the source must be the endpoint's IPv6 address; the
//!   link-local and unspecified sources NDP, router solicitations and
//!   duplicate address detection use are allowed (they never leave the
//!   bridge). An endpoint without an IPv6 address may send nothing else;
//! - isolation and ICC by the destination's subnet; with ICC off, link-local
//!   unicast between containers carries ICMPv6 only (NDP), so it is no way
//!   around the rule.
//!
//! - hairpin: a container reaching a port published on a host IPv6 address
//!   gets DNAT here, keeping its address (the gateway's when it reaches its
//!   own port); the replies go straight back into its veth (`nat6`);
//! - the replies of host-local flows `dp_local_out6` translated per packet
//!   get the published address and the client's back, and go into `lo`'s
//!   ingress (`nat6::redirect`, `FLAG_LOCAL`), as `dp_from_container` does
//!   for IPv4.
//!
//! - the fast path: what is left, to the world through the gateway, goes
//!   straight to the uplink's egress (`fastpath::to_world`, as on IPv4).

use aya_ebpf::{btf_maps::lpm_trie::Key, programs::TcContext};
use dataplane_common::{
    ct::ZONE_ENDPOINT,
    drop::DropReason,
    nat::{EndpointInfo6, SUBNET_NO_ICC},
    net::IPPROTO_ICMPV6,
};

use crate::{
    fastpath,
    frag::{self, Frag},
    maps::{DP_ENDPOINTS, DP_ENDPOINTS6, DP_SANDBOX_ADDRS6, DP_SUBNETS6},
    nat, nat6,
    parse::{l3, parse6, Ipv6Packet, Ipv6Upper, L3},
    stage::{two_stage, CONTINUE},
};

const TCX_NEXT: i32 = -1;
const ZONE: u8 = ZONE_ENDPOINT;

// The program runs in two stages, BPF global functions (see `stage`).
two_stage!(dp_from_container6: dp6_from_container_parse => parse, dp6_from_container_flow => flow);

/// fe80::/10.
#[inline(always)]
pub fn is_link_local(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

/// ff00::/8.
#[inline(always)]
pub fn is_multicast(a: &[u8; 16]) -> bool {
    a[0] == 0xff
}

/// From the wire to the fields of a packet from a container: its source
/// (anti-spoofing, link-local traffic), what the parser cannot see into,
/// the fragments.
#[inline(always)]
fn parse(ctx: &TcContext, pkt: &mut Ipv6Packet) -> Result<i32, DropReason> {
    if l3(ctx)? != L3::Ipv6 {
        return Ok(TCX_NEXT);
    }
    let upper = parse6(ctx, pkt)?;
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a map value, read in place for this run (not copied: an
    // `Option` of a copy is what LLVM spills uninitialised).
    let ep = unsafe { DP_ENDPOINTS6.get(ifindex) };
    if is_link_local(&pkt.src) || pkt.src == [0; 16] {
        if let Some(ep) = ep {
            link_local_icc(pkt, ep)?;
        }
        return Ok(TCX_NEXT);
    }
    let Some(ep) = ep else {
        // SAFETY: only whether the key is present.
        if unsafe { DP_ENDPOINTS.get(ifindex) }.is_some() {
            // One of ours, without an IPv6 address.
            return Err(DropReason::Spoofed);
        }
        return Ok(TCX_NEXT);
    };
    if pkt.src != ep.addr && !same_sandbox(ep, &pkt.src) {
        return Err(DropReason::Spoofed);
    }
    if upper == Ipv6Upper::Unknown {
        // Nothing to translate or route fast: where it may go, the stack's.
        isolation(pkt, ep)?;
        return Ok(TCX_NEXT);
    }
    if pkt.later_fragment {
        let verdict = later_fragment(ctx, pkt)?;
        if verdict != NOT_TRACKED {
            return Ok(verdict);
        }
        isolation(pkt, ep)?;
        return Ok(TCX_NEXT);
    }
    // A first fragment's ports, recorded for the later ones.
    frag::track6(pkt, ZONE);
    Ok(CONTINUE)
}

/// A parsed packet from a container (its source checked): a hairpin flow,
/// a new one to a published port, or isolation and the way to the world.
#[inline(always)]
fn flow(ctx: &TcContext, pkt: &Ipv6Packet) -> Result<i32, DropReason> {
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a map value, read in place for this run.
    let Some(ep) = (unsafe { DP_ENDPOINTS6.get(ifindex) }) else {
        return Ok(TCX_NEXT);
    };
    if nat6::tracked(ctx, pkt, ZONE)? {
        nat6::apply(ctx, pkt)?;
        return Ok(nat6::redirect(ctx, false)?.unwrap_or(TCX_NEXT));
    }
    let stats = hairpin(ctx, pkt, ep)?;
    if stats != NOT_PUBLISHED {
        if stats & OWN_PORT != 0 {
            nat6::own_port(ctx, pkt, ZONE, &ep.gateway, stats & !OWN_PORT)?;
        }
        nat6::apply(ctx, pkt)?;
        return Ok(nat6::redirect(ctx, true)?.unwrap_or(TCX_NEXT));
    }
    isolation(pkt, ep)?;
    world(ctx, pkt, ifindex)
}

/// The fast path to the uplink for a packet to the world; the stack's
/// otherwise. A step of its own: the FIB lookup's parameters do not fit
/// the program's frame.
#[inline(never)]
fn world(ctx: &TcContext, pkt: &Ipv6Packet, ifindex: u32) -> Result<i32, DropReason> {
    Ok(fastpath::to_world(ctx, pkt, ifindex)?.unwrap_or(TCX_NEXT))
}

// The NAT steps are BPF subprograms of their own, as in `uplink6`: the
// program's frame and the one step it runs must fit 512 bytes together.

/// [`later_fragment`]'s answer for a fragment of no tracked flow.
const NOT_TRACKED: i32 = i32::MIN;

/// A non-first fragment of a hairpin flow follows its first fragment's
/// translation; [`NOT_TRACKED`] for any other (isolation still applies). A
/// path of its own: on the main one the verifier knows a packet is no later
/// fragment.
#[inline(never)]
fn later_fragment(ctx: &TcContext, pkt: &mut Ipv6Packet) -> Result<i32, DropReason> {
    if frag::track6(pkt, ZONE) == Frag::Untracked || !nat6::tracked(ctx, pkt, ZONE)? {
        return Ok(NOT_TRACKED);
    }
    nat6::apply(ctx, pkt)?;
    Ok(nat6::redirect(ctx, false)?.unwrap_or(TCX_NEXT))
}

/// [`hairpin`]'s answer when no published port is addressed.
const NOT_PUBLISHED: u32 = u32::MAX;
/// In [`hairpin`]'s answer: the container reaches its own port.
const OWN_PORT: u32 = 1 << 31;

/// A new flow to a port published on a host address: the hairpin's DNAT.
/// Returns the mapping's counter slot, with [`OWN_PORT`] when the
/// container reaches its own port ([`own_port`] completes that flow), or
/// [`NOT_PUBLISHED`]. Plain integers, not an `Option`: see `uplink6`'s
/// `subnet`.
#[inline(never)]
fn hairpin(ctx: &TcContext, pkt: &Ipv6Packet, ep: &EndpointInfo6) -> Result<u32, DropReason> {
    let Some(target) = nat::hairpin_target(pkt) else {
        return Ok(NOT_PUBLISHED);
    };
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let own = target.addr == ep.addr;
    nat6::hairpin(ctx, pkt, ZONE, &target, ifindex, own)?;
    Ok(target.stats_index | if own { OWN_PORT } else { 0 })
}

/// Whether `src` is the address of another endpoint of `ep`'s sandbox: a
/// container on two networks answers a client of one from its address on
/// the other (as `endpoint::same_sandbox`).
#[inline(always)]
fn same_sandbox(ep: &EndpointInfo6, src: &[u8; 16]) -> bool {
    // SAFETY: read at once.
    ep.sandbox != 0
        && unsafe { DP_SANDBOX_ADDRS6.get(*src) }.is_some_and(|s| s.sandbox == ep.sandbox)
}

/// Direct traffic to a managed subnet: only to the gateway, or within the
/// sender's own network when ICC is on.
#[inline(always)]
fn isolation(pkt: &Ipv6Packet, ep: &EndpointInfo6) -> Result<(), DropReason> {
    if pkt.dst == ep.gateway {
        return Ok(());
    }
    let Some(dst_net) = DP_SUBNETS6.get(&Key::new(128, pkt.dst)) else {
        return Ok(());
    };
    if dst_net.network_id != ep.network_id {
        return Err(DropReason::Isolated);
    }
    if dst_net.flags & SUBNET_NO_ICC != 0 {
        return Err(DropReason::IccDisabled);
    }
    Ok(())
}

/// Link-local traffic stays on the bridge, where only ICC governs it: with
/// ICC off, unicast to another link-local address carries ICMPv6 only (NDP
/// must work, to the gateway too).
#[inline(always)]
fn link_local_icc(pkt: &Ipv6Packet, ep: &EndpointInfo6) -> Result<(), DropReason> {
    if pkt.proto == IPPROTO_ICMPV6 || is_multicast(&pkt.dst) || !is_link_local(&pkt.dst) {
        return Ok(());
    }
    let Some(net) = DP_SUBNETS6.get(&Key::new(128, ep.addr)) else {
        return Ok(());
    };
    if net.flags & SUBNET_NO_ICC != 0 {
        return Err(DropReason::IccDisabled);
    }
    Ok(())
}
