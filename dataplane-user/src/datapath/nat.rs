//! The NAT dataplane's userspace side: the uplink and endpoint programs'
//! attachments, and writing a [`Desired`] set of entries (published ports,
//! managed subnets, the host's addresses, uplinks, the endpoints and the
//! fast path's routes to them) into the pinned maps the programs read.
//! What the maps should hold is computed from the agent's state outside
//! this layer (`crate::control::desired`).
//!
//! [`apply`] is a full reconcile, not a log of changes: it deletes what
//! should not be there and writes the rest, so running it twice changes
//! nothing and a map edited behind the agent's back is repaired.
//! [`apply_changes`] is the agent's cheap path between full reconciles: from
//! the contents it wrote last to the new ones, only the entries that differ.
//! [`apply_delta`] is the cheaper path still for one request's published
//! ports: the entries of the keys it touched, before and after
//! ([`NatDelta`]), with no walk over the rest.

use std::collections::BTreeMap;

use aya::maps::{HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues};
use dataplane_common::{
    maps,
    nat::{
        EndpointInfo, EndpointInfo6, EndpointRoute, HostAddr, PortKey, PortKey6, PortTarget,
        PortTarget6, SandboxAddr, SubnetPolicy, TrustedIface, Uplink, Uplink6,
    },
    stats::PktCounter,
};

pub use super::endpoints::{attach_endpoint, detach_endpoint, ENDPOINT_PROGRAM};
use super::{
    bpffs::PinRoot,
    ebpf::{ensure_detached, Dataplane, Direction, LoadError},
    maps::{map_err, open, reconcile, set_array_batch, sum, update, zeroed_counters, MapsError},
};
use crate::sys::netlink::NetlinkError;

/// The uplink programs, and the direction each is attached in.
/// Each family has its own pair; tcx runs the IPv4 one first, and each
/// passes the other family's packets on.
pub const UPLINK_PROGRAMS: [(&str, Direction); 4] = [
    ("dp_uplink_in", Direction::Ingress),
    ("dp_uplink_out", Direction::Egress),
    ("dp_uplink_in6", Direction::Ingress),
    ("dp_uplink_out6", Direction::Egress),
];

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Map(#[from] MapsError),
    #[error("uplink {0}: no such interface in the host namespace")]
    NoUplink(String),
    #[error("uplink {0}: has no IPv4 address to masquerade with")]
    NoUplinkAddr(String),
    #[error(
        "no free slot for another published port's counters (all {0} in use): raise `[maps] \
         published_ports` in the agent's config"
    )]
    StatsFull(u32),
}

/// Attaches both uplink programs to `ifname` (in this thread's namespace);
/// an attachment that exists already is kept.
pub fn attach_uplink(dp: &mut Dataplane, ifname: &str) -> Result<(), NatError> {
    for (program, dir) in UPLINK_PROGRAMS {
        dp.ensure_attached(program, ifname, dir)?;
    }
    Ok(())
}

/// Detaches the uplink programs from `ifname`; missing attachments are fine.
pub fn detach_uplink(pins: &PinRoot, ifname: &str) -> Result<(), NatError> {
    for (program, dir) in UPLINK_PROGRAMS {
        ensure_detached(pins, program, ifname, dir)?;
    }
    Ok(())
}

