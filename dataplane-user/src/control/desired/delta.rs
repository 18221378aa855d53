//! One request's change to an endpoint's published ports as the entries of
//! the keys it touches ([`port_delta`]): what a full [`super::desired`]
//! gives for those keys, found without walking every mapping of the state;
//! and the flows the change takes away ([`delta_gone`]).

use std::collections::BTreeMap;

use super::{
    keys::{on_routed_network, open_port},
    ports_of, v6,
};
use crate::{
    control::{model::Endpoint, ports::PortMapping, state::State},
    datapath::{
        conntrack::{self, Gone},
        nat::{Desired, NatDelta, PortEntries},
    },
};

/// The change to the published-port maps when `mappings` were added to or
/// removed from endpoint `endpoint` of `state` (the state after the
/// change); `applied` is what the maps hold now. `near`, when the caller
/// knows it, is the endpoint's mappings on the host ports of `mappings`
/// (else they are searched for). None when there is no such endpoint (a
/// full recompute is the answer then).
///
/// A key belongs to one endpoint: a host port is published by one endpoint
/// only (the port allocator refuses a second), and an open port is the
/// endpoint's own address. So the new entries of the touched keys come
/// from this endpoint's mappings on the same ports alone.
pub fn port_delta(
    state: &State,
    endpoint: &str,
    mappings: &[PortMapping],
    near: Option<Vec<PortMapping>>,
    applied: &Desired,
) -> Option<NatDelta> {
    let ep = state.endpoints.get(endpoint)?;
    let routed = on_routed_network(state, ep);
    let touched = entries(ep, mappings, routed);
    // Open ports are keyed by container port: a routed endpoint's are
    // searched for.
    let near = match near {
        Some(near) if !routed => near,
        _ => same_ports(ep, mappings),
    };
    let now = entries(ep, &near, routed);
    Some(NatDelta {
        old: PortEntries {
            ports: held(&applied.ports, &touched.ports),
            ports6: held(&applied.ports6, &touched.ports6),
            open_ports: held(&applied.open_ports, &touched.open_ports),
            open_ports6: held(&applied.open_ports6, &touched.open_ports6),
        },
        new: PortEntries {
            ports: only(now.ports, &touched.ports),
            ports6: only(now.ports6, &touched.ports6),
            open_ports: only(now.open_ports, &touched.open_ports),
            open_ports6: only(now.open_ports6, &touched.open_ports6),
        },
    })
}

/// The mappings of `ep` on one of the host or container ports of
/// `mappings`.
fn same_ports(ep: &Endpoint, mappings: &[PortMapping]) -> Vec<PortMapping> {
    // Only mappings on one of these host or container ports can make one
    // of the touched keys: the rest are skipped with a binary search each.
    let ports = |f: fn(&PortMapping) -> u16| {
        let mut v: Vec<(u8, u16)> = mappings.iter().map(|m| (m.proto.number(), f(m))).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let (host, inner) = (ports(|m| m.host_port), ports(|m| m.container_port));
    ep.published
        .iter()
        .filter(|m| {
            let p = m.proto.number();
            host.binary_search(&(p, m.host_port)).is_ok()
                || inner.binary_search(&(p, m.container_port)).is_ok()
        })
        .copied()
        .collect()
}

/// The published mappings whose flows go with `delta`: an entry the maps
/// held that now leads elsewhere or nowhere.
pub fn delta_gone(delta: &NatDelta) -> Gone {
    let (old, new) = (&delta.old, &delta.new);
    Gone {
        mappings: old
            .ports
            .iter()
            .filter(|(k, t)| new.ports.get(k) != Some(t))
            .map(|(k, t)| conntrack::mapping_of(k, t))
            .collect(),
        mappings6: old
            .ports6
            .iter()
            .filter(|(k, t)| new.ports6.get(k) != Some(t))
            .map(|(k, t)| conntrack::mapping_of6(k, t))
            .collect(),
        ..Gone::default()
    }
}

/// The entries `published` (mappings of `ep`) make, as the full
/// computation makes them (a later mapping's entry wins a shared key).
fn entries(ep: &Endpoint, published: &[PortMapping], routed: bool) -> PortEntries {
    let mut out = PortEntries {
        ports: ports_of(ep, published).collect(),
        ports6: v6::ports6_of(ep, published).collect(),
        ..PortEntries::default()
    };
    if routed {
        out.open_ports = ports_of(ep, published)
            .map(|(k, t)| open_port(&k, &t))
            .collect();
        out.open_ports6 = v6::ports6_of(ep, published)
            .map(|(k, t)| open_port(&k, &t))
            .collect();
    }
    out
}

/// What `map` holds of the keys of `keys`.
fn held<K: Ord + Copy, V: Copy, W>(map: &BTreeMap<K, V>, keys: &BTreeMap<K, W>) -> BTreeMap<K, V> {
    keys.keys()
        .filter_map(|k| map.get(k).map(|v| (*k, *v)))
        .collect()
}

/// The entries of `map` under the keys of `keys`.
fn only<K: Ord, V, W>(map: BTreeMap<K, V>, keys: &BTreeMap<K, W>) -> BTreeMap<K, V> {
    map.into_iter()
        .filter(|(k, _)| keys.contains_key(k))
        .collect()
}
