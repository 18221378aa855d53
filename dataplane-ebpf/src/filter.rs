//! DOCKER-USER-style filter rules, evaluated for packets on their way to a
//! container (after DNAT, so the destination port is the container's).
//!
//! One lookup per dimension gives the set of rules that dimension lets
//! through (a two-level bitmap, see `dataplane_common::filter`), read in
//! place through the map's value pointer; the first rule in all four sets is
//! the first match in rule order. At most: one array lookup, an LPM and a
//! hash lookup for the source, two hash lookups per other dimension, the AND
//! of four summaries, then one `bpf_loop` step per word they share (at most
//! `SCAN_STEPS`), a test of the source address's own rules (at most
//! `HOST_RULES`), one array lookup and one counter bump. A packet from a
//! source no rule names (with only source rules, the usual DOCKER-USER
//! list) ends after the source lookups, whatever the number of rules.
//!
//! Both families share everything but the source dimension: an IPv4
//! packet looks its source up in `DP_FLT_SRC`/`DP_FLT_HOST4`, an IPv6
//! one in `DP_FLT_SRC6`/`DP_FLT_HOST6` ([`Source`]); the interface,
//! port and network maps, the actions and the counters are the same. The
//! IPv6 program calls [`new_flow6`] and [`tracked6`], BPF subprograms of their
//! own, so their frame is not added to the caller's steps (see `uplink6`).
//!
//! Why `bpf_loop` and not a plain loop: the verifier walks a bounded loop
//! iteration by iteration, for every state the program reaches it in, and
//! 240 iterations inlined at three call sites made `dp_uplink_in` take
//! 190 000 verified instructions (15 700 without filters); the callback is
//! checked once per state, about 49 000.

use core::ffi::c_void;

use aya_ebpf::{
    btf_maps::{lpm_trie::Key, HashMap},
    helpers::bpf_loop,
    programs::TcContext,
};
use dataplane_common::{
    ct::{FLAG_DNAT, FLAG_REPLY},
    drop::DropReason,
    filter::{
        first_with_host, slot, src6_data, src_data, FilterHostKey, FilterHostKey6, FilterIfaceKey,
        FilterNetKey, FilterPortKey, HostRules, RuleBits, Scan, ACTION_DROP, ANY_IFINDEX,
        ANY_NETWORK, GENERATIONS, SCAN_STEPS, SRC_GEN_BITS,
    },
    nat::SUBNET_INTERNAL,
    net::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    counters::bump,
    maps::{
        DP_FLT_ACTIONS, DP_FLT_CONFIG, DP_FLT_HOST4, DP_FLT_HOST6, DP_FLT_IFACE, DP_FLT_NET,
        DP_FLT_PORT, DP_FLT_SRC, DP_FLT_SRC6, DP_FLT_STATS, DP_SUBNETS6,
    },
    nat, nat6,
    parse::{ip_len, Ipv6Packet},
};

/// The rules whose source condition holds for an address: its region's
/// (the longest CIDR match; the agent stored, for each, the rules that hold
/// for the whole region that match leads to) and, when /32 or /128 rules
/// name the address itself, the few they add.
#[derive(Clone, Copy)]
pub struct SrcRules {
    pub region: Option<&'static RuleBits>,
    pub host: Option<&'static HostRules>,
}

/// A source address of either family: where its rules are found.
pub trait Source: Copy {
    fn rules(self, gen: u32) -> SrcRules;
}

impl Source for [u8; 4] {
    #[inline(always)]
    fn rules(self, gen: u32) -> SrcRules {
        SrcRules {
            region: DP_FLT_SRC.get(&Key::new(SRC_GEN_BITS + 32, src_data(gen, self))),
            // SAFETY: as in `by_key`.
            host: unsafe { DP_FLT_HOST4.get(FilterHostKey { gen, addr: self }) },
        }
    }
}

impl Source for [u8; 16] {
    #[inline(always)]
    fn rules(self, gen: u32) -> SrcRules {
        SrcRules {
            region: DP_FLT_SRC6.get(&Key::new(SRC_GEN_BITS + 128, src6_data(gen, self))),
            // SAFETY: as in `by_key`.
            host: unsafe { DP_FLT_HOST6.get(FilterHostKey6 { gen, addr: self }) },
        }
    }
}

