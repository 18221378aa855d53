//! A CNI request parsed once: the `CNI_*` environment ([`Env`]) and the
//! network configuration on stdin ([`NetConf`]). Every error carries the
//! spec's code (given in one place, `From<Refusal> for CniError`) and names
//! the variable or field and its value.
//!
//! Configuration fields (see docs/cni.md): the spec's `cniVersion`, `name`,
//! `type`, `args` (ignored), `ipMasq`, `ipam`, `dns`, `capabilities`,
//! `runtimeConfig`, `prevResult`, 1.1's `cni.dev/valid-attachments` and
//! `cni.dev/attachments`; ours: `network` (the dataplane network, default
//! `name`), `socket` (the agent's, default /run/dataplane/dataplane.sock),
//! `bridge`, `mtu` and `gatewayMode` (used when the network is created). `ipam` is ours:
//! `{}` or `{"type": "dataplane"}`, with `subnet`, `gateway` and `ipRange`
//! for a network the plugin creates, or host-local's `ranges` (one set per
//! address family, one range each: `[[{"subnet": V4}], [{"subnet": V6}]]`)
//! for a dual-stack or IPv6-only one. Any other field is refused (code 2),
//! so a typo is never silently ignored.
//!
//! The JSON is read by serde into `RawConf`, whose fields keep what was
//! sent when it is not of the field's type (`Field`) and whose unknown
//! keys are collected, so that the checks that follow can refuse with the
//! spec's code and quote the value.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use serde::{
    de::{DeserializeOwned, IgnoredAny},
    Deserialize, Deserializer,
};
use serde_json::{Map, Value};

pub use super::env::{parse_env, Command, Env};
use super::{code, AttachmentKey, CniError, NetworkSpec, IPAM_TYPES, SUPPORTED_VERSIONS};
use crate::control::model::{valid_ifname, valid_name};

/// A request refused, by the spec's class of error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    #[error("{msg}")]
    Decoding { msg: &'static str, details: String },
    #[error("{0}")]
    Version(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Env(String),
}

impl From<Refusal> for CniError {
    /// The spec's code of each class of refusal.
    fn from(r: Refusal) -> CniError {
        let code = match &r {
            Refusal::Decoding { .. } => code::DECODING_FAILURE,
            Refusal::Version(_) => code::INCOMPATIBLE_VERSION,
            Refusal::Unsupported(_) => code::UNSUPPORTED_FIELD,
            Refusal::Invalid(_) => code::INVALID_CONFIG,
            Refusal::Env(_) => code::INVALID_ENV,
        };
        let error = CniError::new(code, r.to_string());
        match r {
            Refusal::Decoding { details, .. } => error.with_details(details),
            _ => error,
        }
    }
}

/// `runtimeConfig.portMappings` entry (the `portMappings` capability).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMap {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

impl PortMap {
    /// As a `-p` value (`[HOSTIP:]HOSTPORT:CPORT/proto`), checked.
    pub fn spec(&self) -> Result<String, CniError> {
        Ok(self.checked()?)
    }

    fn checked(&self) -> Result<String, Refusal> {
        let unsupported = Refusal::Unsupported;
        let proto = match self.protocol.as_deref().map(str::to_ascii_lowercase) {
            None => "tcp".to_owned(),
            Some(p) if p == "tcp" || p == "udp" => p,
            Some(p) if p.is_empty() => "tcp".to_owned(),
            Some(p) => {
                return Err(unsupported(format!(
                    "runtimeConfig.portMappings protocol {p:?}: only tcp and udp are published"
                )))
            }
        };
        if self.host_port == 0 || self.container_port == 0 {
            return Err(Refusal::Invalid(format!(
                "runtimeConfig.portMappings {}:{}: ports must be 1-65535",
                self.host_port, self.container_port
            )));
        }
        let host = match self.host_ip.as_deref().filter(|h| !h.is_empty()) {
            None => String::new(),
            Some(h) => match h.parse::<IpAddr>() {
                // 0.0.0.0 is every address, as an empty hostIP.
                Ok(IpAddr::V4(a)) if a.is_unspecified() => String::new(),
                Ok(IpAddr::V4(a)) => format!("{a}:"),
                // :: is every IPv6 address; the agent refuses an IPv6
                // host address on a network without IPv6.
                Ok(IpAddr::V6(a)) => format!("[{a}]:"),
                Err(_) => {
                    return Err(Refusal::Invalid(format!(
                        "runtimeConfig.portMappings hostIP {h:?}: not an IP address"
                    )))
                }
            },
        };
        Ok(format!(
            "{host}{}:{}/{proto}",
            self.host_port, self.container_port
        ))
    }
}

/// The network configuration, typed.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    /// The dataplane network to join.
    pub network: String,
    pub socket: PathBuf,
    /// How to create the network when it does not exist (None: refuse).
    pub create: Option<NetworkSpec>,
    /// `runtimeConfig.ips` (capability `ips`): a static address.
    pub ip: Option<Ipv4Addr>,
    /// `runtimeConfig.ips`' IPv6 address.
    pub ip6: Option<Ipv6Addr>,
    /// `runtimeConfig.mac` (capability `mac`).
    pub mac: Option<String>,
    /// `-p` values from `runtimeConfig.portMappings`.
    pub publish: Vec<String>,
    /// `dns`, copied into the result.
    pub dns: Option<Value>,
    /// `runtimeConfig.aliases` for this configuration's network (the
    /// `name`, as the runtime knows it): the container's DNS names.
    pub aliases: Vec<String>,
    /// `prevResult`, kept whole (other plugins' fields pass through).
    pub prev_result: Option<Value>,
    /// GC: `cni.dev/valid-attachments`.
    pub valid_attachments: Option<Vec<AttachmentKey>>,
    /// `ipam` refused as `network create` would refuse it. Kept, not
    /// returned by [`NetConf::parse`]: DEL and GC of an attachment made
    /// before a check existed must still clean up (CNI: DEL completes
    /// even when the configuration no longer could be added).
    pub ipam_error: Option<CniError>,
}