/// What the maps should hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub ports: BTreeMap<PortKey, PortTarget>,
    /// (network, prefix length) -> (flags, network key).
    pub subnets: BTreeMap<([u8; 4], u32), (u32, u32)>,
    /// Host-side veth ifindex -> endpoint.
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// Endpoint address -> where the fast path delivers to it (joined veth
    /// endpoints whose veth is on a bridge; the same ifindex as in
    /// `endpoints`, which the programs check).
    pub endpoint_routes: BTreeMap<[u8; 4], EndpointRoute>,
    /// Address -> its endpoint's sandbox, for the endpoints that share a
    /// sandbox with another: sources a veth may send from besides its own.
    pub sandbox_addrs: BTreeMap<[u8; 4], SandboxAddr>,
    pub host_addrs: BTreeMap<[u8; 4], HostAddr>,
    pub uplinks: BTreeMap<u32, Uplink>,
    /// Container address, port and protocol -> 1: the published container
    /// ports of `routed` networks, open to direct access.
    pub open_ports: BTreeMap<PortKey, u32>,
    /// (ifindex, network key) -> 1: interfaces a network trusts.
    pub trusted_ifaces: BTreeMap<TrustedIface, u32>,
    /// IPv6: (network, prefix length) -> (flags, network key), as `subnets`.
    pub subnets6: BTreeMap<([u8; 16], u32), (u32, u32)>,
    /// IPv6: host-side veth ifindex -> the endpoint's IPv6 side, for the
    /// endpoints with an IPv6 address.
    pub endpoints6: BTreeMap<u32, EndpointInfo6>,
    /// IPv6: endpoint address -> the fast path's route to it, as
    /// `endpoint_routes`.
    pub endpoint_routes6: BTreeMap<[u8; 16], EndpointRoute>,
    /// IPv6: address -> its endpoint's sandbox, as `sandbox_addrs`.
    pub sandbox_addrs6: BTreeMap<[u8; 16], SandboxAddr>,
    /// IPv6: published ports, the host's addresses (link-local ones left
    /// out), uplinks' masquerade addresses, `routed` networks' open ports.
    pub ports6: BTreeMap<PortKey6, PortTarget6>,
    pub host_addrs6: BTreeMap<[u8; 16], HostAddr>,
    pub uplinks6: BTreeMap<u32, Uplink6>,
    pub open_ports6: BTreeMap<PortKey6, u32>,
}

/// The published-port maps' entries of some keys: the part of a
/// [`Desired`] a change to published ports touches.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PortEntries {
    pub ports: BTreeMap<PortKey, PortTarget>,
    pub ports6: BTreeMap<PortKey6, PortTarget6>,
    pub open_ports: BTreeMap<PortKey, u32>,
    pub open_ports6: BTreeMap<PortKey6, u32>,
}

/// A change to the published-port maps as the entries of the keys it
/// touches: `old` what the maps hold for them now, `new` what they should
/// hold (a key in `old` only is deleted).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NatDelta {
    pub old: PortEntries,
    pub new: PortEntries,
}

impl NatDelta {
    /// Applies the change to `d`, a record of the maps' contents.
    pub fn apply_to(&self, d: &mut Desired) {
        fn one<K: Ord + Copy, V: Copy>(
            d: &mut BTreeMap<K, V>,
            old: &BTreeMap<K, V>,
            new: &BTreeMap<K, V>,
        ) {
            for k in old.keys() {
                d.remove(k);
            }
            d.extend(new.iter().map(|(k, v)| (*k, *v)));
        }
        let (o, n) = (&self.old, &self.new);
        one(&mut d.ports, &o.ports, &n.ports);
        one(&mut d.ports6, &o.ports6, &n.ports6);
        one(&mut d.open_ports, &o.open_ports, &n.open_ports);
        one(&mut d.open_ports6, &o.open_ports6, &n.open_ports6);
    }
}

type Hash<'a, K, V> = HashMap<&'a mut MapData, K, V>;
type SubnetTrie<'a, A> = LpmTrie<&'a mut MapData, A, SubnetPolicy>;

/// `DP_SUBNETS`' (or `DP_SUBNETS6`') entries as the trie holds them.
fn subnet_entries<A: Copy + Ord>(
    subnets: &BTreeMap<(A, u32), (u32, u32)>,
) -> BTreeMap<(u32, A), SubnetPolicy> {
    subnets
        .iter()
        .map(|((addr, len), (flags, network_id))| {
            (
                (*len, *addr),
                SubnetPolicy {
                    flags: *flags,
                    network_id: *network_id,
                },
            )
        })
        .collect()
}

