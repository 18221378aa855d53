//! Driving the datapath without the agent: writing its configuration maps
//! directly (the same entries `nat::sync` writes from the state) and running
//! its programs on hand-built frames (BPF_PROG_TEST_RUN).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use anyhow::{Context as _, Result};
use aya::{
    maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use dataplane_common::{
    ct::{CtEntry6, CtKey6},
    maps,
    nat::{
        EndpointInfo, EndpointInfo6, EndpointRoute, HostAddr, PortKey, PortKey6, PortTarget,
        PortTarget6, SandboxAddr, SubnetPolicy, TrustedIface, Uplink, Uplink6,
    },
};
use dataplane_user::datapath::{bpffs::PinRoot, ebpf::Dataplane};

fn pinned(pins: &PinRoot, name: &str) -> Result<Map> {
    let data = MapData::from_pin(pins.map(name)).with_context(|| format!("pinned map {name}"))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

/// `-p HOST:PORT:TARGET/PROTO` (HOST 0.0.0.0: every host address).
pub fn publish(
    pins: &PinRoot,
    host: Ipv4Addr,
    port: u16,
    proto: u8,
    target: SocketAddrV4,
) -> Result<()> {
    let mut map: HashMap<MapData, PortKey, PortTarget> =
        HashMap::try_from(pinned(pins, maps::PORTS)?)?;
    let key = PortKey {
        addr: host.octets(),
        port: port.to_be_bytes(),
        proto,
        _pad: 0,
    };
    let value = PortTarget {
        addr: target.ip().octets(),
        port: target.port().to_be_bytes(),
        _pad: [0; 2],
        stats_index: 0,
        _pad2: 0,
    };
    map.insert(key, value, 0).context("publishing a port")
}

/// A container port open to direct access (`routed` networks).
pub fn open_port(pins: &PinRoot, container: SocketAddrV4, proto: u8) -> Result<()> {
    let mut map: HashMap<MapData, PortKey, u32> =
        HashMap::try_from(pinned(pins, maps::OPEN_PORTS)?)?;
    let key = PortKey {
        addr: container.ip().octets(),
        port: container.port().to_be_bytes(),
        proto,
        _pad: 0,
    };
    map.insert(key, 1, 0).context("opening a container port")
}

/// Interface `ifindex` trusted by the network `network_id`.
pub fn trusted_iface(pins: &PinRoot, ifindex: u32, network_id: u32) -> Result<()> {
    let mut map: HashMap<MapData, TrustedIface, u32> =
        HashMap::try_from(pinned(pins, maps::TRUSTED_IFACES)?)?;
    let key = TrustedIface {
        ifindex,
        network_id,
    };
    map.insert(key, 1, 0).context("trusting an interface")
}

/// One of the host's own addresses.
pub fn host_addr(pins: &PinRoot, addr: Ipv4Addr, ifindex: u32) -> Result<()> {
    let mut map: HashMap<MapData, [u8; 4], HostAddr> =
        HashMap::try_from(pinned(pins, maps::HOST_ADDRS)?)?;
    map.insert(addr.octets(), HostAddr { ifindex, _pad: 0 }, 0)
        .context("adding a host address")
}

/// An uplink masquerading with `addr`.
pub fn uplink(pins: &PinRoot, ifindex: u32, addr: Ipv4Addr) -> Result<()> {
    let mut map: HashMap<MapData, u32, Uplink> = HashMap::try_from(pinned(pins, maps::UPLINKS)?)?;
    map.insert(
        ifindex,
        Uplink {
            addr: addr.octets(),
            _pad: 0,
        },
        0,
    )
    .context("adding an uplink")
}

/// A managed subnet with its policy flags and network key.
pub fn subnet(
    pins: &PinRoot,
    net: Ipv4Addr,
    prefix_len: u32,
    flags: u32,
    network_id: u32,
) -> Result<()> {
    let mut map: LpmTrie<MapData, [u8; 4], SubnetPolicy> =
        LpmTrie::try_from(pinned(pins, maps::SUBNETS)?)?;
    map.insert(
        &Key::new(prefix_len, net.octets()),
        SubnetPolicy { flags, network_id },
        0,
    )
    .context("adding a subnet")
}

/// `-p [HOST]:PORT:[TARGET]:TPORT/PROTO` for IPv6 (HOST `::`: every host
/// IPv6 address).
pub fn publish6(
    pins: &PinRoot,
    host: Ipv6Addr,
    port: u16,
    proto: u8,
    target: std::net::SocketAddrV6,
    stats_index: u32,
) -> Result<()> {
    let mut map: HashMap<MapData, PortKey6, PortTarget6> =
        HashMap::try_from(pinned(pins, maps::PORTS6)?)?;
    let key = PortKey6 {
        addr: host.octets(),
        port: port.to_be_bytes(),
        proto,
        _pad: 0,
    };
    let value = PortTarget6 {
        addr: target.ip().octets(),
        port: target.port().to_be_bytes(),
        _pad: [0; 2],
        stats_index,
        _pad2: 0,
    };
    map.insert(key, value, 0).context("publishing an IPv6 port")
}

/// One of the host's IPv6 addresses.
pub fn host_addr6(pins: &PinRoot, addr: Ipv6Addr, ifindex: u32) -> Result<()> {
    let mut map: HashMap<MapData, [u8; 16], HostAddr> =
        HashMap::try_from(pinned(pins, maps::HOST_ADDRS6)?)?;
    map.insert(addr.octets(), HostAddr { ifindex, _pad: 0 }, 0)
        .context("adding a host IPv6 address")
}

/// An uplink's IPv6 masquerade address.
pub fn uplink6(pins: &PinRoot, ifindex: u32, addr: Ipv6Addr) -> Result<()> {
    let mut map: HashMap<MapData, u32, Uplink6> = HashMap::try_from(pinned(pins, maps::UPLINKS6)?)?;
    map.insert(
        ifindex,
        Uplink6 {
            addr: addr.octets(),
            _pad: 0,
        },
        0,
    )
    .context("adding an uplink's IPv6 address")
}

/// A managed IPv6 subnet with its policy flags and network key.
pub fn subnet6(
    pins: &PinRoot,
    net: Ipv6Addr,
    prefix_len: u32,
    flags: u32,
    network_id: u32,
) -> Result<()> {
    let mut map: LpmTrie<MapData, [u8; 16], SubnetPolicy> =
        LpmTrie::try_from(pinned(pins, maps::SUBNETS6)?)?;
    map.insert(
        &Key::new(prefix_len, net.octets()),
        SubnetPolicy { flags, network_id },
        0,
    )
    .context("adding an IPv6 subnet")
}

/// The IPv6 side of the endpoint behind the host-side veth `ifindex`.
pub fn endpoint6(pins: &PinRoot, ifindex: u32, info: EndpointInfo6) -> Result<()> {
    let mut map: HashMap<MapData, u32, EndpointInfo6> =
        HashMap::try_from(pinned(pins, maps::ENDPOINTS6)?)?;
    map.insert(ifindex, info, 0)
        .context("adding an endpoint's IPv6 side")
}

/// An endpoint behind the host-side veth `ifindex`.
pub fn endpoint(pins: &PinRoot, ifindex: u32, info: EndpointInfo) -> Result<()> {
    let mut map: HashMap<MapData, u32, EndpointInfo> =
        HashMap::try_from(pinned(pins, maps::ENDPOINTS)?)?;
    map.insert(ifindex, info, 0).context("adding an endpoint")
}

/// `addr` as the address of an endpoint in sandbox `sandbox` (one that
/// shares its sandbox with other endpoints).
pub fn sandbox_addr(pins: &PinRoot, addr: Ipv4Addr, sandbox: u32) -> Result<()> {
    let mut map: HashMap<MapData, [u8; 4], SandboxAddr> =
        HashMap::try_from(pinned(pins, maps::SANDBOX_ADDRS)?)?;
    map.insert(addr.octets(), SandboxAddr { sandbox, _pad: 0 }, 0)
        .context("adding a sandbox address")
}

/// The fast path's route to the endpoint address `addr`.
pub fn endpoint_route(pins: &PinRoot, addr: Ipv4Addr, route: EndpointRoute) -> Result<()> {
    let mut map: HashMap<MapData, [u8; 4], EndpointRoute> =
        HashMap::try_from(pinned(pins, maps::ENDPOINT_ROUTES)?)?;
    map.insert(addr.octets(), route, 0)
        .context("adding an endpoint route")
}

/// The fast path's route to the endpoint IPv6 address `addr`.
pub fn endpoint_route6(pins: &PinRoot, addr: Ipv6Addr, route: EndpointRoute) -> Result<()> {
    let mut map: HashMap<MapData, [u8; 16], EndpointRoute> =
        HashMap::try_from(pinned(pins, maps::ENDPOINT_ROUTES6)?)?;
    map.insert(addr.octets(), route, 0)
        .context("adding an IPv6 endpoint route")
}

/// An IPv6 TCP flow's conntrack entry, as a program would have made it
/// (for the paths whose first packet a test run cannot make: a host-local
/// flow starts from a socket's cookie).
pub fn ct6_tcp(pins: &PinRoot, key: CtKey6, entry: CtEntry6) -> Result<()> {
    let mut map: HashMap<MapData, CtKey6, CtEntry6> =
        HashMap::try_from(pinned(pins, maps::CT6_TCP)?)?;
    map.insert(key, entry, 0)
        .context("adding an IPv6 conntrack entry")
}

/// The fast path's routes, by endpoint address.
pub fn endpoint_routes(pins: &PinRoot) -> Result<Vec<(Ipv4Addr, EndpointRoute)>> {
    let map: HashMap<MapData, [u8; 4], EndpointRoute> =
        HashMap::try_from(pinned(pins, maps::ENDPOINT_ROUTES)?)?;
    let mut out = Vec::new();
    for entry in map.iter() {
        let (addr, route) = entry.context("reading the endpoint routes")?;
        out.push((Ipv4Addr::from(addr), route));
    }
    out.sort_by_key(|(a, _)| *a);
    Ok(out)
}

/// The fast path's IPv6 routes, by endpoint address.
pub fn endpoint_routes6(pins: &PinRoot) -> Result<Vec<(Ipv6Addr, EndpointRoute)>> {
    let map: HashMap<MapData, [u8; 16], EndpointRoute> =
        HashMap::try_from(pinned(pins, maps::ENDPOINT_ROUTES6)?)?;
    let mut out = Vec::new();
    for entry in map.iter() {
        let (addr, route) = entry.context("reading the IPv6 endpoint routes")?;
        out.push((Ipv6Addr::from(addr), route));
    }
    out.sort_by_key(|(a, _)| *a);
    Ok(out)
}

/// Runs a loaded tc program on one frame with BPF_PROG_TEST_RUN: its
/// verdict (as the u32 the syscall returns) and the frame it handed back.
pub fn run_tc(prog: &mut SchedClassifier, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
    // Room for programs that grow the frame.
    let mut out = vec![0u8; packet.len() + 128];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN")?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

/// [`run_tc`] on a program of the object, loading (verifying) it first.
pub fn run_program(
    dp: &mut Dataplane,
    program: &'static str,
    packet: &[u8],
) -> Result<(u32, Vec<u8>)> {
    let prog = dp
        .tc_program(program)
        .with_context(|| format!("loading {program}"))?;
    run_tc(prog, packet)
}
