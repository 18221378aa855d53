//! IP address management: Docker's default subnet pools, checks on
//! user-given subnets, gateways and ranges, and address/MAC allocation.
//!
//! Nothing here is stored: the addresses in use are derived from the
//! endpoints and gateways in the state, so they cannot drift apart.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::names::MacAddr;
pub use super::names::MalformedMac;

pub mod v6;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("--subnet {value}: not a CIDR (expected e.g. 172.20.0.0/16)")]
    MalformedSubnet { value: String },
    #[error("--subnet {value}: has host bits set; the network address is {network}")]
    HostBitsSet { value: String, network: Ipv4Net },
    #[error("--subnet {value}: prefix length must be between 8 and 30")]
    PrefixLength { value: String },
    /// A range no bridge network may take (loopback, "this network",
    /// link-local, multicast, reserved): the host would route or answer
    /// for it as its own, or never forward it.
    #[error("--subnet {value}: overlaps {what} {range}")]
    Reserved {
        value: String,
        what: &'static str,
        range: Ipv4Net,
    },
    /// The subnet of an uplink: a bridge with it would take the host's
    /// own address and the route to its segment off the uplink.
    #[error(
        "--subnet {subnet}: overlaps uplink {uplink}'s subnet {uplink_subnet} \
         (the host's address {host_addr} is there)"
    )]
    UplinkOverlap {
        subnet: Ipv4Net,
        uplink: String,
        uplink_subnet: Ipv4Net,
        host_addr: Ipv4Addr,
    },
    #[error("--subnet {subnet} overlaps network {other} ({other_subnet})")]
    Overlap {
        subnet: Ipv4Net,
        other: String,
        other_subnet: Ipv4Net,
    },
    #[error("--{field} {value}: not an IPv4 address")]
    MalformedAddr { field: &'static str, value: String },
    #[error("--gateway {gateway}: not a usable address of subnet {subnet}")]
    GatewayOutside { gateway: Ipv4Addr, subnet: Ipv4Net },
    #[error("--ip-range {range}: not inside subnet {subnet}")]
    RangeOutside { range: Ipv4Net, subnet: Ipv4Net },
    #[error("--ip-range {value}: not a CIDR")]
    MalformedRange { value: String },
    #[error(
        "no free subnet left in the default pools (172.17.0.0/16 to 172.31.0.0/16, \
         192.168.0.0/16 in /20 steps); give one with --subnet"
    )]
    PoolsExhausted,
    #[error("--ip {ip}: not a usable address of subnet {subnet}")]
    IpOutside { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("--ip {ip}: already in use by {user}")]
    IpTaken { ip: Ipv4Addr, user: String },
    #[error("network {network}: no free address left in {range}")]
    AddressesExhausted { network: String, range: Ipv4Net },
    #[error("--subnet {value}: not an IPv6 CIDR (expected e.g. fd00:1::/64)")]
    MalformedSubnet6 { value: String },
    #[error("--subnet {value}: has host bits set; the network address is {network}")]
    HostBitsSet6 { value: String, network: Ipv6Net },
    #[error(
        "--subnet {value}: IPv6 prefix length must be between {} and {}",
        v6::PREFIX_LENGTHS.start(),
        v6::PREFIX_LENGTHS.end()
    )]
    PrefixLength6 { value: String },
    #[error("--subnet {value}: overlaps {what} {range}")]
    Reserved6 {
        value: String,
        what: &'static str,
        range: Ipv6Net,
    },
    /// [`IpamError::UplinkOverlap`] for IPv6: an uplink's prefix.
    #[error(
        "--subnet {subnet}: overlaps uplink {uplink}'s IPv6 prefix {uplink_prefix} \
         (the host's address {host_addr} is there)"
    )]
    UplinkOverlap6 {
        subnet: Ipv6Net,
        uplink: String,
        uplink_prefix: Ipv6Net,
        host_addr: Ipv6Addr,
    },
    #[error("--subnet {subnet} overlaps network {other} ({other_subnet})")]
    Overlap6 {
        subnet: Ipv6Net,
        other: String,
        other_subnet: Ipv6Net,
    },
    #[error("--{field} {value}: not an IPv6 address")]
    MalformedAddr6 { field: &'static str, value: String },
    #[error("--gateway {gateway}: not a usable address of subnet {subnet}")]
    GatewayOutside6 { gateway: Ipv6Addr, subnet: Ipv6Net },
    #[error("--ip-range {range}: not inside subnet {subnet}")]
    RangeOutside6 { range: Ipv6Net, subnet: Ipv6Net },
    #[error("--ip6 {ip}: not a usable address of subnet {subnet}")]
    IpOutside6 { ip: Ipv6Addr, subnet: Ipv6Net },
    #[error("--ip6 {ip}: already in use by {user}")]
    IpTaken6 { ip: Ipv6Addr, user: String },
    #[error("network {network}: no free IPv6 address left in {range}")]
    AddressesExhausted6 { network: String, range: Ipv6Net },
    #[error("no free /64 left in the host's unique local prefix {prefix}; give one with --subnet")]
    UlaExhausted { prefix: Ipv6Net },
}

