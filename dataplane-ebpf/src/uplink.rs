//! The uplink's programs (Cilium's "from-world"/"to-world"):
//! - `dp_uplink_in` (tc ingress): translated flows' packets first (replies to
//!   masqueraded flows, later packets of published-port flows), then new
//!   flows to a published port (DNAT to the container, client address kept).
//! - `dp_uplink_out` (tc egress): translated flows' packets (replies from
//!   published containers get the host address back), then new flows from
//!   managed subnets: masquerade, or a drop for internal networks.
//!
//! Packets translated to a container's address in `dp_uplink_in` take the
//! fast path into it when they can (`fastpath::into_endpoint`); packets the
//! fast path routed out of containers reach `dp_uplink_out` like the ones
//! the stack forwards, so each is translated here once.
//!
//! Before anything else `dp_uplink_in` refuses what cannot come from
//! outside (loopback destinations, sources that are the host's or its
//! containers'). Fragments follow their first fragment's flow (`frag`).
//!
//! Packets routed straight to a managed subnet meet its network's gateway
//! mode (`gateway_mode`: one lookup of the subnet's flags, then of the open
//! port or trusted interface): `nat` drops them (direct-access protection),
//! `routed` lets in ICMP and published container ports only.
//!
//! Packets the dataplane has nothing to do with go on unchanged (`TCX_NEXT`).

use aya_ebpf::{btf_maps::lpm_trie::Key, macros::classifier, programs::TcContext};
use dataplane_common::{
    ct::{FLAG_DNAT, FLAG_REPLY, FLAG_SNAT, REWRITE_DST, ZONE_UPLINK},
    drop::DropReason,
    nat::{
        PortKey, TrustedIface, SUBNET_INTERNAL, SUBNET_MASQUERADE, SUBNET_PROTECTED, SUBNET_ROUTED,
    },
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    conntrack,
    counters::bump,
    drop::drop_packet,
    fastpath, filter,
    frag::{self, Frag},
    icmp,
    maps::{
        DP_HOST_ADDRS, DP_OPEN_PORTS, DP_PORT_STATS, DP_SUBNETS, DP_TRUSTED_IFACES, DP_UPLINKS,
    },
    nat,
    parse::{ip_len, parse, Ipv4Packet, ICMP_ECHO_REQUEST, L3},
    tcp,
};

/// tcx: continue with the next program (or the stack).
const TCX_NEXT: i32 = -1;
/// The conntrack zone of the uplink's flows.
const ZONE: u8 = ZONE_UPLINK;

#[classifier]
pub fn dp_uplink_in(ctx: TcContext) -> i32 {
    match try_uplink_in(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => drop_packet(&ctx, reason),
    }
}

#[classifier]
pub fn dp_uplink_out(ctx: TcContext) -> i32 {
    match try_uplink_out(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => drop_packet(&ctx, reason),
    }
}

