//! What the NAT maps should hold, computed from the agent's state and the
//! host's links ([`desired`]), and what a change of state takes away whose
//! flows must go ([`gone`]). The datapath side that writes it is
//! `crate::datapath::nat`. This is control-plane code: it reads
//! `State` and the network model, which the datapath must not.

mod delta;
mod keys;
mod v6;

use std::collections::{BTreeMap, BTreeSet};

use dataplane_common::nat::{
    EndpointInfo, EndpointRoute, HostAddr, PortKey, PortTarget, SandboxAddr, TrustedIface, Uplink,
};
pub use delta::{delta_gone, port_delta};
pub use keys::network_key;
use keys::{on_routed_network, open_port, policy_flags};

use crate::{
    control::{
        driver::{self, NetworkDriver as _},
        host::Host,
        model::{Attachment, DriverConfig, Endpoint},
        ports::PortMapping,
        state::State,
    },
    datapath::{
        conntrack::{self, Gone},
        nat::{Desired, NatError},
    },
    sys::netlink::Link,
};

/// Every published port of the state, as `DP_PORTS` holds it.
fn port_entries(state: &State) -> impl Iterator<Item = (PortKey, PortTarget)> + '_ {
    state.endpoints.values().flat_map(endpoint_ports)
}

/// The published ports of one endpoint, as `DP_PORTS` holds them (only
/// veth endpoints are reached through the maps).
fn endpoint_ports(ep: &Endpoint) -> impl Iterator<Item = (PortKey, PortTarget)> + '_ {
    ports_of(ep, &ep.published)
}

