//! Published ports: Docker's `-p [[HOSTIP:][HOSTPORT[-END]]:]CPORT[-END][/tcp|udp]`
//! parsed once into one [`PortRequest`] per container port (what the user
//! asked for: a fixed host port, a range to pick one from, or any free
//! one), the concrete [`PortMapping`] the manager chooses for it, and the
//! conflict rules between mappings.
//!
//! The host address is either family: an IPv6 one in brackets
//! (`[::1]:8080:80`, `[2001:db8::1]:8080:80/udp`). None (no address, or
//! 0.0.0.0) is every host address of every family the network has, as
//! `-p 8080:80` publishes on both families of a dual-stack network; `[::]`
//! is every IPv6 address only.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

pub use crate::datapath::proto::Proto;

/// One published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// None: every host address of each family the network has (Docker's
    /// 0.0.0.0 and `::` together); `::` every IPv6 address.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
    /// Slot in the per-mapping counter array, fixed for the mapping's life.
    pub stats_index: u32,
    /// The IPv6 side's own slot, for a mapping on every address of an
    /// endpoint with both families (as iptables and ip6tables each count
    /// their own rule); None: the IPv6 side counts in `stats_index` (a
    /// mapping on one family, or one stored by an older release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_index6: Option<u32>,
}

/// One family's side of a published port, as `nat ls` and `/metrics` show
/// it: the host address and port, the container's, and its counter slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingSide {
    pub host: String,
    pub container: String,
    pub stats_index: u32,
}

impl PortMapping {
    /// Whether two mappings would claim the same packets.
    pub fn conflicts(&self, other: &PortMapping) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (None, _) | (_, None) => true,
                (Some(IpAddr::V6(a)), Some(IpAddr::V6(b))) => {
                    a == b || a.is_unspecified() || b.is_unspecified()
                }
                (a, b) => a == b,
            }
    }

    pub fn host(&self) -> String {
        format!("{}:{}", host_text(self.host_ip), self.host_port)
    }

    /// The sides of this mapping for an endpoint with addresses `v4` and
    /// `v6`: one per family it is published on and the endpoint has (one
    /// without a container address when it has neither).
    pub fn sides(&self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Vec<MappingSide> {
        let mut out = Vec::new();
        if let (Some(_), Some(ip)) = (self.host_ipv4(), v4) {
            out.push(MappingSide {
                host: self.host(),
                container: format!("{ip}:{}", self.container_port),
                stats_index: self.stats_index,
            });
        }
        let host6 = match self.host_ip {
            None => Some(Ipv6Addr::UNSPECIFIED),
            Some(IpAddr::V6(a)) => Some(a),
            Some(IpAddr::V4(_)) => None,
        };
        if let (Some(host), Some(ip)) = (host6, v6) {
            out.push(MappingSide {
                host: format!("[{host}]:{}", self.host_port),
                container: format!("[{ip}]:{}", self.container_port),
                stats_index: self.stats_index6.unwrap_or(self.stats_index),
            });
        }
        if out.is_empty() {
            out.push(MappingSide {
                host: self.host(),
                container: format!(":{}", self.container_port),
                stats_index: self.stats_index,
            });
        }
        out
    }

    /// The IPv4 host address as the IPv4 maps hold it (0.0.0.0: every
    /// address); None for a mapping on IPv6 addresses only.
    pub fn host_ipv4(&self) -> Option<Ipv4Addr> {
        match self.host_ip {
            None => Some(Ipv4Addr::UNSPECIFIED),
            Some(IpAddr::V4(a)) => Some(a),
            Some(IpAddr::V6(_)) => None,
        }
    }
}

/// A host address as Docker writes it before `:PORT`: IPv6 in brackets,
/// every address as 0.0.0.0.
fn host_text(ip: Option<IpAddr>) -> String {
    match ip {
        None => Ipv4Addr::UNSPECIFIED.to_string(),
        Some(IpAddr::V4(a)) => a.to_string(),
        Some(IpAddr::V6(a)) => format!("[{a}]"),
    }
}

