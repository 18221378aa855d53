//! Writing a [`Compiled`] rule set into the filter maps (two generations,
//! switched with one write) and reading the rules' counters.

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues};
use dataplane_common::{
    filter::{
        slot, src6_data, src_data, FilterAction, FilterConfig, FilterHostKey, FilterHostKey6,
        FilterIfaceKey, FilterNetKey, FilterPortKey, HostRules, RuleBits, ANY_IFINDEX, ANY_NETWORK,
        GENERATIONS, SRC_GEN_BITS,
    },
    maps,
    stats::PktCounter,
};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{Compiled, Dimension, FilterError, MAX_RULES};
use crate::datapath::{
    bpffs::PinRoot,
    ebpf::Dataplane,
    maps::{
        bytes_of, map_err, open, per_cpu_bytes, reconcile, set_array_batch, sum, zeroed_counters,
        BATCH_FROM,
    },
};

/// Keys of the hash dimensions, by generation.
trait GenKey: aya::Pod + Ord {
    fn gen(&self) -> u32;
}

impl GenKey for FilterIfaceKey {
    fn gen(&self) -> u32 {
        self.gen
    }
}

impl GenKey for FilterPortKey {
    fn gen(&self) -> u32 {
        self.gen
    }
}

impl GenKey for FilterNetKey {
    fn gen(&self) -> u32 {
        self.gen
    }
}

impl GenKey for FilterHostKey {
    fn gen(&self) -> u32 {
        self.gen
    }
}

impl GenKey for FilterHostKey6 {
    fn gen(&self) -> u32 {
        self.gen
    }
}

/// Makes generation `gen` of a hash dimension hold exactly `want`. Entries
/// of the live generation are left alone: the program is reading them.
fn reconcile_gen<K: GenKey, V: aya::Pod + PartialEq>(
    dp: &mut Dataplane,
    name: &'static str,
    live: u32,
    want: &BTreeMap<K, &V>,
) -> Result<(), FilterError> {
    let mut hash: HashMap<&mut MapData, K, V> = open(&mut *dp, name)?;
    Ok(reconcile(&mut hash, name, want, |k| k.gen() == live)?)
}

fn dimension_keys<K: Ord, M: Ord>(
    d: &Dimension<K>,
    any: M,
    key: impl Fn(&K) -> M,
) -> BTreeMap<M, &RuleBits> {
    let mut out: BTreeMap<M, &RuleBits> = d.by_key.iter().map(|(k, b)| (key(k), &**b)).collect();
    // An empty wildcard bitmap is the same as none: leave it out.
    if !d.any.is_empty() {
        out.insert(any, &d.any);
    }
    out
}

/// The generation of a source trie key: its first four bytes.
fn src_gen(data: &[u8]) -> u32 {
    match data {
        [a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]),
        _ => u32::MAX,
    }
}

/// Makes generation `gen` of the source maps of both families hold exactly
/// `c`'s regions and single addresses.
fn reconcile_src(dp: &mut Dataplane, c: &Compiled, gen: u32, live: u32) -> Result<(), FilterError> {
    reconcile_family(
        dp,
        [maps::FILTER_HOST, maps::FILTER_SRC],
        live,
        (&c.src, &c.hosts),
        |net: &Ipv4Net| FilterHostKey {
            gen,
            addr: net.network().octets(),
        },
        |net| src_data(gen, net.network().octets()),
    )?;
    reconcile_family(
        dp,
        [maps::FILTER_HOST6, maps::FILTER_SRC6],
        live,
        (&c.src6, &c.hosts6),
        |net: &Ipv6Net| FilterHostKey6 {
            gen,
            addr: net.network().octets(),
        },
        |net| src6_data(gen, net.network().octets()),
    )
}

/// One family's source maps (`names`: the hash of single addresses, the
/// trie): `hosts` in the hash under `host`'s keys, the `regions` in the
/// trie under `data`'s key data.
fn reconcile_family<N, H, D>(
    dp: &mut Dataplane,
    names: [&'static str; 2],
    live: u32,
    (regions, hosts): (&BTreeMap<N, Box<RuleBits>>, &BTreeMap<N, HostRules>),
    host: impl Fn(&N) -> H,
    data: impl Fn(&N) -> D,
) -> Result<(), FilterError>
where
    N: PrefixLen,
    H: GenKey,
    D: aya::Pod + Ord + AsRef<[u8]>,
{
    let hosts: BTreeMap<H, &HostRules> = hosts.iter().map(|(net, r)| (host(net), r)).collect();
    reconcile_gen(dp, names[0], live, &hosts)?;
    let trie_want: BTreeMap<(u32, D), &RuleBits> = regions
        .iter()
        .map(|(net, bits)| ((SRC_GEN_BITS + net.bits(), data(net)), &**bits))
        .collect();
    let mut trie: LpmTrie<&mut MapData, D, RuleBits> = open(&mut *dp, names[1])?;
    Ok(reconcile(&mut trie, names[1], &trie_want, |(_, d)| {
        src_gen(d.as_ref()) == live
    })?)
}

/// A CIDR's prefix length, of either family.
trait PrefixLen {
    fn bits(&self) -> u32;
}

impl PrefixLen for Ipv4Net {
    fn bits(&self) -> u32 {
        u32::from(self.prefix_len())
    }
}

impl PrefixLen for Ipv6Net {
    fn bits(&self) -> u32 {
        u32::from(self.prefix_len())
    }
}

fn array<'a, V: aya::Pod>(
    dp: &'a mut Dataplane,
    name: &'static str,
) -> Result<Array<&'a mut MapData, V>, FilterError> {
    Ok(open(dp, name)?)
}

