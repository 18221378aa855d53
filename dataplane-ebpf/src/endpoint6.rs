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
//! IPv6 has no hairpin in BPF yet (a container reaching a port published on
//! a host IPv6 address) and no fast path: what is left goes to the stack.
//! The hairpin's conntrack entries (104 bytes each for IPv6) do not fit the
//! 512-byte frame beside the parser's; it needs Cilium's per-CPU scratch
//! map for them (docs/architecture.md).

use aya_ebpf::{btf_maps::lpm_trie::Key, macros::classifier, programs::TcContext};
use dataplane_common::{
    drop::DropReason,
    nat::{EndpointInfo6, SUBNET_NO_ICC},
    net::IPPROTO_ICMPV6,
};

use crate::{
    drop::drop_packet,
    maps::{DP_ENDPOINTS, DP_ENDPOINTS6, DP_SUBNETS6},
    parse::{l3, parse6, Ipv6Packet, L3},
};

const TCX_NEXT: i32 = -1;

#[classifier]
pub fn dp_from_container6(ctx: TcContext) -> i32 {
    match try_from_container6(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => drop_packet(&ctx, reason),
    }
}

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

#[inline(always)]
fn try_from_container6(ctx: &TcContext) -> Result<i32, DropReason> {
    if l3(ctx)? != L3::Ipv6 {
        return Ok(TCX_NEXT);
    }
    let mut pkt = Ipv6Packet::default();
    parse6(ctx, &mut pkt)?;
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: copied out at once.
    let ep = unsafe { DP_ENDPOINTS6.get(ifindex) }.copied();
    if is_link_local(&pkt.src) || pkt.src == [0; 16] {
        if let Some(ep) = ep {
            link_local_icc(&pkt, &ep)?;
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
    if pkt.src != ep.addr {
        return Err(DropReason::Spoofed);
    }
    isolation(&pkt, &ep)?;
    Ok(TCX_NEXT)
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