/// Refuses a mapping on an IPv6 host address for a network without IPv6
/// (Docker refuses it too: nothing could answer there).
pub fn check_families(
    network: &str,
    enable_ipv6: bool,
    wanted: &[PortRequest],
) -> Result<(), PublishError> {
    match wanted
        .iter()
        .find(|r| matches!(r.host_ip, Some(IpAddr::V6(_))) && !enable_ipv6)
    {
        Some(r) => Err(PublishError::NoIpv6 {
            mapping: r.to_string(),
            network: network.to_owned(),
        }),
        None => Ok(()),
    }
}

/// One container port to publish, as asked: the host port is fixed, one
/// of a range, or any free one (Docker's ephemeral ports). The manager
/// turns it into a [`PortMapping`] with a concrete port, which is what the
/// state keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRequest {
    /// None: every host address (see [`PortMapping::host_ip`]).
    pub host_ip: Option<IpAddr>,
    /// The host ports to pick the first free one from; None: any free
    /// port of the host's ephemeral range.
    pub host_ports: Option<(u16, u16)>,
    pub container_port: u16,
    pub proto: Proto,
}

impl PortRequest {
    /// The mapping when the host port is fixed.
    pub fn fixed(&self) -> Option<PortMapping> {
        match self.host_ports {
            Some((a, b)) if a == b => Some(self.at(a)),
            _ => None,
        }
    }

    /// The mapping of this request on host port `port`.
    pub fn at(&self, port: u16) -> PortMapping {
        PortMapping {
            host_ip: self.host_ip,
            host_port: port,
            container_port: self.container_port,
            proto: self.proto,
            stats_index: 0,
            stats_index6: None,
        }
    }

    /// Whether `m` is what this request was given (`publish rm`, CNI
    /// CHECK): same address, protocol and container port, the host port
    /// one the request allows.
    pub fn matches(&self, m: &PortMapping) -> bool {
        (self.host_ip, self.container_port, self.proto) == (m.host_ip, m.container_port, m.proto)
            && self
                .host_ports
                .is_none_or(|(a, b)| (a..=b).contains(&m.host_port))
    }
}

impl From<PortMapping> for PortRequest {
    fn from(m: PortMapping) -> PortRequest {
        PortRequest {
            host_ip: m.host_ip,
            host_ports: Some((m.host_port, m.host_port)),
            container_port: m.container_port,
            proto: m.proto,
        }
    }
}

impl fmt::Display for PortRequest {
    /// A fixed port as its mapping (`0.0.0.0:8080->80/tcp`), a choice in
    /// Docker's syntax: `0.0.0.0:8000-8010:80/tcp`, `127.0.0.1::80/udp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(m) = self.fixed() {
            return m.fmt(f);
        }
        write!(f, "{}:", host_text(self.host_ip))?;
        if let Some((a, b)) = self.host_ports {
            write!(f, "{a}-{b}")?;
        }
        write!(f, ":{}/{}", self.container_port, self.proto.name())
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}->{}/{}",
            self.host(),
            self.container_port,
            self.proto.name()
        )
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("--publish {spec}: expected [[HOSTIP:][HOSTPORT[-END]]:]CPORT[-END][/tcp|udp]")]
    Syntax { spec: String },
    #[error("--publish {spec}: {what} {value:?} is not a port number from 1 to 65535")]
    Port {
        spec: String,
        what: &'static str,
        value: String,
    },
    #[error("--publish {spec}: {value:?} is not an IP address (IPv6 in brackets: [::1]:8080:80)")]
    HostIp { spec: String, value: String },
    #[error("--publish {mapping}: network {network} has no IPv6 (create it with --ipv6)")]
    NoIpv6 { mapping: String, network: String },
    #[error("--publish {spec}: protocol {value:?} (expected tcp or udp)")]
    Proto { spec: String, value: String },
    #[error("--publish {spec}: range {range} runs backwards")]
    Backwards { spec: String, range: String },
    #[error("--publish {spec}: host range and container range differ in size ({host} and {container} ports; a host range with one container port picks one)")]
    RangeSize {
        spec: String,
        host: u32,
        container: u32,
    },
}