/// The entries `DP_PORTS` holds for `published`, mappings of `ep`.
pub(super) fn ports_of<'a>(
    ep: &'a Endpoint,
    published: &'a [PortMapping],
) -> impl Iterator<Item = (PortKey, PortTarget)> + 'a {
    let ip = match (ep.ipv4, &ep.attachment) {
        (Some(ip), Attachment::Veth { .. }) => Some(ip),
        _ => None,
    };
    ip.into_iter().flat_map(move |ip| {
        // v6: datapath wired by the lead (mappings on IPv6 addresses only
        // are skipped here).
        published.iter().filter_map(move |m| {
            Some((
                PortKey {
                    addr: m.host_ipv4()?.octets(),
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
            ))
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
    let (addrs, mappings) = gone_family(old, new, live_addr, |ep| {
        endpoint_ports(ep)
            .map(|(k, t)| conntrack::mapping_of(&k, &t))
            .collect()
    });
    let (addrs6, mappings6) = gone_family(old, new, v6::live_addr6, v6::mappings6);
    Gone {
        addrs,
        mappings,
        addrs6,
        mappings6,
    }
}

/// [`gone`] for one family: `live` gives an endpoint's address of the
/// family while it is in a sandbox, `mappings` its published ports as the
/// family's maps hold them.
fn gone_family<A: Ord, M: Ord>(
    old: &State,
    new: &State,
    live: impl Fn(&Endpoint) -> Option<A>,
    mappings: impl Fn(&Endpoint) -> Vec<M>,
) -> (BTreeSet<A>, BTreeSet<M>) {
    let mut addrs = BTreeSet::new();
    let mut gone_mappings = BTreeSet::new();
    for (id, o) in &old.endpoints {
        let n = new.endpoints.get(id);
        if n == Some(o) {
            continue;
        }
        if let Some(a) = live(o) {
            if n.and_then(&live).as_ref() != Some(&a) {
                addrs.insert(a);
            }
        }
        let kept: BTreeSet<M> = n.map(&mappings).unwrap_or_default().into_iter().collect();
        gone_mappings.extend(mappings(o).into_iter().filter(|m| !kept.contains(m)));
    }
    // Another endpoint may have what this one lost (a container's second
    // endpoint record shares its address).
    if !addrs.is_empty() {
        let still: BTreeSet<A> = new.endpoints.values().filter_map(&live).collect();
        addrs.retain(|a| !still.contains(a));
    }
    if !gone_mappings.is_empty() {
        let mapped: BTreeSet<M> = new.endpoints.values().flat_map(&mappings).collect();
        gone_mappings.retain(|m| !mapped.contains(m));
    }
    (addrs, gone_mappings)
}

/// Computes the maps' contents from the state and the host's links.
pub async fn desired(state: &State, host: &impl Host) -> Result<Desired, NatError> {
    // Collected rather than inserted one by one: a sorted bulk build of
    // 10 000 entries costs a fraction of 10 000 inserts.
    let ports = port_entries(state).collect();
    let mut d = Desired {
        ports,
        subnets: subnets(state),
        open_ports: open_ports(state),
        trusted_ifaces: trusted_ifaces(state, host).await?,
        ..Desired::default()
    };
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
    let sandbox = sandboxes(state);
    endpoints(state, &links, &sandbox, &mut d);
    d.sandbox_addrs = sandbox_addrs(state, &sandbox, |ep| ep.ipv4.map(|a| a.octets()));
    d.sandbox_addrs6 = sandbox_addrs(state, &sandbox, |ep| ep.ipv6.map(|a| a.octets()));
    for (index, addr, _) in host.addrs(None).await? {
        d.host_addrs.insert(
            addr.octets(),
            HostAddr {
                ifindex: index,
                _pad: 0,
            },
        );
    }
    v6::fill(state, host, &links, &sandbox, &mut d).await?;
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

/// `DP_SUBNETS`: every bridge network's subnet, with its policy flags and
/// network key.
fn subnets(state: &State) -> BTreeMap<([u8; 4], u32), (u32, u32)> {
    let mut out = BTreeMap::new();
    for net in state.networks.values() {
        let Some(policy) = driver::for_network(net).subnet_policy(net) else {
            continue;
        };
        let Some(subnet) = policy.subnet else {
            continue;
        };
        out.insert(
            (subnet.network().octets(), u32::from(subnet.prefix_len())),
            (policy_flags(net, &policy), network_key(&net.id)),
        );
    }
    out
}

/// `DP_OPEN_PORTS`: the published container ports of the endpoints of
/// `routed` networks, each as the container's address and port (what a
/// packet routed straight to the container carries).
fn open_ports(state: &State) -> BTreeMap<PortKey, u32> {
    state
        .endpoints
        .values()
        .filter(|ep| on_routed_network(state, ep))
        .flat_map(endpoint_ports)
        .map(|(k, t)| open_port(&k, &t))
        .collect()
}

/// `DP_TRUSTED_IFACES`: the interfaces each bridge network trusts, by
/// their index now (one that does not exist yet is trusted once it does
/// and the maps are written again).
async fn trusted_ifaces(
    state: &State,
    host: &impl Host,
) -> Result<BTreeMap<TrustedIface, u32>, NatError> {
    let mut out = BTreeMap::new();
    for net in state.networks.values() {
        let DriverConfig::Bridge(b) = &net.driver else {
            continue;
        };
        for name in &b.trusted_host_interfaces {
            if let Some(link) = host.link_by_name(name).await? {
                let key = TrustedIface {
                    ifindex: link.index,
                    network_id: network_key(&net.id),
                };
                out.insert(key, 1);
            }
        }
    }
    Ok(out)
}

/// `DP_ENDPOINTS` and `DP_ENDPOINT_ROUTES`: the veth endpoints whose host
/// side is among `links`, and the fast path's route to those in a sandbox.
fn endpoints(state: &State, links: &[Link], sandbox: &BTreeMap<&str, u32>, d: &mut Desired) {
    let by_name: BTreeMap<&str, &Link> = links.iter().map(|l| (l.name.as_str(), l)).collect();
    let by_index: BTreeMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
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
        if let Some(route) = endpoint_route(ep, link, &by_index) {
            d.endpoint_routes.insert(ip.octets(), route);
        }
    }
}

/// The fast path's route to a veth endpoint whose host side is `link`
/// (both families use it). It needs the container's MAC and the bridge's,
/// read now (the bridge's is set once by the driver, so it does not move as
/// ports come and go). An endpoint in no sandbox (Docker between Leave and
/// DeleteEndpoint) has its other end in the host: nothing to deliver into.
fn endpoint_route(
    ep: &Endpoint,
    link: &Link,
    by_index: &BTreeMap<u32, &Link>,
) -> Option<EndpointRoute> {
    if ep.netns.as_os_str().is_empty() {
        return None;
    }
    let mac = ep.mac?.octets();
    let gateway_mac = link
        .master
        .and_then(|b| by_index.get(&b))
        .and_then(|b| b.mac)?;
    Some(EndpointRoute {
        ifindex: link.index,
        mac,
        gateway_mac,
    })
}

/// The sandbox of every endpoint that is in one: the inode number of its
/// namespace file (bind mounts and `/proc/PID/ns/net` alike show the
/// namespace's own, unique among live namespaces, so two paths to one
/// namespace agree), read once per path. Endpoints in no sandbox (Docker
/// between Leave and DeleteEndpoint) or whose namespace is gone get none.
pub(super) fn sandboxes(state: &State) -> BTreeMap<&str, u32> {
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

/// The addresses (of one family: `addr`) of endpoints that share their
/// sandbox with another endpoint, with the sandbox: what
/// `DP_SANDBOX_ADDRS` (`DP_SANDBOX_ADDRS6`) holds.
fn sandbox_addrs<A: Copy + Ord>(
    state: &State,
    sandboxes: &BTreeMap<&str, u32>,
    addr: impl Fn(&Endpoint) -> Option<A>,
) -> BTreeMap<A, SandboxAddr> {
    let mut members: BTreeMap<u32, BTreeSet<A>> = BTreeMap::new();
    for ep in state.endpoints.values() {
        if let (Some(ip), Some(sb)) = (addr(ep), sandboxes.get(ep.id.as_str())) {
            members.entry(*sb).or_default().insert(ip);
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
