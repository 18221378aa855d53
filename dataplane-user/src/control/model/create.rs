//! `network create` as the user typed it ([`CreateArgs`], Docker's flags
//! and option names) parsed once into a [`CreateRequest`], with the
//! errors that name the field and the value.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{
    BridgeConfig, DriverConfig, DriverKind, GatewayMode, MacvlanConfig, MacvlanMode, OverlayConfig,
    DEFAULT_MTU,
};
use crate::control::ipam::{self, v6, IpamError};

/// Input errors of `network create`, each naming the field and the value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(
        "network name {0:?}: must start with a letter or digit and contain only [a-zA-Z0-9_.-]"
    )]
    BadName(String),
    #[error("--driver {0}: unknown (bridge, macvlan or overlay)")]
    BadDriver(String),
    #[error("-o {0:?}: expected KEY=VALUE")]
    BadOption(String),
    #[error("-o {key}: unknown option for the {driver} driver (known: {known})")]
    UnknownOption {
        key: String,
        driver: &'static str,
        known: &'static str,
    },
    #[error("-o {key}={value}: expected true or false")]
    BadBool { key: String, value: String },
    #[error("{field} {value}: MTU must be a number from 68 to 65535")]
    BadMtu { field: String, value: String },
    #[error(
        "-o {key}={value}: not a valid interface name (1-15 bytes, no '/', ':' or white space)"
    )]
    BadIfname { key: String, value: String },
    #[error(
        "-o com.docker.network.bridge.gateway_mode_ipv4={0}: expected nat, nat-unprotected, \
         routed or isolated"
    )]
    BadGatewayMode(String),
    #[error("-o macvlan_mode={0}: expected bridge, private, vepa or passthru")]
    BadMacvlanMode(String),
    #[error("--driver macvlan needs -o parent=IFACE")]
    MissingParent,
    #[error("--gateway and --ip-range need --subnet")]
    NeedsSubnet,
    #[error("--{field} {value}: an IPv6 gateway or range needs an IPv6 --subnet")]
    NeedsSubnet6 { field: &'static str, value: String },
    #[error("--{field} {value}: an IPv6 value needs --ipv6")]
    NeedsIpv6 { field: &'static str, value: String },
    #[error("--{field} {value}: an IPv4 value on a network created with --ipv4=false")]
    Ipv4Disabled { field: &'static str, value: String },
    #[error("--{field}: given twice for {family} ({first} and {second})")]
    Repeated {
        field: &'static str,
        family: &'static str,
        first: String,
        second: String,
    },
    #[error("--ipv4=false needs --ipv6 (a network without any address family)")]
    NoFamily,
    #[error("--ipv6 is not supported by the {0} driver")]
    Ipv6Unsupported(&'static str),
    #[error("--label {0:?}: expected KEY=VALUE")]
    BadLabel(String),
}

/// `network create` as the user typed it. `--subnet`, `--gateway` and
/// `--ip-range` may be given once per address family (Docker's flags:
/// each value's family decides which it is).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateArgs {
    pub name: String,
    pub driver: String,
    #[serde(default, deserialize_with = "one_or_many")]
    pub subnet: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub gateway: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub ip_range: Vec<String>,
    /// `--ipv6`.
    #[serde(default)]
    pub ipv6: bool,
    /// `--ipv4=false` makes an IPv6-only network; None means true.
    #[serde(default)]
    pub ipv4: Option<bool>,
    pub internal: bool,
    pub mtu: Option<String>,
    pub options: Vec<String>,
    pub labels: Vec<String>,
}

/// `network create`, parsed and checked on its own (checks against other
/// networks and the host happen when it is applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateRequest {
    pub name: String,
    pub driver: DriverKind,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    pub subnet6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    pub ip_range6: Option<Ipv6Net>,
    pub enable_ipv6: bool,
    pub enable_ipv4: bool,
    pub internal: bool,
    pub mtu: u32,
    pub bridge_name: Option<String>,
    pub icc: bool,
    pub masquerade: bool,
    pub host_binding_ipv4: Option<Ipv4Addr>,
    pub gateway_mode: GatewayMode,
    pub trusted_host_interfaces: Vec<String>,
    pub macvlan: Option<MacvlanConfig>,
    pub labels: BTreeMap<String, String>,
}

impl CreateRequest {
    /// The new network's driver settings. A bridge the user did not name
    /// is `br-` and the first 12 characters of the network's id, as
    /// Docker names it.
    pub fn driver_config(&self, id: &str) -> Result<DriverConfig, CreateError> {
        Ok(match self.driver {
            DriverKind::Bridge => DriverConfig::Bridge(BridgeConfig {
                name: self
                    .bridge_name
                    .clone()
                    .unwrap_or_else(|| format!("br-{}", id.get(..12).unwrap_or(id))),
                icc: self.icc,
                masquerade: self.masquerade,
                host_binding_ipv4: self.host_binding_ipv4,
                gateway_mode: self.gateway_mode,
                trusted_host_interfaces: self.trusted_host_interfaces.clone(),
            }),
            DriverKind::Macvlan => {
                DriverConfig::Macvlan(self.macvlan.clone().ok_or(CreateError::MissingParent)?)
            }
            DriverKind::Host => DriverConfig::Host,
            DriverKind::Null => DriverConfig::Null,
            // The cluster fills in the VNI and this host's VTEP
            // (`control::cluster`); the devices are named after the id.
            DriverKind::Overlay => DriverConfig::Overlay(OverlayConfig {
                bridge: format!("ov-{}", id.get(..12).unwrap_or(id)),
                vxlan: format!("vx-{}", id.get(..12).unwrap_or(id)),
                vni: 0,
                vtep: Ipv4Addr::UNSPECIFIED,
                port: 0,
            }),
        })
    }
}

const BRIDGE_OPTS: &str = "com.docker.network.bridge.name, com.docker.network.bridge.enable_icc, \
     com.docker.network.bridge.enable_ip_masquerade, com.docker.network.bridge.host_binding_ipv4, \
     com.docker.network.bridge.gateway_mode_ipv4, \
     com.docker.network.bridge.trusted_host_interfaces, com.docker.network.driver.mtu";
const MACVLAN_OPTS: &str = "parent, macvlan_mode, com.docker.network.driver.mtu";

pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// See [`crate::control::names::ifname`].
pub fn valid_ifname(name: &str) -> bool {
    crate::control::names::ifname(name).is_ok()
}

/// `-o KEY=VALUE` options of `network create`, by driver, into `req`.
fn apply_options(req: &mut CreateRequest, options: &[String]) -> Result<(), CreateError> {
    let mut parent = None;
    let mut mode = MacvlanMode::Bridge;
    for opt in options {
        let (key, value) = split_kv(opt).ok_or_else(|| CreateError::BadOption(opt.clone()))?;
        match (req.driver, key) {
            (_, "com.docker.network.driver.mtu") => {
                req.mtu = parse_mtu(&format!("-o {key}"), value)?
            }
            (DriverKind::Bridge, "com.docker.network.bridge.name") => {
                if !valid_ifname(value) {
                    return Err(CreateError::BadIfname {
                        key: key.to_owned(),
                        value: value.to_owned(),
                    });
                }
                req.bridge_name = Some(value.to_owned());
            }
            (DriverKind::Bridge, "com.docker.network.bridge.enable_icc") => {
                req.icc = parse_bool(key, value)?;
            }
            (DriverKind::Bridge, "com.docker.network.bridge.enable_ip_masquerade") => {
                req.masquerade = parse_bool(key, value)?;
            }
            (DriverKind::Bridge, "com.docker.network.bridge.host_binding_ipv4") => {
                let ip = ipam::parse_addr("o com.docker.network.bridge.host_binding_ipv4", value)?;
                req.host_binding_ipv4 = (!ip.is_unspecified()).then_some(ip);
            }
            (DriverKind::Bridge, "com.docker.network.bridge.gateway_mode_ipv4") => {
                req.gateway_mode = GatewayMode::parse(value)?;
                // Isolated is internal, and more (no address on the bridge).
                req.internal |= req.gateway_mode == GatewayMode::Isolated;
            }
            (DriverKind::Bridge, "com.docker.network.bridge.trusted_host_interfaces") => {
                req.trusted_host_interfaces = trusted_interfaces(key, value)?;
            }
            (DriverKind::Macvlan, "parent") => {
                if !valid_ifname(value) {
                    return Err(CreateError::BadIfname {
                        key: key.to_owned(),
                        value: value.to_owned(),
                    });
                }
                parent = Some(value.to_owned());
            }
            (DriverKind::Macvlan, "macvlan_mode") => {
                mode = match value {
                    "bridge" => MacvlanMode::Bridge,
                    "private" => MacvlanMode::Private,
                    "vepa" => MacvlanMode::Vepa,
                    "passthru" => MacvlanMode::Passthru,
                    other => return Err(CreateError::BadMacvlanMode(other.to_owned())),
                };
            }
            (d, k) => {
                return Err(CreateError::UnknownOption {
                    key: k.to_owned(),
                    driver: d.name(),
                    known: match d {
                        DriverKind::Macvlan => MACVLAN_OPTS,
                        DriverKind::Overlay => "com.docker.network.driver.mtu",
                        _ => BRIDGE_OPTS,
                    },
                })
            }
        }
    }
    if req.driver == DriverKind::Macvlan {
        let parent = parent.ok_or(CreateError::MissingParent)?;
        req.macvlan = Some(MacvlanConfig { parent, mode });
    }
    Ok(())
}

/// `if1:if2`, as Docker separates them; empty parts are skipped.
fn trusted_interfaces(key: &str, value: &str) -> Result<Vec<String>, CreateError> {
    value
        .split(':')
        .filter(|s| !s.is_empty())
        .map(|name| {
            if valid_ifname(name) {
                Ok(name.to_owned())
            } else {
                Err(CreateError::BadIfname {
                    key: key.to_owned(),
                    value: name.to_owned(),
                })
            }
        })
        .collect()
}

fn parse_bool(key: &str, value: &str) -> Result<bool, CreateError> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(CreateError::BadBool {
            key: key.to_owned(),
            value: value.to_owned(),
        }),
    }
}

