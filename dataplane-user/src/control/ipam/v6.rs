//! IPv6 address management: checks on user-given IPv6 subnets, gateways
//! and ranges, the per-host unique local prefix (RFC 4193) networks get
//! their /64 from when no subnet is given, and address allocation.
//!
//! As for IPv4, nothing but the host's 40-bit global ID is stored: the
//! addresses in use are the endpoints' and the gateways'.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

use super::IpamError;

/// The prefix lengths a network's IPv6 subnet may have: /48 (a whole
/// site) down to /120 (256 addresses). Wider would swallow other
/// networks' and the host's prefixes; narrower leaves too few addresses
/// to be worth a network.
pub const PREFIX_LENGTHS: std::ops::RangeInclusive<u8> = 48..=120;

/// Ranges a network's IPv6 subnet must not overlap, with what they are
/// (RFC 4291, RFC 6890): the kernel treats them as special.
pub const RESERVED6: [(&str, Ipv6Net); 5] = [
    (
        "unspecified and loopback",
        Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 127),
    ),
    (
        "IPv4-mapped",
        Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
    ),
    (
        "link-local",
        Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    ),
    (
        "multicast",
        Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
    ),
    (
        "site-local (deprecated)",
        Ipv6Net::new_assert(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    ),
];

pub fn overlaps6(a: &Ipv6Net, b: &Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Parses a user-given IPv6 subnet: a network address with a prefix in
/// [`PREFIX_LENGTHS`], outside the [`RESERVED6`] ranges.
pub fn parse_subnet6(value: &str) -> Result<Ipv6Net, IpamError> {
    let net: Ipv6Net = value.parse().map_err(|_| IpamError::MalformedSubnet6 {
        value: value.to_owned(),
    })?;
    if !PREFIX_LENGTHS.contains(&net.prefix_len()) {
        return Err(IpamError::PrefixLength6 {
            value: value.to_owned(),
        });
    }
    if net.addr() != net.network() {
        return Err(IpamError::HostBitsSet6 {
            value: value.to_owned(),
            network: net.trunc(),
        });
    }
    if let Some((what, range)) = RESERVED6.iter().find(|(_, r)| overlaps6(&net, r)) {
        return Err(IpamError::Reserved6 {
            value: value.to_owned(),
            what,
            range: *range,
        });
    }
    Ok(net)
}

pub fn parse_addr6(field: &'static str, value: &str) -> Result<Ipv6Addr, IpamError> {
    value.parse().map_err(|_| IpamError::MalformedAddr6 {
        field,
        value: value.to_owned(),
    })
}

/// Whether `ip` may be a host's address in `subnet`: inside, and not the
/// subnet-router anycast address (the all-zero host part).
pub fn is_usable6(subnet: &Ipv6Net, ip: Ipv6Addr) -> bool {
    subnet.contains(&ip) && ip != subnet.network()
}

pub fn check_gateway6(subnet: &Ipv6Net, gateway: Ipv6Addr) -> Result<(), IpamError> {
    if is_usable6(subnet, gateway) {
        Ok(())
    } else {
        Err(IpamError::GatewayOutside6 {
            gateway,
            subnet: *subnet,
        })
    }
}

pub fn parse_range6(subnet: &Ipv6Net, value: &str) -> Result<Ipv6Net, IpamError> {
    let range: Ipv6Net = value.parse().map_err(|_| IpamError::MalformedRange {
        value: value.to_owned(),
    })?;
    let range = range.trunc();
    if !subnet.contains(&range) {
        return Err(IpamError::RangeOutside6 {
            range,
            subnet: *subnet,
        });
    }
    Ok(range)
}

/// The subnet's first address after the anycast one (`::1`): Docker's
/// default IPv6 gateway.
pub fn first_host6(subnet: &Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()) + 1)
}

