//! A CNI request parsed once: the `CNI_*` environment ([`Env`]) and the
//! network configuration on stdin ([`NetConf`]). Every error carries the
//! spec's code and names the variable or field and its value.
//!
//! Configuration fields (see docs/cni.md): the spec's `cniVersion`, `name`,
//! `type`, `args` (ignored), `ipMasq`, `ipam`, `dns`, `capabilities`,
//! `runtimeConfig`, `prevResult`, 1.1's `cni.dev/valid-attachments` and
//! `cni.dev/attachments`; ours: `network` (the dataplane network, default
//! `name`), `socket` (the agent's, default /run/dataplane/dataplane.sock),
//! `bridge` and `mtu` (used when the network is created). `ipam` is ours:
//! `{}` or `{"type": "dataplane"}`, with `subnet`, `gateway` and `ipRange`
//! for a network the plugin creates. Any other field is refused (code 2),
//! so a typo is never silently ignored.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{code, AttachmentKey, CniError, NetworkSpec, IPAM_TYPES, SUPPORTED_VERSIONS};
use crate::network::model::{valid_ifname, valid_name};

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    /// The first spec version that has this command.
    fn since(self) -> &'static str {
        match self {
            Command::Add | Command::Del | Command::Version => "0.3.0",
            Command::Check => "0.4.0",
            Command::Gc | Command::Status => "1.1.0",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// The `CNI_*` variables a command needs, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    /// ADD, DEL, CHECK.
    pub key: Option<AttachmentKey>,
    /// ADD and CHECK always; DEL when the namespace still exists.
    pub netns: Option<String>,
    /// `IP=` of `CNI_ARGS` (a static address).
    pub ip: Option<Ipv4Addr>,
}

fn env_err(msg: String) -> CniError {
    CniError::new(code::INVALID_ENV, msg)
}

/// Reads the environment through `var` (so tests need not touch the
/// process's own).
pub fn parse_env(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let cmd = var("CNI_COMMAND").unwrap_or_default();
    let command = Command::parse(&cmd).ok_or_else(|| {
        env_err(format!(
            "CNI_COMMAND {cmd:?}: expected ADD, DEL, CHECK, VERSION, GC or STATUS"
        ))
    })?;
    let mut env = Env {
        command,
        key: None,
        netns: None,
        ip: None,
    };
    if matches!(command, Command::Version | Command::Gc | Command::Status) {
        return Ok(env);
    }
    let container_id = var("CNI_CONTAINERID").unwrap_or_default();
    if !valid_name(&container_id) {
        return Err(env_err(format!(
            "CNI_CONTAINERID {container_id:?}: must be non-empty, start with a letter or digit \
             and contain only [a-zA-Z0-9_.-]"
        )));
    }
    let ifname = var("CNI_IFNAME").unwrap_or_default();
    if !valid_ifname(&ifname) {
        return Err(env_err(format!(
            "CNI_IFNAME {ifname:?}: not a valid interface name (1-15 bytes, no '/', ':' or white space)"
        )));
    }
    let netns = var("CNI_NETNS").filter(|n| !n.is_empty());
    match (&netns, command) {
        (None, Command::Add | Command::Check) => {
            return Err(env_err(format!(
                "CNI_NETNS is required for {} (the container's network namespace path)",
                command.name()
            )))
        }
        (Some(n), _) if !n.starts_with('/') => {
            return Err(env_err(format!(
                "CNI_NETNS {n:?}: expected an absolute path such as /proc/PID/ns/net"
            )))
        }
        _ => {}
    }
    env.ip = parse_cni_args(&var("CNI_ARGS").unwrap_or_default())?;
    env.key = Some(AttachmentKey {
        container_id,
        ifname,
    });
    env.netns = netns;
    Ok(env)
}

