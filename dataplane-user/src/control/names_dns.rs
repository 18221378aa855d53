//! The names each network's DNS answers, computed from the state: which
//! networks have names (user-defined bridge networks; not the default
//! `bridge`, as in Docker), and per network the endpoint names, their
//! `--alias`es and the runtimes' container names, each with the addresses
//! of every endpoint that carries it. Pure: the responder
//! (`frontends::dns`) and `dataplane dns ls` read it; docs/dns.md.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use super::{
    model::{DriverConfig, Endpoint, Network},
    state::State,
};

/// The search domain the responder answers under besides bare names:
/// `web` and `web.dns.dataplane` are the same name.
pub const DOMAIN: &str = "dns.dataplane";

/// A name no DNS label may carry, with why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?}: {reason}")]
pub struct BadDnsName {
    pub value: String,
    pub reason: &'static str,
}

/// `value` as a DNS name (RFC 1123 host name: dot-separated labels of 1-63
/// letters, digits and hyphens, not starting or ending with a hyphen, at
/// most 253 characters), lower case, without a trailing dot.
pub fn dns_name(value: &str) -> Result<String, BadDnsName> {
    let bad = |reason| BadDnsName {
        value: value.to_owned(),
        reason,
    };
    let name = value.strip_suffix('.').unwrap_or(value);
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(bad("empty label (two dots in a row, or a leading dot)"));
        }
        if label.len() > 63 {
            return Err(bad("a label is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("only letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label starts or ends with '-'"));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// The addresses DNS gives for an endpoint: one per family it has (A and
/// AAAA records).
pub fn addresses(ep: &Endpoint) -> Vec<IpAddr> {
    ep.ipv4
        .map(IpAddr::V4)
        .into_iter()
        .chain(ep.ipv6.map(IpAddr::V6))
        .collect()
}

/// Where a network's responder listens: its IPv4 gateway, else its IPv6
/// one (an IPv6-only network).
pub fn server_of(net: &Network) -> Option<IpAddr> {
    net.gateway.map(IpAddr::V4).or(net.gateway6.map(IpAddr::V6))
}

/// Why a network has no names, or None when it has.
pub fn no_names_reason(net: &Network) -> Option<&'static str> {
    if net.name == "bridge" {
        return Some("the default bridge network has no names, as in Docker");
    }
    if net.name == super::manager::docker_network_name(&net.id) {
        return Some(
            "a network of Docker's driver: Docker's own resolver (127.0.0.11) answers its containers",
        );
    }
    if !matches!(net.driver, DriverConfig::Bridge(_)) {
        return Some("only bridge networks have names (the gateway is the host's address)");
    }
    if server_of(net).is_none() {
        return Some("the network has no gateway to answer on");
    }
    None
}

/// One name on one network: every address, in endpoint order, and which
/// endpoints give them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameEntry {
    pub addresses: Vec<IpAddr>,
    pub endpoints: Vec<String>,
}

/// The names of one network and where its responder listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkNames {
    pub network: String,
    /// Where the responder listens: the gateway (an address of the host),
    /// the IPv6 one on an IPv6-only network.
    pub server: IpAddr,
    /// Internal networks answer their names but forward nothing.
    pub internal: bool,
    pub names: BTreeMap<String, NameEntry>,
    /// Reverse lookups: each endpoint address to the endpoint's first
    /// name (its own, else its first alias).
    pub by_addr: BTreeMap<IpAddr, String>,
}

/// The IPv4 address of a reverse name (`4.3.2.1.in-addr.arpa`, any case,
/// with or without the trailing dot), None for anything else.
pub fn reverse_v4(qname: &str) -> Option<Ipv4Addr> {
    let name = qname
        .strip_suffix('.')
        .unwrap_or(qname)
        .to_ascii_lowercase();
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let mut parts = rest.split('.');
    for slot in octets.iter_mut().rev() {
        *slot = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

impl NetworkNames {
    /// The entry for `qname` as asked (any case, with or without the
    /// trailing dot and the [`DOMAIN`] suffix). `Some` only for names of
    /// this network.
    pub fn get(&self, qname: &str) -> Option<&NameEntry> {
        let name = qname
            .strip_suffix('.')
            .unwrap_or(qname)
            .to_ascii_lowercase();
        let bare = name
            .strip_suffix(DOMAIN)
            .and_then(|n| n.strip_suffix('.'))
            .unwrap_or(&name);
        self.names.get(bare)
    }

    /// Whether `qname` is under [`DOMAIN`]: ours to answer, never
    /// forwarded.
    pub fn in_domain(qname: &str) -> bool {
        let name = qname
            .strip_suffix('.')
            .unwrap_or(qname)
            .to_ascii_lowercase();
        name == DOMAIN || name.ends_with(&format!(".{DOMAIN}"))
    }
}

/// `entry`'s addresses of one family, rotated by `turn`: answers to
/// successive queries start with a different endpoint (round-robin).
pub fn rotated(entry: &NameEntry, v4: bool, turn: usize) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = entry
        .addresses
        .iter()
        .copied()
        .filter(|a| a.is_ipv4() == v4)
        .collect();
    if !out.is_empty() {
        let n = turn % out.len();
        out.rotate_left(n);
    }
    out
}

/// Every network that has names, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameTable {
    pub networks: BTreeMap<String, NetworkNames>,
}