fn parse_port(spec: &str, what: &'static str, s: &str) -> Result<u16, PublishError> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| PublishError::Port {
            spec: spec.to_owned(),
            what,
            value: s.to_owned(),
        })
}

fn parse_range(spec: &str, what: &'static str, s: &str) -> Result<(u16, u16), PublishError> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (parse_port(spec, what, a)?, parse_port(spec, what, b)?),
        None => {
            let p = parse_port(spec, what, s)?;
            (p, p)
        }
    };
    if b < a {
        return Err(PublishError::Backwards {
            spec: spec.to_owned(),
            range: s.to_owned(),
        });
    }
    Ok((a, b))
}

/// One `--publish` value, parsed once where it comes in (clap, the API's
/// JSON) and carried with its text: the wire keeps Docker's syntax.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublishSpec {
    text: String,
    mappings: Vec<PortRequest>,
}

impl PublishSpec {
    /// One request per container port of the spec's range.
    pub fn mappings(&self) -> &[PortRequest] {
        &self.mappings
    }
}

impl FromStr for PublishSpec {
    type Err = PublishError;
    fn from_str(text: &str) -> Result<PublishSpec, PublishError> {
        Ok(PublishSpec {
            text: text.to_owned(),
            mappings: parse(text)?,
        })
    }
}

impl TryFrom<String> for PublishSpec {
    type Error = PublishError;
    fn try_from(text: String) -> Result<PublishSpec, PublishError> {
        text.parse()
    }
}

impl From<PublishSpec> for String {
    fn from(spec: PublishSpec) -> String {
        spec.text
    }
}

impl fmt::Display for PublishSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses one `--publish` value into one request per container port.
/// Docker's forms: `CPORT` and `HOSTIP::CPORT` (any free host port),
/// `HOSTPORT:CPORT`, equal-size ranges (port by port), and a host range
/// with one container port (the first free port of the range).
pub fn parse(spec: &str) -> Result<Vec<PortRequest>, PublishError> {
    let syntax = || PublishError::Syntax {
        spec: spec.to_owned(),
    };
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, "tcp")) => (r, Proto::Tcp),
        Some((r, "udp")) => (r, Proto::Udp),
        Some((_, p)) => {
            return Err(PublishError::Proto {
                spec: spec.to_owned(),
                value: p.to_owned(),
            })
        }
        None => (spec, Proto::Tcp),
    };
    let (host_ip, rest) = split_host_ip(spec, rest)?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (host, container) = match (parts.as_slice(), host_ip) {
        ([c], None) => ("", *c),
        ([h, c], _) if !h.is_empty() || host_ip.is_some() => (*h, *c),
        _ => return Err(syntax()),
    };
    // 0.0.0.0 is every address, as no address.
    let host_ip = host_ip.filter(|ip| *ip != IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let (c0, c1) = parse_range(spec, "container port", container)?;
    let request = |host_ports, container_port| PortRequest {
        host_ip,
        host_ports,
        container_port,
        proto,
    };
    if host.is_empty() {
        return Ok((c0..=c1).map(|c| request(None, c)).collect());
    }
    let (h0, h1) = parse_range(spec, "host port", host)?;
    if c0 == c1 {
        return Ok(vec![request(Some((h0, h1)), c0)]);
    }
    let (hn, cn) = (u32::from(h1 - h0) + 1, u32::from(c1 - c0) + 1);
    if hn != cn {
        return Err(PublishError::RangeSize {
            spec: spec.to_owned(),
            host: hn,
            container: cn,
        });
    }
    Ok((0..=(h1 - h0))
        .map(|i| request(Some((h0 + i, h0 + i)), c0 + i))
        .collect())
}

