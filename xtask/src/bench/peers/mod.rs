//! The dataplanes compared, one module each: what each installs for the
//! measured container's published ports, N extra mappings and N extra
//! DOCKER-USER-style source rules, and how one more mapping is added and
//! removed at size N.
//!
//! Every peer gets the same inputs from here ([`measured`], [`extras`],
//! [`extra_sources`], [`one_more`]): the extra mappings point at the idle
//! container and come before the measured ones (the newest container's
//! rules are last in Docker's chains, the worst case for a linear list);
//! the extra sources are in 10.0.0.0/8 (fd10::/64 for IPv6) and never match
//! the bench's traffic. Each peer writes the rules of its topology's family
//! only ([`Topology::family`]): `ip6tables`, nftables `ip6` tables, the
//! dataplane's IPv6 publishing and NAT66 on a dual-stack network.

pub mod dataplane;
pub mod docker_nft;
pub mod docker_proxy;
pub mod iptables;
pub mod netavark_nft;
pub mod nftables;
pub mod nftables_sets;
pub mod nftables_sets_ft;
pub mod none;

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::{bail, Result};

use super::{
    family::Family,
    hostlocal::HostLocal,
    topology::Topology,
    workloads::{Dir, Workload},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A published port: host port -> container address and port.
#[derive(Clone, Copy, Debug)]
pub struct Mapping {
    pub host_port: u16,
    pub ip: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl Mapping {
    /// Docker's `-p` syntax, as the dataplane CLI takes it.
    pub fn spec(&self) -> String {
        match self.proto {
            Proto::Tcp => format!("{}:{}", self.host_port, self.port),
            Proto::Udp => format!("{}:{}/udp", self.host_port, self.port),
        }
    }
}

/// The iperf3 port (also the egress server's).
pub const IPERF_PORT: u16 = 5201;
/// The load tool's TCP and UDP ports.
pub const TCP_PORT: u16 = 7000;
pub const UDP_PORT: u16 = 7001;
/// The host ports of the extra mappings, in the order taken: TCP first
/// (20000-39999 as before, then 46000-65534, 10000-19999 and 1100-5199),
/// then UDP on the same ports. None of the measured ports, [`one_more`]'s
/// or the agent's own (metrics on 9641) is among them.
const EXTRA_PORTS: [(u16, u16); 4] = [(20000, 40000), (46000, 65535), (10000, 20000), (1100, 5200)];
/// Most extra mappings or rules the bench makes (107 270 ports exist).
pub const MAX_N: usize = 100_000;

/// The host port and protocol of extra mapping `i`.
fn extra_port(i: usize) -> Option<(u16, Proto)> {
    let per_proto: usize = EXTRA_PORTS.iter().map(|(a, b)| usize::from(b - a)).sum();
    let (proto, mut j) = if i < per_proto {
        (Proto::Tcp, i)
    } else {
        (Proto::Udp, i - per_proto)
    };
    for (a, b) in EXTRA_PORTS {
        let len = usize::from(b - a);
        if j < len {
            return Some((a + u16::try_from(j).ok()?, proto));
        }
        j -= len;
    }
    None
}

/// The measured container's published ports.
pub fn measured(family: Family) -> Vec<Mapping> {
    [
        (IPERF_PORT, Proto::Tcp),
        (TCP_PORT, Proto::Tcp),
        (UDP_PORT, Proto::Udp),
    ]
    .into_iter()
    .map(|(port, proto)| Mapping {
        host_port: port,
        ip: family.addrs().container,
        port,
        proto,
    })
    .collect()
}

/// `n` extra TCP mappings to the idle container's port 80.
pub fn extras(n: usize, family: Family) -> Vec<Mapping> {
    (0..n.min(MAX_N))
        .filter_map(extra_port)
        .map(|(host_port, proto)| Mapping {
            host_port,
            ip: family.addrs().idle,
            port: 80,
            proto,
        })
        .collect()
}

/// What a peer installs: the `n` extras first, then the measured ones.
pub fn all_mappings(n: usize, family: Family) -> Vec<Mapping> {
    extras(n, family)
        .into_iter()
        .chain(measured(family))
        .collect()
}

/// The mapping added and removed at size N.
pub fn one_more(family: Family) -> Mapping {
    Mapping {
        host_port: 45000,
        ip: family.addrs().idle,
        port: 81,
        proto: Proto::Tcp,
    }
}

/// `n` distinct single-host sources (never the bench's traffic).
pub fn extra_sources(n: usize, family: Family) -> Vec<IpAddr> {
    family.extra_sources(n)
}

/// What installing a peer's configuration cost.
#[derive(Clone, Debug, Default)]
pub struct Install {
    /// Installing everything: base rules, N mappings, N source rules.
    pub total: Duration,
    /// The part of it that installed the N mappings.
    pub mappings: Duration,
    /// Honest remarks (what was measured, what could not be expressed).
    pub note: Option<String>,
    /// The N mappings installed again through the CLI, in one process
    /// (process start included); None: not measured (a peer without a
    /// CLI of its own, or N specs too many for one command line).
    pub cli_mappings: Option<Duration>,
    /// The N filter rules added again through the CLI, in one process
    /// (`filter add --from-file`); None: not measured.
    pub cli_rules: Option<Duration>,
}

/// One peer's configuration on its own topology.
pub trait Peer {
    fn name(&self) -> &'static str;
    /// Wires the containers (default: Docker's bridge, see
    /// [`Topology::wire_bridge`]) and installs the configuration for N
    /// extra mappings and N extra source rules.
    fn setup(&mut self, topo: &Topology, n: usize) -> Result<Install>;
    /// Adds [`one_more`] and removes it again, timing each (None: the peer
    /// has nothing to add).
    fn add_remove(&mut self, topo: &Topology) -> Result<Option<(Duration, Duration)>>;
    /// Where the external client sends ingress traffic: the host's address
    /// (published ports), or the container's for `none`.
    fn ingress_addr(&self, topo: &Topology) -> IpAddr {
        topo.addrs().host
    }
    /// Sets up host-local access to the published ports (the `hl-`
    /// workloads), or None: the peer has none and skips them.
    fn host_local(&mut self, _topo: &Topology) -> Result<Option<HostLocal>> {
        Ok(None)
    }
    /// Why the peer does not run `w`, if it does not. The hairpin
    /// workloads by default: Docker's rules DNAT only what does not come
    /// from the bridge (`! -i br0`) and leave a container's connection to
    /// the host's address to `docker-proxy` (its own peer); without that
    /// exception the container's answer would go straight back over the
    /// bridge, untranslated, unless `br_netfilter` passes bridged frames
    /// through netfilter (Docker loads it; the bench leaves the host's
    /// modules alone). The cross-network workloads too: Docker sends them
    /// to docker-proxy as well (`-i <bridge> -j RETURN` for each of its
    /// bridges); without the proxy its isolation chains drop them
    /// (moby#38784). Peers that do either say so.
    fn skips(&self, w: &Workload) -> Option<&'static str> {
        match w.dir {
            Dir::Hairpin => Some(
                "Docker's layouts send a container's connection to the host's address to docker-proxy \
                 (see that peer), or need br_netfilter for the answer",
            ),
            Dir::CrossNet => Some(
                "Docker's layouts send another network's connection to the host's address to \
                 docker-proxy (see that peer); without it, DOCKER-ISOLATION drops it (moby#38784)",
            ),
            _ => None,
        }
    }
}

/// Every peer, in the order they run and are reported.
pub const ALL: &[&str] = &[
    "none",
    "iptables",
    "iptables-legacy",
    "nftables",
    "nftables-sets",
    "nftables-sets-ft",
    "docker-nft",
    "netavark-nft",
    "docker-proxy",
    "dataplane",
];

/// The peer called `name`; `root` is the workspace (for the dataplane's
/// release binary).
pub fn make(name: &str, root: &Path) -> Result<Box<dyn Peer>> {
    Ok(match name {
        "none" => Box::new(none::NoNat),
        "iptables" => Box::new(iptables::Iptables::new(iptables::Backend::Nft)),
        "iptables-legacy" => Box::new(iptables::Iptables::new(iptables::Backend::Legacy)),
        "nftables" => Box::new(nftables::Nftables),
        "nftables-sets" => Box::new(nftables_sets::NftablesSets),
        "nftables-sets-ft" => Box::new(nftables_sets_ft::NftablesSetsFt),
        "docker-nft" => Box::new(docker_nft::DockerNft::new()),
        "netavark-nft" => Box::new(netavark_nft::NetavarkNft),
        "docker-proxy" => Box::new(docker_proxy::DockerProxy::new()),
        "dataplane" => Box::new(dataplane::Dataplane::new(root)?),
        other => bail!("peer {other:?}: not one of {}", ALL.join(", ")),
    })
}