/// Checks a requested address against the subnet and the addresses in use.
pub fn check_requested6(
    subnet: &Ipv6Net,
    ip: Ipv6Addr,
    used: &[(Ipv6Addr, String)],
) -> Result<(), IpamError> {
    if !is_usable6(subnet, ip) {
        return Err(IpamError::IpOutside6 {
            ip,
            subnet: *subnet,
        });
    }
    if let Some((_, user)) = used.iter().find(|(u, _)| *u == ip) {
        return Err(IpamError::IpTaken6 {
            ip,
            user: user.clone(),
        });
    }
    Ok(())
}

/// The lowest free address in `range` (a subset of `subnet`), the range's
/// own first address skipped. Only `used.len() + 2` candidates can all be
/// taken, so the walk is bounded however large the range.
pub fn allocate6(
    network: &str,
    subnet: &Ipv6Net,
    range: &Ipv6Net,
    used: &[(Ipv6Addr, String)],
) -> Result<Ipv6Addr, IpamError> {
    let start = u128::from(range.network());
    let end = u128::from(range.broadcast());
    (1..=used.len() as u128 + 2)
        .filter_map(|i| start.checked_add(i).filter(|a| *a <= end))
        .map(Ipv6Addr::from)
        .filter(|ip| is_usable6(subnet, *ip))
        .find(|ip| !used.iter().any(|(u, _)| u == ip))
        .ok_or_else(|| IpamError::AddressesExhausted6 {
            network: network.to_owned(),
            range: *range,
        })
}

/// The host's unique local /48 (RFC 4193): `fd` followed by the 40-bit
/// global ID (only its low 40 bits count).
pub fn ula_prefix(global_id: u64) -> Ipv6Net {
    let id = u128::from(global_id & 0xff_ffff_ffff);
    let addr = (0xfd_u128 << 120) | (id << 80);
    Ipv6Net::new_assert(Ipv6Addr::from(addr), 48)
}

/// A new random 40-bit global ID (RFC 4193 section 3.2.2 asks for a
/// pseudo-random one).
pub fn new_global_id() -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b[3..])?;
    Ok(u64::from_be_bytes(b))
}

/// Refuses a subnet overlapping an uplink's IPv6 prefix (as
/// [`super::check_not_uplink`] does for IPv4): `uplinks` lists each
/// uplink's name with its addresses (address, prefix length).
pub fn check_not_uplink6(
    subnet: &Ipv6Net,
    uplinks: &[(String, Vec<(Ipv6Addr, u8)>)],
) -> Result<(), IpamError> {
    for (name, addrs) in uplinks {
        for (addr, len) in addrs {
            let Ok(theirs) = Ipv6Net::new(*addr, *len).map(|n| n.trunc()) else {
                continue;
            };
            if overlaps6(subnet, &theirs) {
                return Err(IpamError::UplinkOverlap6 {
                    subnet: *subnet,
                    uplink: name.clone(),
                    uplink_prefix: theirs,
                    host_addr: *addr,
                });
            }
        }
    }
    Ok(())
}

/// The first /64 of the host's unique local /48 that overlaps no subnet in
/// `used` (subnet IDs 0 to 65535, in order).
pub fn next_free_ula(global_id: u64, used: &[Ipv6Net]) -> Result<Ipv6Net, IpamError> {
    let base = u128::from(ula_prefix(global_id).network());
    (0u128..=0xffff)
        .map(|sid| Ipv6Net::new_assert(Ipv6Addr::from(base | (sid << 64)), 64))
        .find(|n| !used.iter().any(|u| overlaps6(n, u)))
        .ok_or(IpamError::UlaExhausted {
            prefix: ula_prefix(global_id),
        })
}