/// Docker's default address pools, in Docker's order: 172.17-31.0.0/16, then
/// 192.168.0.0/16 cut into /20s.
pub fn default_pools() -> impl Iterator<Item = Ipv4Net> {
    let b16 = (17u8..=31).filter_map(|b| Ipv4Net::new(Ipv4Addr::new(172, b, 0, 0), 16).ok());
    let c20 = (0u8..16).filter_map(|i| Ipv4Net::new(Ipv4Addr::new(192, 168, i * 16, 0), 20).ok());
    b16.chain(c20)
}

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first default pool that overlaps neither a network we manage nor a
/// route the host already has (Docker skips subnets routed on the host so it
/// never shadows a LAN).
pub fn next_free_subnet(used: &[Ipv4Net], host_routes: &[Ipv4Net]) -> Result<Ipv4Net, IpamError> {
    default_pools()
        .find(|pool| {
            !used.iter().any(|u| overlaps(pool, u))
                && !host_routes
                    .iter()
                    .filter(|r| r.prefix_len() > 0)
                    .any(|r| overlaps(pool, r))
        })
        .ok_or(IpamError::PoolsExhausted)
}

/// Ranges a network's subnet must not overlap, with what they are (RFC
/// 6890): the kernel treats them as special, so a bridge on them cannot
/// work, and 127.0.0.0/8 or 0.0.0.0/8 would put the host's loopback or
/// "this host" addresses behind a bridge.
pub const RESERVED: [(&str, Ipv4Net); 5] = [
    (
        "\"this network\"",
        Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
    ),
    (
        "loopback",
        Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
    ),
    (
        "link-local",
        Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
    ),
    (
        "multicast",
        Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
    ),
    (
        "reserved",
        Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4),
    ),
];

/// Refuses a subnet overlapping a [`RESERVED`] range.
pub fn check_not_reserved(value: &str, net: &Ipv4Net) -> Result<(), IpamError> {
    match RESERVED.iter().find(|(_, r)| overlaps(net, r)) {
        Some((what, range)) => Err(IpamError::Reserved {
            value: value.to_owned(),
            what,
            range: *range,
        }),
        None => Ok(()),
    }
}

/// Refuses a subnet overlapping the subnet of an uplink: `uplinks` lists
/// each uplink's name with its addresses (address, prefix length).
pub fn check_not_uplink(
    subnet: &Ipv4Net,
    uplinks: &[(String, Vec<(Ipv4Addr, u8)>)],
) -> Result<(), IpamError> {
    for (name, addrs) in uplinks {
        for (addr, len) in addrs {
            let Ok(theirs) = Ipv4Net::new(*addr, *len).map(|n| n.trunc()) else {
                continue;
            };
            if overlaps(subnet, &theirs) {
                return Err(IpamError::UplinkOverlap {
                    subnet: *subnet,
                    uplink: name.clone(),
                    uplink_subnet: theirs,
                    host_addr: *addr,
                });
            }
        }
    }
    Ok(())
}

/// Parses a user-given subnet: a network address with a prefix of 8-30,
/// outside the [`RESERVED`] ranges.
pub fn parse_subnet(value: &str) -> Result<Ipv4Net, IpamError> {
    let net: Ipv4Net = value.parse().map_err(|_| IpamError::MalformedSubnet {
        value: value.to_owned(),
    })?;
    if !(8..=30).contains(&net.prefix_len()) {
        return Err(IpamError::PrefixLength {
            value: value.to_owned(),
        });
    }
    if net.addr() != net.network() {
        return Err(IpamError::HostBitsSet {
            value: value.to_owned(),
            network: net.trunc(),
        });
    }
    check_not_reserved(value, &net)?;
    Ok(net)
}

pub fn parse_addr(field: &'static str, value: &str) -> Result<Ipv4Addr, IpamError> {
    value.parse().map_err(|_| IpamError::MalformedAddr {
        field,
        value: value.to_owned(),
    })
}

/// Whether `ip` is a host address of `subnet` (not network, not broadcast).
pub fn is_usable(subnet: &Ipv4Net, ip: Ipv4Addr) -> bool {
    subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast()
}