/// The filter rules for the first packet of an IPv6 flow from outside
/// (no tracked flow, no ICMPv6 error about one): to a published port they
/// see the container's address and port (after DNAT), routed straight to
/// a managed subnet the packet's own; an internal network's drop and other
/// packets are the caller's. A step of its own before the program's
/// `new_flow_in` rather than inside it, whose frame it would add to; the
/// published port is looked up twice for it, only when there are rules.
#[inline(never)]
pub fn new_flow6(ctx: &TcContext, pkt: &Ipv6Packet) -> Result<(), DropReason> {
    match DP_FLT_CONFIG.get(0) {
        Some(cfg) if cfg.rules != 0 => {}
        _ => return Ok(()),
    }
    if let Some(target) = nat::published(pkt) {
        return check_to6(ctx, pkt, &target.addr, target.port);
    }
    let (flags, network) = match DP_SUBNETS6.get(&Key::new(128, pkt.dst)) {
        Some(p) => (p.flags, p.network_id),
        None => (0, 0),
    };
    if network == 0 || flags & SUBNET_INTERNAL != 0 {
        return Ok(());
    }
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    check(ifindex, pkt.src, pkt.proto, pkt.dport, network, ip_len(ctx))
}

/// The filter rules for a packet of a tracked IPv6 flow, whose entry
/// `nat6::tracked` left in the scratch: every packet of a flow coming in
/// to a published port meets them, as in DOCKER-USER; replies to flows the
/// containers started do not (their egress keeps working).
#[inline(never)]
pub fn tracked6(ctx: &TcContext, pkt: &Ipv6Packet) -> Result<(), DropReason> {
    let s = nat6::scratch()?;
    if s.orig.flags & FLAG_DNAT == 0 || s.orig.flags & FLAG_REPLY != 0 {
        return Ok(());
    }
    let (dst, dport) = (s.orig.new_daddr, s.orig.new_dport);
    check_to6(ctx, pkt, &dst, dport)
}

#[inline(always)]
fn check_to6(
    ctx: &TcContext,
    pkt: &Ipv6Packet,
    dst: &[u8; 16],
    dport: [u8; 2],
) -> Result<(), DropReason> {
    let network = DP_SUBNETS6
        .get(&Key::new(128, *dst))
        .map_or(0, |p| p.network_id);
    // SAFETY: the context's __sk_buff is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    check(ifindex, pkt.src, pkt.proto, dport, network, ip_len(ctx))
}

