//! The network model in Docker's terms: drivers, networks and endpoints as
//! they are persisted, and the typed form of a `network create` request,
//! parsed once from the user's strings (Docker's option names included).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::names::MacAddr;

mod create;

pub use create::{valid_ifname, valid_name, CreateArgs, CreateError, CreateRequest};

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
    /// A network across hosts through the cluster store (docs/overlay.md).
    Overlay,
}

impl DriverKind {
    pub const fn name(self) -> &'static str {
        match self {
            DriverKind::Bridge => "bridge",
            DriverKind::Macvlan => "macvlan",
            DriverKind::Host => "host",
            DriverKind::Null => "null",
            DriverKind::Overlay => "overlay",
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
    Overlay(OverlayConfig),
}

/// An overlay network's devices on this host: a bridge with the
/// endpoints' veths and a VXLAN device as its port to the other hosts.
/// The VNI is the cluster's; the VTEP address and port are this host's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayConfig {
    pub bridge: String,
    pub vxlan: String,
    pub vni: u32,
    /// This host's VTEP (its `cluster_advertise` address).
    pub vtep: Ipv4Addr,
    /// UDP destination port of the VXLAN device.
    pub port: u16,
}

impl DriverConfig {
    pub const fn kind(&self) -> DriverKind {
        match self {
            DriverConfig::Bridge(_) => DriverKind::Bridge,
            DriverConfig::Macvlan(_) => DriverKind::Macvlan,
            DriverConfig::Host => DriverKind::Host,
            DriverConfig::Null => DriverKind::Null,
            DriverConfig::Overlay(_) => DriverKind::Overlay,
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
    /// The IPv6 side (`--ipv6`): None unless `enable_ipv6`.
    pub subnet6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    pub ip_range6: Option<Ipv6Net>,
    pub enable_ipv6: bool,
    /// False for an IPv6-only network (`--ipv4=false`): no IPv4 subnet,
    /// gateway nor endpoint addresses.
    pub enable_ipv4: bool,
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

    /// The range IPv6 addresses are allocated from.
    pub fn alloc_range6(&self) -> Option<Ipv6Net> {
        self.ip_range6.or(self.subnet6)
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
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
    // Absent in files of earlier versions (and written only when set, so
    // an IPv4-only network's record stays as they read it): IPv4 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subnet6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip_range6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "is_false")]
    enable_ipv6: bool,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    enable_ipv4: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    overlay: Option<OverlayConfig>,
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
            DriverKind::Overlay => {
                DriverConfig::Overlay(r.overlay.clone().ok_or_else(|| missing("overlay"))?)
            }
        };
        Ok(Network {
            id: r.id,
            name: r.name,
            driver,
            created: r.created,
            subnet: r.subnet,
            gateway: r.gateway,
            ip_range: r.ip_range,
            subnet6: r.subnet6,
            gateway6: r.gateway6,
            ip_range6: r.ip_range6,
            enable_ipv6: r.enable_ipv6,
            enable_ipv4: r.enable_ipv4,
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
        let mut overlay = None;
        let (bridge, icc, masquerade, host_binding_ipv4, macvlan) = match n.driver {
            DriverConfig::Bridge(b) => {
                gateway_mode = b.gateway_mode;
                trusted_host_interfaces = b.trusted_host_interfaces;
                (Some(b.name), b.icc, b.masquerade, b.host_binding_ipv4, None)
            }
            DriverConfig::Macvlan(m) => (None, true, true, None, Some(m)),
            DriverConfig::Host | DriverConfig::Null => (None, true, false, None, None),
            DriverConfig::Overlay(o) => {
                overlay = Some(o);
                (None, true, false, None, None)
            }
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
            subnet6: n.subnet6,
            gateway6: n.gateway6,
            ip_range6: n.ip_range6,
            enable_ipv6: n.enable_ipv6,
            enable_ipv4: n.enable_ipv4,
            overlay,
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
    /// Absent in files of earlier versions: no IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Published ports (bridge endpoints only).
    #[serde(default)]
    pub published: Vec<super::ports::PortMapping>,
    /// More names the network's DNS answers with this endpoint's address
    /// (Docker's `--network-alias`; checked by `names_dns::dns_name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
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
        a.subnet = vec!["10.5.0.0/16".into()];
        a.gateway = vec!["10.5.0.254".into()];
        a.ip_range = vec!["10.5.1.0/24".into()];
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
                    a.subnet = vec!["10.0.0.0/40".into()];
                    a
                },
                "--subnet 10.0.0.0/40",
            ),
            (
                {
                    let mut a = args("n");
                    a.subnet = vec!["10.0.0.0/24".into()];
                    a.gateway = vec!["10.0.1.1".into()];
                    a
                },
                "--gateway 10.0.1.1",
            ),
            (
                {
                    let mut a = args("n");
                    a.gateway = vec!["10.0.1.1".into()];
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
