//! `dp_from_container`: tc ingress on an endpoint's host-side veth (Cilium's
//! "from-container"), for every packet a container sends into the host:
//! - anti-spoofing: the source must be the endpoint's own address, or that
//!   of another endpoint in the same sandbox (`DP_SANDBOX_ADDRS`): a
//!   container on two networks answers a client of one from its address on
//!   the other when that is where the client's hairpin flow was translated
//!   to, and its routes send the answer out by the client's network (the
//!   flow's reply entry then translates it as any hairpin reply);
//! - hairpin: a container reaching a published port on a host address gets
//!   DNAT here (the uplink never sees this traffic), keeping its address.
//!   The server's replies enter the host through the server's own
//!   from-container program, where the flow's reply entry restores the
//!   published address and sends them straight into the client's veth: once
//!   their source is the host's address, the host stack would drop them as
//!   martian. A container reaching its own published port also gets the
//!   gateway as its source (it would drop a packet from itself), and both
//!   directions go straight back into it;
//! - isolation: no direct traffic to another network's endpoints, and none
//!   between endpoints of one network with `enable_icc=false` (published
//!   ports, which go through the host address, still work);
//! - the fast path out: what is left and heads for the world (replies of
//!   published flows, masqueraded egress) is routed straight to the uplink's
//!   egress (`fastpath::to_world`), where `dp_uplink_out` translates it.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_REDIRECT},
    btf_maps::lpm_trie::Key,
    helpers::bpf_redirect,
    macros::classifier,
    programs::TcContext,
};
use dataplane_common::{
    ct::{CtEntryOf, FLAG_DNAT, FLAG_HAIRPIN_SELF, FLAG_LOCAL, ZONE_ENDPOINT},
    drop::DropReason,
    nat::{EndpointInfo, SUBNET_NO_ICC},
};
use network_types::eth::EthHdr;

use crate::{
    conntrack,
    counters::bump,
    drop::drop_packet,
    fastpath,
    frag::{self, Frag},
    maps::{DP_ENDPOINTS, DP_ENDPOINTS6, DP_PORT_STATS, DP_SANDBOX_ADDRS, DP_SUBNETS},
    nat,
    parse::{ip_len, parse, Ipv4Packet, L3},
};

const TCX_NEXT: i32 = -1;
const ZONE: u8 = ZONE_ENDPOINT;

#[classifier]
pub fn dp_from_container(ctx: TcContext) -> i32 {
    match try_from_container(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => drop_packet(&ctx, reason),
    }
}

#[inline(always)]
fn try_from_container(ctx: &TcContext) -> Result<i32, DropReason> {
    let mut pkt = Ipv4Packet::default();
    let l3 = parse(ctx, &mut pkt)?;
    if l3 == L3::Ipv6 {
        return ipv6_of_ipv4_only(ctx);
    }
    if l3 != L3::Ipv4 {
        return Ok(TCX_NEXT);
    }
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: copied out at once.
    let Some(ep) = (unsafe { DP_ENDPOINTS.get(ifindex) }).copied() else {
        // SAFETY: only whether the key is present.
        if unsafe { DP_ENDPOINTS6.get(ifindex) }.is_some() {
            // One of ours without an IPv4 address (an IPv6-only network).
            return Err(DropReason::Spoofed);
        }
        return Ok(TCX_NEXT);
    };
    if pkt.src != ep.addr && !same_sandbox(&ep, &pkt.src) {
        return Err(DropReason::Spoofed);
    }
    let frag = frag::track(&mut pkt, ZONE);
    if frag != Frag::Untracked {
        if let Some(e) = nat::translate_tracked(ctx, &pkt, ZONE)? {
            return finish(ctx, &e);
        }
    }
    if frag == Frag::Whole {
        if let Some(target) = nat::hairpin_target(&pkt) {
            let mut orig =
                conntrack::entry(ctx, FLAG_DNAT, &pkt)?.with_dst(target.addr, target.port);
            // Replies go back into this container, from the bridge: the
            // addresses of the frame as it arrived, swapped.
            let macs: [u8; 12] = ctx.load(0).map_err(|_| DropReason::Truncated)?;
            orig.redirect_ifindex = ifindex;
            orig.redirect_dmac.copy_from_slice(&macs[6..]);
            orig.redirect_smac.copy_from_slice(&macs[..6]);
            if target.addr == ep.addr {
                orig.flags |= FLAG_HAIRPIN_SELF;
                orig = nat::snat::<_, false>(ctx, &pkt, ZONE, orig, ep.gateway)?;
            } else {
                let key = conntrack::key_of(&pkt, ZONE);
                conntrack::create(&key, &orig, false).map_err(|_| DropReason::CtInsert)?;
            }
            bump(&DP_PORT_STATS, target.stats_index, ip_len(ctx));
            nat::apply(ctx, &pkt, &orig)?;
            if orig.flags & FLAG_HAIRPIN_SELF == 0 {
                return Ok(TCX_NEXT);
            }
            return finish(ctx, &orig);
        }
    }
    isolation(&pkt, &ep)?;
    if let Some(verdict) = fastpath::to_world(ctx, &pkt, ifindex)? {
        return Ok(verdict);
    }
    Ok(TCX_NEXT)
}