fn parse_mtu(field: &str, value: &str) -> Result<u32, CreateError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|m| (68..=65535).contains(m))
        .ok_or_else(|| CreateError::BadMtu {
            field: field.to_owned(),
            value: value.to_owned(),
        })
}

fn split_kv(s: &str) -> Option<(&str, &str)> {
    s.split_once('=').filter(|(k, _)| !k.is_empty())
}

impl CreateArgs {
    pub fn parse(&self) -> Result<CreateRequest, CreateError> {
        if !valid_name(&self.name) {
            return Err(CreateError::BadName(self.name.clone()));
        }
        let driver = match self.driver.as_str() {
            "bridge" => DriverKind::Bridge,
            "macvlan" => DriverKind::Macvlan,
            "overlay" => DriverKind::Overlay,
            other => return Err(CreateError::BadDriver(other.to_owned())),
        };
        let fam = Families::split(self)?;
        let enable_ipv4 = self.ipv4.unwrap_or(true);
        if !enable_ipv4 && !self.ipv6 {
            return Err(CreateError::NoFamily);
        }
        if let Some((field, value)) = fam.first_v6().filter(|_| !self.ipv6) {
            return Err(CreateError::NeedsIpv6 { field, value });
        }
        if let Some((field, value)) = fam.first_v4().filter(|_| !enable_ipv4) {
            return Err(CreateError::Ipv4Disabled { field, value });
        }
        let subnet = fam.subnet.as_deref().map(ipam::parse_subnet).transpose()?;
        let gateway = fam
            .gateway
            .as_deref()
            .map(|g| ipam::parse_addr("gateway", g))
            .transpose()?;
        if (gateway.is_some() || fam.ip_range.is_some()) && subnet.is_none() {
            return Err(CreateError::NeedsSubnet);
        }
        let ip_range = match (&subnet, &fam.ip_range) {
            (Some(s), Some(r)) => Some(ipam::parse_range(s, r)?),
            _ => None,
        };
        if let (Some(s), Some(g)) = (&subnet, gateway) {
            ipam::check_gateway(s, g)?;
        }
        let (subnet6, gateway6, ip_range6) = fam.parse_v6()?;
        let mut req = CreateRequest {
            name: self.name.clone(),
            driver,
            subnet,
            gateway,
            ip_range,
            subnet6,
            gateway6,
            ip_range6,
            enable_ipv6: self.ipv6,
            enable_ipv4,
            internal: self.internal,
            mtu: DEFAULT_MTU,
            bridge_name: None,
            icc: true,
            masquerade: true,
            host_binding_ipv4: None,
            gateway_mode: GatewayMode::Nat,
            trusted_host_interfaces: Vec::new(),
            macvlan: None,
            labels: BTreeMap::new(),
        };
        if let Some(m) = &self.mtu {
            req.mtu = parse_mtu("--mtu", m)?;
        }
        apply_options(&mut req, &self.options)?;
        if req.enable_ipv6 && !matches!(driver, DriverKind::Bridge | DriverKind::Macvlan) {
            return Err(CreateError::Ipv6Unsupported(driver.name()));
        }
        for label in &self.labels {
            let (k, v) = split_kv(label).ok_or_else(|| CreateError::BadLabel(label.clone()))?;
            req.labels.insert(k.to_owned(), v.to_owned());
        }
        Ok(req)
    }
}

