//! Published ports: Docker's `-p [HOSTIP:]HOSTPORT[-END]:CPORT[-END][/tcp|udp]`
//! parsed once into one mapping per port, and the conflict rules between
//! mappings.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use serde::{Deserialize, Serialize};

pub use crate::datapath::proto::Proto;

/// One published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// None: every host address (Docker's 0.0.0.0).
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
    /// Slot in the per-mapping counter array, fixed for the mapping's life.
    pub stats_index: u32,
}

impl PortMapping {
    /// Whether two mappings would claim the same packets.
    pub fn conflicts(&self, other: &PortMapping) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    pub fn host(&self) -> String {
        format!(
            "{}:{}",
            self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            self.host_port
        )
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
    #[error("--publish {spec}: expected [HOSTIP:]HOSTPORT[-END]:CPORT[-END][/tcp|udp]")]
    Syntax { spec: String },
    #[error("--publish {spec}: {what} {value:?} is not a port number from 1 to 65535")]
    Port {
        spec: String,
        what: &'static str,
        value: String,
    },
    #[error("--publish {spec}: {value:?} is not an IPv4 address")]
    HostIp { spec: String, value: String },
    #[error("--publish {spec}: protocol {value:?} (expected tcp or udp)")]
    Proto { spec: String, value: String },
    #[error("--publish {spec}: range {range} runs backwards")]
    Backwards { spec: String, range: String },
    #[error("--publish {spec}: host range and container range differ in size ({host} and {container} ports)")]
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
    mappings: Vec<PortMapping>,
}

impl PublishSpec {
    /// One mapping per port of the spec's range.
    pub fn mappings(&self) -> &[PortMapping] {
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

/// Parses one `--publish` value into its mappings (one per port of a range);
/// `stats_index` is left 0 for the caller to assign.
pub fn parse(spec: &str) -> Result<Vec<PortMapping>, PublishError> {
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
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, host, container) = match parts.as_slice() {
        [h, c] => (None, *h, *c),
        [ip, h, c] => {
            let ip: Ipv4Addr = ip.parse().map_err(|_| PublishError::HostIp {
                spec: spec.to_owned(),
                value: (*ip).to_owned(),
            })?;
            ((!ip.is_unspecified()).then_some(ip), *h, *c)
        }
        _ => return Err(syntax()),
    };
    let (h0, h1) = parse_range(spec, "host port", host)?;
    let (c0, c1) = parse_range(spec, "container port", container)?;
    let (hn, cn) = (u32::from(h1 - h0) + 1, u32::from(c1 - c0) + 1);
    if hn != cn {
        return Err(PublishError::RangeSize {
            spec: spec.to_owned(),
            host: hn,
            container: cn,
        });
    }
    Ok((0..=(h1 - h0))
        .map(|i| PortMapping {
            host_ip,
            host_port: h0 + i,
            container_port: c0 + i,
            proto,
            stats_index: 0,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_forms_parse() {
        let m = parse("8080:80").unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(
            (
                m[0].host_ip,
                m[0].host_port,
                m[0].container_port,
                m[0].proto
            ),
            (None, 8080, 80, Proto::Tcp)
        );
        let m = parse("127.0.0.1:8081:80/udp").unwrap();
        assert_eq!(
            (m[0].host_ip, m[0].proto),
            (Some(Ipv4Addr::LOCALHOST), Proto::Udp)
        );
        let m = parse("0.0.0.0:9000-9002:7000-7002").unwrap();
        assert_eq!(
            m.iter()
                .map(|m| (m.host_port, m.container_port))
                .collect::<Vec<_>>(),
            vec![(9000, 7000), (9001, 7001), (9002, 7002)]
        );
        assert_eq!(m[0].host_ip, None);
        assert_eq!(m[0].to_string(), "0.0.0.0:9000->7000/tcp");
    }

    #[test]
    fn bad_specs_name_the_problem() {
        for (spec, needle) in [
            ("80", "expected [HOSTIP:]"),
            ("8080:0", "container port \"0\""),
            ("70000:80", "host port \"70000\""),
            ("1.2.3:8080:80", "\"1.2.3\" is not an IPv4 address"),
            ("8080:80/sctp", "protocol \"sctp\""),
            ("9002-9000:80-82", "runs backwards"),
            ("9000-9002:80", "differ in size (3 and 1 ports)"),
        ] {
            let e = parse(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn conflicts_follow_the_wildcard() {
        let a = parse("8080:80").unwrap()[0];
        let b = parse("127.0.0.1:8080:81").unwrap()[0];
        let c = parse("10.0.0.1:8080:81").unwrap()[0];
        let d = parse("8080:80/udp").unwrap()[0];
        assert!(a.conflicts(&b) && b.conflicts(&a));
        assert!(!b.conflicts(&c));
        assert!(!a.conflicts(&d));
    }
}