/// The host address of a `--publish` value and what follows it: an IPv6
/// address is in brackets (`[::1]:8080:80`); an IPv4 one is the first of
/// three colon-separated parts.
fn split_host_ip<'a>(spec: &str, rest: &'a str) -> Result<(Option<IpAddr>, &'a str), PublishError> {
    let bad = |value: &str| PublishError::HostIp {
        spec: spec.to_owned(),
        value: value.to_owned(),
    };
    if let Some(inner) = rest.strip_prefix('[') {
        let (addr, after) = inner.split_once(']').ok_or_else(|| bad(rest))?;
        let ip: Ipv6Addr = addr.parse().map_err(|_| bad(addr))?;
        let after = after
            .strip_prefix(':')
            .ok_or_else(|| PublishError::Syntax {
                spec: spec.to_owned(),
            })?;
        return Ok((Some(IpAddr::V6(ip)), after));
    }
    if rest.matches(':').count() != 2 {
        return Ok((None, rest));
    }
    let (ip, after) = rest.split_once(':').ok_or_else(|| bad(rest))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad(ip))?;
    Ok((Some(IpAddr::V4(ip)), after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_gets_its_own_side_and_counter() {
        let m = PortMapping {
            host_ip: None,
            host_port: 8080,
            container_port: 80,
            proto: Proto::Tcp,
            stats_index: 3,
            stats_index6: Some(4),
        };
        let v4: Option<Ipv4Addr> = Some("10.0.0.2".parse().unwrap());
        let v6: Option<Ipv6Addr> = Some("fd00::2".parse().unwrap());
        let sides = m.sides(v4, v6);
        let got: Vec<_> = sides
            .iter()
            .map(|s| (s.host.as_str(), s.container.as_str(), s.stats_index))
            .collect();
        assert_eq!(
            got,
            [
                ("0.0.0.0:8080", "10.0.0.2:80", 3),
                ("[::]:8080", "[fd00::2]:80", 4)
            ]
        );
        // An older release's mapping: the IPv6 side shares the slot.
        let old = PortMapping {
            stats_index6: None,
            ..m
        };
        assert_eq!(old.sides(v4, v6)[1].stats_index, 3);
        // On one IPv6 address: its side only.
        let lo = PortMapping {
            host_ip: Some("::1".parse().unwrap()),
            ..old
        };
        let only: Vec<_> = lo.sides(v4, v6).into_iter().map(|s| s.host).collect();
        assert_eq!(only, ["[::1]:8080"]);
        // An endpoint of one family: that side.
        assert_eq!(m.sides(v4, None).len(), 1);
        assert_eq!(m.sides(None, None)[0].container, ":80");
    }

    #[test]
    fn dockers_forms_parse() {
        let m = parse("8080:80").unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(
            (
                m[0].host_ip,
                m[0].host_ports,
                m[0].container_port,
                m[0].proto
            ),
            (None, Some((8080, 8080)), 80, Proto::Tcp)
        );
        let m = parse("127.0.0.1:8081:80/udp").unwrap();
        assert_eq!(
            (m[0].host_ip, m[0].proto),
            (Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), Proto::Udp)
        );
        let m = parse("0.0.0.0:9000-9002:7000-7002").unwrap();
        assert_eq!(
            m.iter()
                .map(|m| (m.host_ports, m.container_port))
                .collect::<Vec<_>>(),
            vec![
                (Some((9000, 9000)), 7000),
                (Some((9001, 9001)), 7001),
                (Some((9002, 9002)), 7002)
            ]
        );
        assert_eq!(m[0].host_ip, None);
        assert_eq!(m[0].fixed().unwrap().to_string(), "0.0.0.0:9000->7000/tcp");
    }

    #[test]
    fn ephemeral_and_pick_one_forms_parse() {
        let any = |spec: &str| parse(spec).unwrap()[0];
        assert_eq!(any("80").host_ports, None);
        assert_eq!(any("80").to_string(), "0.0.0.0::80/tcp");
        let m = any("127.0.0.1::80");
        assert_eq!(
            (m.host_ip, m.host_ports),
            (Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), None)
        );
        assert_eq!(any("80/udp").proto, Proto::Udp);
        assert_eq!(parse("80-82").unwrap().len(), 3, "one per container port");
        let m = parse("8000-8010:80").unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].host_ports, m[0].fixed()), (Some((8000, 8010)), None));
        assert_eq!(m[0].to_string(), "0.0.0.0:8000-8010:80/tcp");
        assert!(m[0].matches(&m[0].at(8004)) && !m[0].matches(&m[0].at(8011)));
    }

    #[test]
    fn bad_specs_name_the_problem() {
        for (spec, needle) in [
            (":80", "expected [[HOSTIP:]"),
            ("1:2:3:4", "expected [[HOSTIP:]"),
            ("8080:0", "container port \"0\""),
            ("70000:80", "host port \"70000\""),
            ("1.2.3:8080:80", "\"1.2.3\" is not an IP address"),
            ("[::1:8080:80", "\"[::1:8080:80\" is not an IP address"),
            ("[zz::1]:8080:80", "\"zz::1\" is not an IP address"),
            ("[::1]8080:80", "expected [[HOSTIP:]"),
            ("::1:8080:80", "expected [[HOSTIP:]"),
            ("8080:80/sctp", "protocol \"sctp\""),
            ("9002-9000:80-82", "runs backwards"),
            ("9000-9002:80-81", "differ in size (3 and 2 ports"),
        ] {
            let e = parse(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn conflicts_follow_the_wildcard() {
        let one = |spec: &str| parse(spec).unwrap()[0].fixed().unwrap();
        let a = one("8080:80");
        let b = one("127.0.0.1:8080:81");
        let c = one("10.0.0.1:8080:81");
        let d = one("8080:80/udp");
        assert!(a.conflicts(&b) && b.conflicts(&a));
        assert!(!b.conflicts(&c));
        assert!(!a.conflicts(&d));
        // IPv6: every address (None) takes both families; [::] every
        // IPv6 address; two IPv6 addresses only when equal.
        let v6 = one("[2001:db8::1]:8080:80");
        let any6 = one("[::]:8080:80");
        assert!(a.conflicts(&v6) && a.conflicts(&any6) && any6.conflicts(&v6));
        assert!(!b.conflicts(&v6) && !b.conflicts(&any6));
        assert!(!v6.conflicts(&one("[2001:db8::2]:8080:80")));
    }

    #[test]
    fn ipv6_host_addresses_parse_in_brackets() {
        let m = parse("[::1]:8080:80").unwrap();
        assert_eq!(
            (
                m[0].host_ip,
                m[0].host_ports,
                m[0].container_port,
                m[0].proto
            ),
            (
                Some("::1".parse().unwrap()),
                Some((8080, 8080)),
                80,
                Proto::Tcp
            )
        );
        let m = parse("[2001:db8::1]:8080:80/udp").unwrap();
        assert_eq!(m[0].host_ip, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(m[0].proto, Proto::Udp);
        let f = m[0].fixed().unwrap();
        assert_eq!(f.to_string(), "[2001:db8::1]:8080->80/udp");
        assert_eq!(f.host_ipv4(), None);
        let m = parse("[::1]::80").unwrap();
        assert_eq!(m[0].host_ports, None);
        assert_eq!(m[0].to_string(), "[::1]::80/tcp");
        // No address: every address of both families; [::] stays IPv6.
        assert_eq!(parse("8080:80").unwrap()[0].host_ip, None);
        assert_eq!(
            parse("[::]:8080:80").unwrap()[0].host_ip,
            Some("::".parse().unwrap())
        );
        assert_eq!(
            parse("8080:80").unwrap()[0].fixed().unwrap().host_ipv4(),
            Some(Ipv4Addr::UNSPECIFIED)
        );
        let v6 = parse("[::1]:8080:80").unwrap();
        assert!(check_families("n", true, &v6).is_ok());
        assert!(check_families("n", false, &parse("8080:80").unwrap()).is_ok());
        assert_eq!(
            check_families("n", false, &v6).unwrap_err().to_string(),
            "--publish [::1]:8080->80/tcp: network n has no IPv6 (create it with --ipv6)"
        );
        // Stored as before: an IPv4 address is still a string.
        let json = serde_json::to_value(parse("127.0.0.1:1:2").unwrap()[0].at(1)).unwrap();
        assert_eq!(json["host_ip"], "127.0.0.1");
    }
}
