//! The address family a topology, its peers' rules and a workload run in,
//! and every address of the bench's fake host for each family. IPv4 uses
//! TEST-NET-1 and Docker's 172.18.0.0/16; IPv6 uses the documentation prefix
//! 2001:db8::/32 on the uplink (the host's "global" address, where ports are
//! published) and a ULA /64 on the bridge (masqueraded by NAT66), Docker's
//! own IPv6 layout. None of these ever leaves the bench's namespaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

/// The addresses of one family's topology.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    /// Host side of the uplink.
    pub host: IpAddr,
    /// The external client.
    pub client: IpAddr,
    /// Prefix length of the uplink's link network.
    pub uplink_len: u8,
    /// The bridge network, its gateway (on the host), the measured container
    /// and the idle one (target of the N extra mappings).
    pub subnet: &'static str,
    pub subnet_len: u8,
    pub gateway: IpAddr,
    pub container: IpAddr,
    pub idle: IpAddr,
}

const V4: Addrs = Addrs {
    host: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    client: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
    uplink_len: 24,
    subnet: "172.18.0.0/16",
    subnet_len: 16,
    gateway: IpAddr::V4(Ipv4Addr::new(172, 18, 0, 1)),
    container: IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2)),
    idle: IpAddr::V4(Ipv4Addr::new(172, 18, 0, 3)),
};

const V6: Addrs = Addrs {
    host: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1)),
    client: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2)),
    uplink_len: 64,
    subnet: "fd00:b0::/64",
    subnet_len: 64,
    gateway: IpAddr::V6(Ipv6Addr::new(0xfd00, 0xb0, 0, 0, 0, 0, 0, 1)),
    container: IpAddr::V6(Ipv6Addr::new(0xfd00, 0xb0, 0, 0, 0, 0, 0, 2)),
    idle: IpAddr::V6(Ipv6Addr::new(0xfd00, 0xb0, 0, 0, 0, 0, 0, 3)),
};

impl Family {
    /// `4` or `6`, as `--family` takes it.
    pub fn parse(v: u8) -> Result<Family> {
        match v {
            4 => Ok(Family::V4),
            6 => Ok(Family::V6),
            other => bail!("--family {other}: not 4 or 6"),
        }
    }

    pub const fn addrs(self) -> &'static Addrs {
        match self {
            Family::V4 => &V4,
            Family::V6 => &V6,
        }
    }

    /// "IPv4" or "IPv6", for reports.
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// What workload and metric names carry: "" for IPv4 (so the IPv4
    /// names stay what they always were) and "6" for IPv6 (`in6-crr`).
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "",
            Family::V6 => "6",
        }
    }

    /// The single-host prefix length: 32 or 128.
    pub fn host_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The loopback network, which Docker's nat OUTPUT rule excludes.
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// nftables' table family and address-match keyword (`ip` / `ip6`)
    /// and its address type (`ipv4_addr` / `ipv6_addr`).
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    pub fn nft_addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    /// `n` distinct single-host sources that never match the bench's
    /// traffic: 10.0.0.0/8 for IPv4, fd10::/64 for IPv6.
    pub fn extra_sources(self, n: usize) -> Vec<IpAddr> {
        (1..=n as u32)
            .map(|i| match self {
                Family::V4 => IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i)),
                Family::V6 => IpAddr::V6(Ipv6Addr::from((0xfd10_u128 << 112) | u128::from(i))),
            })
            .collect()
    }
}

/// `ip:port`, bracketed for IPv6 (as iptables' DNAT target, nft's dnat and
/// socket addresses write it).
pub fn ip_port(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_distinct_and_outside_the_topology() {
        let s = Family::V6.extra_sources(3);
        assert_eq!(s[0].to_string(), "fd10::1");
        assert_eq!(s[2].to_string(), "fd10::3");
        assert_eq!(Family::V4.extra_sources(1)[0].to_string(), "10.0.0.1");
        assert_eq!(ip_port(Family::V6.addrs().container, 80), "[fd00:b0::2]:80");
        assert!(Family::parse(5).is_err());
    }
}
