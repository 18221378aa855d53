//! Writing the datapath's configuration maps directly, for tests that drive
//! the programs without the agent (BPF_PROG_TEST_RUN, the socket hooks): the
//! same entries `nat::sync` writes from the state.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context as _, Result};
use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData};
use dataplane_common::{
    maps,
    nat::{HostAddr, PortKey, PortTarget, SubnetPolicy, Uplink},
};
use dataplane_user::bpffs::PinRoot;

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