impl NameTable {
    /// The names in `state`. An endpoint name that is no DNS name (`_`,
    /// for instance) is left out; aliases were checked when given.
    pub fn from_state(state: &State) -> NameTable {
        let mut networks = BTreeMap::new();
        for net in state.networks.values() {
            let (None, Some(server)) = (no_names_reason(net), server_of(net)) else {
                continue;
            };
            let mut names: BTreeMap<String, NameEntry> = BTreeMap::new();
            let mut by_addr = BTreeMap::new();
            for ep in state.endpoints_of(&net.name) {
                let addrs = addresses(ep);
                if addrs.is_empty() {
                    continue;
                }
                let own = dns_name(&ep.name).ok();
                let all: Vec<String> = own.into_iter().chain(ep.aliases.iter().cloned()).collect();
                if let Some(first) = all.first() {
                    for a in &addrs {
                        by_addr.entry(*a).or_insert_with(|| first.clone());
                    }
                }
                for name in all {
                    let entry = names.entry(name).or_default();
                    if entry.endpoints.contains(&ep.name) {
                        continue;
                    }
                    entry.endpoints.push(ep.name.clone());
                    for a in &addrs {
                        if !entry.addresses.contains(a) {
                            entry.addresses.push(*a);
                        }
                    }
                }
            }
            networks.insert(
                net.name.clone(),
                NetworkNames {
                    network: net.name.clone(),
                    server,
                    internal: net.internal,
                    names,
                    by_addr,
                },
            );
        }
        NameTable { networks }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::control::model::{Attachment, BridgeConfig};

    fn net(name: &str, gw: [u8; 4], driver: DriverConfig) -> Network {
        Network {
            id: format!("{name}-id"),
            name: name.into(),
            driver,
            created: String::new(),
            subnet: None,
            gateway: Some(gw.into()),
            ip_range: None,
            internal: false,
            mtu: 1500,
            labels: BTreeMap::new(),
            subnet6: None,
            gateway6: None,
            ip_range6: None,
            enable_ipv4: true,
            enable_ipv6: false,
        }
    }

    fn ep(name: &str, network: &str, ip: [u8; 4], aliases: &[&str]) -> Endpoint {
        Endpoint {
            id: format!("{name}-{network}"),
            name: name.into(),
            network: network.into(),
            netns: PathBuf::from("/var/run/netns/x"),
            attachment: Attachment::Veth {
                host_ifname: "v".into(),
            },
            ifname: Some("eth0".into()),
            mac: None,
            ipv4: Some(ip.into()),
            ipv6: None,
            published: Vec::new(),
            aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    fn state() -> State {
        let mut s = State::default();
        let bridge = || {
            DriverConfig::Bridge(BridgeConfig {
                name: "br".into(),
                icc: true,
                masquerade: true,
                host_binding_ipv4: None,
                gateway_mode: Default::default(),
                trusted_host_interfaces: Vec::new(),
            })
        };
        for n in [
            net("bridge", [172, 17, 0, 1], bridge()),
            net("front", [172, 18, 0, 1], bridge()),
            net("back", [172, 19, 0, 1], bridge()),
        ] {
            s.networks.insert(n.id.clone(), n);
        }
        for e in [
            ep("web1", "front", [172, 18, 0, 2], &["web"]),
            ep("web2", "front", [172, 18, 0, 3], &["web"]),
            ep("Under_score", "front", [172, 18, 0, 4], &[]),
            ep("db", "back", [172, 19, 0, 2], &[]),
            ep("plain", "bridge", [172, 17, 0, 2], &[]),
        ] {
            s.endpoints.insert(e.id.clone(), e);
        }
        s
    }

    #[test]
    fn names_stay_on_their_network_and_aliases_gather_addresses() {
        let t = NameTable::from_state(&state());
        assert!(!t.networks.contains_key("bridge"));
        let mut docker = net("x", [172, 20, 0, 1], DriverConfig::Null);
        docker.id = "0123456789abcdef".into();
        docker.name = "docker-0123456789ab".into();
        assert!(no_names_reason(&docker).is_some_and(|r| r.contains("Docker")));
        let front = &t.networks["front"];
        assert_eq!(front.server, IpAddr::V4(Ipv4Addr::new(172, 18, 0, 1)));
        assert!(front.get("db").is_none());
        assert!(front.get("under_score").is_none());
        let web = front.get("WEB.dns.dataplane.").expect("web");
        assert_eq!(web.endpoints, ["web1", "web2"]);
        assert_eq!(
            rotated(web, true, 1),
            [IpAddr::from([172, 18, 0, 3]), IpAddr::from([172, 18, 0, 2])]
        );
        assert!(rotated(web, false, 0).is_empty());
        assert!(front.get("web1.").is_some());
        assert!(t.networks["back"].get("db").is_some());
        assert!(NetworkNames::in_domain("x.DNS.dataplane."));
        assert_eq!(
            front
                .by_addr
                .get(&IpAddr::from([172, 18, 0, 3]))
                .map(String::as_str),
            Some("web2")
        );
        assert_eq!(
            reverse_v4("3.0.18.172.IN-ADDR.ARPA."),
            Some(Ipv4Addr::new(172, 18, 0, 3))
        );
        for bad in [
            "3.0.18.in-addr.arpa",
            "a.0.18.172.in-addr.arpa",
            "1.3.0.18.172.in-addr.arpa",
        ] {
            assert_eq!(reverse_v4(bad), None, "{bad}");
        }
        assert!(!NetworkNames::in_domain("example.com"));
    }

    #[test]
    fn dns_names_follow_rfc_1123() {
        assert_eq!(dns_name("Web-1.Front.").unwrap(), "web-1.front");
        for bad in ["", "a..b", "-a", "a-", "a_b", &"x".repeat(64), "é"] {
            let e = dns_name(bad).unwrap_err();
            assert_eq!(e.value, bad);
        }
    }
}
