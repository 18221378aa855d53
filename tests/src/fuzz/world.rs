//! The configuration every fuzz run starts from, written into the maps as
//! the agent writes it: a host with an uplink (the test run's device) that
//! masquerades, published ports of both families (bound to every host
//! address and to one), a masqueraded, an internal and a routed network,
//! the endpoint behind the test run's device, and its fast-path route.
//! The model reads the same tables, so the two cannot drift apart.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use anyhow::Result;
use dataplane_common::nat::{
    EndpointInfo, EndpointInfo6, EndpointRoute, SUBNET_INTERNAL, SUBNET_MASQUERADE,
    SUBNET_PROTECTED, SUBNET_ROUTED,
};
use dataplane_user::datapath::bpffs::PinRoot;

use crate::datapath;

/// tc test runs see the namespace's loopback (ifindex 1) as the device.
pub const DEVICE: u32 = 1;

pub const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
pub const C1: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
pub const C2: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 3);
pub const INTERNAL: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
pub const ROUTED: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 5);
pub const CLIENTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(198, 51, 100, 2),
    Ipv4Addr::new(203, 0, 113, 9),
];

pub fn host6() -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)
}
pub fn gateway6() -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1)
}
pub fn c1_6() -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2)
}
pub fn c2_6() -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 3)
}
pub fn internal6() -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2)
}
pub fn clients6() -> [Ipv6Addr; 3] {
    [
        Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2),
        Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 9),
    ]
}

/// A published port: (host address, or unspecified for every host
/// address; port; protocol) -> target.
#[derive(Clone, Copy, Debug)]
pub struct Published {
    pub host: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub target: IpAddr,
    pub target_port: u16,
}

/// A managed subnet: network address, prefix length, flags.
#[derive(Clone, Copy, Debug)]
pub struct Subnet {
    pub net: IpAddr,
    pub prefix: u8,
    pub flags: u32,
    pub network_id: u32,
}

impl Subnet {
    pub fn contains(&self, a: IpAddr) -> bool {
        match (self.net, a) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

pub fn published() -> Vec<Published> {
    let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let p = |host, port, proto, target, target_port| Published {
        host,
        port,
        proto,
        target,
        target_port,
    };
    vec![
        p(any4, 8080, 6, C1.into(), 80),
        p(any4, 5353, 17, C1.into(), 53),
        p(HOST.into(), 8443, 6, C2.into(), 443),
        p(any4, 9090, 6, ROUTED.into(), 90),
        p(any6, 8080, 6, c1_6().into(), 80),
        p(any6, 5353, 17, c1_6().into(), 53),
        p(host6().into(), 8443, 6, c2_6().into(), 443),
    ]
}

pub fn subnets() -> Vec<Subnet> {
    let s = |net: IpAddr, prefix, flags, network_id| Subnet {
        net,
        prefix,
        flags,
        network_id,
    };
    vec![
        s(
            Ipv4Addr::new(172, 17, 0, 0).into(),
            16,
            SUBNET_MASQUERADE | SUBNET_PROTECTED,
            1,
        ),
        s(
            Ipv4Addr::new(172, 18, 0, 0).into(),
            16,
            SUBNET_INTERNAL | SUBNET_PROTECTED,
            2,
        ),
        s(Ipv4Addr::new(10, 88, 0, 0).into(), 16, SUBNET_ROUTED, 3),
        s(
            Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0).into(),
            64,
            SUBNET_MASQUERADE | SUBNET_PROTECTED,
            1,
        ),
        s(
            Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0).into(),
            64,
            SUBNET_INTERNAL | SUBNET_PROTECTED,
            2,
        ),
    ]
}

/// The host's own addresses (the uplink's and the bridge gateways').
pub fn host_addrs() -> Vec<IpAddr> {
    vec![
        HOST.into(),
        GATEWAY.into(),
        host6().into(),
        gateway6().into(),
    ]
}

/// The uplink's masquerade address of the frame's family.
pub fn uplink_addr(v6: bool) -> IpAddr {
    if v6 {
        host6().into()
    } else {
        HOST.into()
    }
}

/// The endpoint behind the device: (its address, its gateway).
pub fn endpoint(v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (c1_6().into(), gateway6().into())
    } else {
        (C1.into(), GATEWAY.into())
    }
}

/// Writes the whole configuration into the pinned maps.
pub fn configure(pins: &PinRoot) -> Result<()> {
    for p in published() {
        match (p.host, p.target) {
            (IpAddr::V4(h), IpAddr::V4(t)) => datapath::publish(
                pins,
                h,
                p.port,
                p.proto,
                SocketAddrV4::new(t, p.target_port),
            )?,
            (IpAddr::V6(h), IpAddr::V6(t)) => datapath::publish6(
                pins,
                h,
                p.port,
                p.proto,
                SocketAddrV6::new(t, p.target_port, 0, 0),
                0,
            )?,
            _ => anyhow::bail!("published port of mixed families: {p:?}"),
        }
    }
    for s in subnets() {
        match s.net {
            IpAddr::V4(n) => datapath::subnet(pins, n, u32::from(s.prefix), s.flags, s.network_id)?,
            IpAddr::V6(n) => {
                datapath::subnet6(pins, n, u32::from(s.prefix), s.flags, s.network_id)?
            }
        }
    }
    for a in host_addrs() {
        match a {
            IpAddr::V4(a) => datapath::host_addr(pins, a, 2)?,
            IpAddr::V6(a) => datapath::host_addr6(pins, a, 2)?,
        }
    }
    datapath::uplink(pins, DEVICE, HOST)?;
    datapath::uplink6(pins, DEVICE, host6())?;
    datapath::endpoint(
        pins,
        DEVICE,
        EndpointInfo {
            addr: C1.octets(),
            gateway: GATEWAY.octets(),
            sandbox: 0,
            network_id: 1,
        },
    )?;
    datapath::endpoint6(
        pins,
        DEVICE,
        EndpointInfo6 {
            addr: c1_6().octets(),
            gateway: gateway6().octets(),
            sandbox: 0,
            network_id: 1,
        },
    )?;
    datapath::endpoint_route(
        pins,
        C1,
        EndpointRoute {
            ifindex: DEVICE,
            mac: [0x02, 0x42, 172, 17, 0, 2],
            gateway_mac: [0x02, 0x42, 0xaa, 0xbb, 0xcc, 0xdd],
        },
    )?;
    Ok(())
}
