//! What both families' maps take from a network alike: the number the
//! datapath knows it by, its subnets' flags, whether it is routed.

use dataplane_common::nat::{
    PortKeyOf, PortTargetOf, SUBNET_INTERNAL, SUBNET_MASQUERADE, SUBNET_NO_ICC, SUBNET_PROTECTED,
    SUBNET_ROUTED,
};

use crate::control::{
    driver::{self, NetworkDriver as _, SubnetPolicy},
    model::{Endpoint, Network},
    state::State,
};

/// The number the datapath knows a network by: the first 32 bits of its id,
/// never 0 (0 means "no network").
pub fn network_key(id: &str) -> u32 {
    u32::from_str_radix(id.get(..8).unwrap_or("1"), 16)
        .unwrap_or(1)
        .max(1)
}

/// A subnet's `SUBNET_*` flags, the same for both families of a network
/// (Docker 27+ masquerades and protects IPv6 as it does IPv4).
pub(super) fn policy_flags(net: &Network, policy: &SubnetPolicy) -> u32 {
    let mut flags = 0;
    if net.internal {
        flags |= SUBNET_INTERNAL;
    } else if policy.masquerade {
        flags |= SUBNET_MASQUERADE;
    }
    if !policy.icc {
        flags |= SUBNET_NO_ICC;
    }
    if policy.protected {
        flags |= SUBNET_PROTECTED;
    }
    if policy.routed {
        flags |= SUBNET_ROUTED;
    }
    flags
}

/// Whether `ep` is on a `routed` network, whose published container ports
/// are open to direct access (`DP_OPEN_PORTS`, `DP_OPEN_PORTS6`).
pub(super) fn on_routed_network(state: &State, ep: &Endpoint) -> bool {
    state.networks.get(&ep.network).is_some_and(|net| {
        driver::for_network(net)
            .subnet_policy(net)
            .is_some_and(|p| p.routed)
    })
}

/// A published port's open-port entry on a `routed` network: the
/// container's address and port, as a packet routed straight to it carries.
pub(super) fn open_port<A: Copy>(
    key: &PortKeyOf<A>,
    target: &PortTargetOf<A>,
) -> (PortKeyOf<A>, u32) {
    let open = PortKeyOf {
        addr: target.addr,
        port: target.port,
        proto: key.proto,
        _pad: 0,
    };
    (open, 1)
}