/// Writes `want` into the pinned maps, whatever they hold now (a full
/// reconcile: every map is read back).
pub fn apply(dp: &mut Dataplane, want: &Desired) -> Result<(), NatError> {
    fn hash<K, V>(
        dp: &mut Dataplane,
        name: &'static str,
        want: &BTreeMap<K, V>,
    ) -> Result<(), NatError>
    where
        K: aya::Pod + Ord,
        V: aya::Pod + PartialEq,
    {
        let mut map: Hash<'_, K, V> = open(dp, name)?;
        Ok(reconcile(&mut map, name, want, |_| false)?)
    }
    hash(dp, maps::PORTS, &want.ports)?;
    hash(dp, maps::HOST_ADDRS, &want.host_addrs)?;
    hash(dp, maps::UPLINKS, &want.uplinks)?;
    hash(dp, maps::ENDPOINTS, &want.endpoints)?;
    hash(dp, maps::ENDPOINT_ROUTES, &want.endpoint_routes)?;
    hash(dp, maps::SANDBOX_ADDRS, &want.sandbox_addrs)?;
    hash(dp, maps::OPEN_PORTS, &want.open_ports)?;
    hash(dp, maps::TRUSTED_IFACES, &want.trusted_ifaces)?;
    hash(dp, maps::ENDPOINTS6, &want.endpoints6)?;
    hash(dp, maps::ENDPOINT_ROUTES6, &want.endpoint_routes6)?;
    hash(dp, maps::SANDBOX_ADDRS6, &want.sandbox_addrs6)?;
    hash(dp, maps::PORTS6, &want.ports6)?;
    hash(dp, maps::HOST_ADDRS6, &want.host_addrs6)?;
    hash(dp, maps::UPLINKS6, &want.uplinks6)?;
    hash(dp, maps::OPEN_PORTS6, &want.open_ports6)?;
    let mut trie: SubnetTrie<'_, [u8; 4]> = open(&mut *dp, maps::SUBNETS)?;
    reconcile(
        &mut trie,
        maps::SUBNETS,
        &subnet_entries(&want.subnets),
        |_| false,
    )?;
    let mut trie6: SubnetTrie<'_, [u8; 16]> = open(dp, maps::SUBNETS6)?;
    Ok(reconcile(
        &mut trie6,
        maps::SUBNETS6,
        &subnet_entries(&want.subnets6),
        |_| false,
    )?)
}

/// The hash map `name` from `old` to `new`: the entries that differ
/// written or deleted, the map not even opened when nothing does.
fn hash<K, V>(
    dp: &mut Dataplane,
    name: &'static str,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> Result<(), NatError>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    if old == new {
        return Ok(());
    }
    let mut map: Hash<'_, K, V> = open(dp, name)?;
    Ok(update(&mut map, name, old, new)?)
}

/// Takes the pinned maps from `old` (what this process last wrote with
/// [`apply`] or here) to `new`, writing only the entries that differ: the
/// cost of one more published port does not grow with the number of ports.
pub fn apply_changes(dp: &mut Dataplane, old: &Desired, new: &Desired) -> Result<(), NatError> {
    hash(dp, maps::PORTS, &old.ports, &new.ports)?;
    hash(dp, maps::HOST_ADDRS, &old.host_addrs, &new.host_addrs)?;
    hash(dp, maps::UPLINKS, &old.uplinks, &new.uplinks)?;
    hash(dp, maps::ENDPOINTS, &old.endpoints, &new.endpoints)?;
    // After DP_ENDPOINTS, as in `apply`: the programs use a route only
    // while the endpoint entry of its ifindex has the same address.
    hash(
        dp,
        maps::ENDPOINT_ROUTES,
        &old.endpoint_routes,
        &new.endpoint_routes,
    )?;
    hash(
        dp,
        maps::SANDBOX_ADDRS,
        &old.sandbox_addrs,
        &new.sandbox_addrs,
    )?;
    hash(dp, maps::OPEN_PORTS, &old.open_ports, &new.open_ports)?;
    hash(
        dp,
        maps::TRUSTED_IFACES,
        &old.trusted_ifaces,
        &new.trusted_ifaces,
    )?;
    hash(dp, maps::ENDPOINTS6, &old.endpoints6, &new.endpoints6)?;
    hash(
        dp,
        maps::ENDPOINT_ROUTES6,
        &old.endpoint_routes6,
        &new.endpoint_routes6,
    )?;
    hash(
        dp,
        maps::SANDBOX_ADDRS6,
        &old.sandbox_addrs6,
        &new.sandbox_addrs6,
    )?;
    hash(dp, maps::PORTS6, &old.ports6, &new.ports6)?;
    hash(dp, maps::HOST_ADDRS6, &old.host_addrs6, &new.host_addrs6)?;
    hash(dp, maps::UPLINKS6, &old.uplinks6, &new.uplinks6)?;
    hash(dp, maps::OPEN_PORTS6, &old.open_ports6, &new.open_ports6)?;
    if old.subnets != new.subnets {
        let mut trie: SubnetTrie<'_, [u8; 4]> = open(&mut *dp, maps::SUBNETS)?;
        update(
            &mut trie,
            maps::SUBNETS,
            &subnet_entries(&old.subnets),
            &subnet_entries(&new.subnets),
        )?;
    }
    if old.subnets6 != new.subnets6 {
        let mut trie: SubnetTrie<'_, [u8; 16]> = open(dp, maps::SUBNETS6)?;
        update(
            &mut trie,
            maps::SUBNETS6,
            &subnet_entries(&old.subnets6),
            &subnet_entries(&new.subnets6),
        )?;
    }
    Ok(())
}

