//! The network model in Docker's terms: drivers, networks and endpoints as
//! they are persisted, and the typed form of a `network create` request,
//! parsed once from the user's strings (Docker's option names included).

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{
    ipam::{self, IpamError},
    names::MacAddr,
};

/// Docker's predefined networks, which exist from the start and cannot be
/// removed.
pub const PREDEFINED: [&str; 3] = ["bridge", "host", "none"];

/// Bridge device of the default `bridge` network. Not Docker's `docker0`, so
/// the dataplane can be installed beside a Docker that still owns that name.
pub const DEFAULT_BRIDGE: &str = "dp0";

pub const DEFAULT_MTU: u32 = 1500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    Bridge,
    Macvlan,
    Host,
    /// Docker's `null` driver (the `none` network): loopback only.
    Null,
}

impl DriverKind {
    pub const fn name(self) -> &'static str {
        match self {
            DriverKind::Bridge => "bridge",
            DriverKind::Macvlan => "macvlan",
            DriverKind::Host => "host",
            DriverKind::Null => "null",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    Bridge,
    Private,
    Vepa,
    Passthru,
}

impl MacvlanMode {
    pub const fn name(self) -> &'static str {
        match self {
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Passthru => "passthru",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacvlanConfig {
    /// Parent link in the host namespace.
    pub parent: String,
    pub mode: MacvlanMode,
}

/// What one driver needs to know about its network: the only place a
/// network's driver-specific settings live, so a bridge network cannot
/// carry a macvlan parent nor a `host` network a bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverConfig {
    Bridge(BridgeConfig),
    Macvlan(MacvlanConfig),
    Host,
    /// Docker's `null` driver (the `none` network): loopback only.
    Null,
}

impl DriverConfig {
    pub const fn kind(&self) -> DriverKind {
        match self {
            DriverConfig::Bridge(_) => DriverKind::Bridge,
            DriverConfig::Macvlan(_) => DriverKind::Macvlan,
            DriverConfig::Host => DriverKind::Host,
            DriverConfig::Null => DriverKind::Null,
        }
    }

    pub const fn name(&self) -> &'static str {
        self.kind().name()
    }
}

/// How a bridge network's gateway treats traffic between its subnet and
/// the outside (Docker's `com.docker.network.bridge.gateway_mode_ipv4`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayMode {
    /// Masquerade leaving; from outside only published ports (direct
    /// access to the subnet is dropped).
    #[default]
    Nat,
    /// Masquerade leaving; anything routed to the subnet gets in.
    NatUnprotected,
    /// No masquerade; from outside ICMP and published container ports.
    Routed,
    /// Internal, and no address of the host's on the bridge.
    Isolated,
}

impl GatewayMode {
    pub const fn name(self) -> &'static str {
        match self {
            GatewayMode::Nat => "nat",
            GatewayMode::NatUnprotected => "nat-unprotected",
            GatewayMode::Routed => "routed",
            GatewayMode::Isolated => "isolated",
        }
    }

    fn parse(value: &str) -> Result<GatewayMode, CreateError> {
        Ok(match value {
            "nat" => GatewayMode::Nat,
            "nat-unprotected" => GatewayMode::NatUnprotected,
            "routed" => GatewayMode::Routed,
            "isolated" => GatewayMode::Isolated,
            other => return Err(CreateError::BadGatewayMode(other.to_owned())),
        })
    }

    fn is_nat(&self) -> bool {
        *self == GatewayMode::Nat
    }
}

/// A bridge network's settings (Docker's `com.docker.network.bridge.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Bridge device.
    pub name: String,
    pub icc: bool,
    pub masquerade: bool,
    /// Default host address for published ports (Docker's
    /// `host_binding_ipv4`); None means every address.
    pub host_binding_ipv4: Option<Ipv4Addr>,
    pub gateway_mode: GatewayMode,
    /// Interfaces whose traffic skips the gateway mode's direct-access
    /// checks (`trusted_host_interfaces`, e.g. a VPN device).
    pub trusted_host_interfaces: Vec<String>,
}

/// A network as persisted (the desired state). On disk it keeps the flat
/// shape of earlier versions (`NetworkRecord`), so state files written
/// before and after [`DriverConfig`] read both ways.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "NetworkRecord", into = "NetworkRecord")]
pub struct Network {
    pub id: String,
    pub name: String,
    pub driver: DriverConfig,
    /// RFC 3339.
    pub created: String,
    /// None for `host` and `none`.
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    pub mtu: u32,
    pub labels: BTreeMap<String, String>,
}