pub fn check_gateway(subnet: &Ipv4Net, gateway: Ipv4Addr) -> Result<(), IpamError> {
    if is_usable(subnet, gateway) {
        Ok(())
    } else {
        Err(IpamError::GatewayOutside {
            gateway,
            subnet: *subnet,
        })
    }
}

pub fn parse_range(subnet: &Ipv4Net, value: &str) -> Result<Ipv4Net, IpamError> {
    let range: Ipv4Net = value.parse().map_err(|_| IpamError::MalformedRange {
        value: value.to_owned(),
    })?;
    let range = range.trunc();
    if !subnet.contains(&range) {
        return Err(IpamError::RangeOutside {
            range,
            subnet: *subnet,
        });
    }
    Ok(range)
}

/// The first host of a subnet: Docker's default gateway.
pub fn first_host(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Checks a requested address against the subnet and the addresses in use
/// (`used` pairs each address with who holds it, for the error).
pub fn check_requested(
    subnet: &Ipv4Net,
    ip: Ipv4Addr,
    used: &[(Ipv4Addr, String)],
) -> Result<(), IpamError> {
    if !is_usable(subnet, ip) {
        return Err(IpamError::IpOutside {
            ip,
            subnet: *subnet,
        });
    }
    if let Some((_, user)) = used.iter().find(|(u, _)| *u == ip) {
        return Err(IpamError::IpTaken {
            ip,
            user: user.clone(),
        });
    }
    Ok(())
}

/// The lowest free host address in `range` (a subset of `subnet`). A
/// range's own network and broadcast addresses are skipped too, so an
/// `--ip-range 10.0.5.0/24` hands out 10.0.5.1 first, never an x.x.x.0.
pub fn allocate(
    network: &str,
    subnet: &Ipv4Net,
    range: &Ipv4Net,
    used: &[(Ipv4Addr, String)],
) -> Result<Ipv4Addr, IpamError> {
    range
        .hosts()
        .filter(|ip| is_usable(subnet, *ip))
        .find(|ip| !used.iter().any(|(u, _)| u == ip))
        .ok_or_else(|| IpamError::AddressesExhausted {
            network: network.to_owned(),
            range: *range,
        })
}

/// Docker's MAC for an address: 02:42 followed by the four address bytes.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    MacAddr(*mac).to_string()
}

