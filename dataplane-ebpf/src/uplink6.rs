//! The uplink's IPv6 programs, run by tcx after their IPv4 twins (which
//! leave IPv6 alone):
//! - `dp_uplink_in6` (tc ingress): translated flows first (replies to NAT66
//!   masquerade, later packets of published flows), ICMPv6 errors about
//!   them, then new flows to a published port (DNAT, client address kept),
//!   then what is routed straight to a managed subnet meets the network's
//!   gateway mode;
//! - `dp_uplink_out6` (tc egress): translated flows, then new flows from
//!   managed subnets: NAT66 masquerade to the uplink's IPv6 address for
//!   networks that masquerade (ULA ones), a drop for internal ones, nothing
//!   for routed ones.
//!
//! NDP, router advertisements and the host's own traffic pass untouched. A
//! packet whose upper layer hides behind more extension headers than the
//! parser walks is never translated: dropped when it concerns a managed
//! subnet, passed otherwise. Non-first fragments follow their first
//! fragment's flow (`frag`, as on IPv4); one whose first was not seen passes
//! to the stack untranslated, or is dropped when it would leave with a
//! masqueraded container's address. The DOCKER-USER filters meet new flows
//! to published ports and routed subnets and every later packet of a
//! published flow (`filter::new_flow6`, `filter::tracked6`). Packets a
//! rewrite sends to a container (DNAT, replies to NAT66) take the fast path
//! into it when they can (`fastpath::into_endpoint`, as on IPv4).

