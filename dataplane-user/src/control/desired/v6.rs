//! The IPv6 half of what the NAT maps should hold (the `DP_*6` maps: one
//! map per family), from the same state and host links as the IPv4 half
//! ([`super::desired`]), which calls [`fill`], [`live_addr6`] and
//! [`mappings6`].
//!
//! A mapping without a host address (`-p 8080:80`) is published on every
//! host address of each family its endpoint has an address of; one on an
//! IPv6 host address only on IPv6. An endpoint without an IPv6 address gets
//! no IPv6 entry at all: a host IPv6 address does not lead to an IPv4-only
//! container (no NAT64; docs/docker-compat.md).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use dataplane_common::nat::{EndpointInfo6, HostAddr, PortKey6, PortTarget6, Uplink6};

use super::keys::{network_key, on_routed_network, open_port, policy_flags};
use crate::{
    control::{
        driver::{self, NetworkDriver as _},
        host::Host,
        model::{Attachment, Endpoint},
        ports::PortMapping,
        state::State,
    },
    datapath::{
        conntrack,
        nat::{Desired, NatError},
    },
    sys::netlink::Link,
};

/// Adds the IPv6 entries to `d`: subnets, published ports and the routed
/// networks' open ones, the endpoints' IPv6 sides, the host's IPv6
/// addresses and the uplinks' masquerade addresses (an uplink without a
/// global IPv6 address masquerades no IPv6).
pub(super) async fn fill(
    state: &State,
    host: &impl Host,
    links: &[Link],
    sandbox: &BTreeMap<&str, u32>,
    d: &mut Desired,
) -> Result<(), NatError> {
    d.subnets6 = subnets6(state);
    d.ports6 = state.endpoints.values().flat_map(endpoint_ports6).collect();
    d.open_ports6 = open_ports6(state);
    endpoints6(state, links, sandbox, d);
    for (index, addr, _) in host.addrs6(None).await? {
        let entry = HostAddr {
            ifindex: index,
            _pad: 0,
        };
        d.host_addrs6.insert(addr.octets(), entry);
    }
    for name in &state.uplinks {
        // A missing uplink is the IPv4 half's error to report.
        let Some(link) = host.link_by_name(name).await? else {
            continue;
        };
        if let Some((_, addr, _)) = host.addrs6(Some(link.index)).await?.first() {
            let uplink = Uplink6 {
                addr: addr.octets(),
                _pad: 0,
            };
            d.uplinks6.insert(link.index, uplink);
        }
    }
    Ok(())
}

/// `DP_SUBNETS6`: every bridge network's IPv6 subnet, with the network's
/// policy flags and key.
fn subnets6(state: &State) -> BTreeMap<([u8; 16], u32), (u32, u32)> {
    let mut out = BTreeMap::new();
    for net in state.networks.values() {
        let Some(policy) = driver::for_network(net).subnet_policy(net) else {
            continue;
        };
        let Some(subnet) = policy.subnet6 else {
            continue;
        };
        out.insert(
            (subnet.network().octets(), u32::from(subnet.prefix_len())),
            (policy_flags(net, &policy), network_key(&net.id)),
        );
    }
    out
}

/// The IPv6 published ports of one endpoint, as `DP_PORTS6` holds them.
fn endpoint_ports6(ep: &Endpoint) -> impl Iterator<Item = (PortKey6, PortTarget6)> + '_ {
    ports6_of(ep, &ep.published)
}

/// The entries `DP_PORTS6` holds for `published`, mappings of `ep`.
pub(super) fn ports6_of<'a>(
    ep: &'a Endpoint,
    published: &'a [PortMapping],
) -> impl Iterator<Item = (PortKey6, PortTarget6)> + 'a {
    let ip = match (ep.ipv6, &ep.attachment) {
        (Some(ip), Attachment::Veth { .. }) => Some(ip),
        _ => None,
    };
    ip.into_iter().flat_map(move |ip| {
        published.iter().filter_map(move |m| {
            let host = match m.host_ip {
                None => Ipv6Addr::UNSPECIFIED,
                Some(IpAddr::V6(a)) => a,
                Some(IpAddr::V4(_)) => return None,
            };
            let key = PortKey6 {
                addr: host.octets(),
                port: m.host_port.to_be_bytes(),
                proto: m.proto.number(),
                _pad: 0,
            };
            let target = PortTarget6 {
                addr: ip.octets(),
                port: m.container_port.to_be_bytes(),
                _pad: [0; 2],
                stats_index: m.stats_index6.unwrap_or(m.stats_index),
                _pad2: 0,
            };
            Some((key, target))
        })
    })
}

/// `DP_OPEN_PORTS6`: the published container ports of `routed` networks'
/// endpoints, as the container's IPv6 address and port.
fn open_ports6(state: &State) -> BTreeMap<PortKey6, u32> {
    state
        .endpoints
        .values()
        .filter(|ep| on_routed_network(state, ep))
        .flat_map(endpoint_ports6)
        .map(|(k, t)| open_port(&k, &t))
        .collect()
}

/// `DP_ENDPOINTS6` and `DP_ENDPOINT_ROUTES6`: the IPv6 side of the veth
/// endpoints whose host side is among `links`, and the fast path's route to
/// those in a sandbox.
fn endpoints6(state: &State, links: &[Link], sandbox: &BTreeMap<&str, u32>, d: &mut Desired) {
    let by_name: BTreeMap<&str, &Link> = links.iter().map(|l| (l.name.as_str(), l)).collect();
    let by_index: BTreeMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
    for ep in state.endpoints.values() {
        let (Attachment::Veth { host_ifname }, Some(ip)) = (&ep.attachment, ep.ipv6) else {
            continue;
        };
        let Some(net) = state.networks.get(&ep.network) else {
            continue;
        };
        let Some(gw) = net.gateway6 else {
            continue;
        };
        let Some(link) = by_name.get(host_ifname.as_str()) else {
            continue;
        };
        d.endpoints6.insert(
            link.index,
            EndpointInfo6 {
                addr: ip.octets(),
                gateway: gw.octets(),
                sandbox: sandbox.get(ep.id.as_str()).copied().unwrap_or(0),
                network_id: network_key(&net.id),
            },
        );
        if let Some(route) = super::endpoint_route(ep, link, &by_index) {
            d.endpoint_routes6.insert(ip.octets(), route);
        }
    }
}

/// An endpoint's IPv6 address while it is in a sandbox (what
/// `desired::gone` looks for).
pub(super) fn live_addr6(ep: &Endpoint) -> Option<[u8; 16]> {
    ep.ipv6
        .filter(|_| !ep.netns.as_os_str().is_empty())
        .map(|ip| ip.octets())
}

/// An endpoint's IPv6 published ports as `Gone::mappings6` keys them.
pub(super) fn mappings6(ep: &Endpoint) -> Vec<(PortKey6, [u8; 16], [u8; 2])> {
    endpoint_ports6(ep)
        .map(|(k, t)| conntrack::mapping_of6(&k, &t))
        .collect()
}
