//! The fast path: packets of translated flows delivered straight to where
//! the host stack would have sent them, skipping the bridge and the stack
//! (Cilium's "BPF host routing"). The one owner of the redirect decisions:
//! - [`into_endpoint`] (`dp_uplink_in`, after DNAT or a tracked flow's
//!   rewrite made a container the destination): `bpf_redirect_peer` on the
//!   endpoint's host-side veth, which lands the packet in the container's
//!   namespace, ingress to ingress;
//! - [`from_host`] (`dp_local_out`, `dp_local_out6`, a host-local
//!   connection translated per packet): `bpf_redirect` to the endpoint's
//!   host-side veth;
//! - [`to_world`] (`dp_from_container`, packets the container routes through
//!   its gateway to an address outside every managed subnet and the host):
//!   `bpf_fib_lookup`, then `bpf_redirect` to the uplink's egress, or
//!   `bpf_redirect_neigh` when the next hop's MAC is not resolved yet. Only
//!   routing happens here: the uplink's egress program (`dp_uplink_out`)
//!   still sees the packet and translates it, once, as it does for packets
//!   the stack forwards.
//!
//! All three serve both families (IPv6 from `dp_uplink_in6`,
//! `dp_local_out6` and `dp_from_container6`): what differs, the maps, the
//! FIB lookup's address fields and the hop count, is [`Forward`]'s.
//!
//! Both do what forwarding would have done to the packet: Ethernet addresses
//! of the next hop, TTL (hop limit) decremented (IPv4's checksum updated). Whatever the stack
//! must see goes on unchanged (`None`): the fast path switched off, fragments
//! (reassembly and fragmentation are the stack's), IP options and IPv6
//! extension headers, TTL <= 1 (the stack sends time exceeded), packets bigger than the target's MTU (the
//! stack sends "fragmentation needed" or "packet too big", so PMTU
//! discovery works), failed FIB
//! lookups, egress through a device that is not an uplink of the family
//! (one without an IPv6 address masquerades no IPv6), and endpoints the
//! maps do not know (or know inconsistently: a stale entry must never
//! deliver into the wrong container).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_check_mtu_flags::BPF_MTU_CHK_SEGS, bpf_check_mtu_ret::BPF_MTU_CHK_RET_SUCCESS,
        bpf_fib_lookup, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT,
    },
    btf_maps::lpm_trie::Key,
    helpers::{bpf_check_mtu, bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
    EbpfContext,
};
use dataplane_common::{
    drop::DropReason,
    nat::{EndpointInfo, EndpointRoute},
    net::{IPPROTO_TCP, IPPROTO_UDP},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    family::Family,
    maps::{
        DP_ENDPOINTS, DP_ENDPOINTS6, DP_ENDPOINT_ROUTES, DP_ENDPOINT_ROUTES6, DP_SUBNETS,
        DP_SUBNETS6, DP_UPLINKS, DP_UPLINKS6,
    },
    nat::NAT_CONFIG,
    parse::{Packet, IP_CSUM_OFF, IP_TTL_OFF},
};

/// `AF_INET` and `AF_INET6` for `bpf_fib_lookup` and `bpf_redirect_neigh`.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// The IPv6 hop limit's offset in the frame.
const IP6_HOPS_OFF: usize = EthHdr::LEN + 7;

