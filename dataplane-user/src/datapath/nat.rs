//! The NAT dataplane's userspace side: the uplink programs' attachments, and
//! writing the desired state (published ports, managed subnets, the host's
//! addresses, uplinks, the endpoints and the fast path's routes to them)
//! into the pinned maps the programs read.
//!
//! [`sync`] and [`apply`] are a full reconcile, not a log of changes: they
//! compute every map's desired contents from the state and the kernel,
//! delete what should not be there and write the rest, so running them twice
//! changes nothing and a map edited behind the agent's back is repaired.
//! [`apply_changes`] is the agent's cheap path between full reconciles: from
//! the contents it wrote last to the new ones, only the entries that differ.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use aya::maps::{HashMap, LpmTrie, MapData, PerCpuArray};
use dataplane_common::{
    maps,
    nat::{
        EndpointInfo, EndpointRoute, HostAddr, PortKey, PortTarget, SandboxAddr, SubnetPolicy,
        Uplink, MAX_PORT_MAPPINGS, SUBNET_INTERNAL, SUBNET_MASQUERADE, SUBNET_NO_ICC,
    },
    stats::PktCounter,
};

use super::{
    bpffs::PinRoot,
    conntrack::{self, Gone},
    ebpf::{detach_tc, Dataplane, Direction, LoadError},
    maps::{map_err, open, reconcile, sum, update, zeroed_counters, MapsError},
};
use crate::{
    netlink::{Link, Netlink, NetlinkError},
    network::{
        ipam,
        model::{Attachment, DriverKind, Endpoint},
    },
    state::State,
};

/// The uplink programs, and the direction each is attached in.
pub const UPLINK_PROGRAMS: [(&str, Direction); 2] = [
    ("dp_uplink_in", Direction::Ingress),
    ("dp_uplink_out", Direction::Egress),
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
    #[error("no free slot for another published port's counters (limit {MAX_PORT_MAPPINGS})")]
    StatsFull,
}