use aya_ebpf::{btf_maps::lpm_trie::Key, programs::TcContext};
use dataplane_common::{
    ct::{REWRITE_DST, ZONE_UPLINK},
    drop::DropReason,
    nat::{
        PortKey6, SubnetPolicy, TrustedIface, SUBNET_INTERNAL, SUBNET_MASQUERADE, SUBNET_PROTECTED,
        SUBNET_ROUTED,
    },
    net::{IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    conntrack,
    family::Family,
    fastpath, filter,
    frag::{self, Frag},
    icmp6,
    maps::{DP_OPEN_PORTS6, DP_SUBNETS6, DP_TRUSTED_IFACES, DP_UPLINKS6},
    nat, nat6,
    parse::{l3, parse6, parse6_fixed, Ipv6Packet, Ipv6Upper, ICMPV6_ECHO_REQUEST, L3},
    stage::{two_stage, CONTINUE},
    tcp,
};

const TCX_NEXT: i32 = -1;
const ZONE: u8 = ZONE_UPLINK;
const LOOPBACK: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

// Each program runs in two stages, BPF global functions (see `stage`).
two_stage!(dp_uplink_in6: dp6_uplink_in_parse => parse_in, dp6_uplink_in_flow => flow_in);
two_stage!(dp_uplink_out6: dp6_uplink_out_parse => parse_out, dp6_uplink_out_flow => flow_out);

/// The policy of the managed subnet `addr` is in; zeroed when it is in none
/// (network keys are never 0). Not an `Option`: LLVM copies an absent
/// payload's never-written registers around, which the verifier refuses as
/// uninitialised reads.
#[inline(always)]
fn subnet(addr: &[u8; 16]) -> SubnetPolicy {
    match DP_SUBNETS6.get(&Key::new(128, *addr)) {
        Some(p) => SubnetPolicy {
            flags: p.flags,
            network_id: p.network_id,
        },
        None => SubnetPolicy {
            flags: 0,
            network_id: 0,
        },
    }
}

/// From the wire to the fields of a packet from outside: what no such
/// packet may be, what the parser cannot see into, and the fragments.
#[inline(always)]
fn parse_in(ctx: &TcContext, pkt: &mut Ipv6Packet) -> Result<i32, DropReason> {
    if l3(ctx)? != L3::Ipv6 {
        return Ok(TCX_NEXT);
    }
    let upper = parse6(ctx, pkt)?;
    from_outside(pkt)?;
    if upper == Ipv6Upper::Unknown {
        if subnet(&pkt.dst).network_id != 0 {
            return Err(DropReason::Ipv6ExtHeaders);
        }
        return Ok(TCX_NEXT);
    }
    if frag::track6(pkt, ZONE) == Frag::Untracked {
        // No ports to find a flow by: the stack's.
        return Ok(TCX_NEXT);
    }
    Ok(CONTINUE)
}

/// A parsed packet from outside: its flow, or a new one.
#[inline(always)]
fn flow_in(ctx: &TcContext, pkt: &Ipv6Packet) -> Result<i32, DropReason> {
    // One call of each step below, whichever way the flow was found: the
    // verifier walks a step once per call site (and per state there).
    let translate = if nat6::tracked(ctx, pkt, ZONE)? {
        filter::tracked6(ctx, pkt)?;
        true
    } else {
        if pkt.later_fragment {
            // Its first fragment started no flow here.
            return Ok(TCX_NEXT);
        }
        if icmp_error(ctx, pkt)? {
            return Ok(TCX_NEXT);
        }
        filter::new_flow6(ctx, pkt)?;
        new_flow_in(ctx, pkt)?
    };
    if !translate {
        return Ok(TCX_NEXT);
    }
    nat6::apply(ctx, pkt)?;
    deliver(ctx)
}

// The steps below are BPF subprograms of their own: a program's frame and
// the frame of the one step it runs at a time must fit 512 bytes together,
// which all the steps inlined into one frame would not (an IPv6 conntrack
// entry is 104 bytes).

/// The first packet of a flow from outside: DNAT to a published port
/// (true: the rewrite is left for [`apply`]), or the gateway mode of the
/// subnet it is routed to.
#[inline(never)]
fn new_flow_in(ctx: &TcContext, pkt: &Ipv6Packet) -> Result<bool, DropReason> {
    let Some(target) = nat::published(pkt) else {
        let policy = subnet(&pkt.dst);
        if policy.network_id == 0 {
            return Ok(false);
        }
        if policy.flags & SUBNET_INTERNAL != 0 {
            return Err(DropReason::Internal);
        }
        gateway_mode(ctx, pkt, policy)?;
        if pkt.proto == IPPROTO_TCP && !tcp::may_start(pkt.tcp_flags) {
            if !tcp::flags_valid(pkt.tcp_flags) {
                return Err(DropReason::TcpInvalidFlags);
            }
            return Ok(false);
        }
        if pkt.proto == IPPROTO_TCP || pkt.proto == IPPROTO_UDP {
            // Tracked untranslated, so the replies are not masqueraded as
            // if they started a flow.
            nat6::pass(ctx, pkt, ZONE)?;
        }
        return Ok(false);
    };
    if pkt.proto == IPPROTO_TCP && tcp::opens(pkt.tcp_flags) && !tcp::syn_checksum_ok(ctx, pkt) {
        return Err(DropReason::TcpBadChecksum);
    }
    nat6::dnat(ctx, pkt, ZONE, &target)?;
    Ok(true)
}

/// A non-first fragment leaving by the uplink: its datagram's flow's
/// translation when the first fragment was seen. Otherwise it must not
/// leave a masquerading network with the container's address, nor an
/// internal one at all.
#[inline(never)]
fn later_fragment_out(
    ctx: &TcContext,
    pkt: &mut Ipv6Packet,
    policy: SubnetPolicy,
) -> Result<i32, DropReason> {
    if frag::track6(pkt, ZONE) != Frag::Untracked && nat6::tracked(ctx, pkt, ZONE)? {
        nat6::apply(ctx, pkt)?;
        return Ok(TCX_NEXT);
    }
    if policy.network_id == 0 {
        return Ok(TCX_NEXT);
    }
    if policy.flags & SUBNET_INTERNAL != 0 {
        return Err(DropReason::Internal);
    }
    if policy.flags & SUBNET_MASQUERADE != 0 {
        return Err(DropReason::FragmentUntracked);
    }
    Ok(TCX_NEXT)
}

/// The fast path into the container a rewrite (the flow's entry in the
/// scratch) made the destination; the stack's otherwise. The header fields
/// it needs are read again (`parse6_fixed`), not passed in.
#[inline(never)]
fn deliver(ctx: &TcContext) -> Result<i32, DropReason> {
    let s = nat6::scratch()?;
    if s.orig.rewrite & REWRITE_DST == 0 {
        return Ok(TCX_NEXT);
    }
    let dst = s.orig.new_daddr;
    let mut pkt = Ipv6Packet::default();
    parse6_fixed(ctx, &mut pkt)?;
    Ok(fastpath::into_endpoint(ctx, &pkt, dst)?.unwrap_or(TCX_NEXT))
}

/// An ICMPv6 error about a translated flow, translated (two steps, see
/// `icmp6::find_error`).
#[inline(always)]
fn icmp_error(ctx: &TcContext, pkt: &Ipv6Packet) -> Result<bool, DropReason> {
    if !icmp6::find_error(ctx, pkt, ZONE)? {
        return Ok(false);
    }
    icmp6::translate_error(ctx, pkt)?;
    Ok(true)
}

/// What no packet from outside may be: addressed to or from loopback, from
/// the host's own addresses or from a managed subnet (forged).
#[inline(always)]
fn from_outside(pkt: &Ipv6Packet) -> Result<(), DropReason> {
    if pkt.dst == LOOPBACK {
        return Err(DropReason::LoopbackDestination);
    }
    if pkt.src == LOOPBACK || <[u8; 16]>::is_host_addr(&pkt.src) || subnet(&pkt.src).network_id != 0
    {
        return Err(DropReason::MartianSource);
    }
    Ok(())
}

/// The gateway mode of the network a packet routed straight to one of its
/// addresses belongs to (see the IPv4 twin in `uplink`): `nat` takes
/// nothing, `routed` takes ICMPv6, TCP segments of connections under way
/// and new flows to the container ports published; a trusted interface
/// skips the checks.
#[inline(always)]
fn gateway_mode(ctx: &TcContext, pkt: &Ipv6Packet, policy: SubnetPolicy) -> Result<(), DropReason> {
    if policy.flags & (SUBNET_PROTECTED | SUBNET_ROUTED) == 0 {
        return Ok(());
    }
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let trusted = TrustedIface {
        ifindex,
        network_id: policy.network_id,
    };
    // SAFETY: only whether the key is present.
    if unsafe { DP_TRUSTED_IFACES.get(trusted) }.is_some() {
        return Ok(());
    }
    if policy.flags & SUBNET_ROUTED != 0 {
        if pkt.proto == IPPROTO_ICMPV6 || (pkt.proto == IPPROTO_TCP && !tcp::opens(pkt.tcp_flags)) {
            return Ok(());
        }
        let open = PortKey6 {
            addr: pkt.dst,
            port: pkt.dport,
            proto: pkt.proto,
            _pad: 0,
        };
        // SAFETY: only whether the key is present.
        if unsafe { DP_OPEN_PORTS6.get(open) }.is_some() || <[u8; 16]>::is_host_addr(&pkt.dst) {
            return Ok(());
        }
    }
    Err(DropReason::DirectAccess)
}

/// From the wire to the fields of a packet leaving by the uplink; what the
/// parser cannot see into, and the fragments.
#[inline(always)]
fn parse_out(ctx: &TcContext, pkt: &mut Ipv6Packet) -> Result<i32, DropReason> {
    if l3(ctx)? != L3::Ipv6 {
        return Ok(TCX_NEXT);
    }
    let upper = parse6(ctx, pkt)?;
    let policy = subnet(&pkt.src);
    if upper == Ipv6Upper::Unknown {
        if policy.network_id != 0 && policy.flags & SUBNET_MASQUERADE != 0 {
            return Err(DropReason::Ipv6ExtHeaders);
        }
        return Ok(TCX_NEXT);
    }
    if pkt.later_fragment {
        return later_fragment_out(ctx, pkt, policy);
    }
    // A first fragment's ports, recorded for the later ones.
    frag::track6(pkt, ZONE);
    Ok(CONTINUE)
}

/// A parsed packet leaving by the uplink: its flow, or a new one
/// (masquerade, routed, internal).
#[inline(always)]
fn flow_out(ctx: &TcContext, pkt: &Ipv6Packet) -> Result<i32, DropReason> {
    let policy = subnet(&pkt.src);
    let managed = policy.network_id != 0;
    if nat6::tracked(ctx, pkt, ZONE)? {
        nat6::apply(ctx, pkt)?;
        return Ok(TCX_NEXT);
    }
    if icmp_error(ctx, pkt)? {
        return Ok(TCX_NEXT);
    }
    let addr = match managed {
        true => {
            if policy.flags & SUBNET_INTERNAL != 0 {
                return Err(DropReason::Internal);
            }
            if policy.flags & SUBNET_MASQUERADE == 0 {
                if policy.flags & SUBNET_ROUTED != 0 && pkt.proto == IPPROTO_UDP {
                    // `tracked` found no flow: a new one, tracked so its
                    // replies get past the routed network's checks.
                    pass(ctx, pkt)?;
                }
                return Ok(TCX_NEXT);
            }
            let translatable = pkt.proto == IPPROTO_TCP
                || pkt.proto == IPPROTO_UDP
                || (pkt.proto == IPPROTO_ICMPV6 && pkt.icmp_type == ICMPV6_ECHO_REQUEST);
            if !translatable {
                return Ok(TCX_NEXT);
            }
            // SAFETY: the context's __sk_buff is valid for the whole program run.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            // SAFETY: copied out at once.
            let Some(uplink) = (unsafe { DP_UPLINKS6.get(ifindex) }).copied() else {
                return Ok(TCX_NEXT);
            };
            uplink.addr
        }
        false if conntrack::host_flow_collides(pkt, ZONE) => pkt.src,
        false => return Ok(TCX_NEXT),
    };
    nat6::masquerade(ctx, pkt, ZONE, &addr)?;
    nat6::apply(ctx, pkt)?;
    Ok(TCX_NEXT)
}

/// A new flow from a routed network, tracked untranslated.
#[inline(never)]
fn pass(ctx: &TcContext, pkt: &Ipv6Packet) -> Result<(), DropReason> {
    nat6::pass(ctx, pkt, ZONE)
}