/// A MAC for an endpoint with only an IPv6 address: 02:42 followed by the
/// address's last four bytes (as Docker's IPv4 MACs carry the address).
pub fn mac_for6(ip: Ipv6Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[12], o[13], o[14], o[15]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_are_validated_with_field_and_value() {
        assert_eq!(parse_subnet6("2001:db8:1::/64"), Ok(net("2001:db8:1::/64")));
        for (value, msg) in [
            (
                "2001:db8::/300",
                "--subnet 2001:db8::/300: not an IPv6 CIDR (expected e.g. fd00:1::/64)",
            ),
            (
                "2001:db8::/32",
                "--subnet 2001:db8::/32: IPv6 prefix length must be between 48 and 120",
            ),
            (
                "2001:db8::/124",
                "--subnet 2001:db8::/124: IPv6 prefix length must be between 48 and 120",
            ),
            (
                "2001:db8::1/64",
                "--subnet 2001:db8::1/64: has host bits set; the network address is 2001:db8::/64",
            ),
            (
                "fe80::/64",
                "--subnet fe80::/64: overlaps link-local fe80::/10",
            ),
            (
                "ff02::/64",
                "--subnet ff02::/64: overlaps multicast ff00::/8",
            ),
            (
                "::/64",
                "--subnet ::/64: overlaps unspecified and loopback ::/127",
            ),
        ] {
            let got = parse_subnet6(value).map_err(|e| e.to_string());
            assert_eq!(got, Err(msg.to_owned()), "{value}");
        }
    }

    #[test]
    fn gateways_ranges_and_requested_addresses() {
        let s = net("2001:db8:1::/64");
        assert_eq!(first_host6(&s), ip("2001:db8:1::1"));
        assert!(check_gateway6(&s, ip("2001:db8:1::ffff")).is_ok());
        assert!(check_gateway6(&s, ip("2001:db8:1::")).is_err());
        let e = check_gateway6(&s, ip("2001:db8:2::1")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--gateway 2001:db8:2::1: not a usable address of subnet 2001:db8:1::/64"
        );
        assert_eq!(
            parse_range6(&s, "2001:db8:1::100/120"),
            Ok(net("2001:db8:1::100/120"))
        );
        assert!(parse_range6(&s, "2001:db8:2::/120").is_err());
        let used = vec![(ip("2001:db8:1::5"), "c1".to_owned())];
        let e = check_requested6(&s, ip("2001:db8:1::5"), &used).unwrap_err();
        assert_eq!(e.to_string(), "--ip6 2001:db8:1::5: already in use by c1");
        assert!(check_requested6(&s, ip("2001:db8:9::5"), &used).is_err());
    }

    #[test]
    fn allocation_takes_the_lowest_free_address_and_is_bounded() {
        let s = net("fd00:1::/64");
        let mut used = vec![(first_host6(&s), "gateway".to_owned())];
        let a = allocate6("n", &s, &s, &used).unwrap();
        assert_eq!(a, ip("fd00:1::2"));
        used.push((a, "c1".to_owned()));
        assert_eq!(allocate6("n", &s, &s, &used), Ok(ip("fd00:1::3")));
        let r = net("fd00:1::100/120");
        assert_eq!(allocate6("n", &s, &r, &used), Ok(ip("fd00:1::101")));
        let tiny = net("fd00:1::/126");
        let used: Vec<_> = (1..=3)
            .map(|i| (Ipv6Addr::from(u128::from(tiny.network()) + i), "x".into()))
            .collect();
        assert!(matches!(
            allocate6("n", &s, &tiny, &used),
            Err(IpamError::AddressesExhausted6 { .. })
        ));
    }

    #[test]
    fn ula_subnets_come_from_the_hosts_global_id() {
        let id = 0x12_3456_789a;
        assert_eq!(ula_prefix(id), net("fd12:3456:789a::/48"));
        assert_eq!(next_free_ula(id, &[]), Ok(net("fd12:3456:789a::/64")));
        let used = [net("fd12:3456:789a::/64"), net("fd12:3456:789a:2::/64")];
        assert_eq!(next_free_ula(id, &used), Ok(net("fd12:3456:789a:1::/64")));
        // A user subnet covering the whole /48 leaves nothing.
        assert!(next_free_ula(id, &[net("fd12:3456:789a::/48")]).is_err());
        let g = new_global_id().unwrap();
        assert!(g < 1 << 40);
        assert_eq!(
            mac_for6(ip("fd00::a:b0c")),
            [0x02, 0x42, 0, 0x0a, 0x0b, 0x0c]
        );
    }
}