/// `CNI_ARGS` (`K=V;K=V`): `IP` is a static address; the runtimes' pod
/// labels are ignored; any other key is an error unless `IgnoreUnknown`
/// is set (the CNI convention).
fn parse_cni_args(s: &str) -> Result<Option<Ipv4Addr>, CniError> {
    const IGNORED: [&str; 4] = [
        "K8S_POD_NAMESPACE",
        "K8S_POD_NAME",
        "K8S_POD_INFRA_CONTAINER_ID",
        "K8S_POD_UID",
    ];
    let mut pairs = Vec::new();
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| env_err(format!("CNI_ARGS {part:?}: expected KEY=VALUE")))?;
        pairs.push((k, v));
    }
    let ignore_unknown = pairs.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("IgnoreUnknown") && matches!(*v, "1" | "true" | "True")
    });
    let mut ip = None;
    for (k, v) in pairs {
        if k == "IP" {
            ip = Some(
                v.parse::<Ipv4Addr>()
                    .map_err(|_| env_err(format!("CNI_ARGS IP={v}: not an IPv4 address")))?,
            );
        } else if !(k.eq_ignore_ascii_case("IgnoreUnknown")
            || IGNORED.contains(&k)
            || ignore_unknown)
        {
            return Err(env_err(format!(
                "CNI_ARGS {k}: unknown key (known: IP, IgnoreUnknown; IgnoreUnknown=1 ignores others)"
            )));
        }
    }
    Ok(ip)
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
        let unsupported = |what: String| CniError::new(code::UNSUPPORTED_FIELD, what);
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
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "runtimeConfig.portMappings {}:{}: ports must be 1-65535",
                    self.host_port, self.container_port
                ),
            ));
        }
        let host = match self.host_ip.as_deref().filter(|h| !h.is_empty()) {
            None => String::new(),
            Some(h) => match h.parse::<IpAddr>() {
                // 0.0.0.0 is every address, as an empty hostIP.
                Ok(IpAddr::V4(a)) if a.is_unspecified() => String::new(),
                Ok(IpAddr::V4(a)) => format!("{a}:"),
                Ok(IpAddr::V6(_)) => {
                    return Err(unsupported(format!(
                        "runtimeConfig.portMappings hostIP {h}: IPv6 is not supported yet"
                    )))
                }
                Err(_) => {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!("runtimeConfig.portMappings hostIP {h:?}: not an IP address"),
                    ))
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
    /// `runtimeConfig.mac` (capability `mac`).
    pub mac: Option<String>,
    /// `-p` values from `runtimeConfig.portMappings`.
    pub publish: Vec<String>,
    /// `dns`, copied into the result.
    pub dns: Option<Value>,
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

const TOP_FIELDS: [&str; 16] = [
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
];
const IPAM_FIELDS: [&str; 4] = ["type", "subnet", "gateway", "ipRange"];
const CAPABILITIES: [&str; 3] = ["portMappings", "ips", "mac"];

fn invalid(msg: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

fn unsupported(msg: String) -> CniError {
    CniError::new(code::UNSUPPORTED_FIELD, msg)
}

fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(format!("{path}{key} {other}: expected a string"))),
    }
}