/// Ok(()) to let the packet on, Err(DropReason::Filtered) to drop it; counts the matching rule.
///
/// `ifindex` is the device the packet came in on, `src` its source address
/// (either family),
/// `dport` (network byte order) and `proto` the destination port after DNAT,
/// `network_id` the destination network's key (0 when unknown: only rules
/// without `--network` can match), `len` the bytes to count.
///
/// Inlined: BPF-to-BPF calls take at most five arguments.
#[inline(always)]
pub fn check<A: Source>(
    ifindex: u32,
    src: A,
    proto: u8,
    dport: [u8; 2],
    network_id: u32,
    len: u32,
) -> Result<(), DropReason> {
    let Some(cfg) = DP_FLT_CONFIG.get(0) else {
        return Ok(());
    };
    // Copied out at once: the agent rewrites this entry to switch rule sets.
    // A read racing that write may pair one generation with the other's
    // rule count; harmless, as each generation is complete on its own and
    // the count only serves the "no rules" shortcut.
    let (gen, rules) = (cfg.gen % GENERATIONS, cfg.rules);
    if rules == 0 {
        return Ok(());
    }
    // Cheapest-to-empty first: most rules name a source, and an empty set
    // ends the evaluation early. The agent always stores 0.0.0.0/0 and
    // ::/0, so a missing region only happens mid-setup.
    let SrcRules { region, host } = src.rules(gen);
    let region = region.filter(|r| !r.is_empty());
    if region.is_none() && host.is_none() {
        return Ok(());
    }
    let Some(by_iface) = by_key(
        &DP_FLT_IFACE,
        FilterIfaceKey { gen, ifindex },
        FilterIfaceKey {
            gen,
            ifindex: ANY_IFINDEX,
        },
        ifindex != ANY_IFINDEX,
    ) else {
        return Ok(());
    };
    // Only TCP and UDP have ports; rules with `--dport` never match the rest.
    let any_port = FilterPortKey {
        gen,
        port: [0; 2],
        proto: 0,
        _pad: 0,
    };
    let Some(by_port) = by_key(
        &DP_FLT_PORT,
        FilterPortKey {
            gen,
            port: dport,
            proto,
            _pad: 0,
        },
        any_port,
        proto == IPPROTO_TCP || proto == IPPROTO_UDP,
    ) else {
        return Ok(());
    };
    let Some(by_net) = by_key(
        &DP_FLT_NET,
        FilterNetKey { gen, network_id },
        FilterNetKey {
            gen,
            network_id: ANY_NETWORK,
        },
        network_id != ANY_NETWORK,
    ) else {
        return Ok(());
    };
    let region_first = region.and_then(|r| first_match([r, by_iface, by_port, by_net]));
    let Some(pos) = first_with_host(region_first, host, by_iface, by_port, by_net) else {
        return Ok(());
    };
    let slot = slot(gen, pos);
    bump(&DP_FLT_STATS, slot, len);
    match DP_FLT_ACTIONS.get(slot) {
        Some(a) if a.action == ACTION_DROP => Err(DropReason::Filtered),
        _ => Ok(()),
    }
}

/// What the `bpf_loop` callback works on, on the program's stack: the four
/// sets (map value pointers, never copies) and the search.
#[repr(C)]
struct ScanCtx {
    sets: [&'static RuleBits; 4],
    scan: Scan,
}

/// The first position in all four sets. When the summaries do not meet (a
/// packet no rule names) nothing more is read; otherwise the words they
/// share are tested one `bpf_loop` step each. The verifier checks the
/// callback once, not once per possible step as it would an unrolled loop
/// of [`SCAN_STEPS`], which kept the program's verification short.
#[inline(always)]
fn first_match(sets: [&'static RuleBits; 4]) -> Option<u32> {
    let [a, b, c, d] = sets;
    let mut ctx = ScanCtx {
        sets,
        scan: Scan::new(a, b, c, d)?,
    };
    // SAFETY: `scan_step` is a BPF function taking this context, which
    // lives on this frame for the whole call.
    unsafe {
        bpf_loop(
            SCAN_STEPS,
            scan_step as *mut c_void,
            (&raw mut ctx).cast(),
            0,
        )
    };
    ctx.scan.found()
}

/// One step of the search: 1 ends the loop (found, or nothing to find).
#[inline(never)]
extern "C" fn scan_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `first_match` passes its `ScanCtx`.
    let ctx = unsafe { &mut *ctx.cast::<ScanCtx>() };
    let [a, b, c, d] = ctx.sets;
    i64::from(ctx.scan.step(a, b, c, d))
}

/// The bitmap of `key` (which the agent stores with the wildcard rules
/// already included), or else the wildcard's; None when neither is there
/// (no rule lets any value through). `specific` false skips the first lookup
/// for values no rule can name. A reference into the map's value, never a
/// copy: the value is larger than the BPF stack.
#[inline(always)]
fn by_key<K, const N: usize, const F: usize>(
    map: &'static HashMap<K, RuleBits, N, F>,
    key: K,
    any: K,
    specific: bool,
) -> Option<&'static RuleBits> {
    if specific {
        // SAFETY: the agent writes and deletes only keys of the generation
        // the program is not reading (see `dataplane_common::filter`), so
        // the value stays as it is while this run reads it. (Only an
        // agent that flipped generations and then rewrote this one, both
        // within this run's microseconds, could change it under us.)
        if let Some(bits) = unsafe { map.get(key) } {
            return Some(bits);
        }
    }
    // SAFETY: as above.
    unsafe { map.get(any) }
}