/// A field as sent: the typed value, or the JSON it held when that was not
/// of the field's type (the refusal quotes it).
#[derive(Clone, Debug)]
enum Field<T> {
    Ok(T),
    Wrong { value: Value, error: String },
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Field<T>, D::Error> {
        let value = Value::deserialize(d)?;
        Ok(match serde_json::from_value(value.clone()) {
            Ok(t) => Field::Ok(t),
            Err(e) => Field::Wrong {
                value,
                error: e.to_string(),
            },
        })
    }
}

impl<T> Field<T> {
    /// The value, or the refusal `PATH VALUE: EXPECTED`.
    fn or_refuse(self, path: &str, expected: &str) -> Result<T, Refusal> {
        match self {
            Field::Ok(t) => Ok(t),
            Field::Wrong { value, .. } => {
                Err(Refusal::Invalid(format!("{path} {value}: {expected}")))
            }
        }
    }

    /// The value, or the refusal `PATH: SERDE'S ERROR` (for lists, where
    /// serde names the element and field).
    fn or_refuse_with_error(self, path: &str) -> Result<T, Refusal> {
        match self {
            Field::Ok(t) => Ok(t),
            Field::Wrong { error, .. } => Err(Refusal::Invalid(format!("{path}: {error}"))),
        }
    }
}

/// A string field that may be absent or null.
fn opt_str(field: Option<Field<String>>, path: &str) -> Result<Option<String>, Refusal> {
    field
        .map(|f| f.or_refuse(path, "expected a string"))
        .transpose()
}

/// For fields where a null is refused rather than taken as absent.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The configuration as sent. Absent and null fields are `None` unless
/// said otherwise.
#[derive(Deserialize)]
struct RawConf {
    #[serde(rename = "cniVersion", default)]
    cni_version: Option<Field<String>>,
    #[serde(default)]
    name: Option<Field<String>>,
    #[serde(rename = "type", default)]
    plugin_type: Option<Field<String>>,
    /// The spec's; nothing in it is ours.
    #[serde(rename = "args", default)]
    _args: Option<IgnoredAny>,
    #[serde(rename = "ipMasq", default)]
    ip_masq: Option<Field<bool>>,
    #[serde(default)]
    ipam: Option<Field<RawIpam>>,
    #[serde(default)]
    dns: Option<Field<Map<String, Value>>>,
    /// A null is refused.
    #[serde(default, deserialize_with = "present")]
    capabilities: Option<Field<Map<String, Value>>>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: Option<Field<RawRuntimeConfig>>,
    #[serde(rename = "prevResult", default)]
    prev_result: Option<Field<Map<String, Value>>>,
    /// A null is refused.
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        deserialize_with = "present"
    )]
    valid_attachments: Option<Field<Vec<ValidAttachment>>>,
    /// 1.1's GC input for plugins that track attachments by it; we use
    /// `cni.dev/valid-attachments`.
    #[serde(rename = "cni.dev/attachments", default)]
    _attachments: Option<IgnoredAny>,
    #[serde(default)]
    network: Option<Field<String>>,
    #[serde(default)]
    socket: Option<Field<String>>,
    #[serde(default)]
    bridge: Option<Field<String>>,
    #[serde(default)]
    mtu: Option<Field<u32>>,
    #[serde(rename = "gatewayMode", default)]
    gateway_mode: Option<Field<String>>,
    /// Every other key: refused.
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

