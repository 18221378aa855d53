//! The uplink's programs (Cilium's "from-world"/"to-world"):
//! - `dp_uplink_in` (tc ingress): translated flows' packets first (replies to
//!   masqueraded flows, later packets of published-port flows), then new
//!   flows to a published port (DNAT to the container, client address kept).
//! - `dp_uplink_out` (tc egress): translated flows' packets (replies from
//!   published containers get the host address back), then new flows from
//!   managed subnets: masquerade, or a drop for internal networks.
//!
//! Packets the dataplane has nothing to do with go on unchanged (`TCX_NEXT`).

use aya_ebpf::{btf_maps::lpm_trie::Key, macros::classifier, programs::TcContext};
use dataplane_common::{
    ct::{FLAG_DNAT, FLAG_SNAT},
    drop::DropReason,
    nat::{PortKey, SUBNET_INTERNAL, SUBNET_MASQUERADE},
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    conntrack,
    counters::bump,
    drop::drop_packet,
    maps::{DP_HOST_ADDRS, DP_PORTS, DP_PORT_STATS, DP_SUBNETS, DP_UPLINKS},
    nat,
    parse::{parse, Ipv4Packet, ICMP_ECHO_REQUEST, L3},
};

/// tcx: continue with the next program (or the stack).
const TCX_NEXT: i32 = -1;

#[classifier]
pub fn dp_uplink_in(ctx: TcContext) -> i32 {
    match try_uplink_in(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => drop_packet(reason, ctx.len()),
    }
}

#[classifier]
pub fn dp_uplink_out(ctx: TcContext) -> i32 {
    match try_uplink_out(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => drop_packet(reason, ctx.len()),
    }
}

/// Parses into `pkt`; false when there is nothing to translate (not IPv4,
/// or a non-first fragment, which carries no ports).
#[inline(always)]
fn ipv4(ctx: &TcContext, pkt: &mut Ipv4Packet) -> Result<bool, DropReason> {
    Ok(parse(ctx, pkt)? == L3::Ipv4 && !pkt.later_fragment)
}

/// Applies an existing conntrack entry to the packet, if there is one.
#[inline(always)]
fn translate_tracked(ctx: &TcContext, pkt: &Ipv4Packet) -> Result<bool, DropReason> {
    let key = conntrack::key_of(pkt);
    let Some(entry) = conntrack::lookup(&key) else {
        return Ok(false);
    };
    let closing = conntrack::touch(entry, pkt, ctx.len());
    // SAFETY: from the lookup above; copied out before any helper runs.
    let e = unsafe { *entry };
    if closing {
        conntrack::mark_closing(&e.peer_key(&key));
    }
    nat::apply(ctx, pkt, &e)?;
    Ok(true)
}

#[inline(always)]
fn try_uplink_in(ctx: &TcContext) -> Result<i32, DropReason> {
    let mut pkt = Ipv4Packet::default();
    if !ipv4(ctx, &mut pkt)? {
        return Ok(TCX_NEXT);
    }
    if translate_tracked(ctx, &pkt)? {
        return Ok(TCX_NEXT);
    }
    if pkt.proto != IPPROTO_TCP && pkt.proto != IPPROTO_UDP {
        return Ok(TCX_NEXT);
    }
    // A published port: bound to this destination, or to every host address
    // when the destination is one of ours.
    let mut pk = PortKey {
        addr: pkt.dst,
        port: pkt.dport,
        proto: pkt.proto,
        _pad: 0,
    };
    // SAFETY: read-only use of the value within this run.
    let target = match unsafe { DP_PORTS.get(pk) } {
        Some(t) => *t,
        None => {
            // SAFETY: as above.
            if unsafe { DP_HOST_ADDRS.get(pkt.dst) }.is_none() {
                return Ok(TCX_NEXT);
            }
            pk.addr = [0; 4];
            // SAFETY: as above.
            match unsafe { DP_PORTS.get(pk) } {
                Some(t) => *t,
                None => return Ok(TCX_NEXT),
            }
        }
    };
    let orig_key = conntrack::key_of(&pkt);
    let orig = conntrack::entry(FLAG_DNAT, &pkt).with_dst(target.addr, target.port);
    conntrack::create(&orig_key, &orig, false).map_err(|_| DropReason::CtInsert)?;
    bump(&DP_PORT_STATS, target.stats_index, ctx.len());
    nat::apply(ctx, &pkt, &orig)?;
    Ok(TCX_NEXT)
}

#[inline(always)]
fn try_uplink_out(ctx: &TcContext) -> Result<i32, DropReason> {
    let mut pkt = Ipv4Packet::default();
    if !ipv4(ctx, &mut pkt)? {
        return Ok(TCX_NEXT);
    }
    if translate_tracked(ctx, &pkt)? {
        return Ok(TCX_NEXT);
    }
    let Some(policy) = DP_SUBNETS.get(&Key::new(32, pkt.src)) else {
        return Ok(TCX_NEXT);
    };
    let flags = policy.flags;
    if flags & SUBNET_INTERNAL != 0 {
        return Err(DropReason::Internal);
    }
    if flags & SUBNET_MASQUERADE == 0 {
        return Ok(TCX_NEXT);
    }
    let translatable = pkt.proto == IPPROTO_TCP
        || pkt.proto == IPPROTO_UDP
        || (pkt.proto == IPPROTO_ICMP && pkt.icmp_type == ICMP_ECHO_REQUEST);
    if !translatable {
        return Ok(TCX_NEXT);
    }
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: read-only use within this run.
    let Some(uplink) = (unsafe { DP_UPLINKS.get(ifindex) }) else {
        return Ok(TCX_NEXT);
    };
    let orig = nat::snat(&pkt, conntrack::entry(FLAG_SNAT, &pkt), uplink.addr)?;
    nat::apply(ctx, &pkt, &orig)?;
    Ok(TCX_NEXT)
}