impl Network {
    pub fn is_predefined(&self) -> bool {
        PREDEFINED.contains(&self.name.as_str())
    }

    /// The range addresses are allocated from.
    pub fn alloc_range(&self) -> Option<Ipv4Net> {
        self.ip_range.or(self.subnet)
    }
}

/// A [`Network`] as state.json holds it: the driver's kind, and the
/// settings of every driver side by side (those of other drivers empty).
#[derive(Serialize, Deserialize)]
struct NetworkRecord {
    id: String,
    name: String,
    driver: DriverKind,
    created: String,
    subnet: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
    ip_range: Option<Ipv4Net>,
    internal: bool,
    mtu: u32,
    bridge: Option<String>,
    icc: bool,
    masquerade: bool,
    host_binding_ipv4: Option<Ipv4Addr>,
    macvlan: Option<MacvlanConfig>,
    labels: BTreeMap<String, String>,
    /// Absent (files of earlier versions, and `nat`, the default): `nat`.
    #[serde(default, skip_serializing_if = "GatewayMode::is_nat")]
    gateway_mode: GatewayMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    trusted_host_interfaces: Vec<String>,
}

/// A persisted network whose driver lacks its settings.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("network {network}: driver {driver} without its field {field:?}")]
pub struct RecordError {
    network: String,
    driver: &'static str,
    field: &'static str,
}

impl TryFrom<NetworkRecord> for Network {
    type Error = RecordError;

    fn try_from(r: NetworkRecord) -> Result<Network, RecordError> {
        let missing = |field| RecordError {
            network: r.name.clone(),
            driver: r.driver.name(),
            field,
        };
        let driver = match r.driver {
            DriverKind::Bridge => DriverConfig::Bridge(BridgeConfig {
                name: r.bridge.clone().ok_or_else(|| missing("bridge"))?,
                icc: r.icc,
                masquerade: r.masquerade,
                host_binding_ipv4: r.host_binding_ipv4,
                gateway_mode: r.gateway_mode,
                trusted_host_interfaces: r.trusted_host_interfaces.clone(),
            }),
            DriverKind::Macvlan => {
                DriverConfig::Macvlan(r.macvlan.clone().ok_or_else(|| missing("macvlan"))?)
            }
            DriverKind::Host => DriverConfig::Host,
            DriverKind::Null => DriverConfig::Null,
        };
        Ok(Network {
            id: r.id,
            name: r.name,
            driver,
            created: r.created,
            subnet: r.subnet,
            gateway: r.gateway,
            ip_range: r.ip_range,
            internal: r.internal,
            mtu: r.mtu,
            labels: r.labels,
        })
    }
}

impl From<Network> for NetworkRecord {
    fn from(n: Network) -> NetworkRecord {
        let kind = n.driver.kind();
        // Other drivers' fields as earlier versions wrote them for
        // networks of this driver.
        let mut gateway_mode = GatewayMode::Nat;
        let mut trusted_host_interfaces = Vec::new();
        let (bridge, icc, masquerade, host_binding_ipv4, macvlan) = match n.driver {
            DriverConfig::Bridge(b) => {
                gateway_mode = b.gateway_mode;
                trusted_host_interfaces = b.trusted_host_interfaces;
                (Some(b.name), b.icc, b.masquerade, b.host_binding_ipv4, None)
            }
            DriverConfig::Macvlan(m) => (None, true, true, None, Some(m)),
            DriverConfig::Host | DriverConfig::Null => (None, true, false, None, None),
        };
        NetworkRecord {
            id: n.id,
            name: n.name,
            driver: kind,
            created: n.created,
            subnet: n.subnet,
            gateway: n.gateway,
            ip_range: n.ip_range,
            internal: n.internal,
            mtu: n.mtu,
            bridge,
            icc,
            masquerade,
            host_binding_ipv4,
            macvlan,
            labels: n.labels,
            gateway_mode,
            trusted_host_interfaces,
        }
    }
}

/// How an endpoint joins its network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Attachment {
    /// veth pair, host end on the network's bridge.
    Veth { host_ifname: String },
    /// macvlan child of the network's parent link.
    Macvlan,
    /// `none`: only loopback in the namespace.
    Loopback,
    /// `host`: the namespace is the host's; nothing is created.
    Host,
    /// `container:<endpoint>`: shares that endpoint's namespace; nothing is
    /// created.
    Container { endpoint: String },
}