/// The keys [`RawConf`] knows, for the refusal of the others.
const TOP_FIELDS: [&str; 17] = [
    "cniVersion",
    "name",
    "type",
    "args",
    "ipMasq",
    "ipam",
    "dns",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
    "network",
    "socket",
    "bridge",
    "mtu",
    "gatewayMode",
];

#[derive(Deserialize)]
struct RawIpam {
    #[serde(rename = "type", default)]
    ipam_type: Option<Field<String>>,
    #[serde(default)]
    subnet: Option<Field<String>>,
    #[serde(default)]
    gateway: Option<Field<String>>,
    #[serde(rename = "ipRange", default)]
    ip_range: Option<Field<String>>,
    #[serde(default)]
    ranges: Option<Field<Vec<Vec<RawRange>>>>,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

/// One range of host-local's `ipam.ranges`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    subnet: String,
    #[serde(default)]
    gateway: Option<String>,
}

const IPAM_FIELDS: [&str; 5] = ["type", "subnet", "gateway", "ipRange", "ranges"];
const CAPABILITIES: [&str; 4] = ["portMappings", "ips", "mac", "aliases"];

/// `runtimeConfig`: the capabilities the runtime fills in. Keys of
/// capabilities this plugin does not declare are not ours to judge (the
/// runtime only sends what the configuration asked for) and are ignored.
#[derive(Deserialize)]
struct RawRuntimeConfig {
    #[serde(rename = "portMappings", default)]
    port_mappings: Option<Field<Vec<PortMap>>>,
    #[serde(default)]
    ips: Option<Field<Vec<String>>>,
    #[serde(default)]
    mac: Option<Field<String>>,
    /// Capability `aliases` (podman): network name to the container's
    /// names on it.
    #[serde(default)]
    aliases: Option<Field<BTreeMap<String, Vec<String>>>>,
    /// Also makes anything but an object a wrong type.
    #[serde(flatten)]
    _other: BTreeMap<String, IgnoredAny>,
}

#[derive(Deserialize)]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// Refuses the first key (in order) that is not one of `known`.
fn check_known<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    known: &[&str],
    path: &str,
) -> Result<(), Refusal> {
    match keys.into_iter().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(Refusal::Unsupported(format!(
            "{path}{k}: unsupported field (known: {})",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// `ipam.subnet`, `gateway` and `ipRange` checked as `network create`
/// checks them, named as the configuration names them.
fn check_ipam(spec: &NetworkSpec) -> Result<(), Refusal> {
    use crate::control::ipam::{self, v6};
    let field = |f: &str, e: ipam::IpamError| Refusal::Invalid(format!("ipam.{f}: {e}"));
    if let Some(subnet) = &spec.subnet6 {
        let net = v6::parse_subnet6(subnet).map_err(|e| field("ranges", e))?;
        if let Some(g) = &spec.gateway6 {
            let gw = v6::parse_addr6("gateway", g).map_err(|e| field("ranges", e))?;
            v6::check_gateway6(&net, gw).map_err(|e| field("ranges", e))?;
        }
    }
    let Some(subnet) = &spec.subnet else {
        if spec.gateway.is_some() || spec.ip_range.is_some() {
            return Err(Refusal::Invalid(
                "ipam.gateway and ipam.ipRange need ipam.subnet".to_owned(),
            ));
        }
        return Ok(());
    };
    let net = ipam::parse_subnet(subnet).map_err(|e| field("subnet", e))?;
    if let Some(g) = &spec.gateway {
        let gw = ipam::parse_addr("gateway", g).map_err(|e| field("gateway", e))?;
        ipam::check_gateway(&net, gw).map_err(|e| field("gateway", e))?;
    }
    if let Some(r) = &spec.ip_range {
        ipam::parse_range(&net, r).map_err(|e| field("ipRange", e))?;
    }
    Ok(())
}

/// Numbers of a dotted version, for ordering ("0.10.0" > "0.4.0").
pub(super) fn version_tuple(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Whether `version` has `command` (CHECK from 0.4.0, GC/STATUS from 1.1.0).
pub fn version_has(version: &str, command: Command) -> bool {
    version_tuple(version) >= version_tuple(command.since())
}

/// Only the `cniVersion` of a configuration, for answers to a request that
/// fails before the rest is read (the error JSON should carry it).
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "cniVersion")]
        cni_version: String,
        /// Makes anything but an object fail.
        #[serde(flatten)]
        _rest: BTreeMap<String, IgnoredAny>,
    }
    let v: Peek = serde_json::from_slice(stdin).ok()?;
    SUPPORTED_VERSIONS
        .contains(&v.cni_version.as_str())
        .then_some(v.cni_version)
}

/// A name as `network create` takes it.
fn check_name(field: &str, name: &str) -> Result<(), Refusal> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Refusal::Invalid(format!(
            "{field} {name:?}: must start with a letter or digit and contain only [a-zA-Z0-9_.-]"
        )))
    }
}