/// Writes one request's change to the published-port maps: one syscall
/// per entry that differs, nothing else read or written (see
/// [`NatDelta`]).
pub fn apply_delta(dp: &mut Dataplane, delta: &NatDelta) -> Result<(), NatError> {
    let (o, n) = (&delta.old, &delta.new);
    hash(dp, maps::PORTS, &o.ports, &n.ports)?;
    hash(dp, maps::PORTS6, &o.ports6, &n.ports6)?;
    hash(dp, maps::OPEN_PORTS, &o.open_ports, &n.open_ports)?;
    hash(dp, maps::OPEN_PORTS6, &o.open_ports6, &n.open_ports6)
}

/// The `count` lowest counter slots no mapping uses (`used` is indexed by
/// slot), ascending; their old counts are zeroed (one batch) so new
/// mappings start from nothing.
pub fn claim_stats_slots(
    dp: &mut Dataplane,
    used: &[bool],
    count: usize,
) -> Result<Vec<u32>, NatError> {
    let name = maps::PORT_STATS;
    let mut array: PerCpuArray<&mut MapData, PktCounter> = open(&mut *dp, name)?;
    // The array's size follows `[maps] published_ports`.
    let slots = free_slots(used, array.len(), count)?;
    if slots.len() < 16 {
        for &index in &slots {
            array
                .set(index, zeroed_counters()?, 0)
                .map_err(map_err(name))?;
        }
        return Ok(slots);
    }
    // One zeroed value per possible CPU, 8-byte aligned slots, per key.
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapsError::Cpus(e))?;
    let value = size_of::<PktCounter>().div_ceil(8) * 8 * cpus;
    let zeros = vec![0u8; slots.len() * value];
    let map = aya::maps::IterableMap::<u32, PerCpuValues<PktCounter>>::map(&array);
    if !set_array_batch(map, name, &slots, &zeros, value)? {
        for &index in &slots {
            array
                .set(index, zeroed_counters()?, 0)
                .map_err(map_err(name))?;
        }
    }
    Ok(slots)
}

/// The `count` lowest of `0..slots` that `used` does not mark, ascending.
pub fn free_slots(used: &[bool], slots: u32, count: usize) -> Result<Vec<u32>, NatError> {
    let free: Vec<u32> = (0..slots)
        .filter(|i| !used.get(*i as usize).copied().unwrap_or(false))
        .take(count)
        .collect();
    if free.len() < count {
        return Err(NatError::StatsFull(slots));
    }
    Ok(free)
}

/// Counters of the given published-port slots, summed over CPUs.
pub fn port_counters(
    pins: &PinRoot,
    indexes: impl IntoIterator<Item = u32>,
) -> Result<BTreeMap<u32, PktCounter>, NatError> {
    let name = maps::PORT_STATS;
    let array: PerCpuArray<MapData, PktCounter> = open(pins, name)?;
    let mut out = BTreeMap::new();
    for i in indexes {
        out.insert(i, sum(&array.get(&i, 0).map_err(map_err(name))?));
    }
    Ok(out)
}