/// An endpoint as persisted: one namespace on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub name: String,
    pub network: String,
    /// The "container": a network namespace path.
    pub netns: PathBuf,
    pub attachment: Attachment,
    /// Interface inside the namespace (eth0, eth1, ...).
    pub ifname: Option<String>,
    pub mac: Option<MacAddr>,
    pub ipv4: Option<Ipv4Addr>,
    /// Published ports (bridge endpoints only).
    #[serde(default)]
    pub published: Vec<super::ports::PortMapping>,
    /// More names the network's DNS answers with this endpoint's address
    /// (Docker's `--network-alias`; checked by `names_dns::dns_name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// Input errors of `network create`, each naming the field and the value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(
        "network name {0:?}: must start with a letter or digit and contain only [a-zA-Z0-9_.-]"
    )]
    BadName(String),
    #[error("--driver {0}: unknown (bridge or macvlan)")]
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
    #[error("--label {0:?}: expected KEY=VALUE")]
    BadLabel(String),
}

/// `network create` as the user typed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateArgs {
    pub name: String,
    pub driver: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
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

/// See [`super::names::ifname`].
pub fn valid_ifname(name: &str) -> bool {
    super::names::ifname(name).is_ok()
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
                    known: if d == DriverKind::Macvlan {
                        MACVLAN_OPTS
                    } else {
                        BRIDGE_OPTS
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
            other => return Err(CreateError::BadDriver(other.to_owned())),
        };
        let subnet = self.subnet.as_deref().map(ipam::parse_subnet).transpose()?;
        let gateway = self
            .gateway
            .as_deref()
            .map(|g| ipam::parse_addr("gateway", g))
            .transpose()?;
        if (gateway.is_some() || self.ip_range.is_some()) && subnet.is_none() {
            return Err(CreateError::NeedsSubnet);
        }
        let ip_range = match (&subnet, &self.ip_range) {
            (Some(s), Some(r)) => Some(ipam::parse_range(s, r)?),
            _ => None,
        };
        if let (Some(s), Some(g)) = (&subnet, gateway) {
            ipam::check_gateway(s, g)?;
        }
        let mut req = CreateRequest {
            name: self.name.clone(),
            driver,
            subnet,
            gateway,
            ip_range,
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
        for label in &self.labels {
            let (k, v) = split_kv(label).ok_or_else(|| CreateError::BadLabel(label.clone()))?;
            req.labels.insert(k.to_owned(), v.to_owned());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str) -> CreateArgs {
        CreateArgs {
            name: name.into(),
            driver: "bridge".into(),
            ..CreateArgs::default()
        }
    }

    #[test]
    fn docker_options_parse_into_typed_fields() {
        let mut a = args("net1");
        a.subnet = Some("10.5.0.0/16".into());
        a.gateway = Some("10.5.0.254".into());
        a.ip_range = Some("10.5.1.0/24".into());
        a.options = vec![
            "com.docker.network.bridge.name=brnet1".into(),
            "com.docker.network.bridge.enable_icc=false".into(),
            "com.docker.network.bridge.enable_ip_masquerade=false".into(),
            "com.docker.network.bridge.host_binding_ipv4=127.0.0.1".into(),
            "com.docker.network.driver.mtu=1400".into(),
        ];
        a.labels = vec!["team=net".into()];
        let r = a.parse().unwrap();
        assert_eq!(r.bridge_name.as_deref(), Some("brnet1"));
        assert!(!r.icc && !r.masquerade);
        assert_eq!(r.host_binding_ipv4, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(r.mtu, 1400);
        assert_eq!(r.gateway, Some(Ipv4Addr::new(10, 5, 0, 254)));
        assert_eq!(
            r.ip_range.map(|n| n.to_string()).as_deref(),
            Some("10.5.1.0/24")
        );
        assert_eq!(r.labels.get("team").map(String::as_str), Some("net"));
    }

    #[test]
    fn bad_input_names_field_and_value() {
        let cases: Vec<(CreateArgs, &str)> = vec![
            (
                {
                    let mut a = args("-bad");
                    a.driver = "bridge".into();
                    a
                },
                "network name \"-bad\"",
            ),
            (
                {
                    let mut a = args("n");
                    a.driver = "overlay2".into();
                    a
                },
                "--driver overlay2",
            ),
            (
                {
                    let mut a = args("n");
                    a.subnet = Some("10.0.0.0/40".into());
                    a
                },
                "--subnet 10.0.0.0/40",
            ),
            (
                {
                    let mut a = args("n");
                    a.subnet = Some("10.0.0.0/24".into());
                    a.gateway = Some("10.0.1.1".into());
                    a
                },
                "--gateway 10.0.1.1",
            ),
            (
                {
                    let mut a = args("n");
                    a.gateway = Some("10.0.1.1".into());
                    a
                },
                "need --subnet",
            ),
            (
                {
                    let mut a = args("n");
                    a.mtu = Some("9".into());
                    a
                },
                "--mtu 9",
            ),
            (
                {
                    let mut a = args("n");
                    a.options = vec!["com.docker.network.bridge.enable_icc=maybe".into()];
                    a
                },
                "enable_icc=maybe",
            ),
            (
                {
                    let mut a = args("n");
                    a.options = vec!["nokey".into()];
                    a
                },
                "-o \"nokey\"",
            ),
            (
                {
                    let mut a = args("n");
                    a.options = vec!["foo=bar".into()];
                    a
                },
                "-o foo: unknown option for the bridge driver",
            ),
            (
                {
                    let mut a = args("n");
                    a.options = vec!["com.docker.network.bridge.name=waytoolongbridgename".into()];
                    a
                },
                "waytoolongbridgename",
            ),
            (
                {
                    let mut a = args("n");
                    a.driver = "macvlan".into();
                    a
                },
                "-o parent=IFACE",
            ),
            (
                {
                    let mut a = args("n");
                    a.driver = "macvlan".into();
                    a.options = vec!["parent=eth0".into(), "macvlan_mode=weird".into()];
                    a
                },
                "macvlan_mode=weird",
            ),
            (
                {
                    let mut a = args("n");
                    a.labels = vec!["x".into()];
                    a
                },
                "--label \"x\"",
            ),
        ];
        for (a, needle) in cases {
            let err = a.parse().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
    }

    #[test]
    fn gateway_modes_and_trusted_interfaces_parse() {
        for (value, mode) in [
            ("nat", GatewayMode::Nat),
            ("nat-unprotected", GatewayMode::NatUnprotected),
            ("routed", GatewayMode::Routed),
            ("isolated", GatewayMode::Isolated),
        ] {
            let mut a = args("n");
            a.options = vec![format!(
                "com.docker.network.bridge.gateway_mode_ipv4={value}"
            )];
            let r = a.parse().unwrap();
            assert_eq!(r.gateway_mode, mode);
            assert_eq!(mode.name(), value);
            // Isolated is internal; the others keep what --internal said.
            assert_eq!(r.internal, mode == GatewayMode::Isolated, "{value}");
        }
        assert_eq!(args("n").parse().unwrap().gateway_mode, GatewayMode::Nat);
        let mut a = args("n");
        a.options = vec!["com.docker.network.bridge.trusted_host_interfaces=wg0::tun1".into()];
        assert_eq!(a.parse().unwrap().trusted_host_interfaces, ["wg0", "tun1"]);
        for (opt, needle) in [
            (
                "com.docker.network.bridge.gateway_mode_ipv4=nat6",
                "gateway_mode_ipv4=nat6: expected nat, nat-unprotected, routed or isolated",
            ),
            (
                "com.docker.network.bridge.trusted_host_interfaces=wg0:a/b",
                "trusted_host_interfaces=a/b",
            ),
        ] {
            let mut a = args("n");
            a.options = vec![opt.into()];
            let err = a.parse().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
        let mut a = args("m");
        a.driver = "macvlan".into();
        a.options = vec![
            "parent=eth0".into(),
            "com.docker.network.bridge.gateway_mode_ipv4=routed".into(),
        ];
        assert!(matches!(a.parse(), Err(CreateError::UnknownOption { .. })));
    }

    #[test]
    fn a_gateway_mode_is_persisted_and_absent_means_nat() {
        let mut nets: BTreeMap<String, Network> = serde_json::from_str(OLD_STATE_NETWORKS).unwrap();
        let DriverConfig::Bridge(b) = &mut nets.get_mut("bridge").unwrap().driver else {
            panic!("bridge");
        };
        assert_eq!(b.gateway_mode, GatewayMode::Nat);
        assert!(b.trusted_host_interfaces.is_empty());
        b.gateway_mode = GatewayMode::NatUnprotected;
        b.trusted_host_interfaces = vec!["wg0".into(), "tun1".into()];
        let json = serde_json::to_value(&nets).unwrap();
        assert_eq!(json["bridge"]["gateway_mode"], "nat-unprotected");
        assert_eq!(
            json["bridge"]["trusted_host_interfaces"],
            serde_json::json!(["wg0", "tun1"])
        );
        let back: BTreeMap<String, Network> = serde_json::from_value(json).unwrap();
        assert_eq!(back, nets);
    }

    #[test]
    fn macvlan_defaults_to_bridge_mode() {
        let mut a = args("mv");
        a.driver = "macvlan".into();
        a.options = vec!["parent=eth0".into()];
        let r = a.parse().unwrap();
        assert_eq!(
            r.macvlan,
            Some(MacvlanConfig {
                parent: "eth0".into(),
                mode: MacvlanMode::Bridge
            })
        );
    }

    /// state.json as versions before [`DriverConfig`] wrote it: every
    /// driver's fields side by side.
    const OLD_STATE_NETWORKS: &str = r#"{
        "bridge": {"id": "b1", "name": "bridge", "driver": "bridge",
            "created": "2024-01-01T00:00:00Z", "subnet": "172.17.0.0/16",
            "gateway": "172.17.0.1", "ip_range": null, "internal": false, "mtu": 1500,
            "bridge": "dp0", "icc": false, "masquerade": true,
            "host_binding_ipv4": "127.0.0.1", "macvlan": null, "labels": {"a": "b"}},
        "mv": {"id": "m1", "name": "mv", "driver": "macvlan",
            "created": "2024-01-01T00:00:00Z", "subnet": "10.9.0.0/24",
            "gateway": "10.9.0.1", "ip_range": "10.9.0.128/25", "internal": false,
            "mtu": 1400, "bridge": null, "icc": true, "masquerade": true,
            "host_binding_ipv4": null, "macvlan": {"parent": "eth0", "mode": "vepa"},
            "labels": {}},
        "host": {"id": "h1", "name": "host", "driver": "host",
            "created": "2024-01-01T00:00:00Z", "subnet": null, "gateway": null,
            "ip_range": null, "internal": false, "mtu": 1500, "bridge": null,
            "icc": true, "masquerade": false, "host_binding_ipv4": null,
            "macvlan": null, "labels": {}},
        "none": {"id": "n1", "name": "none", "driver": "null",
            "created": "2024-01-01T00:00:00Z", "subnet": null, "gateway": null,
            "ip_range": null, "internal": false, "mtu": 1500, "bridge": null,
            "icc": true, "masquerade": false, "host_binding_ipv4": null,
            "macvlan": null, "labels": {}}
    }"#;

    #[test]
    fn networks_of_old_state_files_load_and_are_written_back_alike() {
        let nets: BTreeMap<String, Network> = serde_json::from_str(OLD_STATE_NETWORKS).unwrap();
        assert_eq!(
            nets["bridge"].driver,
            DriverConfig::Bridge(BridgeConfig {
                name: "dp0".into(),
                icc: false,
                masquerade: true,
                host_binding_ipv4: Some(Ipv4Addr::LOCALHOST),
                gateway_mode: GatewayMode::Nat,
                trusted_host_interfaces: Vec::new(),
            })
        );
        assert_eq!(
            nets["bridge"].labels.get("a").map(String::as_str),
            Some("b")
        );
        assert_eq!(
            nets["mv"].driver,
            DriverConfig::Macvlan(MacvlanConfig {
                parent: "eth0".into(),
                mode: MacvlanMode::Vepa
            })
        );
        assert_eq!(nets["mv"].mtu, 1400);
        assert_eq!(nets["host"].driver, DriverConfig::Host);
        assert_eq!(nets["none"].driver, DriverConfig::Null);
        // Written back, the file has the old shape, field for field: an
        // older agent still reads it.
        let old: serde_json::Value = serde_json::from_str(OLD_STATE_NETWORKS).unwrap();
        assert_eq!(serde_json::to_value(&nets).unwrap(), old);
    }

    #[test]
    fn a_record_without_its_drivers_settings_is_refused_by_name() {
        let json = OLD_STATE_NETWORKS.replace(r#""bridge": "dp0""#, r#""bridge": null"#);
        let err = serde_json::from_str::<BTreeMap<String, Network>>(&json)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("network bridge: driver bridge without its field \"bridge\""),
            "{err}"
        );
    }
}