#[inline(always)]
fn try_uplink_in(ctx: &TcContext) -> Result<i32, DropReason> {
    let mut pkt = Ipv4Packet::default();
    if parse(ctx, &mut pkt)? != L3::Ipv4 {
        return Ok(TCX_NEXT);
    }
    from_outside(&pkt)?;
    if frag::track(&mut pkt, ZONE) == Frag::Untracked {
        // No ports to find a flow by: the stack's (reassembly of a
        // datagram for the host itself, or forwarding untranslated).
        return Ok(TCX_NEXT);
    }
    let key = conntrack::key_of(&pkt, ZONE);
    if let Some(entry) = conntrack::lookup_flow(&key, &pkt) {
        // SAFETY: from the lookup above, copied out at once.
        let e = unsafe { *entry };
        // Every packet of a flow coming in to a published port meets the
        // filter rules, as DOCKER-USER sees them; replies to flows the
        // containers started do not (their egress keeps working).
        if e.flags & FLAG_DNAT != 0 && e.flags & FLAG_REPLY == 0 {
            filter_to(ctx, &pkt, e.new_daddr, e.new_dport)?;
        }
        let e = nat::apply_tracked(ctx, &pkt, &key, entry)?;
        // Later packets of published flows, replies to masqueraded ones.
        if e.rewrite & REWRITE_DST != 0 {
            if let Some(verdict) = fastpath::into_endpoint(ctx, &pkt, e.new_daddr)? {
                return Ok(verdict);
            }
        }
        return Ok(TCX_NEXT);
    }
    if pkt.later_fragment {
        // Its first fragment started no flow here.
        return Ok(TCX_NEXT);
    }
    if icmp::translate_error(ctx, &pkt, ZONE)? {
        return Ok(TCX_NEXT);
    }
    let Some(target) = nat::published(&pkt) else {
        // Routed straight to a container's address (no NAT): filtered too,
        // and tracked untranslated, so its replies are not masqueraded as
        // if they started a flow. Internal networks take nothing from out
        // there.
        let Some(policy) = DP_SUBNETS.get(&Key::new(32, pkt.dst)) else {
            return Ok(TCX_NEXT);
        };
        let (flags, network) = (policy.flags, policy.network_id);
        if flags & SUBNET_INTERNAL != 0 {
            return Err(DropReason::Internal);
        }
        // The filter rules first: DOCKER-USER sees what the mode drops.
        filter_to(ctx, &pkt, pkt.dst, pkt.dport)?;
        gateway_mode(ctx, &pkt, flags, network)?;
        if pkt.proto == IPPROTO_TCP && !tcp::may_start(pkt.tcp_flags) {
            // A reply to a flow the container started untranslated (no
            // masquerade): nothing to undo, nothing to track.
            if !tcp::flags_valid(pkt.tcp_flags) {
                return Err(DropReason::TcpInvalidFlags);
            }
            return Ok(TCX_NEXT);
        }
        let pass = conntrack::entry(ctx, 0, &pkt)?;
        conntrack::pass(&key, &pass);
        return Ok(TCX_NEXT);
    };
    if pkt.proto == IPPROTO_TCP && tcp::opens(pkt.tcp_flags) && !tcp::syn_checksum_ok(ctx, &pkt) {
        return Err(DropReason::TcpBadChecksum);
    }
    filter_to(ctx, &pkt, target.addr, target.port)?;
    let orig = conntrack::entry(ctx, FLAG_DNAT, &pkt)?.with_dst(target.addr, target.port);
    conntrack::create(&key, &orig, false).map_err(|_| DropReason::CtInsert)?;
    bump(&DP_PORT_STATS, target.stats_index, ip_len(ctx));
    nat::apply(ctx, &pkt, &orig)?;
    if let Some(verdict) = fastpath::into_endpoint(ctx, &pkt, target.addr)? {
        return Ok(verdict);
    }
    Ok(TCX_NEXT)
}

/// What no packet from outside may be, whatever it is for (the kernel's
/// martian checks, which DNAT and the fast path would otherwise bypass):
/// addressed to loopback (a port published on 127.0.0.1 or 0.0.0.0 is not
/// reachable from the network, moby#45610), or from loopback, from the
/// host's own addresses, or from a managed subnet (forged: those live
/// behind the host, and the stack's rp_filter does not see packets the
/// fast path redirects).
#[inline(always)]
fn from_outside(pkt: &Ipv4Packet) -> Result<(), DropReason> {
    if pkt.dst[0] == 127 {
        return Err(DropReason::LoopbackDestination);
    }
    if pkt.src[0] == 127 {
        return Err(DropReason::MartianSource);
    }
    // SAFETY: only whether the key is present.
    if unsafe { DP_HOST_ADDRS.get(pkt.src) }.is_some()
        || DP_SUBNETS.get(&Key::new(32, pkt.src)).is_some()
    {
        return Err(DropReason::MartianSource);
    }
    Ok(())
}