/// What the fast path needs of an address family: its maps, the FIB
/// lookup's fields and how a hop is taken off.
pub trait Forward: Family {
    /// The IP header without options or extension headers: a longer one is
    /// the stack's.
    const IP_HLEN: usize;
    /// The fast path's route to the endpoint `addr` (`DP_ENDPOINT_ROUTES`,
    /// unchecked).
    fn route(addr: &Self) -> Option<EndpointRoute>;
    /// Whether the endpoint behind veth `ifindex` has address `addr`.
    fn endpoint_is(ifindex: u32, addr: &Self) -> bool;
    /// Whether `addr` is in a managed subnet (other networks, gateways).
    fn managed(addr: &Self) -> bool;
    /// Whether `ifindex` is an uplink whose egress translates this family.
    fn uplink(ifindex: u32) -> bool;
    /// A unicast destination the host may route off-link.
    fn routable(addr: &Self) -> bool;
    /// The lookup's family, traffic class and addresses.
    fn fib_addrs(fib: &mut bpf_fib_lookup, pkt: &Packet<Self>);
    /// The next hop the lookup left in `fib`, for `bpf_redirect_neigh`.
    fn next_hop(fib: &bpf_fib_lookup) -> bpf_redir_neigh;
    /// TTL (hop limit) - 1: the caller checked it is above 1.
    fn decrement_ttl(ctx: &TcContext, pkt: &Packet<Self>) -> Result<(), DropReason>;
}

impl Forward for [u8; 4] {
    const IP_HLEN: usize = Ipv4Hdr::LEN;

    #[inline(always)]
    fn route(addr: &Self) -> Option<EndpointRoute> {
        // SAFETY: copied out at once.
        (unsafe { DP_ENDPOINT_ROUTES.get(*addr) }).copied()
    }

    #[inline(always)]
    fn endpoint_is(ifindex: u32, addr: &Self) -> bool {
        // SAFETY: one field read in place.
        unsafe { DP_ENDPOINTS.get(ifindex) }.is_some_and(|ep| ep.addr == *addr)
    }

    #[inline(always)]
    fn managed(addr: &Self) -> bool {
        DP_SUBNETS.get(&Key::new(32, *addr)).is_some()
    }

    #[inline(always)]
    fn uplink(ifindex: u32) -> bool {
        // SAFETY: only tested for presence.
        unsafe { DP_UPLINKS.get(ifindex) }.is_some()
    }

    /// Not multicast, broadcast or reserved (224/3), not "this network"
    /// (0/8).
    #[inline(always)]
    fn routable(addr: &Self) -> bool {
        addr[0] != 0 && addr[0] < 224
    }

    #[inline(always)]
    fn fib_addrs(fib: &mut bpf_fib_lookup, pkt: &Packet<Self>) {
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = pkt.tos;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(pkt.src);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(pkt.dst);
    }

    #[inline(always)]
    fn next_hop(fib: &bpf_fib_lookup) -> bpf_redir_neigh {
        bpf_redir_neigh {
            nh_family: u32::from(AF_INET),
            __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                // SAFETY: an IPv4 lookup wrote the IPv4 member.
                ipv4_nh: unsafe { fib.__bindgen_anon_4.ipv4_dst },
            },
        }
    }

    /// Folded into the IP checksum as the 16-bit word the TTL shares with
    /// the protocol.
    #[inline(always)]
    fn decrement_ttl(ctx: &TcContext, pkt: &Packet<Self>) -> Result<(), DropReason> {
        let ttl = pkt.ttl - 1;
        let err = |_| DropReason::Rewrite;
        ctx.l3_csum_replace(
            IP_CSUM_OFF,
            u64::from(u16::from_ne_bytes([pkt.ttl, pkt.proto])),
            u64::from(u16::from_ne_bytes([ttl, pkt.proto])),
            2,
        )
        .map_err(err)?;
        ctx.store(IP_TTL_OFF, &ttl, 0).map_err(err)
    }
}

impl Forward for [u8; 16] {
    const IP_HLEN: usize = 40;

    #[inline(always)]
    fn route(addr: &Self) -> Option<EndpointRoute> {
        // SAFETY: copied out at once.
        (unsafe { DP_ENDPOINT_ROUTES6.get(*addr) }).copied()
    }

    #[inline(always)]
    fn endpoint_is(ifindex: u32, addr: &Self) -> bool {
        // SAFETY: one field read in place.
        unsafe { DP_ENDPOINTS6.get(ifindex) }.is_some_and(|ep| ep.addr == *addr)
    }