/// Parses a unicast MAC address (see [`MacAddr`]).
pub fn parse_mac(value: &str) -> Result<[u8; 6], MalformedMac> {
    super::names::unicast_mac(value).map(|m| m.octets())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn pools_follow_dockers_order() {
        let pools: Vec<String> = default_pools().map(|p| p.to_string()).collect();
        assert_eq!(pools[0], "172.17.0.0/16");
        assert_eq!(pools[1], "172.18.0.0/16");
        assert_eq!(pools[14], "172.31.0.0/16");
        assert_eq!(pools[15], "192.168.0.0/20");
        assert_eq!(pools[16], "192.168.16.0/20");
        assert_eq!(pools.last().map(String::as_str), Some("192.168.240.0/20"));
    }

    #[test]
    fn next_free_skips_used_and_routed_subnets() {
        assert_eq!(next_free_subnet(&[], &[]), Ok(net("172.17.0.0/16")));
        let used = [net("172.17.0.0/16"), net("172.19.5.0/24")];
        let routes = [net("172.18.0.0/16"), net("0.0.0.0/0")];
        // The default route overlaps everything and must not count.
        assert_eq!(next_free_subnet(&used, &routes), Ok(net("172.20.0.0/16")));
        let all: Vec<Ipv4Net> = default_pools().collect();
        assert_eq!(next_free_subnet(&all, &[]), Err(IpamError::PoolsExhausted));
        let b16: Vec<Ipv4Net> = default_pools().take(15).collect();
        assert_eq!(
            next_free_subnet(&b16, &[net("192.168.1.0/24")]),
            Ok(net("192.168.16.0/20"))
        );
    }

    #[test]
    fn subnets_are_validated() {
        assert_eq!(parse_subnet("10.1.0.0/16"), Ok(net("10.1.0.0/16")));
        assert!(matches!(
            parse_subnet("10.1.0.0/33"),
            Err(IpamError::MalformedSubnet { .. })
        ));
        assert!(matches!(
            parse_subnet("nonsense"),
            Err(IpamError::MalformedSubnet { .. })
        ));
        assert!(matches!(
            parse_subnet("10.1.0.0/31"),
            Err(IpamError::PrefixLength { .. })
        ));
        let e = parse_subnet("10.1.2.3/16").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--subnet 10.1.2.3/16: has host bits set; the network address is 10.1.0.0/16"
        );
    }

    #[test]
    fn reserved_ranges_are_refused() {
        for (value, msg) in [
            (
                "127.0.0.0/24",
                "--subnet 127.0.0.0/24: overlaps loopback 127.0.0.0/8",
            ),
            (
                "0.0.0.0/8",
                "--subnet 0.0.0.0/8: overlaps \"this network\" 0.0.0.0/8",
            ),
            (
                "169.254.0.0/24",
                "--subnet 169.254.0.0/24: overlaps link-local 169.254.0.0/16",
            ),
            (
                "224.1.0.0/16",
                "--subnet 224.1.0.0/16: overlaps multicast 224.0.0.0/4",
            ),
            (
                "240.0.0.0/8",
                "--subnet 240.0.0.0/8: overlaps reserved 240.0.0.0/4",
            ),
            // Wider than the range, containing it.
            (
                "169.0.0.0/8",
                "--subnet 169.0.0.0/8: overlaps link-local 169.254.0.0/16",
            ),
        ] {
            let e = parse_subnet(value).map(|n| n.to_string());
            assert_eq!(e.map_err(|e| e.to_string()), Err(msg.to_owned()), "{value}");
        }
        // Neighbours stay usable.
        for ok in [
            "126.0.0.0/8",
            "128.0.0.0/8",
            "169.253.0.0/16",
            "223.255.0.0/16",
        ] {
            assert_eq!(parse_subnet(ok), Ok(net(ok)), "{ok}");
        }
    }

    #[test]
    fn uplink_subnets_are_refused() {
        let uplinks = vec![("eth0".to_owned(), vec![(Ipv4Addr::new(192, 0, 2, 1), 24)])];
        let e = check_not_uplink(&net("192.0.2.128/25"), &uplinks).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--subnet 192.0.2.128/25: overlaps uplink eth0's subnet 192.0.2.0/24 \
             (the host's address 192.0.2.1 is there)"
        );
        assert!(check_not_uplink(&net("192.0.0.0/16"), &uplinks).is_err());
        assert!(check_not_uplink(&net("192.0.3.0/24"), &uplinks).is_ok());
        assert!(check_not_uplink(&net("192.0.3.0/24"), &[]).is_ok());
    }

    #[test]
    fn gateways_ranges_and_requested_ips() {
        let s = net("10.1.0.0/24");
        assert!(check_gateway(&s, "10.1.0.1".parse().unwrap()).is_ok());
        assert!(check_gateway(&s, "10.1.0.0".parse().unwrap()).is_err());
        assert!(check_gateway(&s, "10.1.0.255".parse().unwrap()).is_err());
        assert!(check_gateway(&s, "10.2.0.1".parse().unwrap()).is_err());
        assert_eq!(parse_range(&s, "10.1.0.128/25"), Ok(net("10.1.0.128/25")));
        assert!(parse_range(&s, "10.1.1.0/25").is_err());
        let used = vec![("10.1.0.5".parse().unwrap(), "c1".to_owned())];
        let e = check_requested(&s, "10.1.0.5".parse().unwrap(), &used).unwrap_err();
        assert_eq!(e.to_string(), "--ip 10.1.0.5: already in use by c1");
        assert!(check_requested(&s, "10.1.0.255".parse().unwrap(), &used).is_err());
    }

    #[test]
    fn allocation_takes_the_lowest_free_address() {
        let s = net("172.17.0.0/16");
        let mut used = vec![(first_host(&s), "gateway".to_owned())];
        let a = allocate("bridge", &s, &s, &used).unwrap();
        assert_eq!(a, Ipv4Addr::new(172, 17, 0, 2));
        used.push((a, "c1".to_owned()));
        assert_eq!(
            allocate("bridge", &s, &s, &used),
            Ok(Ipv4Addr::new(172, 17, 0, 3))
        );
        let range = net("172.17.5.0/24");
        assert_eq!(
            allocate("bridge", &s, &range, &used),
            Ok(Ipv4Addr::new(172, 17, 5, 1))
        );
        let tiny = net("10.0.0.0/30");
        let used = vec![
            ("10.0.0.1".parse().unwrap(), "gw".to_owned()),
            ("10.0.0.2".parse().unwrap(), "c1".to_owned()),
        ];
        assert!(matches!(
            allocate("t", &tiny, &tiny, &used),
            Err(IpamError::AddressesExhausted { .. })
        ));
    }

    #[test]
    fn macs_follow_docker() {
        let mac = mac_for(Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(format_mac(&mac), "02:42:ac:11:00:02");
        assert_eq!(parse_mac("02:42:ac:11:00:02"), Ok(mac));
        assert!(parse_mac("02:42:ac:11:00").is_err());
        assert!(parse_mac("01:00:5e:00:00:01").is_err(), "multicast");
        assert!(parse_mac("zz:42:ac:11:00:02").is_err());
    }
}