/// The gateway mode of the network a packet routed straight to one of its
/// addresses (no published port translated it) belongs to, by its subnet's
/// flags: `nat` (protected) takes nothing; `routed` takes ICMP, packets of
/// TCP connections under way (replies to the containers' own, which are
/// not tracked), and new flows to a port a container published, as the
/// container's own port; a host address on the bridge (the gateway) is the
/// host's input there. An interface the network trusts skips all of it.
#[inline(always)]
fn gateway_mode(
    ctx: &TcContext,
    pkt: &Ipv4Packet,
    flags: u32,
    network_id: u32,
) -> Result<(), DropReason> {
    if flags & (SUBNET_PROTECTED | SUBNET_ROUTED) == 0 {
        return Ok(());
    }
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let trusted = TrustedIface {
        ifindex,
        network_id,
    };
    // SAFETY: only whether the key is present.
    if unsafe { DP_TRUSTED_IFACES.get(trusted) }.is_some() {
        return Ok(());
    }
    if flags & SUBNET_ROUTED != 0 {
        if pkt.proto == IPPROTO_ICMP || (pkt.proto == IPPROTO_TCP && !tcp::opens(pkt.tcp_flags)) {
            return Ok(());
        }
        let open = PortKey {
            addr: pkt.dst,
            port: pkt.dport,
            proto: pkt.proto,
            _pad: 0,
        };
        // SAFETY: only whether the keys are present.
        if unsafe { DP_OPEN_PORTS.get(open) }.is_some()
            || unsafe { DP_HOST_ADDRS.get(pkt.dst) }.is_some()
        {
            return Ok(());
        }
    }
    Err(DropReason::DirectAccess)
}

/// The filter rules for a packet heading to `dst`:`dport` (after DNAT).
#[inline(always)]
fn filter_to(
    ctx: &TcContext,
    pkt: &Ipv4Packet,
    dst: [u8; 4],
    dport: [u8; 2],
) -> Result<(), DropReason> {
    let network = DP_SUBNETS
        .get(&Key::new(32, dst))
        .map(|p| p.network_id)
        .unwrap_or(0);
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    filter::check(ifindex, pkt.src, pkt.proto, dport, network, ip_len(ctx))
}

#[inline(always)]
fn try_uplink_out(ctx: &TcContext) -> Result<i32, DropReason> {
    let mut pkt = Ipv4Packet::default();
    if parse(ctx, &mut pkt)? != L3::Ipv4 {
        return Ok(TCX_NEXT);
    }
    let frag = frag::track(&mut pkt, ZONE);
    if frag != Frag::Untracked {
        if nat::translate_tracked(ctx, &pkt, ZONE)?.is_some() {
            return Ok(TCX_NEXT);
        }
        if frag == Frag::Whole && icmp::translate_error(ctx, &pkt, ZONE)? {
            return Ok(TCX_NEXT);
        }
    }
    let addr = match DP_SUBNETS.get(&Key::new(32, pkt.src)) {
        Some(policy) => {
            let flags = policy.flags;
            if flags & SUBNET_INTERNAL != 0 {
                return Err(DropReason::Internal);
            }
            if flags & SUBNET_MASQUERADE == 0 {
                if flags & SUBNET_ROUTED != 0 && frag == Frag::Whole && pkt.proto == IPPROTO_UDP {
                    // Tracked untranslated, so the replies get past the
                    // routed network's checks on their way in; created
                    // once per flow, not rewritten by each datagram.
                    let key = conntrack::key_of(&pkt, ZONE);
                    if conntrack::lookup_flow(&key, &pkt).is_none() {
                        let pass = conntrack::entry(ctx, 0, &pkt)?;
                        conntrack::pass(&key, &pass);
                    }
                }
                return Ok(TCX_NEXT);
            }
            if pkt.later_fragment {
                // A fragment of a masqueraded datagram that cannot be
                // translated (its first fragment was not seen, or started no
                // flow) must not leave with the container's address.
                return Err(DropReason::FragmentUntracked);
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
            uplink.addr
        }
        None if frag == Frag::Whole && conntrack::host_flow_collides(&pkt, ZONE) => pkt.src,
        None => return Ok(TCX_NEXT),
    };
    let orig = nat::snat::<_, true>(
        ctx,
        &pkt,
        ZONE,
        conntrack::entry(ctx, FLAG_SNAT, &pkt)?,
        addr,
    )?;
    nat::apply(ctx, &pkt, &orig)?;
    Ok(TCX_NEXT)
}