    #[inline(always)]
    fn managed(addr: &Self) -> bool {
        DP_SUBNETS6.get(&Key::new(128, *addr)).is_some()
    }

    #[inline(always)]
    fn uplink(ifindex: u32) -> bool {
        // SAFETY: only tested for presence.
        unsafe { DP_UPLINKS6.get(ifindex) }.is_some()
    }

    /// Not multicast (ff00::/8), not link-local (fe80::/10: never
    /// forwarded), not in ::/8 (unspecified, loopback, IPv4-mapped).
    #[inline(always)]
    fn routable(addr: &Self) -> bool {
        addr[0] != 0 && addr[0] != 0xff && !(addr[0] == 0xfe && addr[1] & 0xc0 == 0x80)
    }

    #[inline(always)]
    fn fib_addrs(fib: &mut bpf_fib_lookup, pkt: &Packet<Self>) {
        fib.family = AF_INET6;
        // The traffic class, where the flow information keeps it (the flow
        // label is left out: it only spreads flows over equal routes).
        fib.__bindgen_anon_2.flowinfo = (u32::from(pkt.tos) << 20).to_be();
        fib.__bindgen_anon_3.ipv6_src = pkt.src.words();
        fib.__bindgen_anon_4.ipv6_dst = pkt.dst.words();
    }

    #[inline(always)]
    fn next_hop(fib: &bpf_fib_lookup) -> bpf_redir_neigh {
        bpf_redir_neigh {
            nh_family: u32::from(AF_INET6),
            __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                // SAFETY: an IPv6 lookup wrote the IPv6 member.
                ipv6_nh: unsafe { fib.__bindgen_anon_4.ipv6_dst },
            },
        }
    }

    /// IPv6 has no header checksum, and the hop limit is in no upper-layer
    /// pseudo-header.
    #[inline(always)]
    fn decrement_ttl(ctx: &TcContext, pkt: &Packet<Self>) -> Result<(), DropReason> {
        ctx.store(IP6_HOPS_OFF, &(pkt.ttl - 1), 0)
            .map_err(|_| DropReason::Rewrite)
    }
}

/// Delivers a packet whose (translated) destination is `dst` into that
/// endpoint's container. `pkt` holds the fields as parsed (TTL and
/// protocol are the same after translation). Some(verdict) when the packet
/// was redirected, None when it goes on through the stack, unchanged by
/// this function.
#[inline(always)]
pub fn into_endpoint<A: Forward>(
    ctx: &TcContext,
    pkt: &Packet<A>,
    dst: A,
) -> Result<Option<i32>, DropReason> {
    if !forwardable(pkt) {
        return Ok(None);
    }
    let Some(route) = route_to(&dst) else {
        return Ok(None);
    };
    // A device that is gone fails the check too (-ENODEV).
    if !fits(ctx, route.ifindex) {
        return Ok(None);
    }
    forward(ctx, pkt, &route.mac, &route.gateway_mac)?;
    // SAFETY: a helper taking plain integers.
    redirected(unsafe { bpf_redirect_peer(route.ifindex, 0) })
}

/// Where to deliver to the endpoint with address `dst`. None when the maps
/// do not know it, or disagree: they are written from one state, and an
/// ifindex whose endpoint has another address (reused, or written between
/// the two) is stale.
#[inline(always)]
fn route_to<A: Forward>(dst: &A) -> Option<EndpointRoute> {
    let route = A::route(dst)?;
    A::endpoint_is(route.ifindex, dst).then_some(route)
}

/// The IPv4 endpoint with address `dst`: where to deliver to it, and what
/// it may send (host-local flows need its gateway). None as for
/// [`route_to`].
#[inline(always)]
pub fn endpoint(dst: [u8; 4]) -> Option<(EndpointRoute, EndpointInfo)> {
    // SAFETY: copied out at once.
    let route = (unsafe { DP_ENDPOINT_ROUTES.get(dst) }).copied()?;
    // SAFETY: as above.
    let ep = (unsafe { DP_ENDPOINTS.get(route.ifindex) }).copied()?;
    (ep.addr == dst).then_some((route, ep))
}