/// Writes `c` into the maps and makes it the live rule set (see the module
/// doc); nothing when the live set is `c` already (same digest), which is
/// the usual case: every change to networks or ports re-applies the
/// filters. Counters follow their rule by id when positions shift; a new rule
/// starts from zero. Packets counted under the old generation between
/// copying its counters and the switch are not carried over. Only the
/// positions in use are written, and those the generation's previous rule
/// set used beyond them are cleared: the cost follows the rule count.
pub fn apply(dp: &mut Dataplane, c: &Compiled) -> Result<(), FilterError> {
    // The fields are public: a hand-made value must fit the bitmaps too.
    if c.actions.len() > MAX_RULES as usize {
        return Err(FilterError::TooManyRules {
            count: c.actions.len(),
        });
    }
    let cfg = array::<FilterConfig>(dp, maps::FILTER_CONFIG)?
        .get(&0, 0)
        .map_err(map_err(maps::FILTER_CONFIG))?;
    let digest = c.digest();
    if cfg.digest == digest && cfg.rules == c.rules() {
        // The live generation holds this very rule set.
        return Ok(());
    }
    let live = cfg.gen % GENERATIONS;
    let gen = (live + 1) % GENERATIONS;

    write_dimensions(dp, c, gen, live)?;
    write_actions(dp, c, cfg.rules, gen, live)?;
    Ok(array::<FilterConfig>(dp, maps::FILTER_CONFIG)?
        .set(
            0,
            FilterConfig {
                gen,
                rules: c.rules(),
                digest,
            },
            0,
        )
        .map_err(map_err(maps::FILTER_CONFIG))?)
}

/// Writes generation `gen` of the source and hash dimensions.
fn write_dimensions(
    dp: &mut Dataplane,
    c: &Compiled,
    gen: u32,
    live: u32,
) -> Result<(), FilterError> {
    reconcile_src(dp, c, gen, live)?;
    let iface = dimension_keys(
        &c.iface,
        FilterIfaceKey {
            gen,
            ifindex: ANY_IFINDEX,
        },
        |i| FilterIfaceKey { gen, ifindex: *i },
    );
    reconcile_gen(dp, maps::FILTER_IFACE, live, &iface)?;
    let port = dimension_keys(
        &c.port,
        FilterPortKey {
            gen,
            ..Default::default()
        },
        |(p, pr)| FilterPortKey {
            gen,
            port: p.to_be_bytes(),
            proto: pr.number(),
            _pad: 0,
        },
    );
    reconcile_gen(dp, maps::FILTER_PORT, live, &port)?;
    let network = dimension_keys(
        &c.network,
        FilterNetKey {
            gen,
            network_id: ANY_NETWORK,
        },
        |n| FilterNetKey {
            gen,
            network_id: *n,
        },
    );
    reconcile_gen(dp, maps::FILTER_NET, live, &network)?;
    Ok(())
}

