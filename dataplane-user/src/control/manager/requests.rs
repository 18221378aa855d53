//! Requests as the manager takes them, typed: the wire and CLI structs
//! ([`ConnectArgs`], `--publish` strings) are parsed once, here, at the
//! boundary; the Docker and CNI paths build the typed requests directly.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::NetworkError;
use crate::control::{
    ipam::{self, v6},
    model::valid_name,
    names::{self, IfName, MacAddr},
    names_dns,
    ports::{self, PortMapping, PortRequest, PublishError, PublishSpec},
};

/// `connect` as the user typed it (the CLI's flags and the API's JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectArgs {
    /// A network name, `none`, `host` or `container:<endpoint>`.
    pub network: String,
    /// Name under /var/run/netns or a path (/proc/PID/ns/net).
    pub netns: Option<String>,
    pub ip: Option<String>,
    /// `--ip6`.
    #[serde(default)]
    pub ip6: Option<String>,
    pub mac: Option<String>,
    pub name: Option<String>,
    pub ifname: Option<String>,
    /// `--publish` values, Docker's syntax.
    pub publish: Vec<PublishSpec>,
    /// `--alias` values: more DNS names of the endpoint on its network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// What a `connect` joins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectTo {
    /// A network by name, id or id prefix (`none` and `host` included).
    Network(String),
    /// `container:<endpoint>`: the namespace of that endpoint, shared.
    Container(String),
}

/// `connect`, checked on its own (checks against the state and the host
/// happen when it is applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    pub network: ConnectTo,
    /// As given: a name under /var/run/netns or a path.
    pub netns: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
    pub mac: Option<MacAddr>,
    /// The endpoint's name (a valid one: see [`valid_name`]).
    pub name: Option<String>,
    pub ifname: Option<IfName>,
    /// Ports to publish as asked; the manager picks the host ports.
    pub publish: Vec<PortRequest>,
    /// DNS names besides the endpoint's name, each a valid one
    /// ([`names_dns::dns_name`]), lower case, without duplicates.
    pub aliases: Vec<String>,
}

impl ConnectRequest {
    /// A request for `network` with nothing else chosen.
    pub fn to_network(network: &str, netns: Option<String>) -> ConnectRequest {
        ConnectRequest {
            network: ConnectTo::Network(network.to_owned()),
            netns,
            ip: None,
            ip6: None,
            mac: None,
            name: None,
            ifname: None,
            publish: Vec::new(),
            aliases: Vec::new(),
        }
    }
}

/// An endpoint name as the user gave it, checked.
pub(super) fn endpoint_name(name: &str) -> Result<String, NetworkError> {
    if valid_name(name) {
        Ok(name.to_owned())
    } else {
        Err(NetworkError::BadEndpointName(name.to_owned()))
    }
}

/// `--alias` values as the user gave them: each checked, lower-cased (DNS
/// names are case-insensitive), duplicates dropped.
pub(super) fn aliases(given: &[String]) -> Result<Vec<String>, NetworkError> {
    let mut out: Vec<String> = Vec::new();
    for a in given {
        let name = names_dns::dns_name(a).map_err(|e| NetworkError::BadAlias(e.to_string()))?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// An `--ifname` as the user gave it, checked.
pub(super) fn ifname(name: &str) -> Result<IfName, NetworkError> {
    names::ifname(name).map_err(|e| NetworkError::BadIfname(e.0))
}

impl ConnectArgs {
    /// Checks every field on its own; an error names the flag and value.
    pub fn parse(&self) -> Result<ConnectRequest, NetworkError> {
        let network = match self.network.strip_prefix("container:") {
            Some(target) => ConnectTo::Container(target.to_owned()),
            None => ConnectTo::Network(self.network.clone()),
        };
        Ok(ConnectRequest {
            network,
            netns: self.netns.clone(),
            ip: self
                .ip
                .as_deref()
                .map(|ip| ipam::parse_addr("ip", ip))
                .transpose()?,
            ip6: self
                .ip6
                .as_deref()
                .map(|ip| v6::parse_addr6("ip6", ip))
                .transpose()?,
            mac: self.mac.as_deref().map(names::unicast_mac).transpose()?,
            name: self.name.as_deref().map(endpoint_name).transpose()?,
            ifname: self.ifname.as_deref().map(ifname).transpose()?,
            publish: self.publish.as_slice().mappings()?,
            aliases: aliases(&self.aliases)?,
        })
    }
}

impl TryFrom<&ConnectArgs> for ConnectRequest {
    type Error = NetworkError;
    fn try_from(args: &ConnectArgs) -> Result<ConnectRequest, NetworkError> {
        args.parse()
    }
}

/// Published ports as a request carries them: typed mappings, or
/// `--publish` strings parsed here.
pub trait PublishSpecs {
    fn mappings(self) -> Result<Vec<PortRequest>, PublishError>;
}

impl PublishSpecs for &[String] {
    fn mappings(self) -> Result<Vec<PortRequest>, PublishError> {
        let mut out = Vec::new();
        for spec in self {
            out.extend(ports::parse(spec)?);
        }
        Ok(out)
    }
}

impl PublishSpecs for &Vec<String> {
    fn mappings(self) -> Result<Vec<PortRequest>, PublishError> {
        self.as_slice().mappings()
    }
}

impl PublishSpecs for &[PublishSpec] {
    fn mappings(self) -> Result<Vec<PortRequest>, PublishError> {
        Ok(self.iter().flat_map(|s| s.mappings()).copied().collect())
    }
}

impl PublishSpecs for &Vec<PublishSpec> {
    fn mappings(self) -> Result<Vec<PortRequest>, PublishError> {
        self.as_slice().mappings()
    }
}

impl PublishSpecs for &[PortMapping] {
    fn mappings(self) -> Result<Vec<PortRequest>, PublishError> {
        Ok(self.iter().copied().map(PortRequest::from).collect())
    }
}

impl PublishSpecs for Vec<PortMapping> {
    fn mappings(self) -> Result<Vec<PortRequest>, PublishError> {
        self.as_slice().mappings()
    }
}

impl<const N: usize> PublishSpecs for &[String; N] {
    fn mappings(self) -> Result<Vec<PortRequest>, PublishError> {
        self.as_slice().mappings()
    }
}