/// A JSON string or array of strings (earlier clients sent `--subnet` and
/// friends as one optional string).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Null(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
        OneOrMany::Null(()) => Vec::new(),
    })
}

/// `--subnet`, `--gateway` and `--ip-range` values sorted by family (a
/// value with a ':' is IPv6), at most one per family and flag.
#[derive(Default)]
struct Families {
    subnet: Option<String>,
    gateway: Option<String>,
    ip_range: Option<String>,
    subnet6: Option<String>,
    gateway6: Option<String>,
    ip_range6: Option<String>,
}

impl Families {
    fn split(args: &CreateArgs) -> Result<Families, CreateError> {
        let mut f = Families::default();
        for (field, values) in [
            ("subnet", &args.subnet),
            ("gateway", &args.gateway),
            ("ip-range", &args.ip_range),
        ] {
            for v in values {
                let v6 = v.contains(':');
                let slot = match (field, v6) {
                    ("subnet", false) => &mut f.subnet,
                    ("subnet", true) => &mut f.subnet6,
                    ("gateway", false) => &mut f.gateway,
                    ("gateway", true) => &mut f.gateway6,
                    (_, false) => &mut f.ip_range,
                    (_, true) => &mut f.ip_range6,
                };
                if let Some(first) = slot.replace(v.clone()) {
                    return Err(CreateError::Repeated {
                        field,
                        family: if v6 { "IPv6" } else { "IPv4" },
                        first,
                        second: v.clone(),
                    });
                }
            }
        }
        Ok(f)
    }