/// Writes generation `gen` of the actions and the counters, `live_rules`
/// being the rule count of the live generation `live`.
fn write_actions(
    dp: &mut Dataplane,
    c: &Compiled,
    live_rules: u32,
    gen: u32,
    live: u32,
) -> Result<(), FilterError> {
    // Where each rule id sits in the live generation, to carry its counters.
    let mut old_pos: BTreeMap<u32, u32> = BTreeMap::new();
    {
        let actions = array::<FilterAction>(dp, maps::FILTER_ACTIONS)?;
        for pos in 0..live_rules.min(MAX_RULES) {
            let a = actions
                .get(&slot(live, pos), 0)
                .map_err(map_err(maps::FILTER_ACTIONS))?;
            old_pos.insert(a.rule_id, pos);
        }
    }
    // Positions this generation used last time beyond the new rule count
    // (a used slot never has action 0): cleared below, so nothing stale is
    // left where a later, longer rule set will look.
    let stale_end = {
        let actions = array::<FilterAction>(dp, maps::FILTER_ACTIONS)?;
        let mut end = c.rules();
        while end < MAX_RULES {
            let a = actions
                .get(&slot(gen, end), 0)
                .map_err(map_err(maps::FILTER_ACTIONS))?;
            if a.action == 0 {
                break;
            }
            end += 1;
        }
        end
    };
    // Written in batches: 10 000 rules are 20 000 slots.
    let slots: Vec<u32> = (0..stale_end).map(|pos| slot(gen, pos)).collect();
    {
        let name = maps::FILTER_ACTIONS;
        let mut actions = array::<FilterAction>(dp, name)?;
        let values: Vec<FilterAction> = (0..stale_end)
            .map(|pos| {
                c.actions
                    .get(pos as usize)
                    .map(|(id, action)| FilterAction {
                        action: action.code(),
                        rule_id: *id,
                    })
                    .unwrap_or_default()
            })
            .collect();
        let bytes: Vec<u8> = values.iter().flat_map(bytes_of).copied().collect();
        let map = aya::maps::IterableMap::<u32, FilterAction>::map(&actions);
        if slots.len() < BATCH_FROM
            || !set_array_batch(map, name, &slots, &bytes, size_of::<FilterAction>())?
        {
            for (s, a) in slots.iter().zip(values) {
                actions.set(*s, a, 0).map_err(map_err(name))?;
            }
        }
    }
    {
        let name = maps::FILTER_STATS;
        let mut stats: PerCpuArray<&mut MapData, PktCounter> = open(&mut *dp, name)?;
        let values = (0..stale_end)
            .map(|pos| {
                match c
                    .actions
                    .get(pos as usize)
                    .and_then(|(id, _)| old_pos.get(id))
                {
                    Some(old) => stats.get(&slot(live, *old), 0).map_err(map_err(name)),
                    None => zeroed_counters(),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut bytes = Vec::new();
        for v in &values {
            per_cpu_bytes(v, &mut bytes);
        }
        let vlen = bytes.len() / values.len().max(1);
        let map = aya::maps::IterableMap::<u32, PerCpuValues<PktCounter>>::map(&stats);
        if slots.len() < BATCH_FROM || !set_array_batch(map, name, &slots, &bytes, vlen)? {
            for (s, v) in slots.iter().zip(values) {
                stats.set(*s, v, 0).map_err(map_err(name))?;
            }
        }
    }
    Ok(())
}

/// The live generation and its rule count, from the pinned config.
fn live_config(pins: &PinRoot) -> Result<FilterConfig, FilterError> {
    let name = maps::FILTER_CONFIG;
    let cfg: Array<MapData, FilterConfig> = open(pins, name)?;
    Ok(cfg.get(&0, 0).map_err(map_err(name))?)
}

/// Counters of the rules at the given positions of the live rule set,
/// summed over CPUs. No positions: nothing is read (the maps may not exist
/// yet).
pub fn counters(
    pins: &PinRoot,
    positions: impl IntoIterator<Item = u32>,
) -> Result<BTreeMap<u32, PktCounter>, FilterError> {
    let positions: Vec<u32> = positions.into_iter().collect();
    if positions.is_empty() {
        return Ok(BTreeMap::new());
    }
    if let Some(p) = positions.iter().find(|p| **p >= MAX_RULES) {
        return Err(FilterError::Position(*p));
    }
    let live = live_config(pins)?.gen % GENERATIONS;
    let name = maps::FILTER_STATS;
    let stats: PerCpuArray<MapData, PktCounter> = open(pins, name)?;
    let mut out = BTreeMap::new();
    for pos in positions {
        let values = stats.get(&slot(live, pos), 0).map_err(map_err(name))?;
        out.insert(pos, sum(&values));
    }
    Ok(out)
}

/// Counters of every rule of the live rule set, by rule id: what the
/// program actually runs, whatever the state says.
pub fn counters_by_id(pins: &PinRoot) -> Result<BTreeMap<u32, PktCounter>, FilterError> {
    let cfg = live_config(pins)?;
    let live = cfg.gen % GENERATIONS;
    let name = maps::FILTER_ACTIONS;
    let actions: Array<MapData, FilterAction> = open(pins, name)?;
    let ids = (0..cfg.rules.min(MAX_RULES))
        .map(|pos| {
            actions
                .get(&slot(live, pos), 0)
                .map(|a| (a.rule_id, pos))
                .map_err(map_err(name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let by_pos = counters(pins, ids.iter().map(|(_, pos)| *pos))?;
    Ok(ids
        .into_iter()
        .map(|(id, pos)| (id, by_pos.get(&pos).copied().unwrap_or_default()))
        .collect())
}