impl NetConf {
    /// Parses stdin. Decoding failures are code 6, a missing or wrong-typed
    /// field 7, an unknown field 2, an unsupported version 1.
    pub fn parse(stdin: &[u8], default_socket: &str) -> Result<NetConf, CniError> {
        Ok(NetConf::parse_raw(stdin, default_socket)?)
    }

    fn parse_raw(stdin: &[u8], default_socket: &str) -> Result<NetConf, Refusal> {
        // A Value first: a duplicate key is the last one, as JSON readers
        // take it, and an array is not a configuration.
        let value: Value = serde_json::from_slice(stdin).map_err(|e| Refusal::Decoding {
            msg: "network configuration: not valid JSON",
            details: e.to_string(),
        })?;
        let not_object = || Refusal::Decoding {
            msg: "network configuration: expected a JSON object",
            details: String::new(),
        };
        if !value.is_object() {
            return Err(not_object());
        }
        // Every field takes any JSON (see Field), so this cannot fail on an
        // object.
        let raw: RawConf = serde_json::from_value(value).map_err(|_| not_object())?;
        NetConf::from_raw(raw, default_socket)
    }

    fn from_raw(mut raw: RawConf, default_socket: &str) -> Result<NetConf, Refusal> {
        let cni_version = opt_str(raw.cni_version.take(), "cniVersion")?
            .ok_or_else(|| Refusal::Invalid("cniVersion: missing".into()))?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(Refusal::Version(format!(
                "cniVersion {cni_version}: not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            )));
        }
        check_known(raw.unknown.keys(), &TOP_FIELDS, "")?;
        let name = opt_str(raw.name.take(), "name")?
            .ok_or_else(|| Refusal::Invalid("name: missing".into()))?;
        check_name("name", &name)?;
        let plugin_type = opt_str(raw.plugin_type.take(), "type")?
            .ok_or_else(|| Refusal::Invalid("type: missing".into()))?;
        let network = opt_str(raw.network.take(), "network")?.unwrap_or_else(|| name.clone());
        check_name("network", &network)?;
        let socket = PathBuf::from(
            opt_str(raw.socket.take(), "socket")?.unwrap_or_else(|| default_socket.to_owned()),
        );
        if !socket.is_absolute() {
            return Err(Refusal::Invalid(format!(
                "socket {}: expected an absolute path",
                socket.display()
            )));
        }
        let spec = network_spec(&mut raw)?;
        // Only a subnet can make a network; bridge/mtu/ipMasq alone only
        // describe one that must exist.
        let create = (spec.subnet.is_some() || spec.subnet6.is_some()).then_some(spec.clone());
        let ipam_error = check_ipam(&spec).err().map(CniError::from);
        if let Some(caps) = raw.capabilities.take() {
            let caps = caps.or_refuse("capabilities", "expected an object")?;
            check_known(caps.keys(), &CAPABILITIES, "capabilities.")?;
        }
        let mut conf = NetConf {
            cni_version,
            name,
            plugin_type,
            network,
            socket,
            create,
            ip: None,
            ip6: None,
            mac: None,
            publish: Vec::new(),
            dns: None,
            aliases: Vec::new(),
            prev_result: None,
            valid_attachments: None,
            ipam_error,
        };
        if let Some(rc) = raw.runtime_config.take() {
            conf.runtime_config(rc.or_refuse("runtimeConfig", "expected an object")?)?;
        }
        conf.dns = raw
            .dns
            .map(|d| d.or_refuse("dns", "expected an object").map(Value::Object))
            .transpose()?;
        conf.prev_result = raw
            .prev_result
            .map(|p| {
                p.or_refuse("prevResult", "expected an object")
                    .map(Value::Object)
            })
            .transpose()?;
        if let Some(v) = raw.valid_attachments {
            let list = v.or_refuse_with_error("cni.dev/valid-attachments")?;
            let keys = list.into_iter().map(|a| AttachmentKey {
                container_id: a.container_id,
                ifname: a.ifname,
            });
            conf.valid_attachments = Some(keys.collect());
        }
        Ok(conf)
    }

    /// `runtimeConfig`'s capabilities, checked.
    fn runtime_config(&mut self, rc: RawRuntimeConfig) -> Result<(), Refusal> {
        if let Some(pm) = rc.port_mappings {
            for m in &pm.or_refuse_with_error("runtimeConfig.portMappings")? {
                let spec = m.checked()?;
                // podman passes a mapping once per address family it binds;
                // one IPv4 mapping covers them all.
                if !self.publish.contains(&spec) {
                    self.publish.push(spec);
                }
            }
        }
        if let Some(ips) = rc.ips {
            for ip in &ips.or_refuse_with_error("runtimeConfig.ips")? {
                let addr = ip.split('/').next().unwrap_or_default();
                match addr.parse::<IpAddr>() {
                    Ok(IpAddr::V4(a)) if self.ip.is_none() => self.ip = Some(a),
                    Ok(IpAddr::V4(_)) => {
                        return Err(Refusal::Unsupported(format!(
                            "runtimeConfig.ips {ip}: one IPv4 address per attachment"
                        )))
                    }
                    Ok(IpAddr::V6(a)) if self.ip6.is_none() => self.ip6 = Some(a),
                    Ok(IpAddr::V6(_)) => {
                        return Err(Refusal::Unsupported(format!(
                            "runtimeConfig.ips {ip}: one IPv6 address per attachment"
                        )))
                    }
                    Err(_) => {
                        return Err(Refusal::Invalid(format!(
                            "runtimeConfig.ips {ip:?}: not an IP address"
                        )))
                    }
                }
            }
        }
        if let Some(mac) = rc.mac {
            let mac = mac.or_refuse("runtimeConfig.mac", "expected a string")?;
            crate::control::ipam::parse_mac(&mac)
                .map_err(|e| Refusal::Invalid(format!("runtimeConfig.mac: {e}")))?;
            self.mac = Some(mac);
        }
        if let Some(aliases) = rc.aliases {
            let mut by_net =
                aliases.or_refuse("runtimeConfig.aliases", "expected an object of arrays")?;
            self.aliases = by_net.remove(&self.name).unwrap_or_default();
        }
        Ok(())
    }
}

/// `ipam`, `bridge`, `mtu`, `ipMasq` and `gatewayMode`: the network as the plugin would
/// create it. The ipam values are checked later (see `ipam_error`).
fn network_spec(raw: &mut RawConf) -> Result<NetworkSpec, Refusal> {
    let mut spec = NetworkSpec::default();
    if let Some(ipam) = raw.ipam.take() {
        let ipam = ipam.or_refuse("ipam", "expected an object")?;
        check_known(ipam.unknown.keys(), &IPAM_FIELDS, "ipam.")?;
        if let Some(t) = opt_str(ipam.ipam_type, "ipam.type")? {
            if !IPAM_TYPES.contains(&t.as_str()) {
                return Err(Refusal::Unsupported(format!(
                    "ipam.type {t}: addresses come from the dataplane's own IPAM \
                     (use \"ipam\": {{}} or type {})",
                    IPAM_TYPES[0]
                )));
            }
        }
        spec.subnet = opt_str(ipam.subnet, "ipam.subnet")?;
        spec.gateway = opt_str(ipam.gateway, "ipam.gateway")?;
        spec.ip_range = opt_str(ipam.ip_range, "ipam.ipRange")?;
        if let Some(ranges) = ipam.ranges {
            let ranges = ranges.or_refuse_with_error("ipam.ranges")?;
            ranges_into(&mut spec, ranges)?;
        }
    }
    spec.bridge = opt_str(raw.bridge.take(), "bridge")?;
    if let Some(b) = &spec.bridge {
        if !valid_ifname(b) {
            return Err(Refusal::Invalid(format!(
                "bridge {b:?}: not a valid interface name (1-15 bytes)"
            )));
        }
    }
    let mtu_range = "expected a number from 68 to 65535";
    spec.mtu = match raw.mtu.take() {
        None => None,
        Some(m) => match m.or_refuse("mtu", mtu_range)? {
            m @ 68..=65535 => Some(m),
            m => return Err(Refusal::Invalid(format!("mtu {m}: {mtu_range}"))),
        },
    };
    spec.ip_masq = raw
        .ip_masq
        .take()
        .map(|b| b.or_refuse("ipMasq", "expected true or false"))
        .transpose()?;
    // Its values are the agent's to check, as `network create`'s.
    spec.gateway_mode = opt_str(raw.gateway_mode.take(), "gatewayMode")?;
    Ok(spec)
}

/// host-local's `ranges`: one set per family, each of one range (the
/// dataplane's IPAM has one subnet per family), into `spec`.
fn ranges_into(spec: &mut NetworkSpec, ranges: Vec<Vec<RawRange>>) -> Result<(), Refusal> {
    if spec.subnet.is_some() || spec.gateway.is_some() || spec.ip_range.is_some() {
        return Err(Refusal::Invalid(
            "ipam.ranges: give either ranges or subnet/gateway/ipRange, not both".to_owned(),
        ));
    }
    if ranges.is_empty() {
        return Err(Refusal::Invalid(
            "ipam.ranges: empty (one set of one range per address family)".to_owned(),
        ));
    }
    for (i, set) in ranges.into_iter().enumerate() {
        let [range] = set.as_slice() else {
            return Err(Refusal::Unsupported(format!(
                "ipam.ranges[{i}]: {} ranges; the dataplane takes one range per address family",
                set.len()
            )));
        };
        let v6 = range.subnet.contains(':');
        let (subnet, gateway) = match v6 {
            true => (&mut spec.subnet6, &mut spec.gateway6),
            false => (&mut spec.subnet, &mut spec.gateway),
        };
        if let Some(first) = subnet.replace(range.subnet.clone()) {
            return Err(Refusal::Invalid(format!(
                "ipam.ranges[{i}] {}: a second {} range (the first: {first})",
                range.subnet,
                if v6 { "IPv6" } else { "IPv4" }
            )));
        }
        *gateway = range.gateway.clone();
        spec.ipv6 |= v6;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> Result<NetConf, CniError> {
        NetConf::parse(json.as_bytes(), "/run/dataplane/dataplane.sock")
    }

    #[test]
    fn a_full_configuration_parses_into_typed_fields() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"dpnet","type":"dataplane-cni",
                "socket":"/run/x.sock","bridge":"br-dp","mtu":1400,"ipMasq":true,
                "ipam":{"type":"dataplane","subnet":"10.77.0.0/24","gateway":"10.77.0.254"},
                "dns":{"nameservers":["10.77.0.254"]},
                "capabilities":{"portMappings":true},
                "runtimeConfig":{"portMappings":[
                    {"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""},
                    {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
                    {"hostPort":8080,"containerPort":80,"hostIP":"0.0.0.0"},
                    {"hostPort":5353,"containerPort":53,"protocol":"UDP","hostIP":"192.0.2.1"}],
                    "ips":["10.77.0.9/24"],"mac":"02:42:0a:4d:00:09","somethingElse":1},
                "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"lo0"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.network, "dpnet");
        assert_eq!(c.socket, PathBuf::from("/run/x.sock"));
        let spec = c.create.unwrap();
        assert_eq!(spec.subnet.as_deref(), Some("10.77.0.0/24"));
        assert_eq!(spec.gateway.as_deref(), Some("10.77.0.254"));
        assert_eq!(
            (spec.bridge.as_deref(), spec.mtu, spec.ip_masq),
            (Some("br-dp"), Some(1400), Some(true))
        );
        assert_eq!(c.publish, vec!["8080:80/tcp", "192.0.2.1:5353:53/udp"]);
        assert_eq!(c.ip, Some(Ipv4Addr::new(10, 77, 0, 9)));
        assert_eq!(c.mac.as_deref(), Some("02:42:0a:4d:00:09"));
        assert!(c.prev_result.is_some() && c.dns.is_some());
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"gw","type":"dataplane-cni",
                "gatewayMode":"nat-unprotected","ipam":{"subnet":"10.78.0.0/24"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.create.unwrap().gateway_mode.as_deref(),
            Some("nat-unprotected")
        );
        let err =
            conf(r#"{"cniVersion":"1.0.0","name":"gw","type":"dataplane-cni","gatewayMode":7}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("gatewayMode"), "{err}");
        // The minimal form joins an existing network named like the config.
        let c = conf(r#"{"cniVersion":"0.4.0","name":"bridge","type":"dataplane-cni","ipam":{}}"#)
            .unwrap();
        assert_eq!((c.network.as_str(), c.create), ("bridge", None));
    }

    #[test]
    fn dual_stack_ranges_ips_and_ipv6_port_mappings_parse() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"ds","type":"dataplane-cni",
                "ipam":{"type":"dataplane","ranges":[[{"subnet":"10.79.0.0/24"}],
                    [{"subnet":"fd00:79::/64","gateway":"fd00:79::fe"}]]},
                "runtimeConfig":{"ips":["10.79.0.9/24","fd00:79::9/64"],
                    "portMappings":[{"hostPort":8080,"containerPort":80,"hostIP":"::1"},
                        {"hostPort":8080,"containerPort":80,"hostIP":"2001:db8::1","protocol":"udp"},
                        {"hostPort":8081,"containerPort":81,"hostIP":"::"}]}}"#,
        )
        .unwrap();
        assert!(c.ipam_error.is_none(), "{:?}", c.ipam_error);
        let spec = c.create.unwrap();
        assert_eq!(spec.subnet.as_deref(), Some("10.79.0.0/24"));
        assert_eq!(spec.subnet6.as_deref(), Some("fd00:79::/64"));
        assert_eq!(spec.gateway6.as_deref(), Some("fd00:79::fe"));
        assert!(spec.ipv6);
        assert_eq!(c.ip, Some(Ipv4Addr::new(10, 79, 0, 9)));
        assert_eq!(c.ip6, Some("fd00:79::9".parse().unwrap()));
        assert_eq!(
            c.publish,
            [
                "[::1]:8080:80/tcp",
                "[2001:db8::1]:8080:80/udp",
                "[::]:8081:81/tcp"
            ]
        );
        // IPv6 only: a network is created from the one IPv6 range.
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"v6","type":"dataplane-cni",
                "ipam":{"ranges":[[{"subnet":"fd00:80::/64"}]]}}"#,
        )
        .unwrap();
        let spec = c.create.unwrap();
        assert_eq!((spec.subnet, spec.ipv6), (None, true));
    }

    #[test]
    fn bad_configurations_get_the_spec_codes() {
        for (json, want, needle) in [
            ("{not json", code::DECODING_FAILURE, "not valid JSON"),
            ("[1,2]", code::DECODING_FAILURE, "expected a JSON object"),
            (
                r#"{"name":"n","type":"t"}"#,
                code::INVALID_CONFIG,
                "cniVersion: missing",
            ),
            (
                r#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#,
                code::INCOMPATIBLE_VERSION,
                "cniVersion 9.9.9",
            ),
            (
                r#"{"cniVersion":"1.0.0","type":"t"}"#,
                code::INVALID_CONFIG,
                "name: missing",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"-x","type":"t"}"#,
                code::INVALID_CONFIG,
                "name \"-x\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","subnett":"x"}"#,
                code::UNSUPPORTED_FIELD,
                "subnett: unsupported field",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"host-local"}}"#,
                code::UNSUPPORTED_FIELD,
                "ipam.type host-local",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"ranges":[]}}"#,
                code::INVALID_CONFIG,
                "ipam.ranges: empty",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"ranges":[[{"subnet":"fd00:1::/64"},{"subnet":"fd00:2::/64"}]]}}"#,
                code::UNSUPPORTED_FIELD,
                "ipam.ranges[0]: 2 ranges",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"ranges":[[{"subnet":"fd00:1::/64"}],[{"subnet":"fd00:2::/64"}]]}}"#,
                code::INVALID_CONFIG,
                "ipam.ranges[1] fd00:2::/64: a second IPv6 range",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"subnet":"10.0.0.0/24","ranges":[[{"subnet":"fd00:1::/64"}]]}}"#,
                code::INVALID_CONFIG,
                "either ranges or subnet",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"ranges":[[{"subnet":"fd00:1::/64","gateway":"fd00:2::1"}]]}}"#,
                code::INVALID_CONFIG,
                "ipam.ranges: --gateway fd00:2::1: not a usable address of subnet fd00:1::/64",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"ranges":[[{"subnet":"fd00:1::/64","rangeStart":"fd00:1::9"}]]}}"#,
                code::INVALID_CONFIG,
                "rangeStart",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"gateway":"10.0.0.1"}}"#,
                code::INVALID_CONFIG,
                "need ipam.subnet",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":"big"}"#,
                code::INVALID_CONFIG,
                "mtu \"big\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","capabilities":{"bandwidth":true}}"#,
                code::UNSUPPORTED_FIELD,
                "capabilities.bandwidth",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{"portMappings":[{"hostPort":80}]}}"#,
                code::INVALID_CONFIG,
                "runtimeConfig.portMappings: missing field `containerPort`",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"sctp"}]}}"#,
                code::UNSUPPORTED_FIELD,
                "protocol \"sctp\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"::1::"}]}}"#,
                code::INVALID_CONFIG,
                "hostIP \"::1::\": not an IP address",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{"mac":"zz"}}"#,
                code::INVALID_CONFIG,
                "runtimeConfig.mac",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","socket":"rel.sock"}"#,
                code::INVALID_CONFIG,
                "socket rel.sock",
            ),
        ] {
            // An ipam refusal is kept for ADD and CHECK (DEL still runs).
            let err = match conf(json) {
                Ok(c) => c.ipam_error.unwrap_or_else(|| panic!("{json}: accepted")),
                Err(e) => e,
            };
            assert_eq!(err.code, want, "{json}: {err}");
            assert!(
                err.msg.contains(needle),
                "{json}: {:?} should contain {needle:?}",
                err.msg
            );
        }
    }

    #[test]
    fn wrong_types_are_refused_quoting_the_value() {
        for (extra, want, needle) in [
            (
                r#""capabilities":null"#,
                code::INVALID_CONFIG,
                "capabilities null: expected an object",
            ),
            (
                r#""runtimeConfig":[1]"#,
                code::INVALID_CONFIG,
                "runtimeConfig [1]: expected an object",
            ),
            (
                r#""ipam":[]"#,
                code::INVALID_CONFIG,
                "ipam []: expected an object",
            ),
            (
                r#""mtu":1400.0"#,
                code::INVALID_CONFIG,
                "mtu 1400.0: expected a number",
            ),
            (
                r#""mtu":70000"#,
                code::INVALID_CONFIG,
                "mtu 70000: expected a number",
            ),
            (
                r#""network":7"#,
                code::INVALID_CONFIG,
                "network 7: expected a string",
            ),
            (
                r#""ipam":{"type":3}"#,
                code::INVALID_CONFIG,
                "ipam.type 3: expected a string",
            ),
            (
                r#""runtimeConfig":{"mac":5}"#,
                code::INVALID_CONFIG,
                "runtimeConfig.mac 5: expected a string",
            ),
            (
                r#""cni.dev/valid-attachments":null"#,
                code::INVALID_CONFIG,
                "cni.dev/valid-attachments: invalid type: null, expected a sequence",
            ),
            (
                r#""zzz":1,"aaa":2"#,
                code::UNSUPPORTED_FIELD,
                "aaa: unsupported field",
            ),
        ] {
            let json = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"t",{extra}}}"#);
            let err = conf(&json).unwrap_err();
            assert_eq!(err.code, want, "{json}: {err}");
            assert!(
                err.msg.contains(needle),
                "{json}: {:?} should contain {needle:?}",
                err.msg
            );
        }
        // Null is absent for the other fields; other capabilities' keys in
        // runtimeConfig are not ours to judge.
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":null,"dns":null,"mtu":null,
                "runtimeConfig":{"portMappings":null,"bandwidth":{}},"args":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!((c.create, c.dns, c.publish.len()), (None, None, 0));
        assert_eq!(peek_version(br#"["1.0.0"]"#), None);
    }

    #[test]
    fn the_example_conflist_parses() {
        let list: Value =
            serde_json::from_str(include_str!("../../../../dist/cni/dataplane.conflist")).unwrap();
        // What a runtime hands the plugin: the list's name and version in
        // the plugin's entry.
        let mut entry = list["plugins"][0].clone();
        entry["name"] = list["name"].clone();
        entry["cniVersion"] = list["cniVersion"].clone();
        let c = NetConf::parse(entry.to_string().as_bytes(), "/unused").unwrap();
        assert_eq!(c.network, "dataplane");
        assert_eq!(c.socket, PathBuf::from(crate::api::DEFAULT_SOCKET));
        assert_eq!(
            c.create.and_then(|s| s.subnet).as_deref(),
            Some("10.89.0.0/16")
        );
    }

    #[test]
    fn commands_exist_from_their_spec_version() {
        assert!(version_has("0.4.0", Command::Check));
        assert!(!version_has("0.3.1", Command::Check));
        assert!(version_has("1.1.0", Command::Gc));
        assert!(!version_has("1.0.0", Command::Status));
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(peek_version(br#"{"cniVersion":"7.0.0"}"#), None);
    }
}