    fn first_v4(&self) -> Option<(&'static str, String)> {
        [
            ("subnet", &self.subnet),
            ("gateway", &self.gateway),
            ("ip-range", &self.ip_range),
        ]
        .into_iter()
        .find_map(|(k, v)| v.clone().map(|v| (k, v)))
    }

    fn first_v6(&self) -> Option<(&'static str, String)> {
        [
            ("subnet", &self.subnet6),
            ("gateway", &self.gateway6),
            ("ip-range", &self.ip_range6),
        ]
        .into_iter()
        .find_map(|(k, v)| v.clone().map(|v| (k, v)))
    }

    /// The IPv6 subnet, gateway and range, each checked; a gateway or
    /// range needs the subnet.
    #[allow(clippy::type_complexity)]
    fn parse_v6(
        &self,
    ) -> Result<(Option<Ipv6Net>, Option<Ipv6Addr>, Option<Ipv6Net>), CreateError> {
        let Some(subnet) = self.subnet6.as_deref().map(v6::parse_subnet6).transpose()? else {
            return match self.gateway6.iter().chain(&self.ip_range6).next() {
                Some(value) => Err(CreateError::NeedsSubnet6 {
                    field: if self.gateway6.is_some() {
                        "gateway"
                    } else {
                        "ip-range"
                    },
                    value: value.clone(),
                }),
                None => Ok((None, None, None)),
            };
        };
        let gateway = self
            .gateway6
            .as_deref()
            .map(|g| v6::parse_addr6("gateway", g))
            .transpose()?;
        if let Some(g) = gateway {
            v6::check_gateway6(&subnet, g)?;
        }
        let range = self
            .ip_range6
            .as_deref()
            .map(|r| v6::parse_range6(&subnet, r))
            .transpose()?;
        Ok((Some(subnet), gateway, range))
    }
}
