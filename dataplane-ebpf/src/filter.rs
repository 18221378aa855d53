//! DOCKER-USER-style filter rules, evaluated for packets on their way to a
//! container (after DNAT, so the destination port is the container's).
//!
//! Constant cost whatever the number of rules (see
//! `dataplane_common::filter`): one lookup per dimension gives the bitmap of
//! rules that dimension lets through, the AND of the four is the set of rules
//! the packet matches, and its lowest bit is the first of them in rule order.
//! At most: one array lookup, one LPM lookup, two hash lookups per hash
//! dimension, one array lookup and one counter bump. No loop at all.

use aya_ebpf::btf_maps::{lpm_trie::Key, HashMap};
use dataplane_common::{
    drop::DropReason,
    filter::{
        slot, src_data, FilterIfaceKey, FilterNetKey, FilterPortKey, RuleBits, ACTION_DROP,
        ANY_IFINDEX, ANY_NETWORK, GENERATIONS, SRC_GEN_BITS,
    },
    net::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    counters::bump,
    maps::{
        DP_FLT_ACTIONS, DP_FLT_CONFIG, DP_FLT_IFACE, DP_FLT_NET, DP_FLT_PORT, DP_FLT_SRC,
        DP_FLT_STATS,
    },
};

/// Ok(()) to let the packet on, Err(DropReason::Filtered) to drop it; counts the matching rule.
///
/// `ifindex` is the device the packet came in on, `src` its source address,
/// `dport` (network byte order) and `proto` the destination port after DNAT,
/// `network_id` the destination network's key (0 when unknown: only rules
/// without `--network` can match), `len` the bytes to count.
///
/// Inlined: BPF-to-BPF calls take at most five arguments.
#[inline(always)]
pub fn check(
    ifindex: u32,
    src: [u8; 4],
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
    // ends the evaluation early.
    let mut m = source(gen, src);
    if m.is_empty() {
        return Ok(());
    }
    m = m.and(by_key(
        &DP_FLT_IFACE,
        FilterIfaceKey { gen, ifindex },
        FilterIfaceKey {
            gen,
            ifindex: ANY_IFINDEX,
        },
        ifindex != ANY_IFINDEX,
    ));
    // Only TCP and UDP have ports; rules with `--dport` never match the rest.
    let any_port = FilterPortKey {
        gen,
        port: [0; 2],
        proto: 0,
        _pad: 0,
    };
    m = m.and(by_key(
        &DP_FLT_PORT,
        FilterPortKey {
            gen,
            port: dport,
            proto,
            _pad: 0,
        },
        any_port,
        proto == IPPROTO_TCP || proto == IPPROTO_UDP,
    ));
    m = m.and(by_key(
        &DP_FLT_NET,
        FilterNetKey { gen, network_id },
        FilterNetKey {
            gen,
            network_id: ANY_NETWORK,
        },
        network_id != ANY_NETWORK,
    ));
    let Some(pos) = m.first() else {
        return Ok(());
    };
    let slot = slot(gen, pos);
    bump(&DP_FLT_STATS, slot, len);
    match DP_FLT_ACTIONS.get(slot) {
        Some(a) if a.action == ACTION_DROP => Err(DropReason::Filtered),
        _ => Ok(()),
    }
}

/// Rules whose source condition holds for `src`: the agent stored, for every
/// CIDR any rule names (and 0.0.0.0/0), the rules that hold for the whole
/// region the longest-prefix match leads to.
#[inline(always)]
fn source(gen: u32, src: [u8; 4]) -> RuleBits {
    DP_FLT_SRC
        .get(&Key::new(SRC_GEN_BITS + 32, src_data(gen, src)))
        .copied()
        .unwrap_or(RuleBits::EMPTY)
}

/// The bitmap of `key` (which the agent stores with the wildcard rules
/// already included), or else the wildcard's. `specific` false skips the
/// first lookup for values no rule can name.
#[inline(always)]
fn by_key<K, const N: usize>(
    map: &HashMap<K, RuleBits, N>,
    key: K,
    any: K,
    specific: bool,
) -> RuleBits {
    if specific {
        // SAFETY: the value is copied out at once; no reference is kept.
        if let Some(bits) = unsafe { map.get(key) } {
            return *bits;
        }
    }
    // SAFETY: as above.
    unsafe { map.get(any) }.copied().unwrap_or(RuleBits::EMPTY)
}