/// The gateway of the IPv6 endpoint with address `dst` (a host-local
/// flow's source, `dp_local_out6` and `dp_connect6`); zero when the maps do
/// not know it, or disagree (as for [`route_to`]). Not an `Option` of a
/// copy: see `uplink6::subnet`.
#[inline(always)]
pub fn gateway6(dst: &[u8; 16]) -> [u8; 16] {
    let Some(route) = <[u8; 16]>::route(dst) else {
        return [0; 16];
    };
    // SAFETY: a map value, read in place.
    match unsafe { DP_ENDPOINTS6.get(route.ifindex) } {
        Some(ep) if ep.addr == *dst => ep.gateway,
        _ => [0; 16],
    }
}

/// Whether the fast path knows the endpoint with address `dst` (a
/// host-local flow's container that is still there).
#[inline(always)]
pub fn has_endpoint<A: Forward>(dst: &A) -> bool {
    route_to(dst).is_some()
}

/// Sends a packet of a host-local flow (`dp_local_out`, `dp_local_out6`,
/// translated to the endpoint `dst`) into its container: out of the
/// host-side veth, framed as the bridge would frame it. The packet is the
/// host's own, not forwarded: its TTL stays. The caller checked that the
/// endpoint exists ([`endpoint`], [`gateway6`]) before translating; one
/// gone since is a failed rewrite.
#[inline(always)]
pub fn from_host<A: Forward>(ctx: &TcContext, dst: &A) -> Result<i32, DropReason> {
    let Some(route) = route_to(dst) else {
        return Err(DropReason::Rewrite);
    };
    let err = |_| DropReason::Rewrite;
    ctx.store(0, &route.mac, 0).map_err(err)?;
    ctx.store(6, &route.gateway_mac, 0).map_err(err)?;
    // SAFETY: a helper taking plain integers.
    if unsafe { bpf_redirect(route.ifindex, 0) } != i64::from(TC_ACT_REDIRECT) {
        return Err(DropReason::Rewrite);
    }
    Ok(TC_ACT_REDIRECT)
}

/// Routes a packet the endpoint behind `ifindex` (its host-side veth) sends
/// to the world: straight to the uplink's egress. Some(verdict) when the
/// packet was redirected, None when it goes on through the stack,
/// unchanged.
#[inline(always)]
pub fn to_world<A: Forward>(
    ctx: &TcContext,
    pkt: &Packet<A>,
    ifindex: u32,
) -> Result<Option<i32>, DropReason> {
    if !forwardable(pkt) || !A::routable(&pkt.dst) {
        return Ok(None);
    }
    // Managed subnets (other networks, the gateways) and the host's own
    // addresses are the stack's: isolation, hairpin and local delivery.
    if A::managed(&pkt.dst) || A::is_host_addr(&pkt.dst) {
        return Ok(None);
    }
    let Some(route) = A::route(&pkt.src) else {
        return Ok(None);
    };
    if route.ifindex != ifindex || !to_gateway(ctx, &route)? {
        return Ok(None);
    }
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    let mut fib = fib_params(pkt, ifindex, gso);
    // SAFETY: `fib` is a whole bpf_fib_lookup on this stack frame.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &raw mut fib,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    let Ok(rc) = u32::try_from(rc) else {
        return Ok(None);
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        return Ok(None);
    }
    let out = fib.ifindex;
    // Only the uplinks' egress masquerades and translates replies: a route
    // through any other device stays with the stack.
    if !A::uplink(out) || !fits(ctx, out) {
        return Ok(None);
    }
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        forward(ctx, pkt, &fib.dmac, &fib.smac)?;
        // SAFETY: a helper taking plain integers.
        return redirected(unsafe { bpf_redirect(out, 0) });
    }
    // The neighbour layer writes the Ethernet header once it knows the next
    // hop's address (the lookup left the next hop in its destination).
    A::decrement_ttl(ctx, pkt)?;
    let mut nh = A::next_hop(&fib);
    // SAFETY: `nh` is a whole bpf_redir_neigh on this stack frame.
    let rc =
        unsafe { bpf_redirect_neigh(out, &raw mut nh, size_of::<bpf_redir_neigh>() as i32, 0) };
    redirected(rc)
}