/// IPv6 from the veth of an endpoint without an IPv6 address, which has no
/// `dp_from_container6` after this program (it is attached only to
/// endpoints with one, `DP_ENDPOINTS6`): only link-local and unspecified
/// sources pass (NDP, duplicate address detection), as that program would
/// allow. Not ours, or with IPv6: the next program's.
#[inline(always)]
fn ipv6_of_ipv4_only(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: only whether the keys are present.
    let ours_v4_only = unsafe { DP_ENDPOINTS.get(ifindex) }.is_some()
        && unsafe { DP_ENDPOINTS6.get(ifindex) }.is_none();
    if !ours_v4_only {
        return Ok(TCX_NEXT);
    }
    // The source address: bytes 8..24 of the IPv6 header.
    let src: [u32; 4] = ctx
        .load(EthHdr::LEN + 8)
        .map_err(|_| DropReason::Truncated)?;
    let first = src[0].to_ne_bytes();
    let link_local = first[0] == 0xfe && first[1] & 0xc0 == 0x80;
    if link_local || src == [0; 4] {
        return Ok(TCX_NEXT);
    }
    Err(DropReason::Spoofed)
}

/// Whether `src` is the address of another endpoint in `ep`'s sandbox
/// (looked up only for sources that are not the endpoint's own, so the
/// common case costs nothing). The key is read where it lies: the
/// program's frame is at the 512-byte stack limit (with the filter's
/// `bpf_loop` callback), and a copy would push it over.
#[inline(always)]
fn same_sandbox(ep: &EndpointInfo, src: &[u8; 4]) -> bool {
    // SAFETY: read at once.
    ep.sandbox != 0 && unsafe { DP_SANDBOX_ADDRS.get(src) }.is_some_and(|s| s.sandbox == ep.sandbox)
}

/// Direct traffic to a managed subnet: only to the gateway, or within the
/// sender's own network when ICC is on.
#[inline(always)]
fn isolation(pkt: &Ipv4Packet, ep: &EndpointInfo) -> Result<(), DropReason> {
    if pkt.dst == ep.gateway {
        return Ok(());
    }
    let Some(dst_net) = DP_SUBNETS.get(&Key::new(32, pkt.dst)) else {
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

/// After a rewrite: an entry with a redirect sends the packet straight into
/// that container's veth with the Ethernet addresses it recorded, or, for
/// the reply of a host-local flow, into `lo`'s ingress (its recorded
/// addresses are `lo`'s, zero), where the host stack delivers it to the
/// client's socket.
#[inline(always)]
fn finish<A>(ctx: &TcContext, e: &CtEntryOf<A>) -> Result<i32, DropReason> {
    if e.redirect_ifindex == 0 {
        return Ok(TCX_NEXT);
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&e.redirect_dmac);
    macs[6..].copy_from_slice(&e.redirect_smac);
    ctx.store(0, &macs, 0).map_err(|_| DropReason::Rewrite)?;
    let flags = if e.flags & FLAG_LOCAL != 0 {
        u64::from(BPF_F_INGRESS)
    } else {
        0
    };
    // SAFETY: a helper taking plain integers.
    let rc = unsafe { bpf_redirect(e.redirect_ifindex, flags) };
    if rc != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::Rewrite);
    }
    Ok(TC_ACT_REDIRECT)
}