/// Attaches both uplink programs to `ifname` (in this thread's namespace);
/// an attachment that exists already is kept.
pub fn attach_uplink(dp: &mut Dataplane, ifname: &str) -> Result<(), NatError> {
    for (program, dir) in UPLINK_PROGRAMS {
        match dp.attach_tc(program, ifname, dir) {
            Ok(_) | Err(LoadError::AlreadyAttached { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Detaches the uplink programs from `ifname`; missing attachments are fine.
pub fn detach_uplink(pins: &PinRoot, ifname: &str) -> Result<(), NatError> {
    for (program, dir) in UPLINK_PROGRAMS {
        match detach_tc(pins, program, ifname, dir) {
            Ok(()) | Err(LoadError::NotAttached { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The program on an endpoint's host-side veth (packets from the container).
pub const ENDPOINT_PROGRAM: &str = "dp_from_container";

/// Attaches the endpoint program to a container's host-side veth; an
/// existing attachment is kept.
pub fn attach_endpoint(dp: &mut Dataplane, host_ifname: &str) -> Result<(), NatError> {
    match dp.attach_tc(ENDPOINT_PROGRAM, host_ifname, Direction::Ingress) {
        Ok(_) | Err(LoadError::AlreadyAttached { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the endpoint program's pin (its link is gone already when the
/// veth went with its namespace).
pub fn detach_endpoint(pins: &PinRoot, host_ifname: &str) -> Result<(), NatError> {
    match detach_tc(pins, ENDPOINT_PROGRAM, host_ifname, Direction::Ingress) {
        Ok(()) | Err(LoadError::NotAttached { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
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
}

/// The number the datapath knows a network by: the first 32 bits of its id,
/// never 0 (0 means "no network").
pub fn network_key(id: &str) -> u32 {
    u32::from_str_radix(id.get(..8).unwrap_or("1"), 16)
        .unwrap_or(1)
        .max(1)
}

/// Every published port of the state, as `DP_PORTS` holds it.
fn port_entries(state: &State) -> impl Iterator<Item = (PortKey, PortTarget)> + '_ {
    state.endpoints.values().flat_map(endpoint_ports)
}

/// The published ports of one endpoint, as `DP_PORTS` holds them (only
/// veth endpoints are reached through the maps).
fn endpoint_ports(ep: &Endpoint) -> impl Iterator<Item = (PortKey, PortTarget)> + '_ {
    let ip = match (ep.ipv4, &ep.attachment) {
        (Some(ip), Attachment::Veth { .. }) => Some(ip),
        _ => None,
    };
    ip.into_iter().flat_map(move |ip| {
        ep.published.iter().map(move |m| {
            (
                PortKey {
                    addr: m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
                    port: m.host_port.to_be_bytes(),
                    proto: m.proto.number(),
                    _pad: 0,
                },
                PortTarget {
                    addr: ip.octets(),
                    port: m.container_port.to_be_bytes(),
                    _pad: [0; 2],
                    stats_index: m.stats_index,
                    _pad2: 0,
                },
            )
        })
    })
}

/// The address flows of an endpoint use while it is in a sandbox.
fn live_addr(ep: &Endpoint) -> Option<[u8; 4]> {
    ep.ipv4
        .filter(|_| !ep.netns.as_os_str().is_empty())
        .map(|ip| ip.octets())
}

/// What going from `old` to `new` takes away, whose conntrack entries
/// must go too ([`conntrack::purge`]): endpoint addresses no longer in a
/// sandbox, published ports no longer leading where they did. Endpoints
/// whose record did not change cost a comparison; the whole new state is
/// only searched when something may be gone.
pub fn gone(old: &State, new: &State) -> Gone {
    let mut g = Gone::default();
    for (id, o) in &old.endpoints {
        let n = new.endpoints.get(id);
        if n == Some(o) {
            continue;
        }
        if let Some(a) = live_addr(o) {
            if n.and_then(live_addr) != Some(a) {
                g.addrs.insert(a);
            }
        }
        let kept: BTreeSet<_> = n
            .into_iter()
            .flat_map(endpoint_ports)
            .map(|(k, t)| conntrack::mapping_of(&k, &t))
            .collect();
        g.mappings.extend(
            endpoint_ports(o)
                .map(|(k, t)| conntrack::mapping_of(&k, &t))
                .filter(|m| !kept.contains(m)),
        );
    }
    // Another endpoint may have what this one lost (a container's second
    // endpoint record shares its address).
    if !g.addrs.is_empty() {
        let live: BTreeSet<[u8; 4]> = new.endpoints.values().filter_map(live_addr).collect();
        g.addrs.retain(|a| !live.contains(a));
    }
    if !g.mappings.is_empty() {
        let mapped: BTreeSet<_> = port_entries(new)
            .map(|(k, t)| conntrack::mapping_of(&k, &t))
            .collect();
        g.mappings.retain(|m| !mapped.contains(m));
    }
    g
}

/// Computes the maps' contents from the state and the host's links.
pub async fn desired(state: &State, host: &Netlink) -> Result<Desired, NatError> {
    // Collected rather than inserted one by one: a sorted bulk build of
    // 10 000 entries costs a fraction of 10 000 inserts.
    let ports = port_entries(state).collect();
    let mut d = Desired {
        ports,
        ..Desired::default()
    };
    for net in state.networks.values() {
        let (DriverKind::Bridge, Some(subnet)) = (net.driver, net.subnet) else {
            continue;
        };
        let mut flags = 0;
        if net.internal {
            flags |= SUBNET_INTERNAL;
        } else if net.masquerade {
            flags |= SUBNET_MASQUERADE;
        }
        if !net.icc {
            flags |= SUBNET_NO_ICC;
        }
        d.subnets.insert(
            (subnet.network().octets(), u32::from(subnet.prefix_len())),
            (flags, network_key(&net.id)),
        );
    }
    // One dump of the host's links rather than one request per endpoint.
    let links: Vec<Link> = if state
        .endpoints
        .values()
        .any(|e| matches!(e.attachment, Attachment::Veth { .. }))
    {
        host.links().await?
    } else {
        Vec::new()
    };
    let by_name: BTreeMap<&str, &Link> = links.iter().map(|l| (l.name.as_str(), l)).collect();
    let by_index: BTreeMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
    let sandbox = sandboxes(state);
    for ep in state.endpoints.values() {
        let (Attachment::Veth { host_ifname }, Some(ip)) = (&ep.attachment, ep.ipv4) else {
            continue;
        };
        let Some(net) = state.networks.get(&ep.network) else {
            continue;
        };
        let (Some(_), Some(gw)) = (net.subnet, net.gateway) else {
            continue;
        };
        // A veth gone with its namespace has nothing left to police.
        let Some(link) = by_name.get(host_ifname.as_str()) else {
            continue;
        };
        d.endpoints.insert(
            link.index,
            EndpointInfo {
                addr: ip.octets(),
                gateway: gw.octets(),
                sandbox: sandbox.get(ep.id.as_str()).copied().unwrap_or(0),
                network_id: network_key(&net.id),
            },
        );
        // The fast path needs the container's MAC and the bridge's, read
        // now (the bridge's is set once by the driver, so it does not move
        // as ports come and go). An endpoint in no sandbox (Docker between
        // Leave and DeleteEndpoint) has its other end in the host: nothing
        // to deliver into.
        if ep.netns.as_os_str().is_empty() {
            continue;
        }
        let Some(mac) = ep.mac.as_deref().and_then(|m| ipam::parse_mac(m).ok()) else {
            continue;
        };
        let Some(gateway_mac) = link
            .master
            .and_then(|b| by_index.get(&b))
            .and_then(|b| b.mac)
        else {
            continue;
        };
        d.endpoint_routes.insert(
            ip.octets(),
            EndpointRoute {
                ifindex: link.index,
                mac,
                gateway_mac,
            },
        );
    }
    d.sandbox_addrs = sandbox_addrs(state, &sandbox);
    for (index, addr, _) in host.addrs(None).await? {
        d.host_addrs.insert(
            addr.octets(),
            HostAddr {
                ifindex: index,
                _pad: 0,
            },
        );
    }
    for name in &state.uplinks {
        let link = host
            .link_by_name(name)
            .await?
            .ok_or_else(|| NatError::NoUplink(name.clone()))?;
        let addr = host
            .addrs(Some(link.index))
            .await?
            .first()
            .map(|(_, a, _)| a.octets())
            .ok_or_else(|| NatError::NoUplinkAddr(name.clone()))?;
        d.uplinks.insert(link.index, Uplink { addr, _pad: 0 });
    }
    Ok(d)
}

/// The sandbox of every endpoint that is in one: the inode number of its
/// namespace file (bind mounts and `/proc/PID/ns/net` alike show the
/// namespace's own, unique among live namespaces, so two paths to one
/// namespace agree), read once per path. Endpoints in no sandbox (Docker
/// between Leave and DeleteEndpoint) or whose namespace is gone get none.
fn sandboxes(state: &State) -> BTreeMap<&str, u32> {
    use std::os::unix::fs::MetadataExt as _;
    let mut by_path: BTreeMap<&std::path::Path, Option<u32>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for ep in state.endpoints.values() {
        if ep.netns.as_os_str().is_empty() {
            continue;
        }
        let id = *by_path.entry(ep.netns.as_path()).or_insert_with(|| {
            std::fs::metadata(&ep.netns)
                .ok()
                .and_then(|m| u32::try_from(m.ino()).ok())
                .filter(|i| *i != 0)
        });
        if let Some(id) = id {
            out.insert(ep.id.as_str(), id);
        }
    }
    out
}

/// The addresses of endpoints that share their sandbox with another
/// endpoint, with the sandbox: what `DP_SANDBOX_ADDRS` holds.
fn sandbox_addrs(state: &State, sandboxes: &BTreeMap<&str, u32>) -> BTreeMap<[u8; 4], SandboxAddr> {
    let mut members: BTreeMap<u32, BTreeSet<[u8; 4]>> = BTreeMap::new();
    for ep in state.endpoints.values() {
        if let (Some(ip), Some(sb)) = (ep.ipv4, sandboxes.get(ep.id.as_str())) {
            members.entry(*sb).or_default().insert(ip.octets());
        }
    }
    members
        .into_iter()
        .filter(|(_, addrs)| addrs.len() > 1)
        .flat_map(|(sandbox, addrs)| {
            addrs
                .into_iter()
                .map(move |a| (a, SandboxAddr { sandbox, _pad: 0 }))
        })
        .collect()
}

type Hash<'a, K, V> = HashMap<&'a mut MapData, K, V>;
type SubnetTrie<'a> = LpmTrie<&'a mut MapData, [u8; 4], SubnetPolicy>;

/// `DP_SUBNETS`' entries as the trie holds them.
fn subnet_entries(
    subnets: &BTreeMap<([u8; 4], u32), (u32, u32)>,
) -> BTreeMap<(u32, [u8; 4]), SubnetPolicy> {
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
    let mut trie: SubnetTrie<'_> = open(dp, maps::SUBNETS)?;
    Ok(reconcile(
        &mut trie,
        maps::SUBNETS,
        &subnet_entries(&want.subnets),
        |_| false,
    )?)
}

/// Takes the pinned maps from `old` (what this process last wrote with
/// [`apply`] or here) to `new`, writing only the entries that differ: the
/// cost of one more published port does not grow with the number of ports.
pub fn apply_changes(dp: &mut Dataplane, old: &Desired, new: &Desired) -> Result<(), NatError> {
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
        let mut map: Hash<'_, K, V> = open(dp, name)?;
        Ok(update(&mut map, name, old, new)?)
    }
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
    if old.subnets != new.subnets {
        let mut trie: SubnetTrie<'_> = open(dp, maps::SUBNETS)?;
        update(
            &mut trie,
            maps::SUBNETS,
            &subnet_entries(&old.subnets),
            &subnet_entries(&new.subnets),
        )?;
    }
    Ok(())
}

/// Brings the pinned maps in line with `state` (see the module doc).
pub async fn sync(dp: &mut Dataplane, state: &State, host: &Netlink) -> Result<(), NatError> {
    let want = desired(state, host).await?;
    apply(dp, &want)
}

/// The lowest counter slot from `from` on that no mapping uses (`used` is
/// indexed by slot); its old counts are zeroed so a new mapping starts from
/// nothing.
pub fn claim_stats_index(dp: &mut Dataplane, used: &[bool], from: u32) -> Result<u32, NatError> {
    let index = (from..MAX_PORT_MAPPINGS)
        .find(|i| !used.get(*i as usize).copied().unwrap_or(false))
        .ok_or(NatError::StatsFull)?;
    let name = maps::PORT_STATS;
    let mut array: PerCpuArray<&mut MapData, PktCounter> = open(dp, name)?;
    array
        .set(index, zeroed_counters()?, 0)
        .map_err(map_err(name))?;
    Ok(index)
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