fn check_known(obj: &Map<String, Value>, known: &[&str], path: &str) -> Result<(), CniError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(unsupported(format!(
            "{path}{k}: unsupported field (known: {})",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// `ipam.subnet`, `gateway` and `ipRange` checked as `network create`
/// checks them, named as the configuration names them.
fn check_ipam(spec: &NetworkSpec) -> Result<(), CniError> {
    use crate::network::ipam;
    let Some(subnet) = &spec.subnet else {
        if spec.gateway.is_some() || spec.ip_range.is_some() {
            return Err(invalid(
                "ipam.gateway and ipam.ipRange need ipam.subnet".to_owned(),
            ));
        }
        return Ok(());
    };
    let field = |f: &str, e: ipam::IpamError| invalid(format!("ipam.{f}: {e}"));
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
    let v: Value = serde_json::from_slice(stdin).ok()?;
    let s = v.get("cniVersion")?.as_str()?;
    SUPPORTED_VERSIONS.contains(&s).then(|| s.to_owned())
}

impl NetConf {
    /// Parses stdin. Decoding failures are code 6, a missing or wrong-typed
    /// field 7, an unknown field 2, an unsupported version 1.
    pub fn parse(stdin: &[u8], default_socket: &str) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                "network configuration: not valid JSON",
            )
            .with_details(e.to_string())
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(
                code::DECODING_FAILURE,
                "network configuration: expected a JSON object",
            ));
        };
        let cni_version = opt_str(&obj, "cniVersion", "")?
            .ok_or_else(|| invalid("cniVersion: missing".into()))?
            .to_owned();
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {cni_version}: not supported (supported: {})",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        check_known(&obj, &TOP_FIELDS, "")?;
        let name = opt_str(&obj, "name", "")?
            .ok_or_else(|| invalid("name: missing".into()))?
            .to_owned();
        if !valid_name(&name) {
            return Err(invalid(format!(
                "name {name:?}: must start with a letter or digit and contain only [a-zA-Z0-9_.-]"
            )));
        }
        let plugin_type = opt_str(&obj, "type", "")?
            .ok_or_else(|| invalid("type: missing".into()))?
            .to_owned();
        let network = opt_str(&obj, "network", "")?.unwrap_or(&name).to_owned();
        if !valid_name(&network) {
            return Err(invalid(format!(
                "network {network:?}: must start with a letter or digit and contain only [a-zA-Z0-9_.-]"
            )));
        }
        let socket = PathBuf::from(opt_str(&obj, "socket", "")?.unwrap_or(default_socket));
        if !socket.is_absolute() {
            return Err(invalid(format!(
                "socket {}: expected an absolute path",
                socket.display()
            )));
        }

        let mut spec = NetworkSpec::default();
        match obj.get("ipam") {
            None | Some(Value::Null) => {}
            Some(Value::Object(ipam)) => {
                check_known(ipam, &IPAM_FIELDS, "ipam.")?;
                if let Some(t) = opt_str(ipam, "type", "ipam.")? {
                    if !IPAM_TYPES.contains(&t) {
                        return Err(unsupported(format!(
                            "ipam.type {t}: addresses come from the dataplane's own IPAM \
                             (use \"ipam\": {{}} or type {})",
                            IPAM_TYPES[0]
                        )));
                    }
                }
                spec.subnet = opt_str(ipam, "subnet", "ipam.")?.map(str::to_owned);
                spec.gateway = opt_str(ipam, "gateway", "ipam.")?.map(str::to_owned);
                spec.ip_range = opt_str(ipam, "ipRange", "ipam.")?.map(str::to_owned);
            }
            Some(other) => return Err(invalid(format!("ipam {other}: expected an object"))),
        }
        spec.bridge = opt_str(&obj, "bridge", "")?.map(str::to_owned);
        if let Some(b) = &spec.bridge {
            if !valid_ifname(b) {
                return Err(invalid(format!(
                    "bridge {b:?}: not a valid interface name (1-15 bytes)"
                )));
            }
        }
        spec.mtu = match obj.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|m| u32::try_from(m).ok())
                    .filter(|m| (68..=65535).contains(m))
                    .ok_or_else(|| {
                        invalid(format!("mtu {v}: expected a number from 68 to 65535"))
                    })?,
            ),
        };
        spec.ip_masq = match obj.get("ipMasq") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => return Err(invalid(format!("ipMasq {v}: expected true or false"))),
        };
        // Only a subnet can make a network; bridge/mtu/ipMasq alone only
        // describe one that must exist.
        let create = spec.subnet.is_some().then_some(spec.clone());
        let ipam_error = check_ipam(&spec).err();

        if let Some(caps) = obj.get("capabilities") {
            let caps = caps
                .as_object()
                .ok_or_else(|| invalid(format!("capabilities {caps}: expected an object")))?;
            check_known(caps, &CAPABILITIES, "capabilities.")?;
        }
        let mut conf = NetConf {
            cni_version,
            name,
            plugin_type,
            network,
            socket,
            create,
            ip: None,
            mac: None,
            publish: Vec::new(),
            dns: None,
            prev_result: None,
            valid_attachments: None,
            ipam_error,
        };
        if let Some(rc) = obj.get("runtimeConfig").filter(|v| !v.is_null()) {
            conf.runtime_config(rc)?;
        }
        conf.dns = match obj.get("dns") {
            None | Some(Value::Null) => None,
            Some(d @ Value::Object(_)) => Some(d.clone()),
            Some(d) => return Err(invalid(format!("dns {d}: expected an object"))),
        };
        conf.prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(p @ Value::Object(_)) => Some(p.clone()),
            Some(p) => return Err(invalid(format!("prevResult {p}: expected an object"))),
        };
        if let Some(v) = obj.get("cni.dev/valid-attachments") {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Valid {
                #[serde(rename = "containerID")]
                container_id: String,
                ifname: String,
            }
            let list: Vec<Valid> = serde_json::from_value(v.clone())
                .map_err(|e| invalid(format!("cni.dev/valid-attachments: {e}")))?;
            conf.valid_attachments = Some(
                list.into_iter()
                    .map(|a| AttachmentKey {
                        container_id: a.container_id,
                        ifname: a.ifname,
                    })
                    .collect(),
            );
        }
        Ok(conf)
    }

    /// `runtimeConfig`: the capabilities the runtime fills in. Keys of
    /// capabilities this plugin does not declare are not ours to judge (the
    /// runtime only sends what the configuration asked for) and are ignored.
    fn runtime_config(&mut self, rc: &Value) -> Result<(), CniError> {
        let rc = rc
            .as_object()
            .ok_or_else(|| invalid(format!("runtimeConfig {rc}: expected an object")))?;
        if let Some(pm) = rc.get("portMappings").filter(|v| !v.is_null()) {
            let maps: Vec<PortMap> = serde_json::from_value(pm.clone())
                .map_err(|e| invalid(format!("runtimeConfig.portMappings: {e}")))?;
            for m in &maps {
                let spec = m.spec()?;
                // podman passes a mapping once per address family it binds;
                // one IPv4 mapping covers them all.
                if !self.publish.contains(&spec) {
                    self.publish.push(spec);
                }
            }
        }
        if let Some(ips) = rc.get("ips").filter(|v| !v.is_null()) {
            let list: Vec<String> = serde_json::from_value(ips.clone())
                .map_err(|e| invalid(format!("runtimeConfig.ips: {e}")))?;
            for ip in &list {
                let addr = ip.split('/').next().unwrap_or_default();
                match addr.parse::<IpAddr>() {
                    Ok(IpAddr::V4(a)) if self.ip.is_none() => self.ip = Some(a),
                    Ok(IpAddr::V4(_)) => {
                        return Err(unsupported(format!(
                            "runtimeConfig.ips {ip}: one IPv4 address per attachment"
                        )))
                    }
                    Ok(IpAddr::V6(_)) => {
                        return Err(unsupported(format!(
                            "runtimeConfig.ips {ip}: IPv6 is not supported yet"
                        )))
                    }
                    Err(_) => {
                        return Err(invalid(format!(
                            "runtimeConfig.ips {ip:?}: not an IP address"
                        )))
                    }
                }
            }
        }
        if let Some(mac) = rc.get("mac").filter(|v| !v.is_null()) {
            let mac = mac
                .as_str()
                .ok_or_else(|| invalid(format!("runtimeConfig.mac {mac}: expected a string")))?;
            crate::network::ipam::parse_mac(mac)
                .map_err(|e| invalid(format!("runtimeConfig.mac: {e}")))?;
            self.mac = Some(mac.to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_env(|k| m.get(k).cloned())
    }

    const BASE: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    fn with(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = BASE
            .iter()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        v.extend(over.iter().filter(|(_, val)| !val.is_empty()).copied());
        v
    }

    #[test]
    fn environment_is_checked_with_code_4() {
        let e = env(&BASE).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.netns.as_deref(), Some("/run/netns/x"));
        for (over, needle) in [
            (vec![("CNI_COMMAND", "FROB")], "CNI_COMMAND \"FROB\""),
            (vec![("CNI_NETNS", "")], "CNI_NETNS is required for ADD"),
            (vec![("CNI_NETNS", "relative")], "CNI_NETNS \"relative\""),
            (vec![("CNI_CONTAINERID", "")], "CNI_CONTAINERID \"\""),
            (
                vec![("CNI_IFNAME", "has/slash")],
                "CNI_IFNAME \"has/slash\"",
            ),
            (vec![("CNI_ARGS", "FOO=1")], "CNI_ARGS FOO: unknown key"),
            (vec![("CNI_ARGS", "IP=1.2.3")], "CNI_ARGS IP=1.2.3"),
            (vec![("CNI_ARGS", "novalue")], "CNI_ARGS \"novalue\""),
        ] {
            let err = env(&with(&over)).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{err}");
            assert!(
                err.msg.contains(needle),
                "{:?} should contain {needle:?}",
                err.msg
            );
        }
        // DEL may come after the namespace is gone.
        let e = env(&with(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")])).unwrap();
        assert_eq!(e.netns, None);
        let e = env(&with(&[(
            "CNI_ARGS",
            "IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=x;IP=10.1.0.9",
        )]))
        .unwrap();
        assert_eq!(e.ip, Some(Ipv4Addr::new(10, 1, 0, 9)));
        // VERSION needs nothing else.
        let e = env(&[("CNI_COMMAND", "VERSION")]).unwrap();
        assert_eq!(e.key, None);
    }

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
        // The minimal form joins an existing network named like the config.
        let c = conf(r#"{"cniVersion":"0.4.0","name":"bridge","type":"dataplane-cni","ipam":{}}"#)
            .unwrap();
        assert_eq!((c.network.as_str(), c.create), ("bridge", None));
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
                code::UNSUPPORTED_FIELD,
                "ipam.ranges",
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
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"::1"}]}}"#,
                code::UNSUPPORTED_FIELD,
                "hostIP ::1",
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
    fn the_example_conflist_parses() {
        let list: Value =
            serde_json::from_str(include_str!("../../../dist/cni/dataplane.conflist")).unwrap();
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