/// Whether the fast path may carry this packet at all.
#[inline(always)]
fn forwardable<A: Forward>(pkt: &Packet<A>) -> bool {
    NAT_CONFIG.load().fast_path != 0
        && !pkt.later_fragment
        && !pkt.more_fragments
        && pkt.l4_off == EthHdr::LEN + A::IP_HLEN
        && pkt.ttl > 1
}

/// Whether the container addressed the frame to its gateway (the bridge):
/// a frame to another MAC (a container acting as a router) is bridged, not
/// routed by the host.
#[inline(always)]
fn to_gateway(ctx: &TcContext, route: &EndpointRoute) -> Result<bool, DropReason> {
    let dmac: [u8; 6] = ctx.load(0).map_err(|_| DropReason::Truncated)?;
    Ok(dmac == route.gateway_mac)
}

/// The FIB lookup the stack's forwarding would make for `pkt` coming in on
/// `ifindex`. The total length asks the lookup to check the route's MTU
/// too (learnt PMTU and `mtu` route metrics included); a GSO packet's
/// length is that of all its segments, so its segments are checked by
/// [`fits`] instead.
#[inline(always)]
fn fib_params<A: Forward>(pkt: &Packet<A>, ifindex: u32, gso: bool) -> bpf_fib_lookup {
    // SAFETY: bpf_fib_lookup is plain integers and unions of them; all
    // zeroes is a valid value (and what the helper expects in unused fields).
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    A::fib_addrs(&mut fib, pkt);
    fib.l4_protocol = pkt.proto;
    if pkt.proto == IPPROTO_TCP || pkt.proto == IPPROTO_UDP {
        fib.sport = u16::from_ne_bytes(pkt.sport);
        fib.dport = u16::from_ne_bytes(pkt.dport);
    }
    fib.__bindgen_anon_1.tot_len = if gso { 0 } else { pkt.tot_len };
    fib.ifindex = ifindex;
    fib
}

/// Whether the packet fits the MTU of `ifindex` (each segment, for a GSO
/// packet); false too when the device does not exist.
#[inline(always)]
fn fits(ctx: &TcContext, ifindex: u32) -> bool {
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    let flags = if gso { u64::from(BPF_MTU_CHK_SEGS) } else { 0 };
    // 0: check the packet's own length.
    let mut mtu_len = 0u32;
    // SAFETY: `mtu_len` is a u32 on this stack frame.
    let rc = unsafe { bpf_check_mtu(ctx.as_ptr(), ifindex, &raw mut mtu_len, 0, flags) };
    rc == i64::from(BPF_MTU_CHK_RET_SUCCESS)
}

/// What forwarding does to a frame: the next hop's Ethernet addresses and
/// one hop less to live.
#[inline(always)]
fn forward<A: Forward>(
    ctx: &TcContext,
    pkt: &Packet<A>,
    dmac: &[u8; 6],
    smac: &[u8; 6],
) -> Result<(), DropReason> {
    A::decrement_ttl(ctx, pkt)?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dmac);
    macs[6..].copy_from_slice(smac);
    ctx.store(0, &macs, 0).map_err(|_| DropReason::Rewrite)
}

/// The verdict of a redirect helper: its return value is the tc verdict,
/// TC_ACT_REDIRECT unless its arguments were refused.
#[inline(always)]
fn redirected(rc: i64) -> Result<Option<i32>, DropReason> {
    if rc != i64::from(TC_ACT_REDIRECT) {
        // The frame is rewritten already: it cannot go on as if untouched.
        return Err(DropReason::Rewrite);
    }
    Ok(Some(TC_ACT_REDIRECT))
}
